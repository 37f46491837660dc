"""The daemon in process with the virtual board, and a file system that fills up for the audit log alone."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from neurostimd.config import Config, parse_config
from neurostimd.daemon import Daemon
from neurostimd.notify import SystemdNotifier

ROOT = Path(__file__).resolve().parents[2]


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


def run_daemon(cfg: Config, duration_s: float) -> tuple[int, Daemon]:
    """Run the daemon in this process for `duration_s`; its exit code and the Daemon."""
    daemon = Daemon(cfg, None, notifier=SystemdNotifier({}))
    return daemon.run(duration_s=duration_s), daemon


class FullDisk:
    """os.write fails with ENOSPC for the audit log's file while `full`, as a full file system does; every other
    descriptor writes as usual."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, path: Path, *, full: bool = False) -> None:
        self.full = full
        self.path = str(path)
        real = os.write

        def write(fd: int, data: Any) -> int:
            if self.full and os.readlink(f"/proc/self/fd/{fd}") == self.path:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(fd, data)

        monkeypatch.setattr(os, "write", write)
