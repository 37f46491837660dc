"""One example per safety-gate rule (by its stable name), plus the gate's commit/ramp/dose bookkeeping."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from neurostimd.core import safety as S
from neurostimd.core.safety import (
    K_MAX_CEILING,
    SafetyConfig,
    SafetyGate,
    charge_per_phase_uc,
    limit_violations,
    shannon_k,
)
from neurostimd.drivers.types import BoardLimits, StimParams


def cfg(**kw: object) -> SafetyConfig:
    return SafetyConfig.model_validate(kw)


def ramped(gate: SafetyGate, t_s: float = 0.0) -> SafetyGate:
    """Pretend the board already runs max amplitude, so the ramp does not act in a rule example."""
    gate.commit(t_s, StimParams(10.0, 1000.0, 100.0), acked=True)
    return gate


def p(f: float = 50.0, a: float = 1.0, pw: float = 100.0) -> StimParams:
    return StimParams(frequency_hz=f, amplitude_ma=a, pulse_width_us=pw)


def test_rule_names_are_stable() -> None:
    """The rule names the audit log and docs rely on are exactly these."""
    assert set(S.RULES) == {"invalid", "session_dose", "daily_dose", "frequency_max", "frequency_min",
                            "pulse_width_max", "pulse_width_min", "amplitude_max", "amplitude_min", "board_limit",
                            "period", "charge_per_phase", "charge_density", "shannon_k", "compliance", "ramp"}


def test_frequency_max_clamps() -> None:
    """A frequency above max_frequency_hz is sent at the maximum."""
    r = ramped(SafetyGate(cfg())).apply(0.0, p(f=500.0))
    assert r.applied is not None and r.applied.frequency_hz == 130.0 and r.limited_by == ["frequency_max"]


def test_frequency_min_refuses() -> None:
    """A frequency below min_frequency_hz is refused, never raised."""
    r = ramped(SafetyGate(cfg(min_frequency_hz=5.0))).apply(0.0, p(f=2.0))
    assert r.applied is None and r.refused and r.limited_by == ["frequency_min"]


def test_pulse_width_max_clamps() -> None:
    """A pulse wider than max_pulse_width_us is sent at the maximum width."""
    r = ramped(SafetyGate(cfg(max_pulse_width_us=300.0))).apply(0.0, p(pw=400.0, a=0.5))
    assert r.applied is not None and r.applied.pulse_width_us == 300.0 and r.limited_by == ["pulse_width_max"]


def test_pulse_width_min_refuses() -> None:
    """A pulse narrower than min_pulse_width_us is refused."""
    r = ramped(SafetyGate(cfg())).apply(0.0, p(pw=10.0))
    assert r.applied is None and r.limited_by == ["pulse_width_min"]


def test_amplitude_max_clamps() -> None:
    """An amplitude above max_amplitude_ma is sent at the maximum."""
    r = ramped(SafetyGate(cfg(max_amplitude_ma=2.0))).apply(0.0, p(a=3.0, pw=50.0))
    assert r.applied is not None and r.applied.amplitude_ma == 2.0 and r.limited_by == ["amplitude_max"]


def test_amplitude_min_refuses() -> None:
    """A requested amplitude below min_amplitude_ma is refused."""
    r = ramped(SafetyGate(cfg(min_amplitude_ma=0.5))).apply(0.0, p(a=0.2))
    assert r.applied is None and r.limited_by == ["amplitude_min"]


def test_invalid_request_refused() -> None:
    """A NaN, infinite or negative parameter is refused as invalid, not passed on."""
    gate = ramped(SafetyGate(cfg()))
    for bad in (p(a=math.nan), p(f=math.inf), p(a=-1.0), p(pw=0.0)):
        r = gate.apply(0.0, bad)
        assert r.applied is None and r.limited_by == ["invalid"]


def test_charge_per_phase_cuts_amplitude() -> None:
    """Q = I·PW/1000 above max_charge_per_phase_uc is cut by lowering the amplitude to the limit."""
    c = cfg(electrode_area_cm2=1.0, max_charge_per_phase_uc=1.0)
    r = ramped(SafetyGate(c)).apply(0.0, p(a=4.0, pw=500.0))
    assert r.applied is not None and r.limited_by == ["charge_per_phase"]
    assert charge_per_phase_uc(r.applied.amplitude_ma, 500.0) == pytest.approx(1.0)
    assert charge_per_phase_uc(r.applied.amplitude_ma, 500.0) <= 1.0


def test_charge_density_cuts_amplitude() -> None:
    """Q/A above max_charge_density_uc_cm2 is cut by lowering the amplitude."""
    c = cfg(electrode_area_cm2=0.02, max_charge_per_phase_uc=10.0, k_max=1.85)
    r = ramped(SafetyGate(c)).apply(0.0, p(a=2.0, pw=500.0))  # Q = 1 µC, Q/A = 50 µC/cm²
    assert r.applied is not None and r.limited_by == ["charge_density"]
    assert charge_per_phase_uc(r.applied.amplitude_ma, 500.0) / 0.02 == pytest.approx(25.0)


def test_shannon_k_alone() -> None:
    """With the other charge rules loose, Shannon's k alone sets the amplitude."""
    c = cfg(electrode_area_cm2=1.0, max_amplitude_ma=50.0, max_charge_per_phase_uc=100.0,
            max_charge_density_uc_cm2=100.0, k_max=1.0)
    r = ramped(SafetyGate(c)).apply(0.0, p(a=20.0, pw=200.0, f=20.0))  # Q = 4 µC, k = 1.2
    assert r.applied is not None and r.limited_by == ["shannon_k"]
    assert shannon_k(charge_per_phase_uc(r.applied.amplitude_ma, 200.0), 1.0) == pytest.approx(1.0)


def test_period_lowers_frequency() -> None:
    """A biphasic pulse that does not fit the period (2·PW + IPG ≥ 1/f) is sent at a frequency where it fits."""
    c = cfg(max_frequency_hz=2000.0, electrode_area_cm2=1.0)
    r = ramped(SafetyGate(c)).apply(0.0, p(f=1500.0, pw=400.0, a=0.5))  # 850 µs > 667 µs period
    assert r.applied is not None and r.limited_by == ["period"]
    assert 1e6 / r.applied.frequency_hz > 2 * 400.0 + 50.0
    assert r.applied.frequency_hz == pytest.approx(1e6 / 850.0, rel=1e-5)


def test_period_refuses_when_frequency_would_fall_below_min() -> None:
    """If fitting the pulse needs a frequency below the minimum, the command is refused."""
    c = cfg(max_frequency_hz=2000.0, min_frequency_hz=1500.0, electrode_area_cm2=1.0)
    r = ramped(SafetyGate(c)).apply(0.0, p(f=1500.0, pw=400.0, a=0.5))
    assert r.applied is None and "period" in r.limited_by


def test_compliance_cuts_amplitude_when_impedance_known() -> None:
    """I·Z above compliance_v_max is cut when the board reports impedance, and ignored when it does not."""
    gate = ramped(SafetyGate(cfg(compliance_v_max=10.0)))
    r = gate.apply(0.0, p(a=2.0), impedance_ohm=10_000.0)  # 20 V
    assert r.applied is not None and r.limited_by == ["compliance"]
    assert r.applied.amplitude_ma * 10_000.0 / 1000.0 <= 10.0
    assert gate.apply(0.0, p(a=2.0), impedance_ohm=None).limited_by == []


def test_compliance_open_circuit_gives_zero_current() -> None:
    """An infinite impedance (open circuit) lets no current through."""
    r = ramped(SafetyGate(cfg())).apply(0.0, p(a=2.0), impedance_ohm=math.inf)
    assert r.applied is not None and r.applied.amplitude_ma == 0.0 and r.limited_by == ["compliance"]


def test_board_limit_clamps_and_refuses() -> None:
    """The board's own limits (from the handshake) clamp like the config's, and refuse below its minimums."""
    bl = BoardLimits(min_frequency_hz=2.0, max_frequency_hz=100.0, max_amplitude_ma=2.0, min_pulse_width_us=30.0,
                     max_pulse_width_us=250.0, max_charge_per_phase_uc=0.4, watchdog_ms=250)
    gate = ramped(SafetyGate(cfg(electrode_area_cm2=1.0), bl))
    r = gate.apply(0.0, p(f=120.0, a=3.0, pw=300.0))
    assert r.applied is not None and "board_limit" in r.limited_by
    assert r.applied.frequency_hz == 100.0 and r.applied.pulse_width_us == 250.0
    assert charge_per_phase_uc(r.applied.amplitude_ma, 250.0) <= 0.4
    assert gate.apply(0.0, p(f=1.5)).limited_by == ["board_limit"]


def test_ramp_limits_rise_and_never_delays_fall() -> None:
    """Amplitude rises at most ramp_ma_per_s from what the board runs; it falls, and stops, at once."""
    gate = SafetyGate(cfg(ramp_ma_per_s=1.0, electrode_area_cm2=1.0))
    r0 = gate.apply(0.0, p(a=2.0))
    assert r0.applied is not None and r0.applied.amplitude_ma == 0.0 and r0.limited_by == ["ramp"]
    gate.commit(0.0, r0.applied, acked=True)
    amp = 0.0
    for i in range(1, 41):
        r = gate.apply(i * 0.05, p(a=2.0))
        assert r.applied is not None
        assert r.applied.amplitude_ma <= amp + 0.05 + 1e-12
        amp = r.applied.amplitude_ma
        gate.commit(i * 0.05, r.applied, acked=True)
    assert amp == pytest.approx(2.0)
    down = gate.apply(2.05, p(a=0.1))
    assert down.applied is not None and down.applied.amplitude_ma == 0.1 and down.limited_by == []
    assert gate.apply(2.1, None).applied is None


def test_ramp_base_without_ack_is_the_lower_amplitude() -> None:
    """After an unacknowledged command the ramp continues from the lower of the old and new amplitude."""
    gate = SafetyGate(cfg(ramp_ma_per_s=1.0, electrode_area_cm2=1.0))
    gate.commit(0.0, p(a=1.0), acked=True)
    gate.commit(0.1, p(a=0.2), acked=False)
    assert gate.ramp_base_ma == 0.2
    gate.commit(0.2, p(a=0.9), acked=False)
    assert gate.ramp_base_ma == 0.2


def test_ramp_credit_is_capped_after_a_long_silence() -> None:
    """A long pause between decisions does not allow a big amplitude step."""
    gate = SafetyGate(cfg(ramp_ma_per_s=1.0, electrode_area_cm2=1.0))
    gate.apply(0.0, None)
    r = gate.apply(100.0, p(a=3.0))
    assert r.applied is not None and r.applied.amplitude_ma <= S.RAMP_DT_CAP_S * 1.0


def test_session_dose_refuses_once_spent() -> None:
    """When stimulation-on time reaches max_session_stim_s, further commands are refused."""
    gate = SafetyGate(cfg(max_session_stim_s=10.0, electrode_area_cm2=1.0))
    gate.commit(0.0, p(a=0.5), acked=True)
    assert gate.apply(9.0, p(a=0.5)).applied is not None
    r = gate.apply(10.0, p(a=0.5))
    assert r.applied is None and r.limited_by == ["session_dose"] and gate.session_stim_s == pytest.approx(10.0)


def test_daily_dose_counts_prior_stimulation() -> None:
    """Stimulation delivered earlier today counts toward max_daily_stim_s."""
    gate = SafetyGate(cfg(max_session_stim_s=100.0, max_daily_stim_s=100.0, electrode_area_cm2=1.0),
                      prior_daily_stim_s=95.0)
    gate.commit(0.0, p(a=0.5), acked=True)
    assert gate.apply(4.0, p(a=0.5)).applied is not None
    r = gate.apply(5.0, p(a=0.5))
    assert r.applied is None and r.limited_by == ["daily_dose"]


def test_dose_counts_only_while_stimulating() -> None:
    """Time with the board stopped or at 0 mA does not count as dose."""
    gate = SafetyGate(cfg(electrode_area_cm2=1.0))
    gate.commit(0.0, p(a=0.5), acked=True)
    gate.commit(2.0, None, acked=True)
    gate.apply(10.0, None)
    gate.commit(10.0, p(a=0.0), acked=True)
    gate.apply(20.0, None)
    assert gate.session_stim_s == pytest.approx(2.0)


def test_stop_always_passes() -> None:
    """A stop request passes unchanged even when the dose is spent."""
    gate = SafetyGate(cfg(max_session_stim_s=1.0, electrode_area_cm2=1.0))
    gate.commit(0.0, p(a=0.5), acked=True)
    r = gate.apply(5.0, None)
    assert r.applied is None and not r.refused and r.limited_by == []


def test_gate_uses_configured_interphase_gap() -> None:
    """The gap the board runs is the config's interphase_gap_us."""
    r = ramped(SafetyGate(cfg(interphase_gap_us=80.0))).apply(0.0, StimParams(50.0, 1.0, 100.0, 10.0))
    assert r.applied is not None and r.applied.interphase_gap_us == 80.0


def test_limit_violations_names_every_broken_rule() -> None:
    """The static check names each rule a command breaks."""
    c = cfg()
    assert limit_violations(p(f=50.0, a=5.0, pw=500.0), c) == ["charge_per_phase", "charge_density", "shannon_k"]
    assert limit_violations(p(f=50.0, a=1.0, pw=100.0), c) == []


def test_config_rejects_k_max_above_ceiling() -> None:
    """A config with k_max above 1.85 is rejected."""
    with pytest.raises(ValidationError, match="k_max"):
        cfg(k_max=K_MAX_CEILING + 0.01)
    assert cfg(k_max=K_MAX_CEILING).k_max == K_MAX_CEILING


def test_config_rejects_fallback_outside_envelope() -> None:
    """A fallback that the gate would have to cut is rejected at config time; one that passes is accepted."""
    with pytest.raises(ValidationError, match="fallback"):
        cfg(safe_state="fallback", fallback={"frequency_hz": 100.0, "amplitude_ma": 5.0, "pulse_width_us": 500.0})
    ok = cfg(safe_state="fallback", fallback={"frequency_hz": 20.0, "amplitude_ma": 1.0, "pulse_width_us": 100.0})
    assert ok.fallback is not None
