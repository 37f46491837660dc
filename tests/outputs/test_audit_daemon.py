"""The daemon and its audit log, in process with the virtual board: what a start reads and records, and a log that
cannot take the startup record."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

import neurostimd.outputs.audit
import neurostimd.safe_io
from neurostimd.outputs.audit import AuditLog, DoseRecovery, read_boot_id, verify
from neurostimd.service.daemon import EX_CONFIG, EX_OK, Daemon
from tests.outputs.audit_clocks import ON, command
from tests.service.inprocess import FullDisk, run_daemon, virtual_config


def test_a_start_reads_the_log_once_and_records_what_recovery_needs(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A start opens the audit log for reading once (the active segment), whatever else the folder holds; its
    startup record carries the boot id and checkpoint interval, and board_ready the board's watchdog and the
    longest exchange."""
    cfg = virtual_config(tmp_path, rotate_mb=0.02)
    with AuditLog(cfg.audit.path, durable=False, rotate_mb=0.02) as log:
        for _ in range(200):
            command(log, ON)
    assert len(neurostimd.outputs.audit.segments(cfg.audit.path)) >= 2
    opened: list[str] = []
    real_open = neurostimd.safe_io.open_regular

    def counting_open(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if (flags & os.O_ACCMODE) == os.O_RDONLY and Path(path).name.startswith("audit.jsonl"):
            opened.append(Path(path).name)
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(neurostimd.outputs.audit, "open_regular", counting_open)
    monkeypatch.setattr(neurostimd.safe_io, "open_regular", counting_open)
    code, _ = run_daemon(cfg, 0.5)
    assert code == EX_OK
    assert opened == ["audit.jsonl"]
    recs = list(neurostimd.outputs.audit.iter_records(cfg.audit.path))
    start = next(r for r in recs if r["event"] == "startup")
    assert start["boot_id"] == read_boot_id() and start["checkpoint_ms"] == 1000
    assert start["prior_daily_stim_s"] > 0, "the earlier commands' stimulation was recovered"
    ready = next(r for r in recs if r["event"] == "board_ready")
    assert ready["board_watchdog_ms"] == 250 and ready["exchange_ms"] == 300
    assert verify(cfg.audit.path).ok


def test_a_log_that_cannot_take_the_startup_record_refuses_the_start(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """An audit log that opens but cannot be written (full disk) is exit 78 with the reason, before any board
    contact, not a traceback."""
    cfg = virtual_config(tmp_path)
    Path(cfg.audit.path).touch()
    FullDisk(monkeypatch, Path(cfg.audit.path), full=True)
    with capture_logs() as logs:
        code, daemon = run_daemon(cfg, 5.0)
    assert code == EX_CONFIG
    refused = [e for e in logs if e["event"] == "startup_refused"]
    assert refused and "No space left on device" in refused[0]["error"]
    assert getattr(daemon, "loop", None) is None


def test_the_daemon_warns_when_the_log_is_ahead_of_the_clock(tmp_path: Path) -> None:
    """The daemon logs the recovered dose, and a warning naming the clock when the log is ahead of it."""
    with AuditLog(tmp_path / "audit.jsonl", durable=False) as log, capture_logs() as logs:
        Daemon._log_recovery(log, DoseRecovery(daily_stim_s=12.0, open_s=1.5, clock_back_s=3600.0,
                                               last_record_wall_s=0.0))
    events = {e["event"]: e for e in logs}
    assert events["daily_dose_recovered"]["daily_stim_s"] == 12.0
    assert events["audit_clock_went_back"]["log_level"] == "warning"
    assert events["audit_clock_went_back"]["log_ahead_s"] == 3600.0
