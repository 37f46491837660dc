"""The driver contract against the simulated StimJim in its own process behind a pty (both firmwares), and the
re-arm discontinuity measured there in real time. neurostimd-sim's launcher starts only the board simulator, so the
StimJim's process is spawned here the same way: `python -m neurostimd.firmware_sim.stimjim --pty`, PTY line first."""

from __future__ import annotations

import itertools
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from neurostimd.drivers.base import Driver
from neurostimd.drivers.stimjim.driver import StimJimDriver
from neurostimd.drivers.types import StimParams
from tests.contract.suite import DriverContract

ROOT = Path(__file__).resolve().parents[2]


class StimJimProcess:
    """`python -m neurostimd.firmware_sim.stimjim --pty --log LOG ARGS`, with `path` its pty."""

    def __init__(self, log: Path, *args: str, timeout_s: float = 20.0) -> None:
        self.log = log
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
        self._stderr = log.with_suffix(".stderr").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "neurostimd.firmware_sim.stimjim", "--pty", "--log",
                                      str(log), *args], stdout=subprocess.PIPE, stderr=self._stderr, env=env)
        assert self.proc.stdout is not None
        buf = b""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in buf and time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
        line = buf.split(b"\n", 1)[0].decode(errors="replace")
        if not line.startswith("PTY "):
            self.stop()
            raise RuntimeError(f"the StimJim simulator printed {line!r} instead of 'PTY <path>' "
                               f"(stderr: {log.with_suffix('.stderr')})")
        self.path = line.split(" ", 1)[1].strip()

    def events(self) -> list[dict]:  # type: ignore[type-arg]
        return [json.loads(x) for x in self.log.read_text().splitlines() if x.strip()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


@pytest.fixture(scope="class")
def stimjim_for_class(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                      ) -> Iterator[StimJimProcess]:
    sim = StimJimProcess(tmp_path_factory.mktemp("stimjim") / "sim.jsonl", *request.cls.SIM_ARGS)
    request.cls.port = sim.path
    try:
        yield sim
    finally:
        sim.stop()


@pytest.mark.usefixtures("stimjim_for_class")
class TestStimJimTeensyOverPty(DriverContract):
    SIM_ARGS: tuple[str, ...] = ("--firmware", "teensy")
    CAPABILITIES = frozenset()
    port = ""

    def make_driver(self) -> Driver:
        return StimJimDriver(port=self.port, reply_timeout_ms=500.0)  # two processes on a loaded machine


class TestStimJimRp2354bOverPty(TestStimJimTeensyOverPty):
    SIM_ARGS = ("--firmware", "rp2354b")


@pytest.mark.parametrize("firmware", ["teensy", "rp2354b"])
def test_rearm_discontinuity_over_a_pty_in_real_time(firmware: str, tmp_path: Path) -> None:
    """service() every ~10 ms of real time for 3 s at 50 Hz: every inter-pulse interval the device logs is at most
    one period (+1 ms of scheduling), and the ones shortened by a re-arm are at least a third of a period (the
    driver aims at half; host and device clocks differ by the pty's latency). Closing the driver stops the output
    with the device's own command (host_stop)."""
    sim = StimJimProcess(tmp_path / "sim.jsonl", "--firmware", firmware, "--log-pulses")
    try:
        with StimJimDriver(port=sim.path, reply_timeout_ms=500.0) as drv:
            drv.set_stimulation(StimParams(frequency_hz=50.0, amplitude_ma=0.5, pulse_width_us=100.0))
            end = time.monotonic() + 3.0
            while time.monotonic() < end:
                drv.service(time.monotonic_ns())
                time.sleep(0.01)
            assert drv.status().stimulating
            rearms = drv.counters.extra["rearms"]
    finally:
        sim.stop()
    events = sim.events()
    pulses = [e["t_mono_ns"] for e in events if e["event"] == "pulse"]
    intervals = [b - a for a, b in itertools.pairwise(pulses)]
    period = 20_000_000
    off_grid = sorted(x for x in intervals if x != period)
    print(f"{firmware}: {rearms} re-arms, {len(pulses)} pulses, re-arm intervals / period: "
          f"min {off_grid[0] / period:.3f} median {off_grid[len(off_grid) // 2] / period:.3f} "
          f"max {off_grid[-1] / period:.3f}")
    assert rearms >= 15 and len(off_grid) <= rearms
    assert max(intervals) <= period + 1_000_000, "a re-arm left a gap"
    assert min(off_grid) >= period // 3
    assert any(e["event"] == "stim_off" and e["reason"] == "host_stop" for e in events)
