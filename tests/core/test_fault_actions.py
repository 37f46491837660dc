"""Issue 14's contract between the laws, the fault monitor and the gate: low confidence holds what runs (bounded by
hold_max_s), data faults reach the safe state at once, a persisting fault moves to the configured fallback or off,
each cause's action comes from [safety.on_fault], and the gate ramps up and down at their own rates."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from neurostimd.config import parse_config
from neurostimd.core.controller import ControlInputs, Controller
from neurostimd.core.laws import DualThresholdConfig, ProportionalConfig
from neurostimd.core.policy import PolicyConfig
from neurostimd.core.safety import SafetyConfig, SafetyGate
from neurostimd.core.stimtable import notebook_table
from neurostimd.drivers.types import StimParams
from neurostimd.errors import ConfigError

FALLBACK = {"frequency_hz": 20.0, "amplitude_ma": 0.5, "pulse_width_us": 100.0}
DT = 0.05


def law(kind: str) -> Any:
    if kind == "table":
        return PolicyConfig(onset_ms=0.0, termination_ms=0.0, blanking_ms=0.0)
    if kind == "dual_threshold":
        return DualThresholdConfig.model_validate({
            "biomarker": "p:0", "lower": 0.5, "upper": 0.7, "amplitude_low_ma": 0.0, "amplitude_high_ma": 2.0,
            "frequency_hz": 20.0, "pulse_width_us": 200.0, "onset_ms": 0.0, "termination_ms": 0.0,
            "blanking_ms": 0.0})
    return ProportionalConfig.model_validate({
        "biomarker": "p:0", "setpoint": 0.0, "kp": 2.5, "ti_s": None, "output_max": 2.0, "frequency_hz": 20.0,
        "pulse_width_us": 200.0})


LAWS = ("table", "dual_threshold", "proportional")


def controller(kind: str = "table", **safety: Any) -> Controller:
    base: dict[str, Any] = {"recovery_clean_ms": 0.0, "ramp_ma_per_s": 1.0}
    base.update(safety)
    return Controller(law(kind).build(notebook_table()), SafetyConfig.model_validate(base), stale_after_ms=250.0)


def inputs(conf: float = 0.9, **kw: Any) -> ControlInputs:
    p = np.full(3, (1.0 - conf) / 2.0)
    p[0] = conf
    return ControlInputs(probs=p, data_age_ms=10.0, **kw)


def run(ctl: Controller, t0: float, n: int, make: Any = inputs) -> tuple[float, list[Any]]:
    cmds = []
    t = t0
    for _ in range(n):
        cmd = ctl.step(t, make())
        ctl.commit(t, cmd.applied, True)
        cmds.append(cmd)
        t += DT
    return t, cmds


def amp(cmd: Any) -> float:
    return 0.0 if cmd.applied is None else cmd.applied.amplitude_ma


@pytest.mark.parametrize("kind", LAWS)
def test_a_single_low_confidence_window_never_stops_stimulation(kind: str) -> None:
    """For every law, one unsure window (and one with no classifier output) keeps the amplitude that runs; the next
    confident window carries on from there."""
    ctl = controller(kind)
    t, cmds = run(ctl, 0.0, 30)
    before = amp(cmds[-1])
    assert before > 1.0
    for i, unsure in enumerate((inputs(conf=0.4), ControlInputs(probs=None, data_age_ms=10.0))):
        cmd = ctl.step(t, unsure)
        ctl.commit(t, cmd.applied, True)
        assert cmd.fault.holding and not cmd.fault.active and amp(cmd) == pytest.approx(before), cmd.fault
        if i == 0:  # the audit's fault record names the hold
            assert cmd.side_events()[0][1]["safe_state"] == "hold"
        t += DT
    cmd = ctl.step(t, inputs())
    assert amp(cmd) >= before


@pytest.mark.parametrize("kind", LAWS)
def test_data_faults_stop_at_once_even_during_a_hold(kind: str) -> None:
    """A data fault while holding (NaN in the window, stale data) sends STOP at that decision, for every law."""
    for bad in (inputs(conf=0.4, quality_flags=("nan",)), ControlInputs(probs=None, data_age_ms=900.0)):
        ctl = controller(kind)
        t, _ = run(ctl, 0.0, 30)
        t, held = run(ctl, t, 2, lambda: inputs(conf=0.4))
        assert amp(held[-1]) > 0
        cmd = ctl.step(t, bad)
        assert cmd.applied is None and cmd.fault.active and cmd.fault.mode == "off"


def test_a_hold_keeps_the_ramp_position_and_never_restarts_it_from_zero() -> None:
    """Halfway up a 1 mA/s ramp, a second of low confidence keeps the amplitude reached; the ramp then resumes from it
    at the same rate (not from 0 mA)."""
    ctl = controller("table")
    t, cmds = run(ctl, 0.0, 21)  # 1.0 mA after 20 steps of 50 ms
    reached = amp(cmds[-1])
    assert reached == pytest.approx(1.0)
    t, held = run(ctl, t, 20, lambda: inputs(conf=0.4))
    assert all(amp(c) == pytest.approx(reached) for c in held)
    t, resumed = run(ctl, t, 2)
    assert amp(resumed[0]) == pytest.approx(reached + 1.0 * DT)
    assert amp(resumed[1]) == pytest.approx(reached + 2.0 * DT)


@pytest.mark.parametrize(("after_hold", "expect"), [("off", None), ("fallback", 0.5)])
def test_a_hold_is_bounded_by_hold_max_s_then_after_hold(after_hold: str, expect: float | None) -> None:
    """Low confidence without a break for hold_max_s ends the hold: `after_hold` (off or the fallback) is in force and
    the audit's fault record says "hold_expired"; clean inputs for recovery_clean_ms end it."""
    ctl = controller("table", on_fault={"hold_max_s": 1.0, "after_hold": after_hold}, fallback=FALLBACK,
                     recovery_clean_ms=200.0)
    t, _ = run(ctl, 0.0, 30)
    t, held = run(ctl, t, 20, lambda: inputs(conf=0.4))
    assert all(c.fault.holding for c in held)
    cmd = ctl.step(t, inputs(conf=0.4))
    ctl.commit(t, cmd.applied, True)
    assert cmd.fault.active and cmd.fault.escalated == "hold_expired"
    assert (cmd.applied is None) if expect is None else (cmd.applied == StimParams(20.0, 0.5, 100.0))
    assert [e for e, _ in cmd.side_events()] == ["fault"]
    assert cmd.side_events()[0][1]["escalated"] == "hold_expired"
    t, rec = run(ctl, t + DT, 8)
    assert all(c.fault.active for c in rec[:4]), "recovery needs recovery_clean_ms of clean inputs"
    assert any(c.fault.cleared for c in rec) and not rec[-1].fault.active


def test_a_persisting_fault_moves_to_the_fallback_after_persist_s() -> None:
    """Stale data stops at once; when it has lasted persist_s the clinician's fallback runs (RC+S "Group A ON",
    Percept "suspend amplitude"), and clean data ends it as usual."""
    ctl = controller("table", on_fault={"persist_s": 2.0, "after_persist": "fallback"}, fallback=FALLBACK)
    t, _ = run(ctl, 0.0, 30)
    t, stale = run(ctl, t, 41, lambda: ControlInputs(probs=None, data_age_ms=900.0))
    assert all(c.applied is None for c in stale[:40])
    fb = StimParams(20.0, 0.5, 100.0)
    assert stale[40].requested == fb and stale[40].fault.escalated == "persisted"
    assert stale[40].applied is not None and stale[40].applied.amplitude_ma == pytest.approx(1.0 * DT)  # ramped up
    _, back = run(ctl, t, 3)
    assert back[0].fault.cleared and back[1].applied is not None and back[1].applied.frequency_hz == 20.0


def test_each_cause_takes_its_own_action_and_the_most_conservative_wins() -> None:
    """[safety.on_fault] stale_data = "fallback" runs the fallback on stale data while saturation stays "off"
    (safe_state); with both present, off wins; a board that runs what it was not told is off whatever the config."""
    def fresh() -> Controller:
        ctl = controller("table", on_fault={"stale_data": "fallback"}, fallback=FALLBACK)
        run(ctl, 0.0, 30)
        return ctl

    fb = StimParams(20.0, 0.5, 100.0)
    assert fresh().step(2.0, ControlInputs(probs=inputs().probs, data_age_ms=900.0)).applied == fb
    assert fresh().step(2.0, inputs(quality_flags=("saturation",))).applied is None
    assert fresh().step(2.0, ControlInputs(probs=inputs().probs, data_age_ms=900.0,
                                           quality_flags=("saturation",))).applied is None
    assert fresh().step(2.0, ControlInputs(probs=inputs().probs, data_age_ms=900.0,
                                           boundary_causes=("board_params_mismatch",))).applied is None


def test_on_fault_fallback_needs_a_fallback_and_low_confidence_off_restores_the_old_law() -> None:
    """A cause set to "fallback" without [safety.fallback] is refused naming the key; low_confidence = "off" makes a
    single unsure window stop stimulation again (the behaviour before issue 14)."""
    with pytest.raises(ValidationError, match="stale_data"):
        SafetyConfig.model_validate({"on_fault": {"stale_data": "fallback"}})
    with pytest.raises(ValidationError, match="after_persist"):
        SafetyConfig.model_validate({"on_fault": {"persist_s": 5.0}})
    ctl = controller("table", on_fault={"low_confidence": "off"})
    t, _ = run(ctl, 0.0, 30)
    assert ctl.step(t, inputs(conf=0.4)).applied is None


# --- ramps ------------------------------------------------------------------------------------------------------------
def test_ramp_up_and_ramp_down_have_their_own_rates() -> None:
    """ramp_up_ma_per_s limits the rise, ramp_down_ma_per_s the fall while stimulation continues; the old name
    ramp_ma_per_s is ramp up; a STOP is never delayed."""
    gate = SafetyGate(SafetyConfig.model_validate({"ramp_up_ma_per_s": 2.0, "ramp_down_ma_per_s": 0.5}))
    t, a = 0.0, 0.0
    for _ in range(30):
        r = gate.apply(t, StimParams(20.0, 2.0, 100.0))
        assert r.applied is not None
        assert r.applied.amplitude_ma <= a + 2.0 * DT + 1e-12
        a = r.applied.amplitude_ma
        gate.commit(t, r.applied, True)
        t += DT
    assert a == pytest.approx(2.0)
    r = gate.apply(t, StimParams(20.0, 0.5, 100.0))
    assert r.applied is not None and r.applied.amplitude_ma == pytest.approx(2.0 - 0.5 * DT) and "ramp" in r.limited_by
    gate.commit(t, r.applied, True)
    assert gate.apply(t + DT, None).applied is None
    old = SafetyConfig.model_validate({"ramp_ma_per_s": 0.7})
    assert old.ramp_up_rate_ma_per_s == 0.7 and old.ramp_down_ma_per_s is None
    with pytest.raises(ValidationError, match="old name"):
        SafetyConfig.model_validate({"ramp_ma_per_s": 0.7, "ramp_up_ma_per_s": 2.0})


def test_the_safe_state_is_reached_at_once_whatever_ramp_down_says() -> None:
    """With a slow ramp down, the policy's lower wish comes down slowly, but a fault's fallback is sent at once."""
    ctl = controller("table", ramp_ma_per_s=10.0, ramp_down_ma_per_s=0.1, safe_state="fallback", fallback=FALLBACK)
    t, cmds = run(ctl, 0.0, 10)
    assert amp(cmds[-1]) == pytest.approx(2.5)
    cmd = ctl.step(t, inputs(quality_flags=("flatline",)))
    assert cmd.applied == StimParams(20.0, 0.5, 100.0)


def test_a_law_whose_targets_break_the_gate_is_refused_at_config_load() -> None:
    """A dual_threshold high amplitude above [safety] max_amplitude_ma (or a PI bound whose charge breaks k) is a
    configuration error naming the policy and the rule, not something the gate silently clamps."""
    pol = {"kind": "dual_threshold", "biomarker": "p:1", "lower": 0.3, "upper": 0.7, "amplitude_low_ma": 0.5,
           "amplitude_high_ma": 6.0, "frequency_hz": 130.0, "pulse_width_us": 60.0}
    with pytest.raises(ConfigError) as err:
        parse_config({"policy": pol, "safety": {"max_amplitude_ma": 5.0}})
    assert "dual_threshold" in "\n".join(err.value.errors) and "amplitude_max" in "\n".join(err.value.errors)
    ok = parse_config({"policy": {**pol, "amplitude_high_ma": 3.0}})
    assert ok.policy.kind == "dual_threshold"
    pi = {"kind": "proportional", "biomarker": "p:1", "setpoint": 0.5, "kp": 1.0, "output_max": 5.0,
          "frequency_hz": 130.0, "pulse_width_us": 500.0}
    with pytest.raises(ConfigError) as err:
        parse_config({"policy": pi})
    assert "charge_per_phase" in "\n".join(err.value.errors)


def test_the_gate_clamps_what_a_law_asks_for() -> None:
    """A law built without the config's check (a plugin, a test) that asks for more than [safety] allows is cut by the
    gate, which names the rule: the gate has the last word whatever the law."""
    pol = DualThresholdConfig.model_validate({
        "biomarker": "p:0", "lower": 0.5, "upper": 0.5, "amplitude_low_ma": 0.0, "amplitude_high_ma": 6.0,
        "frequency_hz": 300.0, "pulse_width_us": 200.0, "onset_ms": 0.0, "termination_ms": 0.0, "blanking_ms": 0.0})
    ctl = Controller(pol.build(notebook_table()), SafetyConfig.model_validate({"recovery_clean_ms": 0.0,
                                                                               "ramp_ma_per_s": 100.0}),
                     stale_after_ms=250.0)
    _, cmds = run(ctl, 0.0, 10)
    last = cmds[-1]
    assert last.requested is not None and last.requested.amplitude_ma == 6.0
    assert last.applied is not None and last.applied.frequency_hz == 130.0 and last.applied.amplitude_ma <= 5.0
    assert {"frequency_max", "amplitude_max"} <= set(last.gate.limited_by)
