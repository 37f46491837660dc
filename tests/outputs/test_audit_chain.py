"""The audit log's hash chain: every record carries the sha256 of the one before it, across restarts, torn lines
and rotations, and `neurostimd audit verify` finds the first place where that stops being so."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from neurostimd.outputs.audit import GENESIS, AuditError, AuditLog, read_audit, segment_path, segments, verify
from tests.outputs.audit_clocks import ON, Clocks, command, startup


def _sha(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _lines(f: Path) -> list[bytes]:
    return f.read_bytes().split(b"\n")[:-1]


def _put_lines(f: Path, lines: list[bytes]) -> None:
    f.write_bytes(b"".join(x + b"\n" for x in lines))


def _rotated_log(tmp_path: Path, commands: int = 300) -> Path:
    """A log of a few hundred commands over several segments of ~20 kB."""
    clocks = Clocks()
    path = tmp_path / "audit.jsonl"
    with clocks.open(path, rotate_mb=0.02) as log:
        startup(log)
        for i in range(commands):
            clocks.advance(0.5)
            command(log, ON if i % 2 else None)
    assert len(segments(path)) >= 3
    return path


def test_every_record_carries_the_hash_of_the_one_before(tmp_path: Path) -> None:
    """The first record's prev is 64 zeros; every later one's is the sha256 of the previous line, also after a
    restart."""
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, durable=False) as log:
        log.write("startup")
        log.write("fault", faults=["stale_data"])
    with AuditLog(path, durable=False) as log:
        log.write("startup")
    lines = _lines(path)
    recs = [json.loads(x) for x in lines]
    assert recs[0]["prev"] == GENESIS
    assert [r["prev"] for r in recs[1:]] == [_sha(x) for x in lines[:-1]]
    assert verify(path).ok


def test_a_log_from_before_the_chain_is_continued_from_its_last_whole_line(tmp_path: Path) -> None:
    """A log written before records carried `prev` is continued: the first new record chains to its last line, and
    verify counts the old records without judging them."""
    path = tmp_path / "audit.jsonl"
    old = [json.dumps({"event": e, "seq": i, "t_wall": "2026-11-01T12:00:00+00:00", "t_mono_ns": i},
                      separators=(",", ":")).encode() for i, e in enumerate(["startup", "stim_stop", "shutdown"])]
    _put_lines(path, old)
    with AuditLog(path, durable=False) as log:
        rec = log.write("startup")
    assert rec["seq"] == 3 and rec["prev"] == _sha(old[-1])
    report = verify(path)
    assert report.ok and report.legacy_records == 3 and report.records == 4


def test_a_torn_tail_is_left_out_of_the_chain_and_named_by_the_next_record(tmp_path: Path) -> None:
    """After a crash mid-write the next record chains to the last whole record and names the torn bytes; verify
    reports the torn line and passes."""
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, durable=False) as log:
        log.write("startup")
        log.write("stim_command", applied=ON)
    torn = b'{"event":"stim_ack","seq":2,"comm'
    with path.open("ab") as f:
        f.write(torn)
    whole = _lines(path)[1]
    with AuditLog(path, durable=False) as log:
        rec = log.write("startup")
    assert rec["seq"] == 2 and rec["prev"] == _sha(whole)
    assert rec["torn_lines"] == [{"sha256": _sha(torn), "bytes": len(torn)}]
    report = verify(path)
    assert report.ok and report.torn == [{"file": "audit.jsonl", "line": 3, "acknowledged_by_seq": 2}]
    assert read_audit(path).bad_lines == [3]


def test_a_torn_tail_not_yet_followed_by_a_record_is_reported_not_broken(tmp_path: Path) -> None:
    """A log whose last line was torn by a crash, with no start since, verifies as intact with a torn tail."""
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, durable=False) as log:
        log.write("startup")
    with path.open("ab") as f:
        f.write(b'{"event":"stim_com')
    report = verify(path)
    assert report.ok and report.torn_tail == [{"file": "audit.jsonl", "line": 2}]


def test_a_write_cut_short_by_a_full_disk_is_named_by_the_next_record(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that stops part-way (ENOSPC after 10 bytes) raises AuditError and leaves a fragment; the next record
    starts on a fresh line, keeps the seq, chains past the fragment and names it."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, durable=False)
    first = log.write("startup")
    real_write = os.write
    calls = [0]

    def short_write(fd: int, data: bytes) -> int:
        calls[0] += 1
        if calls[0] == 1:
            return real_write(fd, bytes(data[:10]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", short_write)
    with pytest.raises(AuditError, match="No space left on device"):
        log.write("stim_command", applied=ON)
    monkeypatch.setattr(os, "write", real_write)
    rec = log.write("stim_stop", applied=None)
    log.close()
    lines = _lines(path)
    assert rec["seq"] == first["seq"] + 1 and rec["prev"] == _sha(lines[0])
    assert rec["torn_lines"] == [{"sha256": _sha(lines[1]), "bytes": 10}]
    report = verify(path)
    assert report.ok and [t["line"] for t in report.torn] == [2]


def test_a_failed_fsync_is_a_failed_write_but_keeps_the_chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fsync failing (EIO) makes the write raise AuditError saying the record is not on disk; the record is in the
    file, so the next one chains to it."""
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        log.write("startup")

        def eio(fd: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(os, "fsync", eio)
        with pytest.raises(AuditError, match="is not on disk"):
            log.write("stim_command", applied=ON)
        monkeypatch.undo()
        log.write("stim_stop", applied=None)
    assert [r["seq"] for r in read_audit(path).records] == [0, 1, 2]
    assert verify(path).ok


# Each mutation changes the log and returns where verify must report the first break: (file name, line).
Mutation = Callable[[Path], tuple[str, int]]


def _in_segment(path: Path) -> Path:
    return segments(path)[1][1]  # the second segment: a header, then records, then the next file


def _edit(path: Path) -> tuple[str, int]:
    f = _in_segment(path)
    lines = _lines(f)
    assert b'"ack":true' in lines[4]
    lines[4] = lines[4].replace(b'"ack":true', b'"ack":false')
    _put_lines(f, lines)
    return f.name, 6


def _delete(path: Path) -> tuple[str, int]:
    f = _in_segment(path)
    lines = _lines(f)
    del lines[4]
    _put_lines(f, lines)
    return f.name, 5


def _insert(path: Path) -> tuple[str, int]:
    f = _in_segment(path)
    lines = _lines(f)
    lines.insert(5, lines[4])
    _put_lines(f, lines)
    return f.name, 6


def _insert_garbage(path: Path) -> tuple[str, int]:
    f = _in_segment(path)
    lines = _lines(f)
    lines.insert(5, b"not a record")
    _put_lines(f, lines)
    return f.name, 6


def _reorder(path: Path) -> tuple[str, int]:
    f = _in_segment(path)
    lines = _lines(f)
    lines[4], lines[5] = lines[5], lines[4]
    _put_lines(f, lines)
    return f.name, 5


def _edit_across(path: Path) -> tuple[str, int]:
    first, second = segments(path)[0][1], segments(path)[1][1]
    lines = _lines(first)
    lines[-1] = lines[-1].replace(b'"seq":', b'"seq": ')  # one byte more, the same JSON
    _put_lines(first, lines)
    return second.name, 1


def _delete_across(path: Path) -> tuple[str, int]:
    segs = segments(path)
    segs[1][1].unlink()
    return segs[2][1].name, 1


def _insert_across(path: Path) -> tuple[str, int]:
    first, second = segments(path)[0][1], segments(path)[1][1]
    _put_lines(second, [_lines(first)[-1], *_lines(second)])
    return second.name, 1


def _reorder_across(path: Path) -> tuple[str, int]:
    first, second = segments(path)[0][1], segments(path)[1][1]
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b)
    second.write_bytes(a)
    return first.name, 1


@pytest.mark.parametrize("mutate", [_edit, _delete, _insert, _insert_garbage, _reorder, _edit_across,
                                    _delete_across, _insert_across, _reorder_across],
                         ids=lambda m: m.__name__.strip("_"))
def test_verify_finds_an_edited_deleted_inserted_or_reordered_record(tmp_path: Path, mutate: Mutation) -> None:
    """Any change to the records, within a segment or across a rotation, is a break at the first line it affects;
    the log verified intact before the change."""
    path = _rotated_log(tmp_path)
    assert verify(path).ok
    where = mutate(path)
    report = verify(path)
    assert not report.ok
    assert report.broken is not None and (report.broken["file"], report.broken["line"]) == where, report.broken


def test_a_rewritten_chain_passes_alone_but_not_against_the_journals_head(tmp_path: Path) -> None:
    """Editing a record and recomputing every `prev` after it gives a consistent chain (no key protects it), but the
    chain head logged at close no longer matches: what the journal's copy is for."""
    path = tmp_path / "audit.jsonl"
    with capture_logs() as logs, AuditLog(path, durable=False) as log:
        log.write("startup")
        for _ in range(5):
            command(log, ON)
    head = next(e for e in logs if e["event"] == "audit_chain_head" and e["reason"] == "close")
    recs = [json.loads(x) for x in _lines(path)]
    recs[2]["ack"] = False
    prev, out = GENESIS, []
    for r in recs:
        line = json.dumps({**r, "prev": prev}, separators=(",", ":")).encode()
        out.append(line)
        prev = _sha(line)
    _put_lines(path, out)
    assert verify(path).ok, "a chain without a secret can be rewritten whole"
    report = verify(path, expect=[(head["seq"], head["hash"])])
    assert not report.ok and report.broken is not None and report.broken["problem"] == "head_mismatch"


def test_a_segment_name_stands_for_its_log(tmp_path: Path) -> None:
    """Given a rotated segment's name, verify checks the whole log it belongs to."""
    path = _rotated_log(tmp_path)
    assert verify(segment_path(path, 1)).path == str(path)
