"""The real-time mode: the loop's thread under SCHED_FIFO with memory locked and the collector out of the tick, in a
real child process (never in the test process itself), and refused with what to change where the OS does not allow
it: a daemon asked for it never runs without it."""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from neurostimd.outputs.audit import read_audit
from neurostimd.service.realtime import TickGC

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534
def _fifo_allowed() -> bool:
    """Root, and allowed SCHED_FIFO (a container may drop CAP_SYS_NICE even for root)."""
    if os.geteuid() != 0 or shutil.which("chrt") is None:
        return False
    return subprocess.run(["chrt", "-f", "1", "true"], capture_output=True, timeout=10).returncode == 0


needs_root = pytest.mark.skipif(not _fifo_allowed(), reason="needs root allowed SCHED_FIFO (chrt -f 1 true)")


def _as_nobody(cmd: list[str], memlock: int | None = None) -> list[str]:
    """`cmd` as the unprivileged user nobody (no capabilities, RLIMIT_RTPRIO 0), with a lower memory-lock limit."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to run a child as another user")
    cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd]
    return cmd if memlock is None else ["prlimit", f"--memlock={memlock}", *cmd]


def _child(code: str, *, as_nobody: bool = False, memlock: int | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", code]
    return subprocess.run(_as_nobody(cmd, memlock) if as_nobody else cmd, capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


@needs_root
def test_enter_realtime_puts_the_calling_thread_under_fifo_pinned_with_memory_locked_and_gc_frozen() -> None:
    code = """
import gc, json, os
from neurostimd.service.realtime import enter_realtime, freeze_gc, locked_kib
r = enter_realtime(30, [0], True)
enabled_before_freeze = gc.isenabled()
freeze_gc()
print(json.dumps({"fifo": os.sched_getscheduler(0) == os.SCHED_FIFO, "prio": os.sched_getparam(0).sched_priority,
                  "cpus": sorted(os.sched_getaffinity(0)), "locked_kib": locked_kib(), "gc": gc.isenabled(),
                  "frozen": gc.get_freeze_count(), "report": r.as_dict(), "before": enabled_before_freeze}))
"""
    res = _child(code)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["fifo"] and out["prio"] == 30 and out["cpus"] == [0]
    assert out["locked_kib"] > 10_000  # the interpreter, numpy and what is mapped: locked
    assert out["before"] is True  # the mode itself leaves the collector alone until freeze_gc
    assert out["gc"] is False and out["frozen"] > 1000
    assert out["report"]["set_by"] == {"cpu_affinity": "daemon", "scheduler": "daemon", "memory": "daemon"}


@needs_root
def test_a_policy_already_in_force_is_verified_not_set_again() -> None:
    """Under the unit, systemd sets SCHED_FIFO (CPUSchedulingPolicy=) and the filter forbids the daemon to: the
    daemon finds it in force (here set by chrt, as the service manager would) and leaves it."""
    code = """
import json
from neurostimd.service.realtime import enter_realtime
print(json.dumps(enter_realtime(20, None, False).as_dict()))
"""
    res = subprocess.run(["chrt", "-f", "25", sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["set_by"] == {"scheduler": "already in force"} and report["priority"] == 25
    assert report["memory_locked"] is False


@needs_root
def test_an_unprivileged_process_is_refused_fifo_with_what_to_change() -> None:
    code = """
from neurostimd.service.realtime import RealtimeRefused, enter_realtime
try:
    enter_realtime(40, None, True)
except RealtimeRefused as err:
    print(err)
    raise SystemExit(3)
"""
    res = _child(code, as_nobody=True)
    assert res.returncode == 3, res.stderr
    for what in ("refused SCHED_FIFO at priority 40", "CAP_SYS_NICE", "RLIMIT_RTPRIO", "CPUSchedulingPolicy=fifo",
                 "realtime = false"):
        assert what in res.stdout


@needs_root
def test_a_memory_lock_limit_too_small_is_refused_with_what_to_change() -> None:
    code = """
from neurostimd.service.realtime import RealtimeRefused, _lock_memory
try:
    _lock_memory({})
except RealtimeRefused as err:
    print(err)
    raise SystemExit(3)
"""
    res = _child(code, as_nobody=True, memlock=64 * 1024)
    assert res.returncode == 3, res.stderr
    assert "mlockall failed" in res.stdout and "LimitMEMLOCK=infinity" in res.stdout


def test_cpus_that_do_not_exist_are_refused() -> None:
    from neurostimd.service.realtime import RealtimeRefused, _pin

    with pytest.raises(RealtimeRefused, match=r"CPU\(s\) \[4096\] do not exist"):
        _pin([0, 4096], {})


def test_the_config_refuses_an_empty_or_repeated_cpu_list() -> None:
    from neurostimd.config import RuntimeConfig

    for bad in ([], [1, 1], [-1]):
        with pytest.raises(ValueError, match="cpu_affinity"):
            RuntimeConfig(cpu_affinity=bad)
    assert RuntimeConfig(cpu_affinity=[1]).cpu_affinity == [1]
    with pytest.raises(ValueError):
        RuntimeConfig(rt_priority=100)


def test_the_collections_run_between_ticks_when_due_and_are_timed() -> None:
    was = gc.isenabled()
    gc.disable()
    try:
        tgc = TickGC(full_every=2)
        gc.collect()
        assert tgc.between_ticks() is None  # nothing allocated since: not due
        junk = []
        for _ in range(2 * tgc.threshold):
            a: list[object] = []
            a.append(a)  # a cycle: only the collector frees it
            junk.append(a)
        del junk
        ms = tgc.between_ticks()
        assert ms is not None and ms >= 0.0
        assert gc.get_count()[0] < tgc.threshold
        for _ in range(2 * tgc.threshold):
            b: list[object] = []
            b.append(b)
        assert tgc.between_ticks() is not None
        s = tgc.stats()
        assert s["collections"] == 2 and s["full_collections"] == 1 and s["max_ms"] >= 0.0
    finally:
        if was:
            gc.enable()


def _config(tmp_path: Path) -> Path:
    text = (ROOT / "config" / "sim-beta.toml").read_text()
    text = text.replace('bundle = "models/beta"', f'bundle = "{ROOT / "models" / "beta"}"')
    cfg = tmp_path / "rt.toml"
    cfg.write_text(text.split("[audit]")[0] + f'[audit]\npath = "{tmp_path / "audit.jsonl"}"\n[runtime]\n'
                   f'state_file = "{tmp_path / "state.json"}"\nrealtime = true\nrt_priority = 30\n'
                   f'[logging]\nformat = "json"\n')
    return cfg


def _run(cfg: Path, *, as_nobody: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "neurostimd", "run", "--config", str(cfg), "--duration", "2"]
    return subprocess.run(_as_nobody(cmd) if as_nobody else cmd, capture_output=True, text=True, timeout=90,
                          cwd=ROOT)


@needs_root
@pytest.mark.slow
def test_the_daemon_runs_its_loop_in_realtime_and_says_so_in_the_audit(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    res = _run(cfg)
    assert res.returncode == 0, res.stderr[-2000:]
    recs = read_audit(tmp_path / "audit.jsonl").records
    rt = [r for r in recs if r["event"] == "realtime"]
    assert len(rt) == 1 and rt[0]["policy"] == "SCHED_FIFO" and rt[0]["priority"] == 30 and rt[0]["memory_locked"]
    events = [r["event"] for r in recs]
    sends = [i for i, e in enumerate(events) if e in ("stim_command", "stim_stop")]
    assert sends and events.index("realtime") < sends[0]  # in force before the loop's first command
    logs = [json.loads(ln) for ln in res.stderr.splitlines() + res.stdout.splitlines() if ln.startswith("{")]
    gc_line = [ln for ln in logs if ln.get("event") == "realtime_gc"]
    assert len(gc_line) == 1 and set(gc_line[0]) >= {"collections", "full_collections", "max_ms", "total_ms"}
    assert gc_line[0]["full_collections"] <= gc_line[0]["collections"]
    on = [ln for ln in logs if ln.get("event") == "realtime_on"]
    assert len(on) == 1 and on[0]["gc_frozen_objects"] > 1000 and on[0]["locked_kib"] > 10_000


@needs_root
@pytest.mark.slow
def test_a_daemon_the_os_refuses_realtime_does_not_start_and_never_commands() -> None:
    tmp_path = Path(tempfile.mkdtemp(prefix="neurostimd-rt-"))  # nobody must reach it: not under pytest's 0700 tmp
    os.chmod(tmp_path, 0o777)
    cfg = _config(tmp_path)
    res = _run(cfg, as_nobody=True)
    assert res.returncode == 78, res.stderr[-2000:]
    assert "refused SCHED_FIFO" in res.stderr + res.stdout and "realtime = false" in res.stderr + res.stdout
    recs = read_audit(tmp_path / "audit.jsonl").records
    assert not any(r["event"] in ("stim_command", "realtime") for r in recs)
    assert any(r["event"] == "fault" and "startup_refused" in r["faults"] for r in recs)
    shutil.rmtree(tmp_path, ignore_errors=True)
