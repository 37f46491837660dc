"""Start and stop `neurostimd-sim` processes for tests: always cleaned up, even when a test fails."""

from __future__ import annotations

import contextlib
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class SimProcess:
    """A running simulator: `path` is the pty (or its --pty-link), `log_path` its event log."""

    def __init__(self, tmp: Path, *args: str, log_name: str = "sim.jsonl", link: Path | None = None) -> None:
        self.log_path = tmp / log_name
        self.stderr_path = tmp / (log_name + ".stderr")
        cmd = [sys.executable, "-m", "neurostimd.firmware_sim", "--pty", "--log", str(self.log_path), *args]
        if link is not None:
            cmd += ["--pty-link", str(link)]
        self._stderr = self.stderr_path.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr, cwd=ROOT)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30.0)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("PTY "):
            self.stop()
            raise RuntimeError(f"neurostimd-sim did not print 'PTY <path>' (got {line!r}); stderr: "
                               f"{self.stderr_path.read_text()[-2000:]}")
        self.pty = line.split(" ", 1)[1].strip()
        self.path = str(link) if link is not None else self.pty

    def events(self) -> list[dict[str, object]]:
        import json

        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()
        return int(self.proc.returncode)


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
