"""Fault monitor and controller examples: each fault forces the safe state at the same decision; recovery waits."""

from __future__ import annotations

import numpy as np
import pytest

from neurostimd.core.controller import ControlInputs, Controller
from neurostimd.core.faults import FORCE_OFF_CAUSES, FaultInputs, FaultMonitor, fallback_violations
from neurostimd.core.policy import PolicyConfig
from neurostimd.core.safety import SafetyConfig
from neurostimd.core.stimtable import notebook_table
from neurostimd.drivers.types import StimParams

CLEAN = FaultInputs(data_age_ms=10.0, quality_flags=(), confidence=0.9, board_ok=True, last_reply=None)
FAULTY = {
    "no_data": FaultInputs(data_age_ms=None, confidence=0.9),
    "stale_data": FaultInputs(data_age_ms=1000.0, confidence=0.9),
    "quality_nan": FaultInputs(data_age_ms=10.0, quality_flags=("nan",), confidence=0.9),
    "quality_flatline": FaultInputs(data_age_ms=10.0, quality_flags=("flatline",), confidence=0.9),
    "quality_saturation": FaultInputs(data_age_ms=10.0, quality_flags=("saturation",), confidence=0.9),
    "quality_gap": FaultInputs(data_age_ms=10.0, quality_flags=("gap",), confidence=0.9),
    "low_confidence": FaultInputs(data_age_ms=10.0, confidence=0.3),
    "board_lost": FaultInputs(data_age_ms=10.0, confidence=0.9, board_ok=False),
    "nak": FaultInputs(data_age_ms=10.0, confidence=0.9, last_reply="nak"),
    "missing_ack": FaultInputs(data_age_ms=10.0, confidence=0.9, last_reply="timeout"),
}


def monitor(**kw: object) -> FaultMonitor:
    return FaultMonitor(SafetyConfig.model_validate(kw), stale_after_ms=250.0, confidence_threshold=0.6)


def test_starts_in_safe_state_until_clean_for_recovery_time() -> None:
    """Stimulation is not released before inputs have been clean for recovery_clean_ms."""
    m = monitor(recovery_clean_ms=1000.0)
    desired = StimParams(20.0, 1.0, 100.0)
    assert m.update(0.0, CLEAN).active and m.override(desired) is None
    assert m.update(0.95, CLEAN).active
    st = m.update(1.0, CLEAN)
    assert not st.active and st.cleared and m.override(desired) == desired


@pytest.mark.parametrize("name", sorted(set(FAULTY) - {"low_confidence"}))
def test_each_fault_forces_safe_state_at_once(name: str) -> None:
    """Every data or board fault cause puts the safe state in force at the same decision and is named."""
    m = monitor(recovery_clean_ms=0.0)
    m.update(0.0, CLEAN)
    assert not m.active
    st = m.update(0.05, FAULTY[name])
    assert st.active and name in st.faults and name in st.raised and st.mode == "off"
    assert m.override(StimParams(20.0, 1.0, 100.0)) is None


def test_low_confidence_holds_by_default_and_stops_when_configured_off() -> None:
    """Issue 14 changes this contract deliberately: low confidence holds what runs (it used to force the safe state);
    `[safety.on_fault] low_confidence = "off"` restores the old behaviour, named and at once."""
    running = StimParams(20.0, 1.0, 100.0)
    m = monitor(recovery_clean_ms=0.0)
    m.update(0.0, CLEAN)
    st = m.update(0.05, FAULTY["low_confidence"])
    assert not st.active and st.holding and "low_confidence" in st.raised
    assert m.override(StimParams(50.0, 3.0, 100.0), held=running) == running
    m_off = monitor(recovery_clean_ms=0.0, on_fault={"low_confidence": "off"})
    m_off.update(0.0, CLEAN)
    st = m_off.update(0.05, FAULTY["low_confidence"])
    assert st.active and st.mode == "off" and m_off.override(running, held=running) is None


def test_recovery_restarts_on_any_fault() -> None:
    """A fault during the recovery period restarts the clean-time count."""
    m = monitor(recovery_clean_ms=500.0)
    m.update(0.0, FAULTY["stale_data"])
    m.update(0.1, CLEAN)
    m.update(0.4, FAULTY["nak"])
    assert m.update(0.7, CLEAN).active
    assert m.update(1.1, CLEAN).active
    assert not m.update(1.2, CLEAN).active


def test_fallback_safe_state_requests_fallback() -> None:
    """With safe_state = fallback, a fault requests the configured fallback parameters."""
    m = monitor(safe_state="fallback", fallback={"frequency_hz": 20.0, "amplitude_ma": 0.5, "pulse_width_us": 100.0},
                recovery_clean_ms=0.0)
    m.update(0.0, FAULTY["stale_data"])
    fb = m.override(StimParams(100.0, 5.0, 500.0))
    assert fb is not None and (fb.frequency_hz, fb.amplitude_ma, fb.pulse_width_us) == (20.0, 0.5, 100.0)
    assert fallback_violations(m.cfg) == []


@pytest.mark.parametrize("cause", sorted(FORCE_OFF_CAUSES))
def test_untrusted_board_or_log_forces_off_even_with_a_fallback(cause: str) -> None:
    """A boundary cause in FORCE_OFF_CAUSES (a board running what it was not told, a different board, no audit log)
    requests no stimulation at all, not the fallback: sending it would trust the board or go unaudited."""
    m = monitor(safe_state="fallback", fallback={"frequency_hz": 20.0, "amplitude_ma": 0.5, "pulse_width_us": 100.0},
                recovery_clean_ms=0.0)
    m.update(0.0, CLEAN)
    st = m.update(0.05, FaultInputs(data_age_ms=10.0, confidence=0.9, boundary_causes=(cause,)))
    assert st.active and st.force_off and cause in st.raised
    assert m.override(StimParams(20.0, 1.0, 100.0)) is None
    m.update(0.1, FAULTY["stale_data"])  # an ordinary fault: the fallback again
    assert m.override(StimParams(20.0, 1.0, 100.0)) is not None


@pytest.mark.parametrize("cause", ["rate_mismatch", "implausible_signal", "board_reset"])
def test_boundary_causes_force_the_safe_state(cause: str) -> None:
    """Every cause the loop's boundary checks report is a fault like any other: safe state at once, named."""
    m = monitor(recovery_clean_ms=0.0)
    m.update(0.0, CLEAN)
    st = m.update(0.05, FaultInputs(data_age_ms=10.0, confidence=0.9, boundary_causes=(cause,)))
    assert st.active and st.faults == (cause,) and m.override(StimParams(20.0, 1.0, 100.0)) is None


def controller(**safety: object) -> Controller:
    pol = PolicyConfig.model_validate({"onset_ms": 0, "termination_ms": 0, "blanking_ms": 0})
    s: dict[str, object] = {"recovery_clean_ms": 0.0, "ramp_ma_per_s": 100.0}
    s.update(safety)
    return Controller(pol.build(notebook_table()), SafetyConfig.model_validate(s), stale_after_ms=250.0)


def clean_inputs(state: int = 0) -> ControlInputs:
    probs = np.full(3, 0.05)
    probs[state] = 0.9
    return ControlInputs(probs=probs, data_age_ms=10.0, t_data_s=1.0)


def test_controller_stimulates_on_clean_data_and_stops_on_a_fault() -> None:
    """The combined step stimulates for a clean confident state and sends STOP at the first faulty decision."""
    ctl = controller()
    c0 = ctl.step(0.0, clean_inputs())
    ctl.commit(0.0, c0.applied, True)
    c1 = ctl.step(0.05, clean_inputs())
    assert c1.applied is not None and c1.applied.amplitude_ma == pytest.approx(2.5)
    ctl.commit(0.05, c1.applied, True)
    bad = ControlInputs(probs=clean_inputs().probs, data_age_ms=10.0, quality_flags=("saturation",))
    c2 = ctl.step(0.1, bad)
    assert c2.applied is None and c2.event == "stim_stop" and c2.fault.active
    assert "quality_saturation" in c2.audit_fields()["faults"]


def test_controller_cuts_notebook_state_2_on_small_contact() -> None:
    """The notebook's state 2 (5 mA, 500 µs) reaches the board only cut to the 0.06 cm² charge limits."""
    ctl = controller()
    for i in range(200):
        cmd = ctl.step(i * 0.05, clean_inputs(2))
        ctl.commit(i * 0.05, cmd.applied, True)
    assert cmd.applied is not None and cmd.applied.amplitude_ma == pytest.approx(3.0)
    assert cmd.requested is not None and cmd.requested.amplitude_ma == 5.0
    assert cmd.gate.limited_by == ["charge_per_phase", "charge_density"]


def test_side_events_name_fault_clear_and_state_change() -> None:
    """A decision's extra audit records say which faults were raised, when they cleared and when the state changed."""
    ctl = controller()
    first = ctl.step(0.0, ControlInputs(probs=None, data_age_ms=None))
    assert [e for e, _ in first.side_events()] == ["fault"]
    assert first.side_events()[0][1]["safe_state"] == "off"
    c = ctl.step(0.05, clean_inputs(1))
    assert [e for e, _ in c.side_events()] == ["fault_cleared", "state_change"]
    assert c.side_events()[1][1]["state"] == 1
