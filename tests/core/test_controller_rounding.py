"""The controller checks, sends, audits and commits what the device will deliver (its own rounding), not the
request: a device that counts 50 µs cycles or whole µA runs something close to what the gate let through."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from neurostimd.core.controller import ControlInputs, Controller
from neurostimd.core.policy import Observation, PolicyDecision
from neurostimd.core.safety import RULE_DEVICE_ROUNDING, SafetyConfig
from neurostimd.drivers.types import StimParams

DT = 0.05
WANT = StimParams(130.0, 1.0, 90.0)
SAFETY = SafetyConfig.model_validate({"recovery_clean_ms": 0.0, "ramp_ma_per_s": 100.0})
PROBS = np.array([0.05, 0.9, 0.05])


class Constant:
    confidence_threshold = 0.5

    def __init__(self, want: StimParams) -> None:
        self.want = want

    def step(self, t_s: float, observation: Observation) -> PolicyDecision:
        return PolicyDecision(state=1, confidence=0.9, desired=self.want, changed=False, reason="constant")


def cycles_of_50us(p: StimParams) -> StimParams:
    """A Pulse-Pal-like device: times in whole 50 µs cycles (pulse width down, period to the nearest)."""
    period_cycles = max(1, round(1e6 / p.frequency_hz / 50.0))
    return replace(p, pulse_width_us=50.0 * math.floor(p.pulse_width_us / 50.0 + 1e-9),
                   frequency_hz=1e6 / (50.0 * period_cycles))


def _run(deliverable, want: StimParams = WANT, n: int = 20) -> list:  # type: ignore[no-untyped-def]
    ctl = Controller(Constant(want), SAFETY, stale_after_ms=250.0, deliverable=deliverable)
    out = []
    for i in range(n):
        cmd = ctl.step(i * DT, ControlInputs(probs=PROBS, data_age_ms=10.0))
        ctl.commit(i * DT, cmd.applied, True)
        out.append(cmd)
    return out


def test_the_command_is_what_the_device_delivers() -> None:
    cmds = _run(cycles_of_50us)
    last = cmds[-1]
    assert last.applied == StimParams(1e6 / (50.0 * 154), 1.0, 50.0) and last.requested == WANT
    assert last.gate.limited_by[-1] == RULE_DEVICE_ROUNDING and not last.gate.refused
    rec = last.audit_fields()
    assert rec["applied"] == {"frequency_hz": 1e6 / (50.0 * 154), "amplitude_ma": 1.0, "pulse_width_us": 50.0}
    assert RULE_DEVICE_ROUNDING in rec["limited_by"]


def test_a_device_that_runs_params_exactly_changes_nothing() -> None:
    exact = _run(None)
    same = _run(lambda p: p)
    assert [c.applied for c in exact] == [c.applied for c in same]
    assert all(RULE_DEVICE_ROUNDING not in c.gate.limited_by for c in same)


def test_rounding_that_adds_charge_is_refused() -> None:
    """Amplitude or pulse width rounded up: more charge than the gate allowed; nothing but STOP is sent."""
    for up in (lambda p: replace(p, amplitude_ma=p.amplitude_ma + 0.01),
               lambda p: replace(p, pulse_width_us=p.pulse_width_us + 1.0)):
        cmds = _run(up)
        assert all(c.applied is None for c in cmds)
        assert all(RULE_DEVICE_ROUNDING in c.gate.limited_by and c.gate.refused for c in cmds if c.requested)


def test_rounding_past_a_static_limit_is_refused() -> None:
    """A frequency rounded above [safety] max_frequency_hz (130 Hz) breaks the gate's own rule: refused."""
    cmds = _run(lambda p: replace(p, frequency_hz=131.0))
    assert all(c.applied is None for c in cmds)
    assert RULE_DEVICE_ROUNDING in cmds[-1].gate.limited_by


def test_parameters_the_device_cannot_run_at_all_are_refused() -> None:
    """The driver's rounding raises (a phase below the device's shortest): the controller refuses, never crashes."""
    def cannot(p: StimParams) -> StimParams:
        raise ValueError("phase of 1 cycle: the output would stick")

    cmds = _run(cannot)
    assert all(c.applied is None and RULE_DEVICE_ROUNDING in c.gate.limited_by for c in cmds if c.requested)
