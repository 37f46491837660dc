"""The safety gate: the last step before the driver. Every command the daemon sends passes through it.

Pure code (no clock, no I/O): time is an input in seconds. The gate is independent of the policy — it has its own
limits (the config's `[safety]` table and the board's own limits) and only ever lowers or stops what it is asked
for; it never raises a parameter above the request, except that a slow ramp down (`ramp_down_ma_per_s`) keeps the
amplitude between what runs and what is asked, never with more charge per phase or charge rate than the larger of
the two. `python -m neurostimd.commands.safety_table --table`
prints the worked table of docs/safety.md from this code.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field, field_validator, model_validator

from neurostimd.core.settings import Strict
from neurostimd.core.stimtable import StimTable
from neurostimd.drivers.types import BoardLimits, StimParams
from neurostimd.errors import SafetyViolation

# Stable rule names: they appear in `limited_by`, the audit log and the docs. Order = the order the gate applies them.

K_MAX_CEILING = 1.85  # Shannon's k above which no config is accepted (docs/design.md, safety model)


class FallbackParams(Strict):
    frequency_hz: float = Field(gt=0)
    amplitude_ma: float = Field(ge=0)
    pulse_width_us: float = Field(gt=0)


FaultAction = Literal["off", "fallback"]
LowConfidenceAction = Literal["hold", "off", "fallback"]


class FaultActions(Strict):
    """`[safety.on_fault]`: what each fault cause does (docs/safety.md, "Fault causes and what they do").

    A data or board cause puts the safe state in force at once: "off" (STOP) or "fallback" (the clinician's
    [safety.fallback] setting); unset, it is [safety] safe_state. Low confidence (and a classifier with no opinion)
    is no data fault: by default it HOLDS what the board runs, for at most `hold_max_s` without interruption, then
    `after_hold` is in force until inputs are clean again. A safe state that has lasted `persist_s` without
    interruption becomes `after_persist` (default "off"; "fallback" only while no cause present is itself set to
    "off"; a new cause restarts the clock). A classifier output that is NaN, infinite or empty is the data fault
    `model_output_invalid`. A board that reports parameters it was not given or is another board, or an audit log
    that cannot be written, is always "off" (not configurable).
    """

    low_confidence: LowConfidenceAction = "hold"
    hold_max_s: float = Field(10.0, gt=0, le=3600.0)
    after_hold: FaultAction = "off"
    # data causes
    no_data: FaultAction | None = None
    stale_data: FaultAction | None = None
    quality: FaultAction | None = None  # every quality_* cause: nan_inf, flatline, saturation, gap, ...
    implausible_signal: FaultAction | None = None
    rate_mismatch: FaultAction | None = None
    # board causes
    board_lost: FaultAction | None = None
    nak: FaultAction | None = None
    missing_ack: FaultAction | None = None
    board_reset: FaultAction | None = None
    model_output_invalid: FaultAction | None = None  # the classifier's output NaN, infinite or empty
    # persistence
    persist_s: float | None = Field(None, gt=0, le=86_400.0)
    after_persist: FaultAction = "off"  # persistence never starts stimulation unless asked to ("fallback")

    def uses_fallback(self) -> list[str]:
        """The keys whose action is the fallback (each needs a [safety.fallback] table)."""
        keys = [k for k, v in self if v == "fallback" and k != "after_persist"]
        if self.persist_s is not None and self.after_persist == "fallback":
            keys.append("after_persist")
        return keys


class SafetyConfig(Strict):
    """The daemon's safety gate. Every limit here is a hard limit: the gate clamps toward it or refuses."""

    electrode_area_cm2: float = Field(0.06, gt=0, description="geometric area of the stimulating contact (cm²), "
                                      "for charge density and the Shannon limit")
    k_max: float = Field(1.75, gt=0, json_schema_extra={"maximum": K_MAX_CEILING},
                         description=f"Shannon's k: log10(Q²/A) with Q in µC/phase and A in cm²; at most "
                                     f"{K_MAX_CEILING} (Shannon 1992)")
    min_frequency_hz: float = Field(1.0, gt=0, description="lowest pulse rate the gate lets through (Hz)")
    max_frequency_hz: float = Field(130.0, gt=0, description="highest pulse rate (Hz); higher requests are clamped")
    min_amplitude_ma: float = Field(0.0, ge=0, description="lowest non-zero amplitude (mA)")
    max_amplitude_ma: float = Field(5.0, ge=0, description="highest amplitude (mA); higher requests are clamped")
    min_pulse_width_us: float = Field(20.0, gt=0, description="shortest phase (µs)")
    max_pulse_width_us: float = Field(500.0, gt=0, description="longest phase (µs)")
    interphase_gap_us: float = Field(50.0, ge=0, description="gap between the two phases of a pulse (µs)")
    ramp_ma_per_s: float = Field(1.0, gt=0, description="old name of ramp_up_ma_per_s (mA/s)")
    ramp_up_ma_per_s: float | None = Field(None, gt=0, description="fastest rise of the amplitude (mA/s); unset: "
                                                                     "ramp_ma_per_s")
    ramp_down_ma_per_s: float | None = Field(None, gt=0, description="fastest fall of the amplitude (mA/s); unset: a "
                                                                       "lower amplitude is sent at once")
    max_charge_per_phase_uc: float = Field(2.0, gt=0, description="charge per phase at most (µC)")
    max_charge_density_uc_cm2: float = Field(25.0, gt=0, description="charge density per phase at most (µC/cm²; "
                                                                       "RNS's 25)")
    compliance_v_max: float = Field(12.0, gt=0, description="the stimulator's voltage compliance (V): amplitude × "
                                                             "electrode impedance must stay below it")
    max_session_stim_s: float = Field(4 * 3600.0, gt=0, description="stimulation time per daemon session at most (s)")
    max_daily_stim_s: float = Field(8 * 3600.0, gt=0, description="stimulation time per calendar day at most (s), "
                                                                   "counted across restarts from the audit log")
    safe_state: Literal["off", "fallback"] = Field("off", description="what a fault puts in force: off, or the "
                                                                      "[safety.fallback] parameters")
    fallback: FallbackParams | None = Field(None, description="the fallback stimulation of safe_state = fallback")
    recovery_clean_ms: float = Field(2000.0, ge=0, description="clean data needed after a fault before stimulation "
                                                               "resumes, ramping (ms)")
    on_fault: FaultActions = Field(default_factory=FaultActions, description="per fault cause: off or fallback")

    @model_validator(mode="before")
    @classmethod
    def _ramp_alias(cls, data: object) -> object:
        # ramp_ma_per_s is the old name of ramp_up_ma_per_s: with only the new name given, the old one follows it, so
        # whatever still reads ramp_ma_per_s (reports, tools) reads the ramp up in force
        if isinstance(data, dict) and data.get("ramp_up_ma_per_s") is not None and "ramp_ma_per_s" not in data:
            data = {**data, "ramp_ma_per_s": data["ramp_up_ma_per_s"]}
        return data

    @property
    def ramp_up_rate_ma_per_s(self) -> float:
        """The ramp up in force: ramp_up_ma_per_s, or its old name ramp_ma_per_s."""
        return self.ramp_up_ma_per_s if self.ramp_up_ma_per_s is not None else self.ramp_ma_per_s

    @field_validator("k_max")
    @classmethod
    def _k_max_ceiling(cls, v: float) -> float:
        if v > K_MAX_CEILING:
            raise ValueError(f"k_max = {v} is above the ceiling {K_MAX_CEILING} (Shannon 1992); "
                             f"lower it to at most {K_MAX_CEILING}")
        return v

    @model_validator(mode="after")
    def _coherent(self) -> SafetyConfig:
        for lo, hi in (("min_frequency_hz", "max_frequency_hz"), ("min_amplitude_ma", "max_amplitude_ma"),
                       ("min_pulse_width_us", "max_pulse_width_us")):
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"{lo} ({getattr(self, lo)}) is above {hi} ({getattr(self, hi)})")
        if self.safe_state == "fallback" and self.fallback is None:
            raise ValueError("safe_state = \"fallback\" needs a [safety.fallback] table "
                             "(frequency_hz, amplitude_ma, pulse_width_us)")
        if self.fallback is not None:
            fb = StimParams(self.fallback.frequency_hz, self.fallback.amplitude_ma, self.fallback.pulse_width_us,
                            self.interphase_gap_us)
            broken = limit_violations(fb, self)
            if broken:
                raise ValueError(f"[safety.fallback] breaks the gate's own rules ({', '.join(broken)}); the safe "
                                 f"state must pass the gate unclamped — lower its amplitude or pulse width")
        if self.ramp_up_ma_per_s is not None and self.ramp_up_ma_per_s != self.ramp_ma_per_s:
            raise ValueError(f"ramp_ma_per_s ({self.ramp_ma_per_s}) is the old name of ramp_up_ma_per_s "
                             f"({self.ramp_up_ma_per_s}); keep only ramp_up_ma_per_s")
        needs = self.on_fault.uses_fallback()
        if needs and self.fallback is None:
            raise ValueError(f"[safety.on_fault] {', '.join(needs)} = \"fallback\" needs a [safety.fallback] table "
                             f"(frequency_hz, amplitude_ma, pulse_width_us), or set them to \"off\"")
        if self.max_session_stim_s > self.max_daily_stim_s:
            raise ValueError("max_session_stim_s is above max_daily_stim_s")
        if not math.isfinite(self.electrode_area_cm2):
            raise ValueError("electrode_area_cm2 must be finite")
        return self


RULE_INVALID = "invalid"
RULE_SESSION_DOSE = "session_dose"
RULE_DAILY_DOSE = "daily_dose"
RULE_FREQUENCY_MAX = "frequency_max"
RULE_FREQUENCY_MIN = "frequency_min"
RULE_PULSE_WIDTH_MAX = "pulse_width_max"
RULE_PULSE_WIDTH_MIN = "pulse_width_min"
RULE_AMPLITUDE_MAX = "amplitude_max"
RULE_AMPLITUDE_MIN = "amplitude_min"
RULE_BOARD_LIMIT = "board_limit"
RULE_PERIOD = "period"
RULE_CHARGE_PER_PHASE = "charge_per_phase"
RULE_CHARGE_DENSITY = "charge_density"
RULE_SHANNON_K = "shannon_k"
RULE_COMPLIANCE = "compliance"
RULE_RAMP = "ramp"
# After the gate, in the controller: the device rounds what the gate let through (core/controller.py)
RULE_DEVICE_ROUNDING = "device_rounding"

RULES: tuple[str, ...] = (
    RULE_INVALID, RULE_SESSION_DOSE, RULE_DAILY_DOSE, RULE_FREQUENCY_MAX, RULE_FREQUENCY_MIN, RULE_PULSE_WIDTH_MAX,
    RULE_PULSE_WIDTH_MIN, RULE_AMPLITUDE_MAX, RULE_AMPLITUDE_MIN, RULE_BOARD_LIMIT, RULE_PERIOD,
    RULE_CHARGE_PER_PHASE, RULE_CHARGE_DENSITY, RULE_SHANNON_K, RULE_COMPLIANCE, RULE_RAMP,
)

# The ramp credits at most this much time per decision: after a long silence (loop stalled, gate just created) an
# amplitude step must still be small, not r × (the whole silence).
RAMP_DT_CAP_S = 1.0
# Caps are shaded by this relative margin so that recomputing Q, Q/A, k or I·Z from the clamped amplitude never
# lands a rounding error above the limit.
_MARGIN = 1e-9
_DAY_S = 86_400.0


def charge_per_phase_uc(amplitude_ma: float, pulse_width_us: float) -> float:
    """Q [µC] = I [mA] · PW [µs] / 1000."""
    return amplitude_ma * pulse_width_us / 1000.0


def shannon_k(charge_uc: float, area_cm2: float) -> float:
    """Shannon's k = log10(Q/A) + log10(Q) (Q in µC/phase, A in cm²); -inf for zero charge."""
    if charge_uc <= 0:
        return -math.inf
    # Written as 2·log10(Q) − log10(A): the same value, but Q/A cannot underflow to 0 for a tiny charge.
    return 2.0 * math.log10(charge_uc) - math.log10(area_cm2)


def max_charge_uc(cfg: SafetyConfig, board_limits: BoardLimits | None = None) -> tuple[float, str]:
    """The largest charge per phase every charge rule allows, and the rule that sets it."""
    caps = [
        (cfg.max_charge_per_phase_uc, RULE_CHARGE_PER_PHASE),
        (cfg.max_charge_density_uc_cm2 * cfg.electrode_area_cm2, RULE_CHARGE_DENSITY),
        # k ≤ k_max  ⇔  log10(Q²/A) ≤ k_max  ⇔  Q ≤ sqrt(A · 10^k_max)
        (math.sqrt(cfg.electrode_area_cm2 * 10.0 ** cfg.k_max), RULE_SHANNON_K),
    ]
    if board_limits is not None:
        caps.append((board_limits.max_charge_per_phase_uc, RULE_BOARD_LIMIT))
    return min(caps, key=lambda c: c[0])


def limit_violations(p: StimParams, cfg: SafetyConfig, *, board_limits: BoardLimits | None = None,
                     impedance_ohm: float | None = None, check_amplitude_min: bool = True) -> list[str]:
    """The names of the static rules `p` breaks (empty when it is inside the envelope).

    Static = everything but the ramp and the dose, which depend on history. The gate runs this on its own output
    as a last self-check, and the config runs it on the fallback parameters.
    """
    bad: list[str] = []
    values = (p.frequency_hz, p.amplitude_ma, p.pulse_width_us, p.interphase_gap_us)
    if not all(math.isfinite(v) for v in values) or p.frequency_hz <= 0 or p.pulse_width_us <= 0 \
            or p.amplitude_ma < 0 or p.interphase_gap_us < 0:
        return [RULE_INVALID]
    if p.frequency_hz > cfg.max_frequency_hz:
        bad.append(RULE_FREQUENCY_MAX)
    if p.frequency_hz < cfg.min_frequency_hz:
        bad.append(RULE_FREQUENCY_MIN)
    if p.pulse_width_us > cfg.max_pulse_width_us:
        bad.append(RULE_PULSE_WIDTH_MAX)
    if p.pulse_width_us < cfg.min_pulse_width_us:
        bad.append(RULE_PULSE_WIDTH_MIN)
    if p.amplitude_ma > cfg.max_amplitude_ma:
        bad.append(RULE_AMPLITUDE_MAX)
    if check_amplitude_min and p.amplitude_ma < cfg.min_amplitude_ma:
        bad.append(RULE_AMPLITUDE_MIN)
    q_uc = charge_per_phase_uc(p.amplitude_ma, p.pulse_width_us)
    if board_limits is not None and (
            p.frequency_hz > board_limits.max_frequency_hz or p.frequency_hz < board_limits.min_frequency_hz
            or p.amplitude_ma > board_limits.max_amplitude_ma or p.pulse_width_us > board_limits.max_pulse_width_us
            or p.pulse_width_us < board_limits.min_pulse_width_us or q_uc > board_limits.max_charge_per_phase_uc):
        bad.append(RULE_BOARD_LIMIT)
    if 2.0 * p.pulse_width_us + p.interphase_gap_us >= 1e6 / p.frequency_hz:
        bad.append(RULE_PERIOD)
    if q_uc > cfg.max_charge_per_phase_uc:
        bad.append(RULE_CHARGE_PER_PHASE)
    if q_uc / cfg.electrode_area_cm2 > cfg.max_charge_density_uc_cm2:
        bad.append(RULE_CHARGE_DENSITY)
    if shannon_k(q_uc, cfg.electrode_area_cm2) > cfg.k_max:
        bad.append(RULE_SHANNON_K)
    if impedance_ohm is not None and _usable_impedance(impedance_ohm) \
            and p.amplitude_ma * impedance_ohm / 1000.0 > cfg.compliance_v_max:
        bad.append(RULE_COMPLIANCE)
    return bad


def _usable_impedance(z_ohm: float) -> bool:
    # +inf (open circuit) is meaningful: no current can be driven. NaN or a negative reading is not a measurement.
    return not math.isnan(z_ohm) and z_ohm >= 0


@dataclass(frozen=True)
class GateResult:
    """What the gate lets through. `applied` None means: stop (no stimulation)."""

    applied: StimParams | None
    limited_by: list[str]
    refused: bool


@dataclass
class _Dose:
    """Stimulation-on time: the whole session, and the trailing 24 h as intervals of gate time."""

    session_s: float = 0.0
    prior_daily_s: float = 0.0
    prior_until_s: float = _DAY_S
    intervals: deque[list[float]] = field(default_factory=deque)

    def add(self, t0: float, t1: float) -> None:
        if t1 <= t0:
            return
        self.session_s += t1 - t0
        if self.intervals and self.intervals[-1][1] >= t0:
            self.intervals[-1][1] = max(self.intervals[-1][1], t1)
        else:
            self.intervals.append([t0, t1])

    def daily_s(self, t: float) -> float:
        lo = t - _DAY_S
        while self.intervals and self.intervals[0][1] <= lo:
            self.intervals.popleft()
        used = sum(b - max(a, lo) for a, b in self.intervals)
        return used + (self.prior_daily_s if t < self.prior_until_s else 0.0)


class SafetyGate:
    """Clamps or refuses each requested command against the safety envelope; names the rules that acted.

    Call `apply` once per decision (also when the request is None) and `commit` after every send attempt with what
    the board actually runs: the ramp starts from it and the dose counts it. Amplitude ramps up at most
    `ramp_up_ma_per_s` (old name `ramp_ma_per_s`); it goes down at once, or at most `ramp_down_ma_per_s` while
    stimulation continues when that is set (never with more charge per phase or charge rate than the larger of what
    runs and what is asked). A STOP is never delayed.

    `prior_daily_stim_s` is stimulation already delivered today before this gate existed (e.g. summed from the
    audit log by the loop); it counts toward the daily dose for the first 24 h of gate time.
    """

    def __init__(self, cfg: SafetyConfig, board_limits: BoardLimits | None = None, *,
                 prior_daily_stim_s: float = 0.0) -> None:
        if board_limits is not None and board_limits.problems():
            # The driver refuses such a board at the handshake; the gate does not rely on that.
            raise SafetyViolation(f"board limits are unusable ({'; '.join(board_limits.problems())}); the gate will "
                                  f"not work with them")
        self.cfg = cfg
        self.board_limits = board_limits
        self._prior_daily_stim_s = max(0.0, prior_daily_stim_s)
        self.reset()

    def reset(self) -> None:
        """Forget history: nothing runs, no dose delivered in this session (prior daily dose kept)."""
        self._t_last_apply: float | None = None
        self._t_clock: float | None = None  # latest time seen, for dose accounting
        self._ramp_base_ma = 0.0  # the lowest amplitude the board may be running
        # the lowest charge per phase [µC] and charge rate [µC/s] the board may be running (bounds a slow ramp down)
        self._run_charge_uc = 0.0
        self._run_rate_uc_per_s = 0.0
        self._dose_running = False  # whether the board may be stimulating (amplitude > 0)
        self._dose = _Dose(prior_daily_s=self._prior_daily_stim_s)

    def carry_over(self, old: SafetyGate, t_s: float, running: StimParams | None) -> None:
        """Take over `old`'s dose history (session and daily) and ramp from what the board runs now: a config
        reload must not reset the session dose or let the amplitude jump."""
        self._dose = old._dose
        self.commit(t_s, running, True)

    # --- observers -------------------------------------------------------------------------------------------------
    @property
    def session_stim_s(self) -> float:
        return self._dose.session_s

    def daily_stim_s(self, t_s: float) -> float:
        return self._dose.daily_s(t_s)

    @property
    def ramp_base_ma(self) -> float:
        return self._ramp_base_ma

    # --- the gate --------------------------------------------------------------------------------------------------
    def clamp_static(self, requested: StimParams, *, impedance_ohm: float | None = None
                     ) -> tuple[StimParams | None, list[str]]:
        """Every rule that does not depend on history (all but ramp and dose); returns (params or None, rules)."""
        cfg, bl = self.cfg, self.board_limits
        rules: list[str] = []
        f, a, pw = requested.frequency_hz, requested.amplitude_ma, requested.pulse_width_us
        if not all(math.isfinite(v) for v in (f, a, pw, requested.interphase_gap_us)) or f <= 0 or pw <= 0 or a < 0:
            return None, [RULE_INVALID]
        # Below a minimum the gate refuses rather than raising the parameter: it never gives more than was asked.
        if f < cfg.min_frequency_hz:
            return None, [RULE_FREQUENCY_MIN]
        if pw < cfg.min_pulse_width_us:
            return None, [RULE_PULSE_WIDTH_MIN]
        if a < cfg.min_amplitude_ma:
            return None, [RULE_AMPLITUDE_MIN]
        if bl is not None and (f < bl.min_frequency_hz or pw < bl.min_pulse_width_us):
            return None, [RULE_BOARD_LIMIT]
        if f > cfg.max_frequency_hz:
            f = cfg.max_frequency_hz
            rules.append(RULE_FREQUENCY_MAX)
        if pw > cfg.max_pulse_width_us:
            pw = cfg.max_pulse_width_us
            rules.append(RULE_PULSE_WIDTH_MAX)
        if a > cfg.max_amplitude_ma:
            a = cfg.max_amplitude_ma
            rules.append(RULE_AMPLITUDE_MAX)
        if bl is not None and (f > bl.max_frequency_hz or pw > bl.max_pulse_width_us or a > bl.max_amplitude_ma):
            f, pw, a = min(f, bl.max_frequency_hz), min(pw, bl.max_pulse_width_us), min(a, bl.max_amplitude_ma)
            rules.append(RULE_BOARD_LIMIT)
        ipg = cfg.interphase_gap_us
        # Biphasic pulse must fit the period: 2·PW + IPG < 1/f. Lowering f keeps the charge per phase unchanged.
        if 2.0 * pw + ipg >= 1e6 / f:
            f = 1e6 / (2.0 * pw + ipg) * (1.0 - 1e-6)
            rules.append(RULE_PERIOD)
            if f < cfg.min_frequency_hz or (bl is not None and f < bl.min_frequency_hz):
                return None, rules
        # Charge rules: reducing the amplitude is the natural clamp (charge scales with it, the timing stays).
        caps = [
            (RULE_CHARGE_PER_PHASE, cfg.max_charge_per_phase_uc * 1000.0 / pw),
            (RULE_CHARGE_DENSITY, cfg.max_charge_density_uc_cm2 * cfg.electrode_area_cm2 * 1000.0 / pw),
            (RULE_SHANNON_K, math.sqrt(cfg.electrode_area_cm2 * 10.0 ** cfg.k_max) * 1000.0 / pw),
        ]
        if bl is not None:
            caps.append((RULE_BOARD_LIMIT, bl.max_charge_per_phase_uc * 1000.0 / pw))
        if impedance_ohm is not None and _usable_impedance(impedance_ohm) and impedance_ohm > 0:
            caps.append((RULE_COMPLIANCE, cfg.compliance_v_max * 1000.0 / impedance_ohm))
        for rule, cap_ma in caps:
            if a > cap_ma:
                a = cap_ma * (1.0 - _MARGIN)
                if rule not in rules:
                    rules.append(rule)
        return StimParams(frequency_hz=f, amplitude_ma=a, pulse_width_us=pw, interphase_gap_us=ipg), rules

    def apply(self, t_s: float, requested: StimParams | None, *, impedance_ohm: float | None = None,
              ramp_down: bool = True) -> GateResult:
        """Clamp or refuse `requested` at time `t_s`; None (stop) always passes unchanged.

        With `ramp_down_ma_per_s` set, a lower amplitude while stimulation continues comes down at most at that rate
        (never above what ran, never above a static limit); `ramp_down=False` (the safe state) and a STOP go down at
        once."""
        t_s = self._advance(t_s)
        dt_s = 0.0 if self._t_last_apply is None else min(RAMP_DT_CAP_S, max(0.0, t_s - self._t_last_apply))
        self._t_last_apply = t_s
        if requested is None:
            return GateResult(applied=None, limited_by=[], refused=False)
        if self._dose.session_s >= self.cfg.max_session_stim_s:
            return GateResult(applied=None, limited_by=[RULE_SESSION_DOSE], refused=True)
        if self._dose.daily_s(t_s) >= self.cfg.max_daily_stim_s:
            return GateResult(applied=None, limited_by=[RULE_DAILY_DOSE], refused=True)
        params, rules = self.clamp_static(requested, impedance_ohm=impedance_ohm)
        if params is None:
            return GateResult(applied=None, limited_by=rules, refused=True)
        ramp_cap_ma = self._ramp_base_ma + self.cfg.ramp_up_rate_ma_per_s * dt_s
        if params.amplitude_ma > ramp_cap_ma:
            params = StimParams(params.frequency_hz, ramp_cap_ma, params.pulse_width_us, params.interphase_gap_us)
            rules.append(RULE_RAMP)
        elif ramp_down and self.cfg.ramp_down_ma_per_s is not None and self._ramp_base_ma > 0.0:
            params, rules = self._ramp_down(params, rules, dt_s, impedance_ohm)
        # Last word: the output is checked against the rules themselves, not against the clamping arithmetic.
        broken = limit_violations(params, self.cfg, board_limits=self.board_limits, impedance_ohm=impedance_ohm,
                                  check_amplitude_min=False)
        if broken:
            return GateResult(applied=None, limited_by=rules + [r for r in broken if r not in rules], refused=True)
        return GateResult(applied=params, limited_by=rules, refused=False)

    def _ramp_down(self, params: StimParams, rules: list[str], dt_s: float, impedance_ohm: float | None
                   ) -> tuple[StimParams, list[str]]:
        """A decrease of amplitude limited to ramp_down_ma_per_s · Δt below what the board runs (the ramp base);
        the slower amplitude is clamped by the static rules again (a new pulse width may allow less).

        With a new pulse width or frequency the slowed amplitude could deliver more charge than either command (3 mA
        at 60 µs running, 1 mA at 200 µs asked: 2.9 mA at 200 µs is three times either): the slowed command's charge
        per phase and charge rate are capped at the larger of what runs and what is asked, so a ramp down never
        gives more of either than one of the two commands; where that cap leaves no room the request goes at once."""
        rate = self.cfg.ramp_down_ma_per_s
        assert rate is not None
        floor_ma = self._ramp_base_ma - rate * dt_s
        if params.amplitude_ma >= floor_ma:
            return params, rules
        q_req = charge_per_phase_uc(params.amplitude_ma, params.pulse_width_us)
        q_cap = max(self._run_charge_uc, q_req)
        rate_cap = max(self._run_rate_uc_per_s, q_req * params.frequency_hz)
        cap_ma = min(q_cap, rate_cap / params.frequency_hz) * 1000.0 / params.pulse_width_us
        if floor_ma > cap_ma:
            floor_ma = cap_ma * (1.0 - _MARGIN)
        if floor_ma <= params.amplitude_ma:
            return params, rules
        slowed, more = self.clamp_static(
            StimParams(params.frequency_hz, floor_ma, params.pulse_width_us, params.interphase_gap_us),
            impedance_ohm=impedance_ohm)
        if slowed is None or slowed.amplitude_ma <= params.amplitude_ma:
            return params, rules
        return slowed, rules + [r for r in [*more, RULE_RAMP] if r not in rules]

    def commit(self, t_s: float, applied: StimParams | None, acked: bool) -> None:
        """Record a send attempt: `applied` was sent (None = STOP) and the board did (acked) or may not have run it.

        Without an ACK the board may run either the old or the new command, so the ramp continues from the lower
        amplitude and the dose counts stimulation if either stimulates.
        """
        t_s = self._advance(t_s)
        new_ma = 0.0 if applied is None else applied.amplitude_ma
        new_on = new_ma > 0
        new_q = 0.0 if applied is None else charge_per_phase_uc(applied.amplitude_ma, applied.pulse_width_us)
        new_rate = 0.0 if applied is None else new_q * applied.frequency_hz
        if acked:
            self._ramp_base_ma = new_ma
            self._run_charge_uc, self._run_rate_uc_per_s = new_q, new_rate
            self._dose_running = new_on
        else:
            self._ramp_base_ma = min(self._ramp_base_ma, new_ma)
            self._run_charge_uc = min(self._run_charge_uc, new_q)
            self._run_rate_uc_per_s = min(self._run_rate_uc_per_s, new_rate)
            self._dose_running = self._dose_running or new_on

    def _advance(self, t_s: float) -> float:
        # Time never runs backwards here: a non-monotonic input is treated as "no time passed" (no ramp credit).
        if not math.isfinite(t_s):
            t_s = self._t_clock if self._t_clock is not None else 0.0
        if self._t_clock is None:
            self._t_clock = t_s
            self._dose.prior_until_s = t_s + _DAY_S
        elif t_s > self._t_clock:
            if self._dose_running:
                self._dose.add(self._t_clock, t_s)
            self._t_clock = t_s
        return self._t_clock


# --- offline evaluation: the worked table and the startup check -------------------------------------------------------
@dataclass(frozen=True)
class TableRow:
    state: int
    name: str
    area_cm2: float
    requested: StimParams
    charge_uc: float
    density_uc_cm2: float
    k: float
    breaks: list[str]  # the static rules the request itself breaks
    sent: StimParams | None
    limited_by: list[str]  # the rules that acted, in the gate's order (an earlier cut can make a later rule moot)


def evaluate_table(cfg: SafetyConfig, table: StimTable, *, areas_cm2: Sequence[float] | None = None,
                   board_limits: BoardLimits | None = None) -> list[TableRow]:
    """For each state (and each electrode area): the request's Q, Q/A, k and what the gate sends once ramped."""
    rows = []
    for area in (areas_cm2 if areas_cm2 is not None else [cfg.electrode_area_cm2]):
        area_cfg = cfg.model_copy(update={"electrode_area_cm2": float(area)})
        gate = SafetyGate(area_cfg, board_limits)
        for s in table.states:
            req = StimParams(s.frequency_hz, s.amplitude_ma, s.pulse_width_us, cfg.interphase_gap_us)
            q = charge_per_phase_uc(s.amplitude_ma, s.pulse_width_us)
            sent, rules = gate.clamp_static(req)
            rows.append(TableRow(state=s.state, name=s.name, area_cm2=float(area), requested=req, charge_uc=q,
                                 density_uc_cm2=q / area, k=shannon_k(q, area),
                                 breaks=limit_violations(req, area_cfg, board_limits=board_limits),
                                 sent=sent, limited_by=rules))
    return rows


def table_warnings(cfg: SafetyConfig, table: StimTable, board_limits: BoardLimits | None = None) -> list[str]:
    """One line per table state the gate will cut or refuse with this config (for a warning at startup)."""
    out = []
    for r in evaluate_table(cfg, table, board_limits=board_limits):
        if not r.limited_by:
            continue
        if r.sent is None:
            what = "refused (no stimulation)"
        else:
            what = (f"sent as {r.sent.frequency_hz:g} Hz, {r.sent.amplitude_ma:.3f} mA, "
                    f"{r.sent.pulse_width_us:g} µs")
        out.append(f"state {r.state} ({r.name}): {r.requested.frequency_hz:g} Hz, {r.requested.amplitude_ma:g} mA, "
                   f"{r.requested.pulse_width_us:g} µs (Q = {r.charge_uc:.3g} µC, k = {r.k:.2f}) is {what} "
                   f"by {', '.join(r.limited_by)}")
    return out


def table_markdown(rows: Sequence[TableRow]) -> str:
    """The worked table of docs/safety.md as markdown."""
    lines = [
        "| state | area (cm²) | requested f / I / PW | Q (µC) | Q/A (µC/cm²) | k | request breaks | "
        "gate sends f / I / PW | sent Q (µC) | sent Q/A | sent k | rules that act |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        req = f"{r.requested.frequency_hz:g} Hz / {r.requested.amplitude_ma:g} mA / {r.requested.pulse_width_us:g} µs"
        if r.sent is None:
            sent, sq, sd, sk = "refused (off)", "—", "—", "—"
        else:
            q = charge_per_phase_uc(r.sent.amplitude_ma, r.sent.pulse_width_us)
            sent = f"{r.sent.frequency_hz:g} Hz / {r.sent.amplitude_ma:.3f} mA / {r.sent.pulse_width_us:g} µs"
            sq, sd, sk = f"{q:.3f}", f"{q / r.area_cm2:.2f}", f"{shannon_k(q, r.area_cm2):.2f}"
        breaks, acted = ", ".join(r.breaks) or "none", ", ".join(r.limited_by) or "none"
        lines.append(f"| {r.state} ({r.name}) | {r.area_cm2:g} | {req} | {r.charge_uc:.3f} | {r.density_uc_cm2:.2f} "
                     f"| {r.k:.2f} | {breaks} | {sent} | {sq} | {sd} | {sk} | {acted} |")
    return "\n".join(lines) + "\n"
