"""The session's marker strings: their grammar, and which change of a decision or of the board gives which marker."""

from __future__ import annotations

from typing import Any

import pytest

from neurostimd.core.markers import MarkerTracker, format_marker, parse_marker

CLASSES = ["quiet", "activated", "pathological"]
P1 = {"frequency_hz": 130.0, "amplitude_ma": 2.0, "pulse_width_us": 60.0}
P2 = {"frequency_hz": 130.0, "amplitude_ma": 2.5, "pulse_width_us": 60.0}


def _rec(state: int | None = 0, faults: list[str] | None = None, safe: bool = False, conf: float = 0.9
         ) -> dict[str, Any]:
    return {"state": state, "confidence": conf, "faults": faults or [], "safe_state": safe}


def test_a_marker_reads_back_as_its_tag_and_fields() -> None:
    """format_marker writes `tag key=value ...`; parse_marker returns the tag's parts and the fields as written."""
    m = format_marker("stim:on", frequency_hz=130.0, amplitude_ma=2.0, pulse_width_us=60.0, limited_by=["ramp"])
    assert m == "stim:on frequency_hz=130 amplitude_ma=2 pulse_width_us=60 limited_by=ramp"
    assert parse_marker(m) == (["stim", "on"], {"frequency_hz": "130", "amplitude_ma": "2", "pulse_width_us": "60",
                                                "limited_by": "ramp"})
    assert parse_marker("fault:raised:stale_data") == (["fault", "raised", "stale_data"], {})
    # a value with a space or '=' cannot break the grammar
    assert parse_marker(format_marker("state:a b", note="x=y z"))[1] == {"note": "x_y_z"}


@pytest.mark.parametrize("bad", ["", "key=value", "stim:on amplitude_ma", "stim:on =2", "stim:on a="])
def test_a_string_outside_the_grammar_is_refused(bad: str) -> None:
    """parse_marker raises ValueError (not a wrong reading) for a string that is not a marker."""
    with pytest.raises(ValueError, match="marker"):
        parse_marker(bad)


def test_decisions_give_session_state_fault_and_safe_state_markers_on_change_only() -> None:
    """The first decision starts the session and names the state; later ones say only what changed: a new state,
    each fault cause that appears or goes away, and the safe state's start and end."""
    t = MarkerTracker(CLASSES)
    assert t.decision(_rec(None, ["startup"], safe=True)) == [
        "session:start", "state:none", "fault:raised:startup", "safe_state:on"]
    assert t.decision(_rec(None, ["startup"], safe=True)) == []
    assert t.decision(_rec(1, ["stale_data"], safe=True, conf=0.75)) == [
        "state:activated index=1 confidence=0.75", "fault:raised:stale_data", "fault:cleared:startup"]
    assert t.decision(_rec(1, [], safe=True)) == ["fault:cleared:stale_data"]
    assert t.decision(_rec(1, [], safe=False)) == ["safe_state:off"]
    assert t.decision(_rec(7, [])) == ["state:7 index=7 confidence=0.9"]  # an index the bundle does not name


def test_stimulation_markers_follow_what_the_board_was_confirmed_to_run() -> None:
    """Unknown at start says nothing; then off, on with its parameters, each parameter change (a ramp step says
    so), unknown after a failed send, and the shutdown's STOP confirmed or not."""
    t = MarkerTracker(CLASSES)
    assert t.stimulation(None, known=False) == []
    assert t.stimulation(None, known=True) == ["stim:off"]
    assert t.stimulation(None, known=True) == []
    assert t.stimulation(P1, known=True, limited_by=["ramp"]) == [
        "stim:on frequency_hz=130 amplitude_ma=2 pulse_width_us=60 limited_by=ramp"]
    assert t.stimulation(P1, known=True) == []
    assert t.stimulation(P2, known=True) == ["stim:params frequency_hz=130 amplitude_ma=2.5 pulse_width_us=60"]
    assert t.stimulation(P2, known=False) == ["stim:unknown"]
    assert t.stimulation(P2, known=True) == ["stim:on frequency_hz=130 amplitude_ma=2.5 pulse_width_us=60"]
    assert t.shutdown(confirmed=False) == ["stim:unknown reason=shutdown"]
    assert t.shutdown(confirmed=True) == ["stim:off reason=shutdown"]
    assert t.stimulation(None, known=True) == []
