"""Control laws on a biomarker: `dual_threshold` (Percept/RC+S-style hold band) and `proportional` (a bounded PI).

Pure code (no clock, no I/O): time is an input in seconds. Like the table law (core/policy.py) they only say what
to ask for: the fault monitor decides whether the wish is taken, held or replaced by the safe state, and the safety
gate has the last word on every command (it ramps, clamps and refuses). docs/control-laws.md describes each law, its
settings and how to tune it, with the published anchors they follow.

The biomarker is read from the observation: a class probability (`"p:<class index or name>"`), a feature of the
newest frame of the model's input window (`"feature:<name>"`, e.g. `"feature:ch0:logpow_13-30Hz"`, scaled as the
model sees it), or a linear combination (`weights = {"p:1" = 1.0, "p:2" = 0.5}`, plus `offset`). It is averaged
over the last `averaging_ms` (a boxcar, like Percept's averaging duration).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from neurostimd.core.policy import Observation, PolicyDecision
from neurostimd.core.settings import Strict
from neurostimd.core.stimtable import StimTable
from neurostimd.drivers.types import StimParams
from neurostimd.errors import ConfigError

# Reasons a biomarker law's decision carries (stable strings, like core/policy.py's).
REASON_NO_BIOMARKER = "no_biomarker"
REASON_BELOW = "below_lower"
REASON_ABOVE = "above_upper"
REASON_HOLD_BAND = "hold_band"
REASON_ONSET_PENDING = "onset_pending"
REASON_TERMINATION_PENDING = "termination_pending"
REASON_BLANKING = "blanking"
REASON_LEVEL_CHANGE = "level_change"
REASON_PI_UPDATE = "pi_update"
REASON_PI_WAIT = "pi_wait"


class BiomarkerConfig(Strict):
    """What a biomarker law reads: one term (`biomarker`) or a linear combination (`weights` + `offset`)."""

    biomarker: str | None = None  # "p:<class>" or "feature:<name>"
    weights: dict[str, float] | None = None  # term → weight, terms as in `biomarker`
    offset: float = 0.0
    averaging_ms: float = Field(0.0, ge=0, le=600_000.0)  # 0: the newest value only

    @model_validator(mode="after")
    def _one_source(self) -> BiomarkerConfig:
        if (self.biomarker is None) == (self.weights is None):
            raise ValueError("set exactly one of biomarker (e.g. \"p:1\" or \"feature:ch0:logpow_13-30Hz\") and "
                             "weights (a table of such terms and their weights)")
        if self.weights is not None and not self.weights:
            raise ValueError("weights is empty; give at least one term, e.g. weights = {\"p:1\" = 1.0}")
        for term in self.terms():
            kind, _, name = term.partition(":")
            if kind not in ("p", "feature") or not name:
                raise ValueError(f"biomarker term {term!r} is neither \"p:<class index or name>\" nor "
                                 f"\"feature:<feature name>\"")
        for w in (self.weights or {}).values():
            if not math.isfinite(w):
                raise ValueError("weights must be finite numbers")
        return self

    def terms(self) -> list[str]:
        return [self.biomarker] if self.biomarker is not None else list(self.weights or {})


class Biomarker:
    """Reads a `BiomarkerConfig` from observations; `bind` resolves the names once against the bundle."""

    def __init__(self, cfg: BiomarkerConfig) -> None:
        self.cfg = cfg
        self._weights = ({cfg.biomarker: 1.0} if cfg.biomarker is not None else dict(cfg.weights or {}))
        self._index: dict[str, tuple[str, int]] | None = None
        self._values: deque[tuple[float, float]] = deque()

    def bind(self, class_names: Sequence[str] | None, feature_names: Sequence[str] | None) -> None:
        """Resolve each term to a class or feature index; ConfigError naming the term and what exists."""
        index: dict[str, tuple[str, int]] = {}
        for term in self._weights:
            kind, _, name = term.partition(":")
            if kind == "p":
                names = list(class_names or [])
                if name.isdigit() and (not names or int(name) < len(names)):
                    index[term] = ("p", int(name))
                elif name in names:
                    index[term] = ("p", names.index(name))
                else:
                    raise ConfigError(f"[policy] biomarker term {term!r}: the model has no class {name!r} "
                                      f"(classes: {', '.join(names) or 'unknown'}); use \"p:<index or name>\"")
            else:
                names = list(feature_names or [])
                if name not in names:
                    shown = ", ".join(names[:12]) + (", …" if len(names) > 12 else "")
                    raise ConfigError(f"[policy] biomarker term {term!r}: the model has no feature {name!r} "
                                      f"(features: {shown or 'unknown'}); use one of the bundle's feature_names")
                index[term] = ("feature", names.index(name))
        self._index = index

    def reset(self) -> None:
        self._values.clear()

    def read(self, observation: Observation) -> float | None:
        """The raw value in this observation (None when a term is missing or not finite)."""
        total = self.cfg.offset
        for term, w in self._weights.items():
            src, i = self._resolve(term)
            arr = observation.probs if src == "p" else observation.features
            if arr is None:
                return None
            flat = np.asarray(arr, dtype=np.float64).ravel()
            if i >= flat.size or not math.isfinite(float(flat[i])):
                return None
            if src == "p" and not np.all(np.isfinite(flat)):
                return None  # a classifier output with a NaN anywhere is no output
            total += w * float(flat[i])
        return total if math.isfinite(total) else None

    def update(self, t_s: float, observation: Observation) -> float | None:
        """The averaged value at `t_s` (None when there is none in the averaging window)."""
        v = self.read(observation)
        if v is not None:
            self._values.append((t_s, v))
        horizon = t_s - self.cfg.averaging_ms / 1000.0
        # the window is (t − averaging, t]: a boxcar of averaging_ms
        while self._values and (self._values[0][0] <= horizon if self.cfg.averaging_ms > 0
                                else self._values[0][0] < t_s):
            self._values.popleft()
        if not self._values:
            return None
        return float(sum(x for _, x in self._values) / len(self._values))

    def _resolve(self, term: str) -> tuple[str, int]:
        if self._index is not None:
            return self._index[term]
        kind, _, name = term.partition(":")
        if kind == "p" and name.isdigit():
            return "p", int(name)
        raise ConfigError(f"[policy] biomarker term {term!r} needs the model's names: the policy was not bound to "
                          f"a bundle (Controller/loop call bind)")


def _top_class(probs: object) -> int | None:
    if probs is None:
        return None
    p = np.asarray(probs, dtype=np.float64).ravel()
    if p.size == 0 or not np.all(np.isfinite(p)):
        return None
    return int(np.argmax(p))


def _params(frequency_hz: float, amplitude_ma: float, pulse_width_us: float) -> StimParams | None:
    # zero amplitude is no stimulation: a STOP, not a 0 mA train
    if amplitude_ma <= 0.0:
        return None
    return StimParams(frequency_hz=frequency_hz, amplitude_ma=amplitude_ma, pulse_width_us=pulse_width_us)


# --- dual threshold ---------------------------------------------------------------------------------------------------
class DualThresholdConfig(BiomarkerConfig):
    """`[policy] kind = "dual_threshold"`: below `lower` toward `amplitude_low_ma`, above `upper` toward
    `amplitude_high_ma`, HOLD in between (Percept BrainSense Adaptive "dual threshold", RC+S LD with two
    thresholds). Single threshold: lower = upper."""

    kind: Literal["dual_threshold"] = "dual_threshold"
    # 0: the classifier's top probability does not make a decision "unsure" (the biomarker is read whatever it is;
    # a hold band on a class probability sits where the top probability is low); only a missing output holds
    confidence_threshold: float = Field(0.0, ge=0.0, le=1.0)
    lower: float
    upper: float
    amplitude_low_ma: float = Field(ge=0)
    amplitude_high_ma: float = Field(ge=0)
    frequency_hz: float = Field(gt=0)
    pulse_width_us: float = Field(gt=0)
    onset_ms: float = Field(1200.0, ge=0)  # above upper this long before going high
    termination_ms: float = Field(1200.0, ge=0)  # below lower this long before going low
    blanking_ms: float = Field(2000.0, ge=0)  # no change after a change (Percept DT default 2 s)
    initial: Literal["low", "high"] = "low"
    target_state: int | None = None  # the state closed-loop control aims for (used by the evaluation)

    @model_validator(mode="after")
    def _ordered(self) -> DualThresholdConfig:
        if not (math.isfinite(self.lower) and math.isfinite(self.upper)) or self.lower > self.upper:
            raise ValueError(f"lower ({self.lower}) must be at most upper ({self.upper})")
        if self.amplitude_low_ma > self.amplitude_high_ma:
            raise ValueError(f"amplitude_low_ma ({self.amplitude_low_ma}) is above amplitude_high_ma "
                             f"({self.amplitude_high_ma})")
        return self

    def build(self, table: StimTable) -> DualThresholdPolicy:
        return DualThresholdPolicy(self)

    def gate_requests(self) -> list[StimParams]:
        """The settings this law can ask for (each must pass the gate unclamped; checked at config load)."""
        return [p for a in (self.amplitude_low_ma, self.amplitude_high_ma)
                if (p := _params(self.frequency_hz, a, self.pulse_width_us)) is not None]


class DualThresholdPolicy:
    """Percept/RC+S-style dual-threshold law on an averaged biomarker. Pure; time is the argument.

    The level (low or high) changes only when the biomarker has been on the far side of a threshold without
    interruption — above `upper` for `onset_ms` to go high, below `lower` for `termination_ms` to go low. For
    `blanking_ms` after a change the biomarker is not read at all (averaging and timers start afresh after it).
    Between the thresholds (and without a biomarker) the level holds.
    The desired command is the level's amplitude at the configured frequency and pulse width; the gate ramps to it.
    """

    def __init__(self, cfg: DualThresholdConfig) -> None:
        self.cfg = cfg
        self.biomarker = Biomarker(cfg)
        self.reset()

    @property
    def confidence_threshold(self) -> float:
        return self.cfg.confidence_threshold

    @property
    def level(self) -> Literal["low", "high"]:
        return self._level

    @property
    def value(self) -> float | None:
        """The averaged biomarker at the last step."""
        return self._value

    def bind(self, class_names: Sequence[str] | None, feature_names: Sequence[str] | None) -> None:
        self.biomarker.bind(class_names, feature_names)

    def reset(self) -> None:
        self.biomarker.reset()
        self._level: Literal["low", "high"] = self.cfg.initial
        self._zone: str | None = None
        self._zone_since_s = 0.0
        self._blank_until_s = -math.inf
        self._t_last: float | None = None
        self._value: float | None = None

    def step(self, t_s: float, observation: Observation) -> PolicyDecision:
        t_s = self._advance(t_s)
        changed = False
        if t_s < self._blank_until_s:
            # blanking: the biomarker is not read (the change's own artifact and transient); timers restart after it
            self.biomarker.reset()
            self._zone, self._zone_since_s = None, t_s
            self._value = None
            return self._decision(observation, changed, REASON_BLANKING)
        b = self.biomarker.update(t_s, observation)
        self._value = b
        zone: Literal["low", "high"] | None
        if b is None:
            zone, reason = None, REASON_NO_BIOMARKER
        elif b > self.cfg.upper:
            zone, reason = "high", REASON_ABOVE
        elif b < self.cfg.lower:
            zone, reason = "low", REASON_BELOW
        else:
            zone, reason = None, REASON_HOLD_BAND
        if zone != self._zone:
            self._zone, self._zone_since_s = zone, t_s
        if zone is not None and zone != self._level:
            need_s = (self.cfg.onset_ms if zone == "high" else self.cfg.termination_ms) / 1000.0
            if t_s - self._zone_since_s < need_s - 1e-9:
                reason = REASON_ONSET_PENDING if zone == "high" else REASON_TERMINATION_PENDING
            else:
                self._level = zone
                self._blank_until_s = t_s + self.cfg.blanking_ms / 1000.0
                changed, reason = True, REASON_LEVEL_CHANGE
        return self._decision(observation, changed, reason)

    def _decision(self, observation: Observation, changed: bool, reason: str) -> PolicyDecision:
        amp = self.cfg.amplitude_high_ma if self._level == "high" else self.cfg.amplitude_low_ma
        desired = _params(self.cfg.frequency_hz, amp, self.cfg.pulse_width_us)
        return PolicyDecision(state=_top_class(observation.probs), confidence=_confidence(observation.probs),
                              desired=desired, changed=changed, reason=reason)

    def _advance(self, t_s: float) -> float:
        if self._t_last is None:
            self._t_last = t_s if math.isfinite(t_s) else 0.0
        elif math.isfinite(t_s) and t_s > self._t_last:
            self._t_last = t_s
        return self._t_last


def _confidence(probs: object) -> float:
    if probs is None:
        return 0.0
    p = np.asarray(probs, dtype=np.float64).ravel()
    if p.size == 0 or not np.all(np.isfinite(p)):
        return 0.0
    return float(p.max())


# --- proportional-integral -------------------------------------------------------------------------------------------
class ProportionalConfig(BiomarkerConfig):
    """`[policy] kind = "proportional"`: the output (amplitude or frequency) is a bounded PI of the biomarker's error
    to `setpoint` (error = biomarker − setpoint: above the setpoint, more stimulation), recomputed every `update_ms`,
    with anti-windup by back-calculation toward what the board runs (Fleming, Dunn & Lowery 2020: Kp 0.23, Ti 0.2 s,
    20 ms updates on their model's beta ARV; the gains here are in this biomarker's units)."""

    kind: Literal["proportional"] = "proportional"
    confidence_threshold: float = Field(0.0, ge=0.0, le=1.0)  # 0: as for dual_threshold

    output: Literal["amplitude", "frequency"] = "amplitude"
    setpoint: float
    kp: float = Field(gt=0)  # output units (mA or Hz) per biomarker unit
    ti_s: float | None = Field(0.2, gt=0)  # integral time; None: P only
    tt_s: float | None = Field(None, gt=0)  # back-calculation tracking time; None: ti_s
    update_ms: float = Field(50.0, gt=0, le=60_000.0)
    output_min: float = Field(0.0, ge=0)  # mA or Hz
    output_max: float = Field(gt=0)
    # a hold band on the command (mA or Hz): the command moves only once the PI output is this far from it, or
    # reaches output_min or output_max; 0: every update moves it (each move is a parameter change, a "switch")
    output_step: float = Field(0.0, ge=0)
    frequency_hz: float | None = Field(None, gt=0)  # fixed frequency (output = amplitude)
    amplitude_ma: float | None = Field(None, gt=0)  # fixed amplitude (output = frequency)
    pulse_width_us: float = Field(gt=0)
    target_state: int | None = None  # the state closed-loop control aims for (used by the evaluation)

    @model_validator(mode="after")
    def _coherent(self) -> ProportionalConfig:
        if not math.isfinite(self.setpoint):
            raise ValueError("setpoint must be a finite number")
        if self.output_min > self.output_max:
            raise ValueError(f"output_min ({self.output_min}) is above output_max ({self.output_max})")
        if self.output_step > (self.output_max - self.output_min) / 2:
            raise ValueError(f"output_step ({self.output_step:g}) is more than half the output range "
                             f"[{self.output_min:g}, {self.output_max:g}]: the command could hardly move; use a "
                             f"step of at most {(self.output_max - self.output_min) / 2:g}")
        if self.output == "amplitude" and self.frequency_hz is None:
            raise ValueError("output = \"amplitude\" needs frequency_hz (the fixed frequency)")
        if self.output == "frequency":
            if self.amplitude_ma is None:
                raise ValueError("output = \"frequency\" needs amplitude_ma (the fixed amplitude)")
            if self.output_min <= 0:
                raise ValueError("output = \"frequency\" needs output_min > 0 Hz (below it the law stops)")
        if self.ti_s is not None and self.update_ms / 1000.0 > 2.0 * self.ti_s:
            raise ValueError(f"update_ms ({self.update_ms:g}) is more than twice ti_s ({self.ti_s:g} s): the discrete "
                             f"integral step Kp·update/Ti can then make a loop the P part alone keeps stable "
                             f"oscillate; lower update_ms to at most {2000.0 * self.ti_s:g} or raise ti_s to at "
                             f"least {self.update_ms / 2000.0:g}")
        return self

    def build(self, table: StimTable) -> ProportionalPolicy:
        return ProportionalPolicy(self)

    def command(self, u: float) -> StimParams | None:
        """The command for output value `u` (None: no stimulation)."""
        if self.output == "amplitude":
            assert self.frequency_hz is not None
            return _params(self.frequency_hz, u, self.pulse_width_us)
        assert self.amplitude_ma is not None
        return None if u <= 0 else StimParams(frequency_hz=u, amplitude_ma=self.amplitude_ma,
                                              pulse_width_us=self.pulse_width_us)

    def gate_requests(self) -> list[StimParams]:
        """The extremes this law can ask for (each must pass the gate unclamped; checked at config load)."""
        return [p for u in (self.output_min, self.output_max) if (p := self.command(u)) is not None]


class ProportionalPolicy:
    """A bounded PI law. Every `update_ms`: e = b − setpoint; u = Kp·e + I, clamped to [output_min, output_max];
    I += Δt·Kp/Ti·e + (1 − exp(−Δt/Tt))·(u_run − (Kp·e + I)): back-calculation toward u_run, the clamped u while the
    board runs what the law asked for, else what it runs (the gate's clamp or ramp; output_min when nothing runs, e.g.
    in a safe state), so I cannot wind up against a limit, a ramp or a fault. The tracking term is the exact solution
    over the step (it never overshoots, whatever Δt/Tt); Δt is the time since the last update, at most update_ms
    rounded up to whole decisions. Between updates and without a biomarker the output holds. With `output_step`, the
    command (what the board is asked to run) follows u only once u is that far from it or at a bound: the integral
    goes on tracking u, so the hold band delays a move by at most one step's worth of error, never winds up."""

    def __init__(self, cfg: ProportionalConfig) -> None:
        self.cfg = cfg
        self.biomarker = Biomarker(cfg)
        self.reset()

    @property
    def confidence_threshold(self) -> float:
        return self.cfg.confidence_threshold

    @property
    def output(self) -> float:
        return self._u

    @property
    def integral(self) -> float:
        return self._i

    def bind(self, class_names: Sequence[str] | None, feature_names: Sequence[str] | None) -> None:
        self.biomarker.bind(class_names, feature_names)

    def reset(self) -> None:
        self.biomarker.reset()
        self._i = self.cfg.output_min
        self._u = self.cfg.output_min
        self._u_cmd = self.cfg.output_min  # the output value commanded (u within the hold band of output_step)
        self._t_update: float | None = None
        self._t_last: float | None = None
        self._asked: StimParams | None = None

    def step(self, t_s: float, observation: Observation) -> PolicyDecision:
        t_prev = self._t_last
        t_s = self._advance(t_s)
        tick_s = 0.0 if t_prev is None else t_s - t_prev
        b = self.biomarker.update(t_s, observation)
        reason = REASON_PI_WAIT
        due = self._t_update is None or t_s - self._t_update >= self.cfg.update_ms / 1000.0 - 1e-9
        if b is None:
            reason = REASON_NO_BIOMARKER
        elif due:
            dt_s = 0.0 if self._t_update is None else min(t_s - self._t_update, self._dt_cap_s(tick_s))
            self._t_update = t_s
            cfg = self.cfg
            e = b - cfg.setpoint
            u_raw = cfg.kp * e + self._i
            u = min(max(u_raw, cfg.output_min), cfg.output_max)
            if cfg.ti_s is not None:
                run = self._running(observation.applied, u)
                tt = cfg.tt_s if cfg.tt_s is not None else cfg.ti_s
                # the integral of e over the step, plus the tracking term solved exactly over it: u_raw moves toward
                # u_run by the fraction 1 − exp(−Δt/Tt) (an Euler step, Δt/Tt, overshoots when Δt > Tt and
                # oscillates when Δt > 2·Tt)
                self._i += dt_s * cfg.kp / cfg.ti_s * e + (1.0 - math.exp(-dt_s / tt)) * (run - u_raw)
            else:
                self._i = 0.0
            self._u = u
            at_bound = u in (cfg.output_min, cfg.output_max)
            if abs(u - self._u_cmd) >= cfg.output_step or (at_bound and u != self._u_cmd):
                self._u_cmd = u
            reason = REASON_PI_UPDATE
        # `changed` stays False: the output moves every update, which is no state change (no state_change record)
        desired = self.cfg.command(self._u_cmd)
        self._asked = desired
        return PolicyDecision(state=_top_class(observation.probs), confidence=_confidence(observation.probs),
                              desired=desired, changed=False, reason=reason)

    def _dt_cap_s(self, tick_s: float) -> float:
        """The most time one update integrates: update_ms rounded up to whole decision ticks (the interval an update
        normally spans), so that after a gap without a biomarker the integral gets one update period, not the gap."""
        update_s = self.cfg.update_ms / 1000.0
        if tick_s <= 0.0:
            return update_s
        return tick_s * max(1, math.ceil(update_s / tick_s - 1e-6))

    def _running(self, applied: StimParams | None, u: float) -> float:
        """The output value to track: `u` while the board runs what this law asked for last (within 1 µA or 1 mHz:
        device rounding; the hold band's offset from u is not a limit to track), else what it runs — the gate's
        clamp or ramp, or output_min when nothing runs (a safe state) — never outside the output range."""
        asked = self._asked
        if applied is None and asked is None:
            return u
        if applied is None:
            return self.cfg.output_min
        v = applied.amplitude_ma if self.cfg.output == "amplitude" else applied.frequency_hz
        if asked is not None:
            w = asked.amplitude_ma if self.cfg.output == "amplitude" else asked.frequency_hz
            if abs(v - w) <= 1e-3:
                return u
        return min(max(v, self.cfg.output_min), self.cfg.output_max)

    def _advance(self, t_s: float) -> float:
        if self._t_last is None:
            self._t_last = t_s if math.isfinite(t_s) else 0.0
        elif math.isfinite(t_s) and t_s > self._t_last:
            self._t_last = t_s
        return self._t_last
