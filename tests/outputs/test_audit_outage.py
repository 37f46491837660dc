"""A disk that fills up while the daemon stimulates (in process, with the virtual board): the audit log at the
daemon's boundary, as a fault that forces the safe state off and a STOP sent even though it cannot be recorded."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

import neurostimd.outputs.audit
from neurostimd.loop import ClosedLoop
from neurostimd.outputs.audit import AuditLog, verify
from neurostimd.service.daemon import EX_OK, Daemon
from neurostimd.service.notify import SystemdNotifier
from tests.service.inprocess import FullDisk, virtual_config


def test_a_full_disk_stops_stimulation_unaudited_then_resumes_when_writable(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills while stimulating: the daemon keeps running, sends STOP though it cannot record it (logged as
    an error), sends nothing else while the log is down, writes `audit_resumed` with what it missed once the disk
    has room, and stimulates again only after recovery_clean_ms; the chain is intact and the dose not overcounted."""
    cfg = virtual_config(tmp_path)
    disk = FullDisk(monkeypatch, Path(cfg.audit.path))
    marks: dict[str, int] = {}
    real_tick = ClosedLoop.tick
    daemon_box: list[Daemon] = []

    def tick(self: ClosedLoop, deadline_ns: int | None = None) -> Any:
        stats = real_tick(self, deadline_ns)
        now = time.monotonic_ns()
        stimulating = self.driver.board.stimulating  # type: ignore[union-attr]
        if "on" not in marks and stimulating:
            marks["on"] = now
        elif "full" not in marks and "on" in marks and now - marks["on"] > 1.5e9:
            disk.full, marks["full"] = True, now
        elif "free" not in marks and "full" in marks and now - marks["full"] > 1.5e9:
            disk.full, marks["free"] = False, now
        elif "free" in marks and stimulating and now - marks["free"] > 1e9:
            daemon_box[0].request_stop()
        return stats

    monkeypatch.setattr(ClosedLoop, "tick", tick)
    daemon = Daemon(cfg, None, notifier=SystemdNotifier({}))
    daemon_box.append(daemon)
    with capture_logs() as logs:
        code = daemon.run(duration_s=30.0)
    assert code == EX_OK, "the daemon ran through the outage"
    assert {"on", "full", "free"} <= set(marks), marks
    events = [e["event"] for e in logs]
    unaudited = [e for e in logs if e["event"] == "stim_stop_unaudited"]
    assert "audit_unavailable" in events and unaudited and unaudited[0]["ack"] is True
    assert unaudited[0]["log_level"] == "error"
    board = daemon.loop.driver.event_log.events  # type: ignore[union-attr]
    stop = next(e for e in board if e["event"] == "stim_off" and e["t_mono_ns"] >= marks["full"])
    assert stop["reason"] == "host_stop"
    # the outage is seen at the next write: a checkpoint within one interval (plus slack for a loaded machine)
    assert stop["t_mono_ns"] - marks["full"] < 1.0e9 + 0.5e9
    recs = list(neurostimd.outputs.audit.iter_records(cfg.audit.path))
    resumed = next(r for r in recs if r["event"] == "audit_resumed")
    assert resumed["t_mono_ns"] >= marks["free"] and resumed["down_s"] > 0.3
    assert resumed["missed"].get("dose_checkpoint", 0) >= 1 and resumed["stopped_at"] is not None
    assert resumed["unaudited_stops"][0]["ack"] is True
    sent_while_down = [e for e in board if e["event"] == "stim_applied"
                       and stop["t_mono_ns"] < e["t_mono_ns"] < resumed["t_mono_ns"]]
    assert sent_while_down == [], "nothing but STOP while the log was down"
    again = next(e for e in board if e["event"] == "stim_applied" and e["t_mono_ns"] > resumed["t_mono_ns"])
    assert again["t_mono_ns"] - resumed["t_mono_ns"] >= 0.2e9, "only after recovery_clean_ms of clean data"
    cleared = [r for r in recs if r["event"] == "fault_cleared" and r["seq"] > resumed["seq"]]
    assert cleared, "the fault clears after the log is back"
    assert verify(cfg.audit.path).ok
    board_s, on_since = 0.0, None
    for e in board:
        if e["event"] == "stim_applied" and on_since is None:
            on_since = e["t_mono_ns"]
        elif e["event"] == "stim_off" and on_since is not None:
            board_s, on_since = board_s + (e["t_mono_ns"] - on_since) / 1e9, None
    with AuditLog(cfg.audit.path, durable=False) as log:
        recovered = log.recovered_daily_stim_s()
    assert board_s <= recovered <= board_s + 1.0, "the outage itself is not counted as stimulation"


def test_a_config_reload_while_the_disk_is_full_does_not_crash_the_daemon(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGHUP while the audit log cannot be written: the reload's record puts the log down (audit_unavailable, off)
    instead of raising out of the daemon (it exited 70 and restarted into the same full disk)."""
    import tomli_w

    cfg = virtual_config(tmp_path)
    cfg_path = tmp_path / "neurostimd.toml"
    cfg_path.write_text(tomli_w.dumps(cfg.model_dump(mode="json", exclude_none=True)))
    disk = FullDisk(monkeypatch, Path(cfg.audit.path))
    real_tick = ClosedLoop.tick
    daemon_box: list[Daemon] = []
    marks: dict[str, int] = {}

    def tick(self: ClosedLoop, deadline_ns: int | None = None) -> Any:
        stats = real_tick(self, deadline_ns)
        now = time.monotonic_ns()
        if "full" not in marks and self.driver.board.stimulating:  # type: ignore[union-attr]
            disk.full, marks["full"] = True, now
            daemon_box[0]._reload.set()  # what SIGHUP does
        elif "full" in marks and now - marks["full"] > 1e9:
            daemon_box[0].request_stop()
        return stats

    monkeypatch.setattr(ClosedLoop, "tick", tick)
    daemon = Daemon(cfg, str(cfg_path), notifier=SystemdNotifier({}))
    daemon_box.append(daemon)
    with capture_logs() as logs:
        code = daemon.run(duration_s=30.0)
    assert "full" in marks
    events = [e["event"] for e in logs]
    assert "crashed" not in events and code != 70
    assert "config_reloaded" in events and "audit_unavailable" in events
    assert not daemon.loop.driver.board.stimulating  # type: ignore[union-attr]
