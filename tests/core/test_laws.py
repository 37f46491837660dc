"""The biomarker laws (core/laws.py): dual threshold's hold band, onset/termination/blanking timing, and the PI's step
response, update period, output bounds and anti-windup; the biomarker's terms and names."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from neurostimd.core.laws import Biomarker, BiomarkerConfig, DualThresholdConfig, ProportionalConfig
from neurostimd.core.policy import Observation
from neurostimd.core.stimtable import notebook_table
from neurostimd.drivers.types import StimParams
from neurostimd.errors import ConfigError


def probs(p1: float) -> np.ndarray:
    """A 3-class output whose class-1 probability is `p1` (the rest split evenly)."""
    rest = (1.0 - p1) / 2.0
    return np.array([rest, p1, rest])


def dual(**kw: Any) -> Any:
    base: dict[str, Any] = {"biomarker": "p:1", "lower": 0.3, "upper": 0.7, "amplitude_low_ma": 0.5,
                            "amplitude_high_ma": 2.0, "frequency_hz": 130.0, "pulse_width_us": 60.0,
                            "onset_ms": 0.0, "termination_ms": 0.0, "blanking_ms": 0.0}
    base.update(kw)
    return DualThresholdConfig.model_validate(base).build(notebook_table())


def pi(**kw: Any) -> Any:
    base: dict[str, Any] = {"biomarker": "p:1", "setpoint": 0.5, "kp": 2.0, "ti_s": None, "update_ms": 50.0,
                            "output_min": 0.0, "output_max": 3.0, "frequency_hz": 130.0, "pulse_width_us": 60.0}
    base.update(kw)
    return ProportionalConfig.model_validate(base).build(notebook_table())


def amp(d: Any) -> float:
    return 0.0 if d.desired is None else d.desired.amplitude_ma


# --- dual threshold ---------------------------------------------------------------------------------------------------
def test_dual_threshold_goes_high_above_upper_low_below_lower_and_holds_between() -> None:
    """Above `upper` the law asks for the high amplitude, below `lower` the low one, and in the band it keeps the
    level it has (from both sides)."""
    pol = dual()
    assert amp(pol.step(0.0, Observation(probs(0.5)))) == 0.5  # initial level: low
    assert amp(pol.step(0.05, Observation(probs(0.8)))) == 2.0
    assert amp(pol.step(0.10, Observation(probs(0.5)))) == 2.0  # hold band: stays high
    assert pol.step(0.10, Observation(probs(0.5))).reason == "hold_band"
    assert amp(pol.step(0.15, Observation(probs(0.2)))) == 0.5
    assert amp(pol.step(0.20, Observation(probs(0.6)))) == 0.5  # hold band: stays low


def test_dual_threshold_onset_and_termination_need_uninterrupted_time() -> None:
    """Going high needs onset_ms above upper without interruption (a dip into the band restarts it); going low needs
    termination_ms below lower."""
    pol = dual(onset_ms=1000.0, termination_ms=2000.0)
    pol.step(0.0, Observation(probs(0.9)))
    assert pol.step(0.95, Observation(probs(0.9))).reason == "onset_pending"
    pol.step(1.0, Observation(probs(0.5)))  # interruption
    pol.step(1.05, Observation(probs(0.9)))
    assert amp(pol.step(2.0, Observation(probs(0.9)))) == 0.5
    d = pol.step(2.05, Observation(probs(0.9)))
    assert amp(d) == 2.0 and d.changed and d.reason == "level_change"
    pol.step(3.0, Observation(probs(0.1)))
    assert amp(pol.step(4.95, Observation(probs(0.1)))) == 2.0
    assert amp(pol.step(5.0, Observation(probs(0.1)))) == 0.5


def test_dual_threshold_blanking_ignores_the_biomarker_after_a_change() -> None:
    """For blanking_ms after a change the biomarker is not read: a crossing during blanking does not count, and the
    onset timer starts after blanking ends."""
    pol = dual(onset_ms=500.0, termination_ms=500.0, blanking_ms=2000.0)
    pol.step(0.0, Observation(probs(0.9)))
    assert pol.step(0.5, Observation(probs(0.9))).changed  # high at 0.5 s, blanking until 2.5 s
    for t in (0.6, 1.5, 2.4):
        d = pol.step(t, Observation(probs(0.0)))
        assert d.reason == "blanking" and amp(d) == 2.0
    pol.step(2.5, Observation(probs(0.0)))
    assert amp(pol.step(2.95, Observation(probs(0.0)))) == 2.0
    assert amp(pol.step(3.0, Observation(probs(0.0)))) == 0.5


def test_dual_threshold_without_a_biomarker_holds_its_level() -> None:
    """No classifier output (or a NaN one) changes nothing: the level in force is kept."""
    pol = dual()
    pol.step(0.0, Observation(probs(0.9)))
    for t, p in ((0.05, None), (0.1, np.array([np.nan, 0.5, 0.5]))):
        d = pol.step(t, Observation(p))
        assert d.reason == "no_biomarker" and amp(d) == 2.0


def test_dual_threshold_averages_over_averaging_ms() -> None:
    """With averaging_ms the law reads the boxcar mean: one high window among low ones does not cross upper."""
    pol = dual(averaging_ms=500.0)
    for i in range(10):
        pol.step(i * 0.05, Observation(probs(0.2)))
    d = pol.step(0.5, Observation(probs(1.0)))
    assert amp(d) == 0.5 and pol.value == pytest.approx((9 * 0.2 + 1.0) / 10)


def test_dual_threshold_single_threshold_and_zero_low_amplitude_stops() -> None:
    """lower = upper is a single threshold; a low amplitude of 0 mA asks for no stimulation (a STOP)."""
    pol = dual(lower=0.5, upper=0.5, amplitude_low_ma=0.0)
    assert pol.step(0.0, Observation(probs(0.4))).desired is None
    assert amp(pol.step(0.05, Observation(probs(0.6)))) == 2.0
    assert pol.step(0.1, Observation(probs(0.4))).desired is None


def test_dual_threshold_settings_are_checked() -> None:
    """lower above upper, low above high amplitude, or no biomarker at all are refused with the field named."""
    for bad, word in (({"lower": 0.8}, "lower"), ({"amplitude_low_ma": 3.0}, "amplitude_low_ma"),
                      ({"biomarker": None}, "exactly one"), ({"biomarker": "q:1"}, "neither")):
        with pytest.raises(ValidationError, match=word):
            dual(**bad)


# --- biomarker ----------------------------------------------------------------------------------------------------
def test_biomarker_linear_combination_of_classes_and_features_by_name() -> None:
    """A weighted sum of a class probability (by name) and a feature (by name) plus offset, resolved by bind."""
    bm = Biomarker(BiomarkerConfig(weights={"p:pathological": 2.0, "feature:c1:beta": -1.0}, offset=0.5))
    bm.bind(["quiet", "activated", "pathological"], ["c0:beta", "c1:beta"])
    obs = Observation(np.array([0.1, 0.2, 0.7]), features=np.array([3.0, 1.5]))
    assert bm.read(obs) == pytest.approx(0.5 + 2.0 * 0.7 - 1.5)
    assert bm.read(Observation(np.array([0.1, 0.2, 0.7]))) is None  # the feature is missing


def test_biomarker_names_the_model_does_not_have_are_a_config_error() -> None:
    """An unknown class or feature name is refused at bind (when the loop builds the policy), listing what exists."""
    with pytest.raises(ConfigError, match=r"no class 'seizure'.*quiet"):
        Biomarker(BiomarkerConfig(biomarker="p:seizure")).bind(["quiet", "activated"], [])
    with pytest.raises(ConfigError, match=r"no feature 'x'.*c0:beta"):
        Biomarker(BiomarkerConfig(biomarker="feature:x")).bind(["quiet"], ["c0:beta"])


# --- proportional -------------------------------------------------------------------------------------------------
def test_p_law_output_is_kp_times_error_clamped_to_its_bounds() -> None:
    """P only: amplitude = kp · (b − setpoint), inside [output_min, output_max]; at or below 0 mA it stops."""
    pol = pi(kp=2.0, output_max=1.5)
    assert amp(pol.step(0.0, Observation(probs(0.8)))) == pytest.approx(0.6)
    assert amp(pol.step(0.05, Observation(probs(1.0)))) == pytest.approx(1.0)
    pol2 = pi(kp=10.0, output_max=1.5)
    assert amp(pol2.step(0.0, Observation(probs(1.0)))) == 1.5
    assert pol2.step(0.05, Observation(probs(0.2))).desired is None


def test_pi_recomputes_only_every_update_ms() -> None:
    """Between updates the output holds; the first tick at or after update_ms recomputes it."""
    pol = pi(update_ms=200.0)
    pol.step(0.0, Observation(probs(0.8)))
    assert amp(pol.step(0.1, Observation(probs(1.0)))) == pytest.approx(0.6)
    assert pol.step(0.15, Observation(probs(1.0))).reason == "pi_wait"
    assert amp(pol.step(0.2, Observation(probs(1.0)))) == pytest.approx(1.0)


def plant_run(pol: Any, *, b0: float, gain: float, steps: int, cap_ma: float | None = None) -> list[float]:
    """A first-order plant b = b0 − gain·u (u: the amplitude that runs, optionally capped like a gate): the PI's
    closed-loop biomarker trace."""
    trace = []
    applied: StimParams | None = None
    u = 0.0
    for i in range(steps):
        b = b0 - gain * u
        trace.append(b)
        d = pol.step(i * 0.05, Observation(probs(min(max(b, 0.0), 1.0)), applied=applied))
        want = amp(d)
        u = want if cap_ma is None else min(want, cap_ma)
        applied = None if u <= 0 else StimParams(130.0, u, 60.0)
    return trace


def test_pi_step_response_reaches_the_setpoint_where_p_alone_leaves_an_offset() -> None:
    """On a first-order plant the PI (Fleming's Ti = 0.2 s) brings the biomarker to its setpoint; P alone with the same
    Kp settles with a steady-state error."""
    with_i = plant_run(pi(kp=0.5, ti_s=0.2, setpoint=0.4), b0=0.9, gain=0.3, steps=400)
    p_only = plant_run(pi(kp=0.5, ti_s=None, setpoint=0.4), b0=0.9, gain=0.3, steps=400)
    assert abs(with_i[-1] - 0.4) < 0.005
    assert p_only[-1] - 0.4 > 0.05


def test_pi_output_step_is_a_hold_band_on_the_command() -> None:
    """With output_step the command moves only once the PI output is that far from it (or at a bound): on the
    first-order plant the law asks for far fewer distinct amplitudes (each a switch), every move is at least a
    step unless it reaches a bound, and the biomarker still settles within the band's worth of error."""
    def moves(pol: Any) -> tuple[list[float], list[float]]:
        applied: StimParams | None = None
        u, cmds, trace = 0.0, [], []
        for i in range(800):
            b = 0.9 - 0.3 * u + 0.02 * math.sin(i / 7.0)  # a slowly wandering plant
            trace.append(b)
            d = pol.step(i * 0.05, Observation(probs(min(max(b, 0.0), 1.0)), applied=applied))
            u = amp(d)
            if not cmds or u != cmds[-1]:
                cmds.append(u)
            applied = d.desired
        return cmds, trace

    free, _ = moves(pi(kp=0.5, ti_s=0.2, setpoint=0.4))
    banded, trace = moves(pi(kp=0.5, ti_s=0.2, setpoint=0.4, output_step=0.25))
    assert len(banded) * 10 < len(free)
    assert all(abs(b - a) >= 0.25 or b in (0.0, 3.0) for a, b in itertools.pairwise(banded))
    assert abs(np.mean(trace[-200:]) - 0.4) < 0.3 * 0.25 + 0.02


def test_pi_output_step_wider_than_half_the_range_is_refused() -> None:
    with pytest.raises(ValidationError, match="output_step"):
        pi(output_step=2.0, output_max=3.0)


def test_pi_anti_windup_tracks_what_the_gate_lets_through() -> None:
    """While the gate caps the amplitude below what the PI asks for, the integral does not grow without bound: once
    the error reverses the output falls below the cap within a few updates, not after the saturation's length."""
    pol = pi(kp=0.5, ti_s=0.2, setpoint=0.1, output_max=5.0)
    plant_run(pol, b0=0.9, gain=0.01, steps=400, cap_ma=1.0)  # 20 s capped at 1 mA, error large
    assert pol.integral < 2.0
    applied: StimParams | None = StimParams(130.0, 1.0, 60.0)
    outs = []
    for i in range(10):
        d = pol.step(20.0 + i * 0.05, Observation(probs(0.0), applied=applied))  # error now negative
        outs.append(amp(d))
        applied = d.desired
    assert outs[3] < 1.0


def test_pi_output_never_leaves_its_bounds_and_can_drive_frequency() -> None:
    """Whatever the biomarker, the output stays in [output_min, output_max]; output = "frequency" varies frequency at
    a fixed amplitude (Fleming's best controller)."""
    pol = pi(output="frequency", amplitude_ma=1.5, frequency_hz=None, output_min=20.0, output_max=180.0, kp=400.0,
             ti_s=0.2)
    rng = np.random.default_rng(0)
    for i in range(400):
        d = pol.step(i * 0.05, Observation(probs(float(rng.uniform()))))
        assert d.desired is not None and 20.0 <= d.desired.frequency_hz <= 180.0 and d.desired.amplitude_ma == 1.5


def test_pi_settings_are_checked() -> None:
    """Inverted bounds, an amplitude law without its frequency, a frequency law without amplitude or with a 0 Hz
    floor are refused."""
    for bad, word in (({"output_min": 4.0}, "output_min"), ({"frequency_hz": None}, "frequency_hz"),
                      ({"output": "frequency"}, "amplitude_ma"),
                      ({"output": "frequency", "amplitude_ma": 1.0, "output_min": 0.0}, "output_min > 0")):
        with pytest.raises(ValidationError, match=word):
            pi(**bad)


def saturated_outputs(pol: Any, b: float, steps: int, dt_s: float) -> list[float]:
    """The PI's outputs on a constant biomarker `b`, the board running exactly what the law asks."""
    applied: StimParams | None = None
    outs = []
    for i in range(steps):
        d = pol.step(i * dt_s, Observation(probs(b), applied=applied))
        outs.append(amp(d))
        applied = d.desired
    return outs


def test_pi_tracking_never_overshoots_when_the_update_exceeds_the_tracking_time() -> None:
    """With an update period 2.5 × the tracking time (Euler back-calculation chattered 2.19 ↔ 2.5 mA there), an
    output that saturates at output_max stays there: the tracking term is solved exactly over the step."""
    pol = pi(kp=2.0, ti_s=0.3, tt_s=0.2, update_ms=500.0, setpoint=0.2, output_max=2.5)
    outs = saturated_outputs(pol, 0.33, 40, 0.5)  # a small steady error of 0.13, one update per call
    first = outs.index(2.5)
    assert first < 20 and all(o == 2.5 for o in outs[first:]), outs


def test_pi_after_a_biomarker_gap_integrates_one_update_not_the_gap() -> None:
    """A 1.5 s gap without a biomarker credits the integral with one update period at the next update, not with the
    gap (the old 1 s cap kicked the integral by 20 updates' worth)."""
    pol = pi(kp=1.0, ti_s=0.2, update_ms=50.0, setpoint=0.2, output_max=50.0)
    t, applied = 0.0, None
    for _ in range(10):
        applied = pol.step(t, Observation(probs(0.3), applied=applied)).desired
        t += 0.05
    i_before = pol.integral
    for _ in range(30):
        pol.step(t, Observation(None, applied=applied))
        t += 0.05
    assert pol.integral == i_before
    pol.step(t, Observation(probs(0.3), applied=applied))
    # one update: Δt·Kp/Ti·e = 0.05 · 1/0.2 · 0.1 (the board runs what was asked: no tracking term)
    assert pol.integral - i_before == pytest.approx(0.025, rel=1e-6)


def test_pi_integrates_real_time_when_update_ms_is_not_a_multiple_of_the_decisions() -> None:
    """update_ms = 75 on 50 ms decisions recomputes every 100 ms and integrates the 100 ms that passed."""
    pol = pi(kp=1.0, ti_s=1.0, update_ms=75.0, setpoint=0.2, output_max=50.0)
    applied: StimParams | None = None
    for i in range(21):  # 0 … 1.0 s
        d = pol.step(i * 0.05, Observation(probs(0.3), applied=applied))
        applied = d.desired
    # 1 s of integral of e = 0.1 at Kp/Ti = 1: 0.1 (from output_min 0)
    assert pol.integral == pytest.approx(0.1, rel=1e-6)


def test_pi_refuses_an_update_period_longer_than_twice_the_integral_time() -> None:
    """update_ms / 1000 > 2 · ti_s is refused with the bound to set; exactly twice passes."""
    with pytest.raises(ValidationError, match=r"update_ms \(500\) is more than twice ti_s \(0.2 s\).*at most 400"):
        pi(ti_s=0.2, update_ms=500.0)
    pi(ti_s=0.2, update_ms=400.0)
    pi(ti_s=None, update_ms=5000.0)  # P only: no integral step


def test_biomarker_laws_do_not_treat_a_low_top_probability_as_unsure_by_default() -> None:
    """dual_threshold and proportional default to confidence_threshold 0: a biomarker in the hold band (where a class
    probability's top probability is low) is read, not turned into a low-confidence hold."""
    assert dual().confidence_threshold == 0.0
    assert pi().confidence_threshold == 0.0
