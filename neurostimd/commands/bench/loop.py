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


def _figures(d: Any, prefix: str) -> dict[str, Any]:
    t = d.timings
    acks = [x["ack_ms"] for x in t if x.get("ack_ms") is not None]
    ages = [x["sample_age_ms"] for x in t if x.get("sample_age_ms") is not None]
    polls = [x["status_poll_ms"] for x in t if x.get("status_poll_ms") is not None]
    return {
        f"{prefix}ticks": len(t),
        f"{prefix}commands_acked": len(acks),
        f"{prefix}tick_to_ack_p50_ms": pct(acks, 50),
        f"{prefix}tick_to_ack_p99_ms": pct(acks, 99),
        f"{prefix}sample_age_p50_ms": pct(ages, 50),
        f"{prefix}sample_age_p99_ms": pct(ages, 99),
        f"{prefix}jitter_p50_ms": pct([x["jitter_ms"] for x in t], 50),
        f"{prefix}jitter_p99_ms": pct([x["jitter_ms"] for x in t], 99),
        f"{prefix}overruns": sum(x.get("overrun", 0) for x in t),
        f"{prefix}cpu_percent": d.cpu_percent,
        f"{prefix}inference_p50_ms": pct([x["stages_ms"]["inference"] for x in t], 50),
        f"{prefix}features_p50_ms": pct([x["stages_ms"]["features"] for x in t], 50),
        f"{prefix}tick_work_p99_ms": pct([sum(x["stages_ms"].values()) for x in t], 99),
        # the STATUS round trip runs after the tick's work (never inside a tick); its own figures
        f"{prefix}status_poll_p50_ms": pct(polls, 50),
        f"{prefix}status_poll_p99_ms": pct(polls, 99),
    }


def audit_sync(folder: Path, n: int = 1000) -> dict[str, Any]:
    """What making an audit record durable costs on `folder`'s file system: a record-sized append followed by
    fsync (what the audit log does before each send), by fdatasync, and as one O_DSYNC write; p50 / p99 in ms."""
    import os
    import time

    line = b'{"event":"stim_command","seq":123456,' + b'"x":' + b"0" * 240 + b"}\n"
    out: dict[str, Any] = {}
    for name, flags, sync in (("fsync", 0, os.fsync), ("fdatasync", 0, os.fdatasync), ("odsync", os.O_DSYNC, None)):
        path = folder / f"sync-{name}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | flags, 0o600)
        times = []
        try:
            for _ in range(n):
                t0 = time.perf_counter()
                os.write(fd, line)
                if sync is not None:
                    sync(fd)
                times.append((time.perf_counter() - t0) * 1e3)
        finally:
            os.close(fd)
            path.unlink(missing_ok=True)
        out[f"audit.{name}_p50_ms"] = pct(times, 50)
        out[f"audit.{name}_p99_ms"] = pct(times, 99)
    return out


def _gc_stats(workdir: Path) -> dict[str, Any] | None:
    """The daemon's `realtime_gc` log record: the collections it ran between ticks and how long they took."""
    for line in (workdir / "daemon.log").read_text().splitlines():
        if '"realtime_gc"' in line:
            rec = json.loads(line)
            return {k: rec[k] for k in ("collections", "full_collections", "max_ms", "total_ms")}
    return None


# The simulated board's priority when the bench runs as root: firmware has a processor of its own, so the simulator
# must not wait for a CPU behind the hog (its turnaround is measured and reported beside each row).
SIM_RT_PRIORITY = 45


def _sim_args(board_log: Path) -> tuple[str, ...]:
    import os

    rt = ("--rt-priority", str(SIM_RT_PRIORITY)) if os.geteuid() == 0 else ()
    return ("--channels", "32", "--rate", str(RATE_HZ), "--block", str(BLOCK), *rt)


def sim_turnaround(board_log: Path, prefix: str) -> dict[str, Any]:
    """The simulator's own turnaround (a host frame read -> its reply written) from its event log."""
    for line in board_log.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") == "sim_turnaround":
            return {f"{prefix}sim_turnaround_p50_ms": _ms(rec["p50_us"]),
                    f"{prefix}sim_turnaround_p99_ms": _ms(rec["p99_us"]),
                    f"{prefix}sim_turnaround_max_ms": _ms(rec["max_us"])}
    return {}


def _ms(us: float | None) -> float | None:
    return None if us is None else round(us / 1000.0, 4)


def run(progress: Any, quick: bool) -> dict[str, Any]:
    """The loop with [runtime] realtime off, on, and on without the memory lock, on the same board and load (side
    by side in one run)."""
    seconds = 15.0 if quick else 60.0
    tmp = Path(tempfile.mkdtemp(prefix="neurostimd-bench-loop-"))
    out: dict[str, Any] = {"loop.board_block_ms": 1000.0 * BLOCK / RATE_HZ}
    with busy_core():  # the audit's floor under the same load, on the file system the daemon's audit log is on
        out.update(audit_sync(Path(tempfile.gettempdir())))
    progress(f"loop: audit record + fsync p50 {out['audit.fsync_p50_ms']} ms, p99 {out['audit.fsync_p99_ms']} ms "
             f"(O_DSYNC write {out['audit.odsync_p50_ms']} / {out['audit.odsync_p99_ms']} ms)")
    out["loop.sim_rt_priority"] = SIM_RT_PRIORITY if "--rt-priority" in _sim_args(tmp) else None
    for realtime, lock, prefix in ((False, True, "loop."), (True, True, "loop.realtime_"),
                                   (True, False, "loop.realtime_nolock_")):
        board_log = tmp / f"board-{prefix.strip('.')}.jsonl"
        with busy_core(), simulator(board_log, *_sim_args(board_log)) as pty:
            mode = ("on" if lock else "on without the memory lock") if realtime else "off"
            progress(f"loop: daemon on {pty}, 32 ch x 1 kHz, other core busy, realtime {mode}, {seconds:.0f} s")
            try:
                d = run_daemon(pty, seconds, progress=progress, realtime=realtime, lock_memory=lock)
            except RuntimeError as err:
                if not realtime:
                    raise
                out[f"{prefix}refused"] = str(err)  # e.g. not root: the daemon refused the mode (exit 78)
                continue
        if d.exit_code != 0:
            raise RuntimeError(f"the daemon exited with {d.exit_code}; see {d.workdir}")
        out.update(_figures(d, prefix))
        out.update(sim_turnaround(board_log, prefix))
        if realtime:
            out[f"{prefix}gc"] = _gc_stats(d.workdir) if d.workdir is not None else None
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
