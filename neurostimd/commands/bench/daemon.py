"""Daemon benchmark: time from process start to READY=1 (over a real NOTIFY_SOCKET) and resident memory while
running on the simulated board."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from neurostimd.commands.bench._procs import run_daemon, simulator


def run(progress: Any, quick: bool) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="neurostimd-bench-daemon-"))
    ready: list[float] = []
    rss: list[float] = []
    for i in range(2 if quick else 3):
        with simulator(tmp / f"board{i}.jsonl", "--channels", "32", "--rate", "1000") as pty:
            d = run_daemon(pty, 3.0, progress=progress, settle_s=1.0)
        if d.exit_code != 0:
            raise RuntimeError(f"the daemon exited with {d.exit_code}; see {d.workdir}")
        if d.ready_s is not None:
            ready.append(d.ready_s)
        if d.rss_mb is not None:
            rss.append(d.rss_mb)
        progress(f"daemon: run {i + 1}: READY {d.ready_s} s, RSS {d.rss_mb} MB, exit {d.exit_code}")
    return {
        "daemon.ready_s": round(sorted(ready)[len(ready) // 2], 3) if ready else None,
        "daemon.ready_s_max": max(ready) if ready else None,
        "daemon.rss_mb": max(rss) if rss else None,
    }
