"""Building the closed loop and the daemon in process for tests: the virtual board (the real driver, protocol and
board logic) on a virtual clock, and the short-timed config the in-process daemon tests share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neurostimd.clock import VirtualClock
from neurostimd.config import Config, parse_config
from neurostimd.firmware_sim.inprocess import VirtualBoardDriver
from neurostimd.loop import ClosedLoop
from neurostimd.outputs.audit import AuditLog
from neurostimd.sources.board import BoardSource

ROOT = Path(__file__).resolve().parent.parent


def board_loop(cfg: Config, bundle: Any, tmp_path: Path, *, driver_class: type[VirtualBoardDriver] = VirtualBoardDriver,
               **drv_kw: Any) -> tuple[ClosedLoop, VirtualBoardDriver, AuditLog, VirtualClock]:
    """A loop on the virtual board's own samples (32 ch, 1 kHz, 50-sample blocks), auditing to tmp_path; the caller
    closes the audit log and the driver."""
    clock = VirtualClock()
    drv = driver_class(n_channels=32, sample_rate_hz=1000.0, clock=clock, block_size=50, **drv_kw)
    drv.open()
    src = BoardSource(drv)
    src.open()
    audit = AuditLog(tmp_path / "audit.jsonl", durable=False)
    return ClosedLoop(cfg, clock=clock, source=src, bundle=bundle, audit=audit, driver=drv), drv, audit, clock


def virtual_config(tmp_path: Path, **audit: Any) -> Config:
    """A config for the in-process virtual board with short policy and recovery times; outputs in tmp_path."""
    return parse_config({
        "source": {"kind": "board"},
        "device": {"kind": "virtual", "n_channels": 32, "sample_rate_hz": 1000.0},
        "model": {"bundle": str(ROOT / "models" / "default")},
        "policy": {"onset_ms": 100, "termination_ms": 100, "blanking_ms": 200},
        "safety": {"recovery_clean_ms": 200, "ramp_ma_per_s": 20.0},
        "audit": {"path": str(tmp_path / "audit.jsonl"), **audit},
        "runtime": {"state_file": str(tmp_path / "state.json")},
    })
