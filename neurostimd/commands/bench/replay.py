"""Replay benchmark: a generated recording through the whole pipeline on a virtual clock — x real time."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import structlog

from neurostimd.commands.bench._procs import ROOT


def run(progress: Any, quick: bool) -> dict[str, Any]:
    from neurostimd.commands.replay import run_replay
    from neurostimd.config import load_config

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    tmp = Path(tempfile.mkdtemp(prefix="neurostimd-bench-replay-"))
    seconds = 60 if quick else 300
    rec = tmp / "rec.npz"
    subprocess.run([sys.executable, "-m", "neurostimd.firmware_sim.generate", "--out", str(rec),
                    "--duration", str(seconds), "--channels", "32", "--rate", "1000", "--seed", "5"],
                   check=True, capture_output=True)
    cfg = load_config(ROOT / "config" / "replay.toml")
    progress(f"replay: {seconds} s of 32 ch x 1 kHz as fast as possible")
    s = run_replay(cfg, rec, tmp / "out", "max", progress=False, plot=False)
    return {
        "replay.x_realtime": s["x_realtime"],
        "replay.recording_s": s["recording_s"],
        "replay.wall_s": s["wall_s"],
        "replay.ticks": s["ticks"],
        "replay.tick_mean_ms": round(1000 * s["wall_s"] / max(1, s["ticks"]), 4),
    }
