"""The daily dose survives SIGKILLs: the daemon and the simulated board as processes, the daemon killed at random
moments while it stimulates, and what each restart recovers from the audit log set against the board's own log."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ROOT, wait_for, write_config

pytestmark = [pytest.mark.usefixtures("need_bundle"), pytest.mark.slow]

START_S = 60.0
CRASHES = 6
WATCHDOG_MS = 250
# What one crash may add on top of the truth: the host may have lived one checkpoint interval after its last record,
# plus the longest board exchange (ack timeout x tries), plus the board's watchdog — and a little for the pty.
MAX_EXTRA_PER_CRASH_S = (1000 + 100 * 3 + WATCHDOG_MS) / 1000 + 0.1


def board_stimulated_s(events: list[dict[str, Any]]) -> float:
    """Seconds the board itself stimulated: each `stim_applied` (after an off) up to the next `stim_off`."""
    total_ns, on_since = 0, None
    for e in events:
        if e["event"] == "stim_applied" and on_since is None:
            on_since = e["t_mono_ns"]
        elif e["event"] == "stim_off" and on_since is not None:
            total_ns += e["t_mono_ns"] - on_since
            on_since = None
    assert on_since is None, "the board was still stimulating when its dose was read"
    return total_ns / 1e9


def _stimulating_now(sim: Any) -> bool:
    ev = [e for e in sim.events() if e["event"] in ("stim_applied", "stim_off")]
    return bool(ev) and ev[-1]["event"] == "stim_applied"


def _startups(d: Any) -> list[dict[str, Any]]:
    return [r for r in d.audit() if r["event"] == "startup"]


def test_recovered_daily_dose_covers_the_boards_own_log_after_every_sigkill(tmp_path: Path, start_sim,
                                                                            start_daemon) -> None:
    """After each of several SIGKILLs at random moments of stimulation (ramping or steady), the dose the next start
    recovers from the audit log is at least what the board's own event log says it delivered, and not more than the
    crash allowance above it; the log's chain verifies afterwards."""
    rng = random.Random(20261112)
    sim = start_sim("--watchdog-ms", str(WATCHDOG_MS))
    cfg = write_config(tmp_path)
    rows = []
    d = start_daemon(cfg, "--port", sim.pty)
    for crash in range(1, CRASHES + 1):
        wait_for(lambda: _stimulating_now(sim), START_S, "the board to stimulate")
        # spread the kills over the ramp and the steady stimulation after it (where nothing but checkpoints is written)
        time.sleep(rng.uniform(0.0, 3.5) if crash % 2 else rng.uniform(2.0, 4.0))
        os.killpg(d.proc.pid, signal.SIGKILL)
        d.proc.wait(timeout=10)
        wait_for(lambda: not _stimulating_now(sim), 5.0, "the board's watchdog to stop it")
        board_s = board_stimulated_s(sim.events())
        n_before = len(_startups(d))
        d = start_daemon(cfg, "--port", sim.pty)
        startup = wait_for(lambda d=d, n=n_before: _startups(d)[n:], START_S, "the next startup record")[0]
        recovered_s = startup["prior_daily_stim_s"]
        rows.append((crash, round(recovered_s, 3), round(board_s, 3)))
        assert recovered_s >= board_s, f"crash {crash}: recovered {recovered_s} s < the board's {board_s} s; {rows}"
        assert recovered_s <= board_s + crash * MAX_EXTRA_PER_CRASH_S, f"crash {crash}: over-counted; {rows}"
    print("\ncrash, recovered_s, board_s:", rows)
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=20) in (0, 69)
    # the killed runs left a log whose chain is whole (a line torn by a kill is named by the next start)
    res = subprocess.run([sys.executable, "-m", "neurostimd", "audit", "verify", str(d.audit_path), "--json"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert json.loads(res.stdout)["ok"] is True
