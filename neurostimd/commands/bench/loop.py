"""Loop benchmark: the daemon on `neurostimd-sim` over a pty at 32 ch x 1 kHz, 50 ms cadence, with a second process
keeping the other core busy — tick → ACK, newest-sample age, cadence jitter, CPU; and beside it the same loop done
the notebook's way (Keras `predict` per decision, in process)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from neurostimd.commands.bench._procs import busy_core, pct, run_daemon, simulator

RATE_HZ = 1000
BLOCK = 10  # samples per SAMPLES frame: 10 ms at 1 kHz, the "one board block" of the sample-age target


def run(progress: Any, quick: bool) -> dict[str, Any]:
    seconds = 15.0 if quick else 60.0
    tmp = Path(tempfile.mkdtemp(prefix="neurostimd-bench-loop-"))
    out: dict[str, Any] = {}
    with busy_core(), simulator(tmp / "board.jsonl", "--channels", "32", "--rate", str(RATE_HZ), "--block",
                                str(BLOCK)) as pty:
        progress(f"loop: daemon on {pty}, 32 ch x 1 kHz, other core busy, {seconds:.0f} s")
        d = run_daemon(pty, seconds, progress=progress)
    if d.exit_code != 0:
        raise RuntimeError(f"the daemon exited with {d.exit_code}; see {d.workdir}")
    t = d.timings
    acks = [x["ack_ms"] for x in t if x.get("ack_ms") is not None]
    ages = [x["sample_age_ms"] for x in t if x.get("sample_age_ms") is not None]
    out.update({
        "loop.ticks": len(t),
        "loop.commands_acked": len(acks),
        "loop.tick_to_ack_p50_ms": pct(acks, 50),
        "loop.tick_to_ack_p99_ms": pct(acks, 99),
        "loop.sample_age_p50_ms": pct(ages, 50),
        "loop.sample_age_p99_ms": pct(ages, 99),
        "loop.board_block_ms": 1000.0 * BLOCK / RATE_HZ,
        "loop.jitter_p50_ms": pct([x["jitter_ms"] for x in t], 50),
        "loop.jitter_p99_ms": pct([x["jitter_ms"] for x in t], 99),
        "loop.overruns": sum(x.get("overrun", 0) for x in t),
        "loop.cpu_percent": d.cpu_percent,
        "loop.inference_p50_ms": pct([x["stages_ms"]["inference"] for x in t], 50),
        "loop.features_p50_ms": pct([x["stages_ms"]["features"] for x in t], 50),
        "loop.tick_work_p99_ms": pct([sum(x["stages_ms"].values()) for x in t], 99),
    })
    progress("loop: the notebook's way (Keras predict per decision) on the same board, other core busy")
    with busy_core(), simulator(tmp / "board-nb.jsonl", "--channels", "32", "--rate", "1000") as pty:
        res = subprocess.run([sys.executable, "-m", "neurostimd.commands.bench._notebook", "--pty", pty, "--seconds",
                              str(min(seconds, 30.0))], capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"notebook-way loop failed: {res.stderr[-2000:]}")
    nb = json.loads(res.stdout.strip().splitlines()[-1])
    out.update({f"loop.notebook_{k}": v for k, v in nb.items()})
    if out["loop.inference_p50_ms"] and nb.get("predict_p50_ms"):
        out["loop.notebook_predict_vs_runtime_ratio"] = round(nb["predict_p50_ms"] / out["loop.inference_p50_ms"], 1)
    return out
