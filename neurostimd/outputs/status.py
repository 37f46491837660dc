"""The running daemon's state file (written atomically by a loop listener, `StateFile`) and `neurostimd status`,
which reads it."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

from neurostimd.listeners import BaseListener, LoopView, TickStats
from neurostimd.safe_io import UnsafePath, check_regular_or_absent

log = structlog.get_logger(__name__)


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Replace the state file atomically, so a reader never sees half a file. UnsafePath (nothing written) if
    something other than a regular file is at the path: a symlink, FIFO or device planted there is not replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    check_regular_or_absent(path, what="state file")
    fd, tmp = tempfile.mkstemp(prefix=".state-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(state, f)
        os.chmod(tmp, 0o644)  # nothing secret in it; `neurostimd status` may run as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class StateFile(BaseListener):
    """The state file as a loop listener: rewritten at most every `interval_s` after a tick, and once more at
    shutdown (`write(loop, exited=True)`). A path that is not a regular file is refused (logged once); other write
    errors are logged only when asked (at shutdown), not twice a second."""

    def __init__(self, path: Path, *, shadow: bool, started_mono: float | None = None,
                 interval_s: float = 0.5) -> None:
        self.path = Path(path)
        self.shadow = shadow
        self.started_mono = time.monotonic() if started_mono is None else started_mono
        self.interval_s = interval_s
        self._last_write = -float("inf")
        self._refused = False

    def on_tick(self, stats: TickStats, loop: LoopView) -> None:
        if time.monotonic() - self._last_write >= self.interval_s:
            self.write(loop)

    def snapshot(self, loop: LoopView, *, exited: bool = False) -> dict[str, Any]:
        """What the file holds: the loop's state, its sample counts and the driver's counters."""
        s = loop.state
        state: dict[str, Any] = {
            "pid": os.getpid(), "t_unix": time.time(), "phase": s.phase, "shadow": self.shadow,
            "state": s.state, "state_name": s.state_name, "confidence": s.confidence, "probs": s.probs,
            "applied": s.applied, "fault": s.fault, "limited_by": s.limited_by, "ticks": s.ticks,
            "overruns": s.overruns, "samples": loop.ring.samples_written, "gaps": loop.ring.gaps,
            "commands": s.commands, "send_failures": s.send_failures, "exited": exited,
            "uptime_s": round(time.monotonic() - self.started_mono, 3),
            # The daemon must run the model through LiteRT alone; this lets anyone check it never loaded TensorFlow.
            "tensorflow_loaded": "tensorflow" in sys.modules,
        }
        if s.listener_failures:
            state["listener_failures"] = dict(s.listener_failures)
        if loop.driver_counters is not None:
            state["driver"] = {k: v for k, v in loop.driver_counters.__dict__.items() if k != "extra"}
        return state

    def write(self, loop: LoopView, *, exited: bool = False, report_errors: bool = False) -> None:
        self._last_write = time.monotonic()
        try:
            write_state(self.path, self.snapshot(loop, exited=exited))
        except UnsafePath as err:
            if not self._refused:  # say it once, not twice a second
                self._refused = True
                log.error("state_file_refused", path=str(self.path), error=str(err))
        except OSError as err:
            if report_errors:
                log.warning("state_file_unwritable", path=str(self.path), error=str(err))
