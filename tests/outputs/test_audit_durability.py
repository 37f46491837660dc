"""The daemon's audit log is fsync'd per record; only replay's may skip it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from neurostimd.outputs.audit import AuditLog, read_audit


@pytest.mark.parametrize("durable", [True, False])
def test_fsync_per_record_unless_not_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool) -> None:
    """Each write fsyncs when durable (the default) and never when not; the records are the same either way."""
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    with AuditLog(tmp_path / "a.jsonl", durable=durable) as log:
        log.write("startup")
        log.write("stim_stop", applied=None)
        assert len(calls) == (2 if durable else 0)
        log.write("stim_ack", durable=False, command_seq=1, ack=True)
        assert len(calls) == (2 if durable else 0), "a record marked non-durable is not fsync'd on its own"
    assert len(calls) == (3 if durable else 0), "closing a durable log fsyncs what is left"
    assert [r["event"] for r in read_audit(tmp_path / "a.jsonl").records] == ["startup", "stim_stop", "stim_ack"]


def test_default_is_durable(tmp_path: Path) -> None:
    """An AuditLog opened without arguments is durable, as the daemon opens it."""
    with AuditLog(tmp_path / "b.jsonl") as log:
        assert log.durable
