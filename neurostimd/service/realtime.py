"""The real-time mode (`[runtime] realtime = true`): the loop's thread under SCHED_FIFO, memory locked, optionally
pinned to CPUs, and the garbage collector kept out of the tick.

`enter_realtime` runs in the loop's thread just before the loop starts (every module imported, the model loaded,
the outputs open), so what start-up allocated is frozen out of the collector (`gc.freeze()`) and locked in RAM. Each
step checks what is already in force first: under the shipped systemd unit the service manager sets the policy,
priority and CPUs (CPUSchedulingPolicy=, CPUSchedulingPriority=, CPUAffinity=) and the unit's system-call filter
forbids the daemon to set them itself, so the daemon verifies them instead. Anything the OS refuses raises
`RealtimeRefused` with what to change; the daemon then refuses to start (exit 78): a real-time mode asked for is
never silently ignored.

`TickGC` runs the collections the loop skips, between ticks, and measures them."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import time
from dataclasses import dataclass, field
from typing import Any

MCL_CURRENT, MCL_FUTURE = 1, 2


class RealtimeRefused(RuntimeError):
    """The OS does not allow what [runtime] realtime asks for."""


@dataclass
class RealtimeReport:
    """What is in force after `enter_realtime`, for the log and the state file."""

    policy: str
    priority: int
    cpus: list[int]
    memory_locked: bool
    gc_frozen: int
    set_by: dict[str, str] = field(default_factory=dict)  # "daemon" or "service manager", per setting

    def as_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "priority": self.priority, "cpus": self.cpus,
                "memory_locked": self.memory_locked, "gc_frozen_objects": self.gc_frozen, "set_by": self.set_by}


def _fix(what: str) -> str:
    return (f"{what}; or set [runtime] realtime = false to run without the real-time mode "
            f"(docs/realtime.md says what each setting needs)")


def _pin(cpus: list[int] | None, set_by: dict[str, str]) -> list[int]:
    current = sorted(os.sched_getaffinity(0))
    if not cpus:
        return current
    online = os.cpu_count() or 1
    missing = [c for c in cpus if c < 0 or c >= online]
    if missing:
        raise RealtimeRefused(_fix(f"[runtime] cpu_affinity {cpus}: CPU(s) {missing} do not exist on this machine "
                                   f"(CPUs 0-{online - 1})"))
    if set(current) == set(cpus):
        set_by["cpu_affinity"] = "already in force"
        return current
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as err:
        raise RealtimeRefused(_fix(f"[runtime] cpu_affinity {cpus}: the OS refused to pin the loop there ({err}); "
                                   f"under systemd set CPUAffinity= in the unit instead, or choose CPUs this "
                                   f"service may use (now {current})")) from err
    set_by["cpu_affinity"] = "daemon"
    return sorted(os.sched_getaffinity(0))


def _schedule(priority: int, set_by: dict[str, str]) -> None:
    lo, hi = os.sched_get_priority_min(os.SCHED_FIFO), os.sched_get_priority_max(os.SCHED_FIFO)
    if not lo <= priority <= hi:
        raise RealtimeRefused(_fix(f"[runtime] rt_priority {priority} is outside SCHED_FIFO's {lo}-{hi}"))
    if os.sched_getscheduler(0) == os.SCHED_FIFO and os.sched_getparam(0).sched_priority >= priority:
        set_by["scheduler"] = "already in force"  # e.g. the unit's CPUSchedulingPolicy=fifo
        return
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except OSError as err:
        raise RealtimeRefused(_fix(
            f"realtime = true: the OS refused SCHED_FIFO at priority {priority} ({err}). Run as root or with "
            f"CAP_SYS_NICE, raise RLIMIT_RTPRIO to {priority} (ulimit -r), or under the shipped systemd unit "
            f"(CPUSchedulingPolicy=fifo, CPUSchedulingPriority={priority})")) from err
    set_by["scheduler"] = "daemon"


def _lock_memory(set_by: dict[str, str]) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.mlockall(MCL_CURRENT | MCL_FUTURE) != 0:
        errno = ctypes.get_errno()
        raise RealtimeRefused(_fix(
            f"[runtime] lock_memory: mlockall failed ({os.strerror(errno)}): the memory-lock limit is too small "
            f"for the daemon (ulimit -l; LimitMEMLOCK=infinity in the unit), or set lock_memory = false"))
    set_by["memory"] = "daemon"


def locked_kib() -> int:
    """VmLck of this process (KiB): how much of its memory is locked."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmLck:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def enter_realtime(priority: int, cpus: list[int] | None, lock_memory: bool) -> RealtimeReport:
    """CPUs first (so the scheduler change applies where the loop will run), then SCHED_FIFO, then the memory
    lock. RealtimeRefused on the first step the OS refuses (any OSError on the way too), with nothing of the later
    steps done. The collector is left as it is: `freeze_gc` is the last step, once the mode is on record."""
    set_by: dict[str, str] = {}
    try:
        pinned = _pin(cpus, set_by)
        _schedule(priority, set_by)
        if lock_memory:
            _lock_memory(set_by)
        now = os.sched_getparam(0).sched_priority
    except OSError as err:
        raise RealtimeRefused(_fix(f"realtime = true: {err}")) from err
    return RealtimeReport(policy="SCHED_FIFO", priority=now, cpus=pinned, memory_locked=lock_memory, gc_frozen=0,
                          set_by=set_by)


def freeze_gc() -> int:
    """Collect, freeze what start-up allocated (never scanned again) and disable the collector (TickGC collects
    between ticks); the number of objects frozen."""
    gc.collect()
    gc.freeze()
    gc.disable()
    return gc.get_freeze_count()


class TickGC:
    """The collections the disabled collector would have run inside a tick, run after it instead: the young
    generation when it holds as many objects as the default threshold, a full collection every `full_every`
    young ones. Their count and duration are measured (`stats`)."""

    def __init__(self, full_every: int = 100) -> None:
        self.threshold = gc.get_threshold()[0] or 700
        self.full_every = full_every
        self.young = self.full = 0
        self.max_ms = self.total_ms = 0.0

    def between_ticks(self) -> float | None:
        """Collect if due; the milliseconds it took (None when nothing was due)."""
        if gc.get_count()[0] < self.threshold:
            return None
        t0 = time.perf_counter()
        if (self.young + 1) % self.full_every == 0:
            gc.collect()
            self.full += 1
        else:
            gc.collect(0)
        self.young += 1
        ms = (time.perf_counter() - t0) * 1e3
        self.max_ms = max(self.max_ms, ms)
        self.total_ms += ms
        return ms

    def stats(self) -> dict[str, Any]:
        return {"collections": self.young, "full_collections": self.full, "max_ms": round(self.max_ms, 3),
                "total_ms": round(self.total_ms, 3)}


def leave_realtime() -> None:
    """The collector back on (the scheduler and lock end with the process)."""
    gc.enable()
    gc.unfreeze()
