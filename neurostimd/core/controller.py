"""The controller: policy → fault monitor → safety gate as one pure step, and the command it produces.

Time is an argument; nothing here does I/O. The loop writes each command's audit record (`Command.audit_fields`)
before it sends the command."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from neurostimd.core.faults import MODE_HOLD, MODE_NORMAL, BoardReply, FaultInputs, FaultMonitor, FaultStatus
from neurostimd.core.policy import Observation, Policy, PolicyDecision
from neurostimd.core.safety import RULE_DEVICE_ROUNDING, GateResult, SafetyConfig, SafetyGate, limit_violations
from neurostimd.drivers.types import BoardLimits, StimParams
from neurostimd.errors import ConfigError


def params_dict(p: StimParams | None) -> dict[str, float] | None:
    """`{frequency_hz, amplitude_ma, pulse_width_us}` of docs/design.md, or None for no stimulation."""
    return None if p is None else p.as_dict()


def command_fields(*, state: int | None, confidence: float | None, requested: StimParams | None,
                   result: Any, t_data_s: float | None, **extra: Any) -> dict[str, Any]:
    """The fields of a `stim_command` / `stim_stop` record, from the gate's result (`GateResult`)."""
    return {
        "state": state,
        "confidence": confidence,
        "requested": params_dict(requested),
        "applied": params_dict(result.applied),
        "limited_by": list(result.limited_by),
        "refused": bool(result.refused),
        "t_data_s": t_data_s,
        "ack": None,  # pending: the outcome is the follow-up stim_ack record
        **extra,
    }


@dataclass(frozen=True)
class ControlInputs:
    """Everything one decision needs: the classifier output, the data's health and the board's."""

    probs: npt.NDArray[np.floating] | None
    data_age_ms: float | None
    t_data_s: float | None = None
    quality_flags: Collection[str] = ()
    board_ok: bool = True
    last_reply: BoardReply | None = None
    impedance_ohm: float | None = None
    boundary_causes: Collection[str] = ()
    features: npt.NDArray[np.floating] | None = None  # the newest frame of the model's input window

    def observation(self, applied: StimParams | None = None) -> Observation:
        """What the policy sees of these inputs (and of what the board runs)."""
        return Observation(probs=self.probs, features=self.features, applied=applied)


@dataclass(frozen=True)
class Command:
    """One decision's outcome. Send `applied` (None = STOP), after writing `audit_fields()` to the audit log."""

    t_s: float
    decision: PolicyDecision
    fault: FaultStatus
    requested: StimParams | None
    gate: GateResult
    t_data_s: float | None

    @property
    def applied(self) -> StimParams | None:
        return self.gate.applied

    @property
    def event(self) -> str:
        return "stim_stop" if self.gate.applied is None else "stim_command"

    def side_events(self) -> list[tuple[str, dict[str, Any]]]:
        """The audit records this decision needs besides the command itself, in order: `fault` (new causes),
        `fault_cleared`, `state_change`. Write them, then the command (`event`, `audit_fields()`), then send."""
        out: list[tuple[str, dict[str, Any]]] = []
        if self.fault.raised or self.fault.escalated:
            out.append(("fault", {"faults": list(self.fault.faults), "raised": list(self.fault.raised),
                                  "safe_state": self.fault.mode,
                                  "escalated": self.fault.escalated, "t_data_s": self.t_data_s}))
        if self.fault.cleared:
            out.append(("fault_cleared", {"clean_since_s": self.fault.clean_since_s, "t_data_s": self.t_data_s}))
        if self.decision.changed:
            out.append(("state_change", {"state": self.decision.state, "confidence": self.decision.confidence,
                                         "reason": self.decision.reason, "t_data_s": self.t_data_s}))
        return out

    def audit_fields(self) -> dict[str, Any]:
        """The audit record's fields for this command (docs/design.md: state, confidence, requested, applied, …)."""
        return command_fields(state=self.decision.state, confidence=self.decision.confidence,
                              requested=self.requested, result=self.gate, t_data_s=self.t_data_s,
                              reason=self.decision.reason, faults=list(self.fault.faults))


_ROUNDING_SLACK = 1e-9  # float noise, not a tolerance: a device may round charge down, never up


def top_probability(probs: npt.NDArray[np.floating]) -> float:
    """The classifier's confidence as the fault monitor judges it: the largest class probability; 0 when the output
    is empty or not finite (the table policy's own reading of the same output)."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    if p.size == 0 or not np.all(np.isfinite(p)):
        return 0.0
    return float(p.max())


class Controller:
    """Policy → fault monitor → safety gate as one pure step. The gate stays a separate object with its own limits.

    `policy` is any `Policy` (the loop builds the one `[policy] kind` names). The fault monitor does not take the
    policy's word for the confidence: it reads the classifier's top probability itself, and the policy's threshold
    must be a number in [0, 1] (a plugin's threshold of -1 would switch `low_confidence` off).

    Loop: `cmd = ctl.step(t, inputs)`; write the audit record; send `cmd.applied`; `ctl.commit(t, cmd.applied,
    acked)`; pass the reply as `last_reply` of the next step.
    """

    def __init__(self, policy: Policy, safety_cfg: SafetyConfig, *, stale_after_ms: float,
                 board_limits: BoardLimits | None = None, prior_daily_stim_s: float = 0.0,
                 deliverable: Callable[[StimParams], StimParams] | None = None) -> None:
        threshold = policy.confidence_threshold
        if not (isinstance(threshold, int | float) and math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
            raise ConfigError(f"the policy's confidence_threshold is {threshold!r}; it must be a number from 0 to 1 "
                              f"(fix [policy], or the plugin that provides this policy kind)")
        self.policy = policy
        self.monitor = FaultMonitor(safety_cfg, stale_after_ms=stale_after_ms, confidence_threshold=float(threshold))
        self.gate = SafetyGate(safety_cfg, board_limits, prior_daily_stim_s=prior_daily_stim_s)
        self.safety_cfg = safety_cfg
        self.board_limits = board_limits
        self._running: StimParams | None = None
        # the device's own rounding (Driver.deliverable): what it will actually run for a command; None: exact
        self.deliverable = deliverable

    def step(self, t_s: float, inputs: ControlInputs) -> Command:
        decision = self.policy.step(t_s, inputs.observation(self._running))
        fault = self.monitor.update(t_s, FaultInputs(
            data_age_ms=inputs.data_age_ms, quality_flags=inputs.quality_flags,
            confidence=None if inputs.probs is None else top_probability(inputs.probs),
            board_ok=inputs.board_ok, last_reply=inputs.last_reply, boundary_causes=inputs.boundary_causes))
        requested = self.monitor.override(decision.desired, held=self._running)
        # the safe state is reached at once; the policy's wish and a hold come down at most at ramp_down_ma_per_s
        ramp_down = fault.mode in (MODE_NORMAL, MODE_HOLD)
        result = self._as_delivered(self.gate.apply(t_s, requested, impedance_ohm=inputs.impedance_ohm,
                                                    ramp_down=ramp_down), inputs.impedance_ohm)
        return Command(t_s=t_s, decision=decision, fault=fault, requested=requested, gate=result,
                       t_data_s=inputs.t_data_s)

    def _as_delivered(self, result: GateResult, impedance_ohm: float | None) -> GateResult:
        """The gate's output as the device will deliver it. A device that rounds (a 50 µs cycle, whole µA) runs
        something close to what the gate let through: that is what is checked, sent, audited as `applied` and
        committed. Rounding that raises the amplitude or the pulse width (more charge than the gate allowed), or that
        breaks any of the gate's static rules, refuses the command (`device_rounding`): nothing is sent but STOP."""
        applied = result.applied
        if applied is None or self.deliverable is None:
            return result
        try:
            delivered = self.deliverable(applied)
        except Exception:  # the device cannot run these parameters at all (a phase under its shortest, ...)
            return GateResult(None, [*result.limited_by, RULE_DEVICE_ROUNDING], True)
        if delivered == applied:
            return result
        raises_charge = (delivered.amplitude_ma > applied.amplitude_ma + _ROUNDING_SLACK
                         or delivered.pulse_width_us > applied.pulse_width_us + _ROUNDING_SLACK)
        broken = limit_violations(delivered, self.safety_cfg, board_limits=self.board_limits,
                                  impedance_ohm=impedance_ohm, check_amplitude_min=False)
        if raises_charge or broken:
            return GateResult(None, [*result.limited_by, RULE_DEVICE_ROUNDING], True)
        return GateResult(delivered, [*result.limited_by, RULE_DEVICE_ROUNDING], result.refused)

    def commit(self, t_s: float, applied: StimParams | None, acked: bool) -> None:
        """Record a send attempt (see SafetyGate.commit). A hold asks for what was committed with an ACK; after a
        send without one the board's setting is unknown and a hold asks for STOP."""
        self.gate.commit(t_s, applied, acked)
        self._running = applied if acked else None

    @property
    def running(self) -> StimParams | None:
        """What the board runs as far as the controller knows (the last command committed with an ACK)."""
        return self._running
