"""The daemon's failure paths, in process with the virtual board: a crash anywhere stops stimulation and exits 70."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from neurostimd.loop import ClosedLoop
from neurostimd.outputs.audit import read_audit
from neurostimd.service.daemon import EX_SOFTWARE, Daemon
from neurostimd.service.notify import SystemdNotifier
from tests.loops import virtual_config

ROOT = Path(__file__).resolve().parents[2]


def _run_until_stimulating_then(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: Any) -> tuple[int, Any]:
    """Run the daemon; once the virtual board stimulates, call fail(loop); return the exit code and the board."""
    seen: dict[str, Any] = {}
    real_tick = ClosedLoop.tick

    def tick(self: ClosedLoop, deadline_ns: int | None = None) -> Any:
        seen["loop"] = self
        if self.driver is not None and self.driver.board.stimulating and "failed" not in seen:  # type: ignore[attr-defined]
            seen["failed"] = True
            fail(self)
        return real_tick(self, deadline_ns)

    monkeypatch.setattr(ClosedLoop, "tick", tick)
    daemon = Daemon(virtual_config(tmp_path), None, notifier=SystemdNotifier({}))
    t0 = time.monotonic()
    code = daemon.run(duration_s=30.0)
    assert time.monotonic() - t0 < 30.0, "the daemon stopped on the failure, not at the end of its duration"
    assert seen.get("failed"), "the board never stimulated, so the failure was not exercised"
    return code, seen["loop"].driver.board


def _shutdown_stop_confirmed(tmp_path: Path) -> bool:
    recs = read_audit(tmp_path / "audit.jsonl").records
    stop = [r for r in recs if r["event"] == "stim_stop" and r.get("reason") == "shutdown"]
    return bool(stop) and any(r["event"] == "stim_ack" and r["command_seq"] == stop[-1]["seq"] and r["ack"]
                              for r in recs)


def test_an_exception_in_the_loop_stops_stimulation_and_exits_70(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug that raises inside a tick: STOP confirmed by the board, audit closed, exit 70 for systemd to restart."""

    def boom(_loop: ClosedLoop) -> None:
        raise RuntimeError("injected bug")

    code, board = _run_until_stimulating_then(tmp_path, monkeypatch, boom)
    assert code == EX_SOFTWARE
    assert not board.stimulating
    assert _shutdown_stop_confirmed(tmp_path)
    last = read_audit(tmp_path / "audit.jsonl").records[-1]
    assert last["event"] == "shutdown" and last["exit_code"] == EX_SOFTWARE


def test_a_crashed_thread_stops_stimulation_and_exits_70(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any thread of the process dying with an exception ends the daemon the same way."""
    crashed: list[threading.Thread] = []

    def crash_a_thread(_loop: ClosedLoop) -> None:
        t = threading.Thread(target=lambda: 1 / 0, name="doomed")
        crashed.append(t)
        t.start()
        t.join()

    code, board = _run_until_stimulating_then(tmp_path, monkeypatch, crash_a_thread)
    assert crashed and code == EX_SOFTWARE
    assert not board.stimulating
    assert _shutdown_stop_confirmed(tmp_path)
    assert threading.excepthook is not None and getattr(threading.excepthook, "__self__", None) is None, \
        "the daemon gives the process its excepthook back"
