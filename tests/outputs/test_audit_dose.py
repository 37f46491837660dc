"""The daily dose survives restarts: stimulation time is recovered from the audit log."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from neurostimd.outputs.audit import stimulated_s_since, stimulation_intervals

T0 = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)


def _rec(event: str, dt_s: float, **kw: object) -> dict[str, object]:
    return {"event": event, "t_wall": (T0 + timedelta(seconds=dt_s)).isoformat(), **kw}


ON = {"frequency_hz": 20.0, "amplitude_ma": 1.0, "pulse_width_us": 100.0}


def test_intervals_from_acked_commands_stops_and_crashes() -> None:
    """On from an ACKed (or unanswered) command, not after a NAK; off at an ACKed stop, a shutdown, or the last
    record before a restart."""
    recs = [
        _rec("startup", 0),
        _rec("stim_command", 10, seq=1, applied=ON), _rec("stim_ack", 10, command_seq=1, ack=True),
        _rec("stim_command", 15, seq=2, applied=ON), _rec("stim_ack", 15, command_seq=2, ack=True),
        _rec("stim_stop", 30, seq=3, applied=None), _rec("stim_ack", 30, command_seq=3, ack=True),
        _rec("stim_command", 40, seq=4, applied=ON), _rec("stim_ack", 40, command_seq=4, ack=False, reply="nak"),
        _rec("stim_command", 50, seq=5, applied=ON), _rec("stim_ack", 50, command_seq=5, ack=True),
        _rec("state_change", 70),  # then the process was killed
        _rec("startup", 500),
        _rec("stim_command", 600, seq=6, applied=ON), _rec("stim_ack", 600, command_seq=6, ack=True),
        _rec("shutdown", 610),
        _rec("startup", 700),
        _rec("stim_command", 710, seq=7, applied=ON), _rec("stim_ack", 710, command_seq=7, ack=False, reply="timeout"),
        _rec("shutdown", 715),
    ]
    assert stimulation_intervals(recs) == [
        ((T0 + timedelta(seconds=10)).timestamp(), (T0 + timedelta(seconds=30)).timestamp()),
        ((T0 + timedelta(seconds=50)).timestamp(), (T0 + timedelta(seconds=70)).timestamp()),
        ((T0 + timedelta(seconds=600)).timestamp(), (T0 + timedelta(seconds=610)).timestamp()),
        ((T0 + timedelta(seconds=710)).timestamp(), (T0 + timedelta(seconds=715)).timestamp()),
    ]


def test_stimulated_seconds_in_a_window(tmp_path: Path) -> None:
    """Only the part of each interval after the cut-off counts; a missing log counts nothing."""
    log = tmp_path / "audit.jsonl"
    recs = [_rec("stim_command", 0, seq=1, applied=ON), _rec("stim_ack", 0, command_seq=1, ack=True),
            _rec("shutdown", 100)]
    log.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"torn')
    assert stimulated_s_since(log, (T0 + timedelta(seconds=40)).timestamp()) == 60.0
    assert stimulated_s_since(log, T0.timestamp() - 1000) == 100.0
    assert stimulated_s_since(tmp_path / "none.jsonl", 0.0) == 0.0
