"""The simulator's own turnaround (host frame read -> its reply written): the accounting, and the figure a real
session leaves in the board's event log; `--rt-priority` runs it under SCHED_FIFO or refuses clearly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from neurostimd.commands.bench.loop import sim_turnaround
from neurostimd.drivers.neurostim_board.driver import SerialBoardDriver
from neurostimd.drivers.types import StimParams
from neurostimd.firmware_sim.turnaround import Turnaround
from tests.sim.simproc import ROOT, running_sim


def test_a_reply_counts_when_its_last_byte_is_written() -> None:
    t = Turnaround()
    t.queued(100)  # samples already waiting
    t.queued(10, t_read_ns=1_000_000)  # a reply behind them: bytes 100..110
    t.wrote(105, now_ns=1_200_000)  # not all of the reply yet
    assert t.replies == 0
    t.wrote(5, now_ns=1_500_000)
    assert t.replies == 1
    assert list(t.samples_us) == [500.0]
    s = t.summary()
    assert (s["p50_us"], s["p99_us"], s["max_us"], s["dropped_replies"]) == (500.0, 500.0, 500.0, 0)


def test_a_dropped_reply_is_not_counted_and_later_ones_still_are() -> None:
    t = Turnaround()
    t.queued(8, t_read_ns=0)
    t.dropped(8)  # a reboot cleared the queue
    t.queued(4, t_read_ns=10_000)
    t.wrote(4, now_ns=30_000)
    s = t.summary()
    assert s["replies"] == 1 and s["dropped_replies"] == 1 and s["p50_us"] == 20.0


def test_no_reply_gives_no_figures() -> None:
    t = Turnaround()
    t.queued(50)
    t.wrote(50, now_ns=5)
    assert t.summary() == {"replies": 0, "p50_us": None, "p99_us": None, "max_us": None, "dropped_replies": 0}


def _turnaround_record(log: Path) -> dict:
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    found = [r for r in recs if r["event"] == "sim_turnaround"]
    assert len(found) == 1, "the simulator writes its turnaround once, at exit"
    return found[0]


def test_a_session_leaves_the_simulators_turnaround_in_its_event_log(tmp_path: Path) -> None:
    """Every exchange of a real session is timed: HELLO, INFO, the commands and STATUS polls are replies, each well
    under the driver's ACK timeout."""
    with running_sim(tmp_path, "--channels", "4") as sim, \
            SerialBoardDriver(port=sim.path, ack_timeout_ms=250.0, retries=3) as d:
        for amp in (1.0, 1.5, 2.0):
            d.set_stimulation(StimParams(50.0, amp, 200.0))
            d.status()
        d.stop()
    rec = _turnaround_record(tmp_path / "sim.jsonl")
    assert rec["replies"] >= 8  # hello + info + 3 x (set + status) + stop at least
    assert 0 < rec["p50_us"] <= rec["p99_us"] <= rec["max_us"] < 250_000
    # what the loop and scale benchmarks report beside each row, in ms
    figures = sim_turnaround(tmp_path / "sim.jsonl", "loop.")
    assert figures == {"loop.sim_turnaround_p50_ms": round(rec["p50_us"] / 1000, 4),
                       "loop.sim_turnaround_p99_ms": round(rec["p99_us"] / 1000, 4),
                       "loop.sim_turnaround_max_ms": round(rec["max_us"] / 1000, 4)}


@pytest.mark.skipif(os.geteuid() != 0, reason="SCHED_FIFO needs root here")
def test_rt_priority_runs_the_simulator_under_sched_fifo(tmp_path: Path) -> None:
    with running_sim(tmp_path, "--channels", "2", "--rt-priority", "30") as sim:
        assert os.sched_getscheduler(sim.proc.pid) == os.SCHED_FIFO
        assert os.sched_getparam(sim.proc.pid).sched_priority == 30


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_rt_priority_refused_by_the_os_is_a_clear_error(tmp_path: Path) -> None:
    res = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all",
                          sys.executable, "-m", "neurostimd.firmware_sim", "--pty", "--channels", "2",
                          "--rt-priority", "30"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "refused SCHED_FIFO" in res.stderr and "leave --rt-priority out" in res.stderr
    assert "PTY" not in res.stdout  # it refused before opening anything


def test_rt_priority_out_of_range_is_refused() -> None:
    res = subprocess.run([sys.executable, "-m", "neurostimd.firmware_sim", "--pty", "--rt-priority", "100"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--rt-priority must be 0 (off) to 99" in res.stderr
