"""Scale benchmark: the whole loop at 256 channels x 2 kHz (a bundle trained for it on generated data) beside
32 ch x 1 kHz (the default bundle), in one run under the same load (the other core busy): the signal from the
simulator's LSL outlet on loopback (a serial link tops out at 128 ch x 2 kHz here: `bench --only ingest`), the
commands to the simulated board over a pty; tick work p50 / p99 per stage and CPU, and each stage's cost per
channel-sample, so growth faster than linear in channels shows as a ratio above 1."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from neurostimd.commands.bench._procs import ROOT, busy_core, pct, run_daemon, simulator
from neurostimd.commands.bench.loop import SIM_RT_PRIORITY, sim_turnaround

CADENCE_MS = 50.0  # config/sim.toml's cadence (the bench config is built from it)
ROWS = ((32, 1000.0, None), (256, 2000.0, "train"))  # (channels, rate, bundle: None = models/default)


def train_bundle(folder: Path, channels: int, rate_hz: float, progress: Any) -> Path:
    """A bundle for `channels` x `rate_hz`, trained (one epoch: the bench times the loop, not the model's accuracy)
    on two minutes of the simulator's own generated signal."""
    rec = folder / f"rec-{channels}x{rate_hz:g}.npz"
    out = folder / f"bundle-{channels}x{rate_hz:g}"
    progress(f"scale: training a bundle for {channels} ch x {rate_hz:g} Hz (2 min of generated signal, 1 epoch)")
    subprocess.run([sys.executable, "-m", "neurostimd.firmware_sim.generate", "--out", str(rec), "--duration", "120",
                    "--channels", str(channels), "--rate", f"{rate_hz:g}", "--seed", "3"],
                   check=True, capture_output=True, cwd=ROOT)
    res = subprocess.run([sys.executable, "-m", "neurostimd", "train", "--data", str(rec), "--out", str(out),
                          "--epochs", "1", "--block-s", "5"], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    if res.returncode != 0:
        raise RuntimeError(f"training the {channels}-channel bench bundle failed: {res.stderr[-2000:]}")
    rec.unlink()
    return out


def run(progress: Any, quick: bool) -> dict[str, Any]:
    seconds = 15.0 if quick else 40.0
    tmp = Path(tempfile.mkdtemp(prefix="neurostimd-bench-scale-"))
    root = os.geteuid() == 0
    out: dict[str, Any] = {"scale.realtime": root}
    stage_p50: dict[int, dict[str, float]] = {}
    per_tick: dict[int, float] = {}
    from neurostimd.commands.simulator import LslSimulatorProcess

    for channels, rate, how in ROWS:
        bundle = train_bundle(tmp, channels, rate, progress) if how == "train" else None
        prefix = f"scale.ch{channels}_"
        board_log = tmp / f"board-{channels}.jsonl"
        stream = f"bench-scale-{channels}-{uuid.uuid4().hex[:8]}"
        source = (f'[source]\nkind = "lsl"\nname = "{stream}"\ntype = "EEG"\nn_channels = {channels}\n'
                  f"sample_rate_hz = {rate:g}\nresolve_timeout_s = 10.0\n")
        rt = ("--rt-priority", str(SIM_RT_PRIORITY)) if root else ()
        # the signal: an LSL outlet pushing 10 ms blocks; the board: commands only (one slow channel of its own)
        with busy_core(), LslSimulatorProcess(stream, ["--channels", str(channels), "--rate", f"{rate:g}", "--block",
                                                       str(int(rate * 0.01))], stderr=tmp / f"lsl-{channels}.stderr"), \
                simulator(board_log, "--channels", "1", "--rate", "250", "--block", "5", *rt) as pty:
            progress(f"scale: daemon with {channels} ch x {rate:g} Hz over LSL, commands to the board on {pty}, "
                     f"other core busy, realtime {'on' if root else 'off (not root)'}, {seconds:.0f} s")
            d = run_daemon(pty, seconds, progress=progress, realtime=root, bundle=bundle, source=source)
        if d.exit_code != 0:
            raise RuntimeError(f"the daemon exited with {d.exit_code}; see {d.workdir}")
        t = d.timings
        work = [sum(x["stages_ms"].values()) for x in t]
        stages = sorted({k for x in t for k in x["stages_ms"]})
        stage_p50[channels] = {k: pct([x["stages_ms"][k] for x in t if k in x["stages_ms"]], 50) or 0.0
                               for k in stages}
        per_tick[channels] = channels * rate * CADENCE_MS / 1000.0  # channel-samples per tick
        out.update({
            f"{prefix}rate_hz": rate, f"{prefix}ticks": len(t),
            f"{prefix}overruns": sum(x.get("overrun", 0) for x in t),
            f"{prefix}tick_work_p50_ms": pct(work, 50), f"{prefix}tick_work_p99_ms": pct(work, 99),
            f"{prefix}cpu_percent": d.cpu_percent, f"{prefix}rss_mb": d.rss_mb,
            f"{prefix}jitter_p99_ms": pct([x["jitter_ms"] for x in t], 99),
            f"{prefix}sample_age_p99_ms": pct([x["sample_age_ms"] for x in t if x.get("sample_age_ms") is not None],
                                              99),
            **{f"{prefix}{k}_p50_ms": v for k, v in stage_p50[channels].items()},
            **{f"{prefix}{k}_p99_ms": pct([x["stages_ms"][k] for x in t if k in x["stages_ms"]], 99)
               for k in stages},
        })
        out.update(sim_turnaround(board_log, prefix))
    small, big = (r[0] for r in ROWS)
    growth = per_tick[big] / per_tick[small]
    out["scale.data_per_tick_ratio"] = round(growth, 1)
    # A stage whose cost grows linearly in the data per tick has ratio 1; above 1 it grows faster (below: fixed
    # per-tick overhead dominates at the small size).
    for k, v in stage_p50[big].items():
        base = stage_p50[small].get(k)
        if base:
            out[f"scale.{k}_cost_ratio_vs_linear"] = round(v / base / growth, 3)
    return out
