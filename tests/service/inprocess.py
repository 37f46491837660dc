"""The daemon in process with the virtual board, and a file system that fills up for the audit log alone."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from neurostimd.config import Config
from neurostimd.service.daemon import Daemon
from neurostimd.service.notify import SystemdNotifier
from tests.loops import virtual_config

__all__ = ["FullDisk", "run_daemon", "virtual_config"]


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
