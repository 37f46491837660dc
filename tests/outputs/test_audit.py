"""Audit log contents, fsync-before-return, seq across restarts and tolerance of a torn last line."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import pytest

from neurostimd.core.controller import ControlInputs, Controller, command_fields
from neurostimd.core.policy import PolicyConfig
from neurostimd.core.safety import GateResult, SafetyConfig
from neurostimd.core.stimtable import notebook_table
from neurostimd.drivers.types import StimParams
from neurostimd.outputs import audit as audit_mod
from neurostimd.outputs.audit import AuditLog, read_audit


def test_command_record_has_design_fields(tmp_path: Path) -> None:
    """A stim_command line carries every docs/design.md field, and the ack follows as stim_ack with the command's
    seq."""
    path = tmp_path / "audit.jsonl"
    req = StimParams(100.0, 5.0, 500.0)
    res = GateResult(applied=StimParams(100.0, 3.0, 500.0), limited_by=["charge_per_phase", "charge_density"],
                     refused=False)
    with AuditLog(path) as log:
        rec = log.write("stim_command", **command_fields(state=2, confidence=0.93, requested=req, result=res,
                                                          t_data_s=12.5))
        log.write("stim_ack", command_seq=rec["seq"], ack=True)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    cmd, ack = lines
    assert cmd["event"] == "stim_command" and cmd["state"] == 2 and cmd["confidence"] == 0.93
    assert cmd["requested"] == {"frequency_hz": 100.0, "amplitude_ma": 5.0, "pulse_width_us": 500.0}
    assert cmd["applied"] == {"frequency_hz": 100.0, "amplitude_ma": 3.0, "pulse_width_us": 500.0}
    assert cmd["limited_by"] == ["charge_per_phase", "charge_density"] and cmd["t_data_s"] == 12.5
    assert cmd["ack"] is None and isinstance(cmd["t_mono_ns"], int)
    assert datetime.fromisoformat(cmd["t_wall"]).utcoffset() is not None
    assert ack == {**ack, "event": "stim_ack", "command_seq": cmd["seq"], "ack": True, "seq": cmd["seq"] + 1}


def test_stop_record_when_gate_sends_nothing(tmp_path: Path) -> None:
    """A command whose gate result sends nothing is recorded as stim_stop with applied null and its reason."""
    ctl = Controller(PolicyConfig().build(notebook_table()), SafetyConfig(), stale_after_ms=250.0)
    cmd = ctl.step(0.0, ControlInputs(probs=None, data_age_ms=None))
    with AuditLog(tmp_path / "a.jsonl") as log:
        rec = log.write(cmd.event, **cmd.audit_fields())
    assert rec["event"] == "stim_stop" and rec["applied"] is None and rec["requested"] is None
    assert rec["reason"] == cmd.decision.reason and rec["faults"] == list(cmd.fault.faults)


def test_line_is_fsynced_before_write_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """write() fsyncs the file with the new line already in it, before it returns."""
    path = tmp_path / "a.jsonl"
    seen: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        real_fsync(fd)
        seen.append(path.read_text())

    monkeypatch.setattr(audit_mod.os, "fsync", spy)
    with AuditLog(path) as log:
        log.write("startup", version="x")
        assert len(seen) == 1 and '"event":"startup"' in seen[0]
        log.write("fault", faults=["stale_data"])
        assert len(seen) == 2 and '"event":"fault"' in seen[1]


def test_seq_continues_and_earlier_lines_are_kept(tmp_path: Path) -> None:
    """Reopening the log appends after the earlier lines and continues seq."""
    path = tmp_path / "a.jsonl"
    with AuditLog(path) as log:
        log.write("startup")
        log.write("shutdown")
    with AuditLog(path) as log:
        rec = log.write("startup")
    recs = read_audit(path).records
    assert [r["seq"] for r in recs] == [0, 1, 2] and rec["seq"] == 2
    assert [r["event"] for r in recs] == ["startup", "shutdown", "startup"]


def test_torn_last_line_is_tolerated(tmp_path: Path) -> None:
    """A torn final line is skipped and reported by read_audit, and a reopened log starts on a fresh line."""
    path = tmp_path / "a.jsonl"
    with AuditLog(path) as log:
        log.write("startup")
        log.write("stim_command", state=1)
    with path.open("ab") as f:
        f.write(b'{"event":"stim_command","seq":2,"sta')
    contents = read_audit(path)
    assert [r["seq"] for r in contents.records] == [0, 1] and contents.bad_lines == [3] and contents.torn_tail
    with AuditLog(path) as log:
        assert log.write("startup")["seq"] == 2
    contents = read_audit(path)
    assert [r["seq"] for r in contents.records] == [0, 1, 2] and contents.bad_lines == [3]
    assert not contents.torn_tail


def test_non_finite_and_numpy_values_stay_valid_json(tmp_path: Path) -> None:
    """NaN, infinity and numpy values are written so that every line is strict JSON."""
    import numpy as np

    path = tmp_path / "a.jsonl"
    with AuditLog(path) as log:
        log.write("fault", confidence=float("nan"), probs=np.array([0.1, 0.9], dtype=np.float32), n=np.int64(3))
    rec = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert rec["confidence"] == "nan" and rec["n"] == 3 and len(rec["probs"]) == 2


def test_unwritable_log_is_a_clear_error(tmp_path: Path) -> None:
    """An audit log that cannot be opened raises AuditError naming the path."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(audit_mod.AuditError, match="cannot open audit log"):
        AuditLog(blocker / "sub" / "a.jsonl")
