"""The daemon's own checks of the board it attached to, for every device kind: a driver other than the neurostim
board's (which refuses these at its handshake) cannot bring a board without a usable dead-man timer, or with one
longer than the device's settings allow; and dose recovery is told how long an exchange with it may last."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from neurostimd.config import parse_config
from neurostimd.drivers.errors import BoardRefused
from neurostimd.outputs.audit import AuditLog, board_timing, read_audit
from neurostimd.service.daemon import Daemon
from tests.contract.train_driver import TRAIN_LIMITS, TrainDevice, TrainDriver


def _daemon(tmp_path: Path) -> Daemon:
    cfg = parse_config({"device": {"kind": "virtual"}, "source": {"kind": "board"},
                        "audit": {"path": str(tmp_path / "audit.jsonl")}})
    return Daemon(cfg, None)


@pytest.mark.parametrize(("limits", "why"), [
    (replace(TRAIN_LIMITS, watchdog_ms=60_000), "its dead-man timer is 60000 ms, longer than the 500 ms allowed"),
    (replace(TRAIN_LIMITS, watchdog_ms=0), "the board reports no dead-man timer"),
    (replace(TRAIN_LIMITS, max_frequency_hz=0.0), "max_frequency_hz = 0.0 is not a positive finite number"),
])
def test_a_board_the_driver_did_not_refuse_is_refused_by_the_daemon(tmp_path: Path, limits: object,
                                                                     why: str) -> None:
    daemon = _daemon(tmp_path)
    driver = TrainDriver(TrainDevice(limits))  # type: ignore[arg-type]
    with AuditLog(daemon.cfg.audit.path) as audit, pytest.raises(BoardRefused, match=why):
        daemon._open_driver(driver, audit)
    driver.close()
    assert not any(r["event"] == "board_ready" for r in read_audit(daemon.cfg.audit.path).records)


def test_a_usable_board_is_audited_with_the_drivers_exchange_bound(tmp_path: Path) -> None:
    """A driver that does not state how long an exchange may take gets the long default (over-counting the dose
    after a crash, never under-counting); the neurostim board's is its ack timeout x tries."""
    daemon = _daemon(tmp_path)
    driver = TrainDriver(TrainDevice())
    with AuditLog(daemon.cfg.audit.path) as audit:
        daemon._open_driver(driver, audit)
    driver.close()
    ready = [r for r in read_audit(daemon.cfg.audit.path).records if r["event"] == "board_ready"]
    assert len(ready) == 1 and ready[0]["board_watchdog_ms"] == TRAIN_LIMITS.watchdog_ms
    assert ready[0]["exchange_ms"] == 1000.0 == board_timing(driver)["exchange_ms"]
