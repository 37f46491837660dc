"""Simulator processes for tests, through the one launcher (neurostimd.commands.simulator.SimulatorProcess): always
cleaned up, even when a test fails."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from neurostimd.commands.simulator import SimulatorProcess

ROOT = Path(__file__).resolve().parents[2]


class SimProcess(SimulatorProcess):
    """A running simulator with its event log `tmp/log_name` and its stderr beside it; `path` is the pty (or its
    --pty-link)."""

    def __init__(self, tmp: Path, *args: str, log_name: str = "sim.jsonl", link: Path | None = None) -> None:
        super().__init__(args, log=tmp / log_name, stderr=tmp / (log_name + ".stderr"), link=link)

    @property
    def path(self) -> str:
        return self.port


@contextlib.contextmanager
def running_sim(tmp: Path, *args: str, **kw: object) -> Iterator[SimProcess]:
    sim = SimProcess(tmp, *args, **kw)  # type: ignore[arg-type]  # keyword pass-through
    try:
        yield sim
    finally:
        sim.stop()


def wait_for(pred, timeout_s: float, interval_s: float = 0.01):  # type: ignore[no-untyped-def]
    """Poll pred() until it returns something truthy (returned) or the timeout passes (None)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval_s)
    return None


__all__ = ["ROOT", "SimProcess", "running_sim", "wait_for"]
