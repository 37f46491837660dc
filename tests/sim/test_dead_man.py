"""Dead-man timer end to end: a host process holding the serial driver is SIGKILLed while the board stimulates; the
simulator must stop stimulation by itself within its watchdog timeout, 20 times out of 20."""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.sim.simproc import ROOT, running_sim, wait_for

WATCHDOG_MS = 250
BLOCK_PERIOD_MS = 10  # --block 10 at 1000 Hz: the simulator's pacing tick
# The board checks its deadline on every wake-up; allow one pacing tick plus scheduling slack on a shared, loaded
# machine. The measured worst case is printed (pytest -s) for the report.
MARGIN_MS = 100
RUNS = 20

# The host: waits for "go" on stdin (so its imports happen while the previous run is still going), opens the
# board, starts stimulating, says so, then pumps the driver (heartbeats) until it is killed.
HOST = """
import sys
sys.stdin.readline()
import structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout is the handshake channel
from neurostimd.drivers.neurostim_board.driver import SerialBoardDriver
from neurostimd.drivers.types import StimParams
d = SerialBoardDriver(port=sys.argv[1], ack_timeout_ms=250, retries=4, heartbeat_ms=50)
d.open()
d.set_stimulation(StimParams(50.0, 2.0, 200.0))
print("STIMULATING", flush=True)
while True:
    d.read_samples(0.02)
"""


def spawn_host(path: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", HOST, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, cwd=ROOT)


def events(log: Path) -> list[dict[str, object]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_killed_host_makes_the_board_stop_stimulating_within_its_watchdog(tmp_path: Path) -> None:
    """20 of 20 SIGKILLed hosts: each time the board logs stim_off reason watchdog within watchdog_ms plus one
    pacing tick (and a scheduling margin) of the kill."""
    rng = random.Random(5)
    delays_ms: list[float] = []
    silences_ms: list[float] = []
    with running_sim(tmp_path, "--channels", "8", "--watchdog-ms", str(WATCHDOG_MS), "--block", "10") as sim:
        nxt = spawn_host(sim.path)
        hosts = [nxt]
        try:
            for run in range(RUNS):
                host = nxt
                assert host.stdin is not None and host.stdout is not None
                host.stdin.write(b"go\n")
                host.stdin.flush()
                ready, _, _ = select.select([host.stdout], [], [], 60.0)
                assert ready, f"run {run}: host did not start stimulating"
                assert host.stdout.readline().strip() == b"STIMULATING"
                nxt = spawn_host(sim.path)  # the next host imports while this one runs
                hosts.append(nxt)
                n_off_before = sum(1 for e in events(sim.log_path) if e["event"] == "stim_off")
                time.sleep(rng.uniform(0.05, 0.3))  # kill at a random phase of the heartbeat cycle
                t_kill = time.monotonic_ns()  # CLOCK_MONOTONIC: the same clock the simulator logs with
                os.kill(host.pid, signal.SIGKILL)
                host.wait(10)
                offs = wait_for(lambda n=n_off_before: [e for e in events(sim.log_path)
                                                        if e["event"] == "stim_off"][n:], timeout_s=5.0)
                assert offs, f"run {run}: no stim_off within 5 s of the kill"
                off = offs[0]
                assert off["reason"] == "watchdog", f"run {run}: {off}"
                delay_ms = (int(off["t_mono_ns"]) - t_kill) / 1e6  # type: ignore[call-overload]
                delays_ms.append(delay_ms)
                silences_ms.append(float(off["silent_ms"]))  # type: ignore[arg-type]
                assert 0 < delay_ms <= WATCHDOG_MS + BLOCK_PERIOD_MS + MARGIN_MS, f"run {run}: {delay_ms:.1f} ms"
                assert silences_ms[-1] <= WATCHDOG_MS + BLOCK_PERIOD_MS + MARGIN_MS
        finally:
            for h in hosts:
                if h.poll() is None:
                    h.kill()
                    h.wait(10)
                for stream in (h.stdin, h.stdout):
                    if stream is not None:
                        stream.close()
        assert sim.alive()
    assert len(delays_ms) == RUNS
    print(f"\ndead-man: {RUNS}/{RUNS} stopped by the watchdog; kill→stim_off worst {max(delays_ms):.1f} ms, "
          f"median {sorted(delays_ms)[RUNS // 2]:.1f} ms; board-measured silence worst {max(silences_ms):.1f} ms "
          f"(watchdog {WATCHDOG_MS} ms)")
