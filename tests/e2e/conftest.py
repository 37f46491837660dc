"""Fixtures for end-to-end tests: the simulated board and the daemon, each a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from neurostimd.commands.simulator import SimulatorProcess

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = Path(os.environ.get("NEUROSTIMD_TEST_BUNDLE", ROOT / "models" / "default"))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written right now
    return out


def wait_for(pred: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class Daemon:
    def __init__(self, proc: subprocess.Popen[str], workdir: Path, config: Path) -> None:
        self.proc, self.workdir, self.config = proc, workdir, config
        self.audit_path = workdir / "audit.jsonl"
        self.state_path = workdir / "state.json"
        self.stdout_path = workdir / "daemon.stdout"

    def audit(self) -> list[dict[str, Any]]:
        return read_jsonl(self.audit_path)

    def logs(self) -> list[dict[str, Any]]:
        return read_jsonl(self.stdout_path)

    def state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def stimulating(self) -> bool:
        return any(r["event"] == "stim_ack" and r["ack"] for r in self.audit()) and any(
            r["event"] == "stim_command" and r.get("applied") for r in self.audit())


def write_config(workdir: Path, *, extra: str = "", bundle: Path = BUNDLE, **sections: str) -> Path:
    """A sim.toml-like config whose outputs live in workdir."""
    base = (ROOT / "config" / "sim.toml").read_text()
    base = base.replace('bundle = "models/default"', f'bundle = "{bundle}"')
    base = base.replace('path = "runs/sim/audit.jsonl"', f'path = "{workdir / "audit.jsonl"}"')
    base = base.replace('state_file = "runs/sim/state.json"', f'state_file = "{workdir / "state.json"}"')
    base = base.replace('dir = "runs/sim/recordings"', f'dir = "{workdir / "recordings"}"')
    base = base.replace('format = "auto"', 'format = "json"')
    path = workdir / "neurostimd.toml"
    path.write_text(base + extra)
    return path


@pytest.fixture
def need_bundle() -> Path:
    if not (BUNDLE / "manifest.json").exists():
        pytest.fail(f"the default model bundle is missing at {BUNDLE}; rebuild it (see README, 'Default model')")
    return BUNDLE


@pytest.fixture
def start_sim(tmp_path: Path) -> Iterator[Callable[..., SimulatorProcess]]:
    """Start simulators (event log `tmp_path/log_name`, stderr beside it); all are stopped after the test."""
    sims: list[SimulatorProcess] = []

    def start(*args: str, log_name: str = "board.jsonl") -> SimulatorProcess:
        sim = SimulatorProcess(args, log=tmp_path / log_name, stderr=tmp_path / (log_name + ".stderr"))
        sims.append(sim)
        return sim

    yield start
    for sim in sims:
        sim.stop(timeout_s=5)


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    procs: list[subprocess.Popen[str]] = []
    files = []

    def start(config: Path, *args: str, env: dict[str, str] | None = None) -> Daemon:
        d_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        out = open(tmp_path / "daemon.stdout", "w")  # noqa: SIM115
        files.append(out)
        proc = subprocess.Popen([sys.executable, "-m", "neurostimd", "run", "--config", str(config), *args],
                                stdout=out, stderr=subprocess.STDOUT, text=True, env=d_env,
                                start_new_session=True)
        procs.append(proc)
        return Daemon(proc, tmp_path, config)

    yield start
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    for f in files:
        f.close()
