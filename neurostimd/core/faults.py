"""Fault handling: turn stale or bad data, low confidence and board trouble into the safe state within one decision,
and the `Controller` that chains policy → fault monitor → safety gate into one pure step for the loop.

A safety event here is never only a log line: it changes what is sent. Recovery needs clean inputs for
`recovery_clean_ms` without interruption; the monitor starts in the safe state, so stimulation never starts before
data has been flowing clean for that long.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from neurostimd.core.safety import FaultActions, SafetyConfig, limit_violations
from neurostimd.drivers.types import BoardLimits, StimParams

# Stable fault names (audit `fault` events and the metrics' `kind` label).
FAULT_STARTUP = "startup"  # nothing clean seen yet
FAULT_NO_DATA = "no_data"
FAULT_STALE = "stale_data"
FAULT_LOW_CONFIDENCE = "low_confidence"
FAULT_BOARD_LOST = "board_lost"
FAULT_NAK = "nak"
FAULT_MISSING_ACK = "missing_ack"
FAULT_QUALITY_PREFIX = "quality_"  # + the window's flag: quality_nan_inf, quality_flatline, quality_saturation, ...
# Checks at the daemon's boundary (docs/safety.md, "What the daemon checks at its boundary"); the loop passes them as
# `boundary_causes`.
FAULT_BOARD_PARAMS_MISMATCH = "board_params_mismatch"  # STATUS shows parameters the host did not command
FAULT_BOARD_INFO_MISMATCH = "board_info_mismatch"  # a (re)connected board is not the one the loop was built for
FAULT_BOARD_RESET = "board_reset"  # the board restarted (counter back near 0, its session gone)
FAULT_RATE_MISMATCH = "rate_mismatch"  # samples arrive faster or slower than the declared rate
FAULT_IMPLAUSIBLE_SIGNAL = "implausible_signal"  # amplitudes far outside anything the model was trained on
FAULT_AUDIT_UNAVAILABLE = "audit_unavailable"  # the audit log cannot be written: nothing but STOP may be sent
FAULT_MODEL_OUTPUT = "model_output_invalid"  # the classifier's output is NaN, infinite or empty: a fault, not doubt

# Causes after which the safe state is "off" even when [safety] safe_state = "fallback": the board is not doing what
# it is told (or is not the board we know), or nothing can be audited — commanding any stimulation would trust it.
FORCE_OFF_CAUSES = frozenset({FAULT_BOARD_PARAMS_MISMATCH, FAULT_BOARD_INFO_MISMATCH, FAULT_AUDIT_UNAVAILABLE})

BoardReply = Literal["ack", "nak", "timeout"]


@dataclass(frozen=True)
class FaultInputs:
    """What the loop knows at one decision.

    `data_age_ms`: age of the newest sample (None: no data yet). `quality_flags`: the window's flags (e.g. "nan",
    "inf", "flatline", "saturation", "gap"; empty = clean). `confidence`: the classifier's top probability (None: no
    classification this tick). `board_ok`: False when the board is lost. `last_reply`: the board's answer to the
    previous command sent (None when nothing was sent since the previous decision). `boundary_causes`: fault names
    raised by the loop's checks of what comes from outside (the board's INFO and STATUS, the stream's rate and
    amplitudes, the audit log: FAULT_BOARD_PARAMS_MISMATCH, …), taken as they are.
    """

    data_age_ms: float | None
    quality_flags: Collection[str] = ()
    confidence: float | None = None
    board_ok: bool = True
    last_reply: BoardReply | None = None
    boundary_causes: Collection[str] = ()


Mode = Literal["normal", "hold", "fallback", "off"]
MODE_NORMAL: Mode = "normal"
MODE_HOLD: Mode = "hold"
MODE_FALLBACK: Mode = "fallback"
MODE_OFF: Mode = "off"
_SEVERITY = {MODE_HOLD: 0, MODE_FALLBACK: 1, MODE_OFF: 2}
_SLACK_S = 1e-9  # float noise of summed tick times: a 1 s hold ends at the tick 1 s later, not one tick after


@dataclass(frozen=True)
class FaultStatus:
    """`faults`: the causes seen at this decision. `active`: the safe state is in force (off or fallback). `raised`:
    causes new since the previous decision. `cleared`: the safe state ended at this decision. `force_off`: a cause in
    FORCE_OFF_CAUSES holds, so the safe state is "off" whatever the config says. `mode`: what is requested instead of
    the policy's wish — "normal" (the policy's), "hold" (what the board runs), "fallback" or "off". `escalated`:
    why a hold or a safe state changed its mode ("hold_expired", "persisted"), else None."""

    active: bool
    faults: tuple[str, ...]
    raised: tuple[str, ...]
    cleared: bool
    clean_since_s: float | None
    force_off: bool = False
    mode: Mode = MODE_OFF
    escalated: str | None = None

    @property
    def holding(self) -> bool:
        return self.mode == MODE_HOLD


def fallback_params(cfg: SafetyConfig) -> StimParams | None:
    """The configured fallback as StimParams (None when there is none)."""
    if cfg.fallback is None:
        return None
    fb = cfg.fallback
    return StimParams(frequency_hz=fb.frequency_hz, amplitude_ma=fb.amplitude_ma, pulse_width_us=fb.pulse_width_us,
                      interphase_gap_us=cfg.interphase_gap_us)


def fallback_violations(cfg: SafetyConfig, board_limits: BoardLimits | None = None) -> list[str]:
    """The gate rules the configured fallback breaks (empty when there is none or it passes unclamped)."""
    fb = fallback_params(cfg)
    return [] if fb is None else limit_violations(fb, cfg, board_limits=board_limits)


def policy_target_violations(policy: object, cfg: SafetyConfig,
                             board_limits: BoardLimits | None = None) -> list[tuple[StimParams, list[str]]]:
    """The targets a law's settings can ask for (`gate_requests()`: dual_threshold's two amplitudes, the PI's output
    bounds) that the gate would cut on this board, each with the rules broken. The config check at load knows only
    [safety]; the board's own limits (its INFO) are known once it is open."""
    requests = getattr(policy, "gate_requests", None)
    if not callable(requests):
        return []
    out = []
    for p in requests():
        p = StimParams(p.frequency_hz, p.amplitude_ma, p.pulse_width_us, cfg.interphase_gap_us)
        broken = limit_violations(p, cfg, board_limits=board_limits)
        if broken:
            out.append((p, broken))
    return out


ESCALATED_HOLD = "hold_expired"
ESCALATED_PERSIST = "persisted"


def configured_action(cfg: SafetyConfig, cause: str) -> str | None:
    """What [safety.on_fault] says for `cause` itself ("hold", "fallback", "off"), "off" for FORCE_OFF_CAUSES, or None
    when it says nothing (the cause then follows [safety] safe_state)."""
    if cause in FORCE_OFF_CAUSES:
        return MODE_OFF
    acts = cfg.on_fault
    if cause == FAULT_LOW_CONFIDENCE:
        return acts.low_confidence
    key = "quality" if cause.startswith(FAULT_QUALITY_PREFIX) else cause
    configured = getattr(acts, key, None) if key in FaultActions.model_fields and key not in _NOT_CAUSES else None
    return None if configured is None else str(configured)


def cause_action(cfg: SafetyConfig, cause: str) -> str:
    """What `cause` does by the config: "hold", "fallback" or "off" ([safety.on_fault], else [safety] safe_state)."""
    configured = configured_action(cfg, cause)
    return configured if configured is not None else cfg.safe_state


_NOT_CAUSES = frozenset({"hold_max_s", "after_hold", "persist_s", "after_persist", "low_confidence"})


class FaultMonitor:
    """Per decision: which faults hold, and what is requested instead of the policy's wish. Pure; time is an input.

    A cause whose action is "hold" (by default low confidence only) does not put the safe state in force: the
    controller asks for what the board runs, for at most `hold_max_s` without interruption, then `after_hold` is in
    force like a fault. Any other cause puts its safe state in force at once (the most conservative of the causes
    present: off before fallback), kept until inputs have been clean for `recovery_clean_ms`; a safe state that lasts
    `persist_s` becomes `after_persist`. While recovering, low confidence counts as not clean."""

    def __init__(self, cfg: SafetyConfig, *, stale_after_ms: float, confidence_threshold: float) -> None:
        self.cfg = cfg
        self.stale_after_ms = stale_after_ms
        self.confidence_threshold = confidence_threshold
        self.fallback = fallback_params(cfg)
        self.reset()

    @property
    def safe_params(self) -> StimParams | None:
        """What the safe state in force requests (None: off)."""
        return self.fallback if self._mode == MODE_FALLBACK else None

    def reset(self) -> None:
        """Back to the start: safe state in force until inputs have been clean for `recovery_clean_ms`."""
        self._active = True
        self._force_off = False
        self._prev: frozenset[str] = frozenset({FAULT_STARTUP})
        self._clean_since_s: float | None = None
        self._mode: Mode = MODE_OFF if self.cfg.safe_state == "off" else MODE_FALLBACK
        self._safe_since_s: float | None = None
        self._hold_since_s: float | None = None
        self._hold_clean_since_s: float | None = None  # clean since, while a hold's clock runs
        self._safe_mode: Mode = self._mode  # the safe state's own mode, before persistence

    @property
    def active(self) -> bool:
        return self._active

    @property
    def mode(self) -> Mode:
        return self._mode

    def causes(self, inputs: FaultInputs) -> tuple[str, ...]:
        """The fault causes in `inputs`, in a stable order."""
        out: list[str] = []
        if not inputs.board_ok:
            out.append(FAULT_BOARD_LOST)
        if inputs.last_reply == "nak":
            out.append(FAULT_NAK)
        elif inputs.last_reply == "timeout":
            out.append(FAULT_MISSING_ACK)
        age = inputs.data_age_ms
        if age is None:
            out.append(FAULT_NO_DATA)
        elif not math.isfinite(age) or age > self.stale_after_ms:
            out.append(FAULT_STALE)
        out.extend(FAULT_QUALITY_PREFIX + str(f) for f in sorted(set(inputs.quality_flags)))
        c = inputs.confidence
        if c is not None and not math.isfinite(c):
            out.append(FAULT_MODEL_OUTPUT)  # garbage from the classifier is a fault, never a reason to hold
        elif c is None or c < self.confidence_threshold:
            out.append(FAULT_LOW_CONFIDENCE)
        out.extend(dict.fromkeys(str(b) for b in inputs.boundary_causes if str(b) not in out))
        return tuple(out)

    def update(self, t_s: float, inputs: FaultInputs) -> FaultStatus:
        causes = self.causes(inputs)
        raised = tuple(c for c in causes if c not in self._prev)
        # FORCE_OFF_CAUSES stop while they hold (the `force_off` flag) but leave the configured safe state as it is
        hard = [cause_action(self.cfg, c) if c not in FORCE_OFF_CAUSES else self.cfg.safe_state for c in causes]
        hard = [a for a in hard if a != MODE_HOLD]
        cleared = False
        escalated: str | None = None
        if hard:  # a fault: its safe state at once
            worst: Mode = MODE_OFF if MODE_OFF in hard else MODE_FALLBACK
            new_hard = any(c in raised and cause_action(self.cfg, c) != MODE_HOLD for c in causes)
            self._enter_safe(t_s, worst, restart=new_hard)
        elif causes:  # only causes that hold
            self._hold_clean_since_s = None
            if self._active:
                self._clean_since_s = None  # recovering: not clean, the safe state stays
            else:
                if self._hold_since_s is None:
                    self._hold_since_s = t_s
                if t_s - self._hold_since_s >= self.cfg.on_fault.hold_max_s - _SLACK_S:
                    self._enter_safe(t_s, MODE_OFF if self.cfg.on_fault.after_hold == "off" else MODE_FALLBACK)
                    escalated = ESCALATED_HOLD
                else:
                    self._mode = MODE_HOLD
        else:
            # A hold's clock restarts only after recovery_clean_ms of clean decisions: one confident window now and
            # then must not let a hold go on for ever.
            if self._hold_since_s is not None:
                if self._hold_clean_since_s is None:
                    self._hold_clean_since_s = t_s
                if t_s - self._hold_clean_since_s >= self.cfg.recovery_clean_ms / 1000.0 - _SLACK_S:
                    self._hold_since_s = None
                    self._hold_clean_since_s = None
            if self._active:
                if self._clean_since_s is None:
                    self._clean_since_s = t_s
                if t_s - self._clean_since_s >= self.cfg.recovery_clean_ms / 1000.0:
                    self._active = False
                    self._safe_since_s = None
                    cleared = True
            if not self._active:
                self._mode = MODE_NORMAL
        self._force_off = any(c in FORCE_OFF_CAUSES for c in causes)
        if self._active:
            mode = self._safe_mode
            persist_s = self.cfg.on_fault.persist_s
            since = self._safe_since_s
            if persist_s is not None and since is not None and t_s - since >= persist_s - _SLACK_S:
                after: Mode = MODE_OFF if self.cfg.on_fault.after_persist == "off" else MODE_FALLBACK
                # Persistence may make the safe state more conservative; it moves off to the fallback only when no
                # cause present says "off" itself (an explicit [safety.on_fault] "off", or a FORCE_OFF cause).
                explicit_off = any(configured_action(self.cfg, c) == MODE_OFF for c in causes)
                if _SEVERITY[after] >= _SEVERITY[mode] or not explicit_off:
                    mode = after
                if mode != self._mode:
                    escalated = escalated or ESCALATED_PERSIST
            if self._force_off:
                mode = MODE_OFF
            self._mode = mode
        self._prev = frozenset(causes)
        return FaultStatus(active=self._active, faults=causes, raised=raised, cleared=cleared,
                           clean_since_s=self._clean_since_s, force_off=self._force_off, mode=self._mode,
                           escalated=escalated)

    def _enter_safe(self, t_s: float, mode: Mode, *, restart: bool = False) -> None:
        """The safe state in `mode`. `restart`: a new fault cause appeared, so the persistence clock starts again
        (a new data fault reaches its own safe state at once, whatever an earlier one had persisted into)."""
        if not self._active or self._safe_since_s is None:
            self._safe_since_s = t_s
            self._safe_mode = mode
        else:
            if restart:
                self._safe_since_s = t_s
            # a more conservative cause while in the safe state: the safe state follows it (fallback → off)
            if _SEVERITY[mode] > _SEVERITY[self._safe_mode]:
                self._safe_mode = mode
        self._active = True
        self._clean_since_s = None
        self._hold_since_s = None
        self._hold_clean_since_s = None

    def override(self, desired: StimParams | None, held: StimParams | None = None) -> StimParams | None:
        """What to request from the gate: the policy's wish (mode "normal"), what the board runs (`held`, mode
        "hold"), the fallback, or STOP (always while a FORCE_OFF_CAUSES cause holds)."""
        if self._force_off or self._mode == MODE_OFF:
            return None
        if self._mode == MODE_FALLBACK:
            return self.fallback
        if self._mode == MODE_HOLD:
            return held
        return desired
