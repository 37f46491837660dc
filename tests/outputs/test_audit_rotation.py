"""Rotation by size: every segment and record is kept, the chain and seq run across, a crash mid-rotation loses
nothing, and opening the log reads only the active segment however long the log has grown."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import pytest

from neurostimd.outputs.audit import iter_records, segment_path, segments, verify
from tests.outputs.audit_clocks import ON, Clocks, command, startup

ROTATE_MB = 0.02


def _first_record(f: Path) -> dict:
    return json.loads(f.read_bytes().split(b"\n", 1)[0])


def _write_commands(clocks: Clocks, path: Path, n: int, *, rotate_mb: float = ROTATE_MB) -> None:
    with clocks.open(path, rotate_mb=rotate_mb) as log:
        startup(log)
        for i in range(n):
            clocks.advance(0.5)
            command(log, ON if i % 2 else None)


def test_rotation_keeps_every_file_and_record(tmp_path: Path) -> None:
    """Across restarts, each segment stays under the size, is numbered in order and starts with an audit_segment
    record naming the one before; every command is still there, seq has no gap, and the chain verifies."""
    clocks, path = Clocks(), tmp_path / "audit.jsonl"
    for _ in range(3):
        _write_commands(clocks, path, 150)
    segs = segments(path)
    assert len(segs) >= 6
    assert [f.name for _, f in segs] == [f"audit.jsonl.{n:06d}" for n in range(1, len(segs) + 1)]
    assert all(f.stat().st_size <= ROTATE_MB * 1e6 for _, f in segs)
    files = [f for _, f in segs] + [path]
    for i, f in enumerate(files[1:], start=1):
        head = _first_record(f)
        assert head["event"] == "audit_segment" and head["segment"] == i + 1
        assert head["previous_file"] == files[i - 1].name
    recs = list(iter_records(path))
    assert [r["seq"] for r in recs] == list(range(len(recs)))
    assert sum(r["event"] in ("stim_command", "stim_stop") for r in recs) == 450
    assert sum(r["event"] == "startup" for r in recs) == 3
    report = verify(path)
    assert report.ok and report.records == len(recs) and len(report.files) == len(files)


@pytest.mark.parametrize("left", ["no file", "an empty file", "a torn first line"])
def test_a_crash_between_the_rename_and_the_next_segment_loses_nothing(tmp_path: Path, left: str) -> None:
    """A crash after the active file was renamed into a segment but before the next one had its first record: the
    next open continues the chain, seq and dose from the newest segment."""
    clocks, path = Clocks(), tmp_path / "audit.jsonl"
    _write_commands(clocks, path, 200)
    with clocks.open(path, rotate_mb=ROTATE_MB) as log:
        dose = log.recovered_daily_stim_s()
        last_seq = log.next_seq - 1
    number = _first_record(path)["segment"]
    os.rename(path, segment_path(path, number))
    if left == "an empty file":
        path.touch()
    elif left == "a torn first line":
        path.write_bytes(b'{"event":"audit_segment","seq":')
    with clocks.open(path, rotate_mb=ROTATE_MB) as log:
        assert log.recovered_daily_stim_s() == pytest.approx(dose, abs=0.01)
        assert log.write("startup")["seq"] == last_seq + 2  # the new segment's first record took last_seq + 1
    head = next(r for r in iter_records(path) if r["seq"] == last_seq + 1)
    assert head["event"] == "audit_segment" and head["previous_file"] == segment_path(path, number).name
    report = verify(path)
    assert report.ok, report.broken
    assert [t["file"] for t in report.torn] == (["audit.jsonl"] if left == "a torn first line" else [])


def test_a_segment_number_is_never_reused(tmp_path: Path) -> None:
    """A file already at the next segment's name is left as it is: the active file is renamed to the number after
    it, and verify names the stranger."""
    clocks, path = Clocks(), tmp_path / "audit.jsonl"
    _write_commands(clocks, path, 100)
    stranger = segment_path(path, _first_record(path)["segment"])
    stranger.write_text("someone else's file\n")
    _write_commands(clocks, path, 100)
    assert stranger.read_text() == "someone else's file\n"
    assert _first_record(segment_path(path, int(stranger.suffix[1:]) + 1))["event"] == "audit_segment"
    report = verify(path)
    assert not report.ok and report.broken is not None and report.broken["file"] == stranger.name


def test_a_segment_is_never_only_its_summary(tmp_path: Path) -> None:
    """With a size smaller than one summary record, each segment still takes at least one record after it: rotation
    makes progress instead of a file per summary."""
    clocks, path = Clocks(), tmp_path / "audit.jsonl"
    _write_commands(clocks, path, 30, rotate_mb=0.0005)
    for _, f in segments(path)[1:]:
        assert len(f.read_bytes().splitlines()) >= 2
    assert verify(path).ok


def test_opening_a_200000_record_log_reads_only_its_active_segment(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Start-up cost does not grow with the log: with 200 000 records over many 4 MB segments, opening it (and
    recovering the day's dose) reads the active segment once and holds well under a megabyte."""
    clocks, path = Clocks(), tmp_path / "audit.jsonl"
    with clocks.open(path) as log:
        startup(log)
        command(log, ON)
        for i in range(199_996):  # with startup, board_ready, the command and its ack: 200 000
            clocks.advance(0.05)
            log.write("dose_checkpoint" if i % 2 else "state_change", state=1, confidence=0.93, reason="confident",
                      t_data_s=i * 0.05, limited_by=["ramp"], applied=ON)
    total = sum(f.stat().st_size for f in tmp_path.iterdir())
    active = path.stat().st_size
    assert len(segments(path)) >= 10 and active <= 4e6
    read = [0]
    real_read = os.read

    def counting_read(fd: int, n: int) -> bytes:
        data = real_read(fd, n)
        read[0] += len(data)
        return data

    monkeypatch.setattr(os, "read", counting_read)
    tracemalloc.start()
    try:
        log = clocks.open(path)
        dose = log.recovered_daily_stim_s()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    log.close()
    assert log.next_seq == 200_000 + len(segments(path))
    assert read[0] == active, f"read {read[0]} bytes; the active segment is {active}, the log {total}"
    assert peak < 1_000_000, f"peak {peak} bytes traced while opening a {total}-byte log"
    assert dose == pytest.approx(199_996 * 0.05, rel=1e-3)


@pytest.mark.parametrize(("field", "value"), [("checkpoint_ms", "NaN"), ("wall", "1e400")])
def test_a_dose_summary_with_numbers_that_are_not_finite_refuses_the_open(tmp_path: Path, field: str,
                                                                          value: str) -> None:
    """A damaged summary whose numbers json reads as NaN or infinity is an AuditError (the daemon exits 78), not a
    ValueError or OverflowError out of the start (a traceback, and systemd restarting into it)."""
    from neurostimd.outputs.audit import AuditError

    clocks, path = Clocks(), tmp_path / "audit.jsonl"
    _write_commands(clocks, path, 150)
    first, rest = path.read_bytes().split(b"\n", 1)
    head = json.loads(first)
    assert head["event"] == "audit_segment"
    if field == "checkpoint_ms":
        head["dose_state"]["checkpoint_ms"] = "@@"
        line = json.dumps(head).replace('"@@"', value)
    else:
        assert head["dose"]["bins"], "the summary carries bins"
        head["dose"]["bins"][0][3] = "@@"
        line = json.dumps(head).replace('"@@"', value)
    path.write_bytes(line.encode() + b"\n" + rest)
    with pytest.raises(AuditError, match=r"cannot be read|dose summary"):
        clocks.open(path)
