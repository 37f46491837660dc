"""What `make run` prints for the daemon's log events: sentences a person reads, never a Python dict."""

from __future__ import annotations

import time

from neurostimd.commands.demo import render
from neurostimd.core.policy import PolicyConfig

T0 = time.monotonic()


def _line(rec: dict, policy: object = None) -> str:
    out = render(rec, T0, policy)
    assert out is not None
    assert "{" not in out and "}" not in out and "[]" not in out, out  # no dict or list repr
    return out.lstrip().split("  ", 1)[1]


def test_faults_and_board_events_are_sentences() -> None:
    assert _line({"event": "fault", "raised": ["stale_data"], "faults": ["stale_data", "rate_mismatch"],
                  "safe_state": "off"}) == \
        "FAULT: stale data — safe state off (faults now: stale data, rate mismatch)"
    assert _line({"event": "fault_cleared"}).startswith("faults cleared: the data is clean again")
    assert "BOARD LOST on /dev/ttyACM0: no answer" in _line({"event": "board_lost", "port": "/dev/ttyACM0",
                                                             "error": "no answer"})
    assert "slowest stage inference 61.2 ms" in _line({"event": "overrun", "tick": 7, "late_ms": 12.5,
                                                        "missed_ticks": 1,
                                                        "stages_ms": {"ingest": 0.5, "inference": 61.2}})
    assert _line({"event": "stim_send_failed", "reply": "timeout", "error": "no ACK",
                  "requested": {"frequency_hz": 130.0, "amplitude_ma": 2.0, "pulse_width_us": 60.0}}) == \
        "command not confirmed by the board (timeout): no ACK; requested 130 Hz  2.00 mA  60 µs"


def test_a_state_change_says_how_long_the_state_had_to_hold() -> None:
    policy = PolicyConfig(onset_ms=300, termination_ms=800)
    assert _line({"event": "state_change", "state_name": "pathological", "confidence": 0.91,
                  "reason": "state_change"}, policy) == \
        "state → pathological (confidence 0.91), after 300 ms of agreeing decisions (onset_ms; 800 ms to a " \
        "weaker state)"
    assert _line({"event": "state_change", "state_name": None, "confidence": 0.4, "reason": "state_ended"},
                 policy).endswith("after 800 ms without the old state (termination_ms)")


def test_other_events_print_nothing() -> None:
    assert render({"event": "tick_stats"}, T0) is None
