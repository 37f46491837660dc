"""Process plumbing shared by the loop and daemon benchmarks: the simulated board, the daemon under a socket-level
service manager (READY=1 timing), a CPU hog for the other core, and percentile helpers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[3]  # the project root (config/, models/)


def pct(values: Sequence[float], q: float) -> float | None:
    v = [x for x in values if x is not None and np.isfinite(x)]
    return round(float(np.percentile(v, q)), 4) if v else None


@contextlib.contextmanager
def simulator(log: Path, *args: str) -> Iterator[str]:
    """`neurostimd-sim --pty` as a subprocess (its own log beside `log`, as `make run` keeps it); yields the pty."""
    from neurostimd.commands.simulator import SimulatorProcess

    with SimulatorProcess(args, log=log, stderr=log.with_suffix(".stderr")) as sim:
        yield sim.port


@contextlib.contextmanager
def busy_core() -> Iterator[None]:
    """Keep one core busy with a separate process (the 'other core busy' condition of the loop targets)."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
    try:
        yield
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout:
        proc.stdout.close()


@dataclass
class DaemonRun:
    ready_s: float | None = None
    rss_mb: float | None = None
    cpu_percent: float | None = None
    exit_code: int | None = None
    timings: list[dict[str, Any]] = field(default_factory=list)
    workdir: Path | None = None


SIM_SOURCE = '[source]\nkind = "board"            # samples come from the board itself\n'


def bench_config(workdir: Path, extra: str = "", *, realtime: bool = False, lock_memory: bool = True,
                 bundle: Path | None = None, source: str | None = None) -> Path:
    """config/sim.toml with outputs in workdir and JSON logs (and `[runtime] realtime = true` if asked); `bundle`
    instead of models/default, `source` (a whole [source] table) instead of the board's samples."""
    text = (ROOT / "config" / "sim.toml").read_text()
    if source is not None:
        if SIM_SOURCE not in text:
            raise RuntimeError("config/sim.toml's [source] table changed: update bench._procs.SIM_SOURCE")
        text = text.replace(SIM_SOURCE, source)
    text = text.replace('bundle = "models/default"', f'bundle = "{bundle or ROOT / "models" / "default"}"')
    text = text.replace('path = "runs/sim/audit.jsonl"', f'path = "{workdir / "audit.jsonl"}"')
    text = text.replace('state_file = "runs/sim/state.json"', f'state_file = "{workdir / "state.json"}"'
                        + ("\nrealtime = true" if realtime else "")
                        + ("\nlock_memory = false" if realtime and not lock_memory else ""))
    text = text.replace('format = "auto"', 'format = "json"')
    path = workdir / "bench.toml"
    path.write_text(text + extra)
    return path


def run_daemon(pty: str, seconds: float, *, progress: Any, settle_s: float = 3.0,
               realtime: bool = False, lock_memory: bool = True, bundle: Path | None = None,
               source: str | None = None) -> DaemonRun:
    """Start the daemon on `pty` under a NOTIFY_SOCKET, time READY=1, then measure RSS and CPU over `seconds`;
    `realtime`: with [runtime] realtime = true (docs/realtime.md); `bundle` instead of models/default, `source` a
    [source] table instead of the board's samples."""
    out = DaemonRun()
    workdir = Path(tempfile.mkdtemp(prefix="neurostimd-bench-"))
    out.workdir = workdir
    cfg = bench_config(workdir, realtime=realtime, lock_memory=lock_memory, bundle=bundle, source=source)
    sock_path = str(workdir / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(0.05)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, PYTHONUNBUFFERED="1")
    timings = workdir / "timings.jsonl"
    t_start = time.monotonic()
    with open(workdir / "daemon.log", "w") as log_f:
        proc = subprocess.Popen([sys.executable, "-m", "neurostimd", "run", "--config", str(cfg), "--port", pty,
                                 "--timings", str(timings)], stdout=log_f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            deadline = t_start + 60
            while out.ready_s is None and time.monotonic() < deadline and proc.poll() is None:
                try:
                    msg = sock.recv(4096).decode()
                except TimeoutError:
                    continue
                if "READY=1" in msg.splitlines():
                    out.ready_s = round(time.monotonic() - t_start, 3)
            if out.ready_s is None:
                raise RuntimeError(f"the daemon did not become READY; see {workdir / 'daemon.log'}")
            progress(f"daemon READY after {out.ready_s} s; measuring for {seconds:.0f} s")
            time.sleep(settle_s)
            ps = psutil.Process(proc.pid)
            c0, w0 = ps.cpu_times(), time.monotonic()
            n_lines0 = _count_lines(timings)
            time.sleep(seconds)
            c1, w1 = ps.cpu_times(), time.monotonic()
            out.rss_mb = round(ps.memory_info().rss / 2**20, 1)
            out.cpu_percent = round(100 * ((c1.user + c1.system) - (c0.user + c0.system)) / (w1 - w0), 2)
            proc.send_signal(signal.SIGTERM)
            out.exit_code = proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            sock.close()
    lines = timings.read_text().splitlines()
    out.timings = [json.loads(x) for x in lines[n_lines0:] if x.strip()]
    return out


def _count_lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0
