"""What the closed loop tells its outputs. Each output (the recorder, the decisions LSL outlet, metrics, the state
file, the daemon's systemd messages, a replay's decisions file) is a `LoopListener`; the loop calls them after its
command path, through `Listeners`, which keeps a listener that raises from stopping the loop or the others."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import structlog

from neurostimd.core.controller import Command, params_dict
from neurostimd.core.faults import BoardReply
from neurostimd.core.ringbuffer import RingBuffer, Window
from neurostimd.drivers.types import DriverCounters
from neurostimd.errors import NeurostimError

log = structlog.get_logger("neurostimd.listeners")


@dataclass
class TickStats:
    """What one tick did and how long each stage took (ms). Kept for metrics, the bench and the status file."""

    index: int
    deadline_ns: int
    start_ns: int
    jitter_ms: float
    stages_ms: dict[str, float]
    sample_age_ms: float | None
    new_samples: int
    command_sent: bool
    ack_ms: float | None  # tick start → the board's ACK, when a command was sent and acknowledged
    overrun_ticks: int = 0
    status_poll_ms: float | None = None  # the STATUS round trip done after this tick's work (None: none was due)


@dataclass
class LoopState:
    """The loop's observable state (status file, systemd STATUS=, metrics)."""

    phase: str = "starting"
    ticks: int = 0
    overruns: int = 0
    state: int | None = None
    state_name: str | None = None
    confidence: float = 0.0
    probs: list[float] = field(default_factory=list)
    applied: dict[str, float] | None = None
    fault: str | None = None
    limited_by: list[str] = field(default_factory=list)
    first_clean_window: bool = False
    board_state_known: bool = False
    fault_counts: dict[str, int] = field(default_factory=dict)  # faults raised so far, by cause
    commands: int = 0
    send_failures: int = 0
    listener_failures: dict[str, int] = field(default_factory=dict)  # calls that raised, by listener


@dataclass(frozen=True)
class DecisionEvent:
    """One tick's decision: the controller's Command and the class probabilities it was made from. `t_ns`: when
    the tick started on the loop's clock (`cmd.t_s` is the same instant from the loop's start); the LSL outlets
    stamp the decision with it. None where a decision was made outside a loop."""

    tick: int
    command: Command
    probs: npt.NDArray[np.floating] | None
    t_ns: int | None = None

    @cached_property
    def record(self) -> dict[str, Any]:
        """The line of decisions.jsonl: only data-derived values, so a replay is byte-for-byte reproducible. One
        dict for every listener of the tick: read it, do not change it."""
        cmd, probs = self.command, self.probs
        return {
            "tick": self.tick,
            "t_s": round(cmd.t_s, 6),
            "t_data_s": None if cmd.t_data_s is None else round(float(cmd.t_data_s), 6),
            "state": cmd.decision.state,
            "confidence": round(float(cmd.decision.confidence), 6),
            "probs": None if probs is None else [round(float(v), 6) for v in probs],
            "requested": params_dict(cmd.requested),
            "applied": params_dict(cmd.applied),
            "limited_by": list(cmd.gate.limited_by),
            "faults": list(cmd.fault.faults),
            "safe_state": cmd.fault.active,
        }


@dataclass(frozen=True)
class CommandEvent:
    """A command sent to the board: its audit record as written (with `seq`) and the board's answer."""

    command: Command
    record: dict[str, Any]  # the stim_command / stim_stop record; read it, do not change it
    reply: BoardReply  # "ack", or "nak" / "timeout" when not acknowledged
    error: str | None
    t_ack_mono_ns: int  # when the answer (or its absence) was recorded, on the audit log's monotonic clock

    @property
    def acked(self) -> bool:
        return self.reply == "ack"


class LoopView:
    """What a listener may read of the running loop: its state, its ring (read it; never write to it) and the
    driver's health counters. Not the driver itself: only the loop commands the board, through the gate and the
    audit log."""

    __slots__ = ("_counters", "_ring", "_state")

    def __init__(self, state: Callable[[], LoopState], ring: Callable[[], RingBuffer],
                 counters: Callable[[], DriverCounters | None]) -> None:
        self._state, self._ring, self._counters = state, ring, counters

    @property
    def state(self) -> LoopState:
        return self._state()

    @property
    def ring(self) -> RingBuffer:
        return self._ring()

    @property
    def driver_counters(self) -> DriverCounters | None:
        """The driver's counters (frames, bad frames, retries, ...), or None without a driver."""
        return self._counters()


class LoopListener(Protocol):
    """An output of the loop. Called from the loop's thread after the tick's command path, in this order:
    `on_samples` (the samples new since the last tick, when there are any: a view into the ring, valid during the
    call only), `on_command` (when a command went to the board), `on_decision` (every tick), and, from `run()`,
    `on_tick` once the tick's overrun is known. `close()` ends the output; the loop's owner calls it."""

    def on_samples(self, window: Window) -> None: ...

    def on_decision(self, decision: DecisionEvent) -> None: ...

    def on_command(self, command: CommandEvent) -> None: ...

    def on_tick(self, stats: TickStats, loop: LoopView) -> None: ...

    def close(self) -> None: ...


class BaseListener:
    """A listener that does nothing: subclass it and override what the output needs."""

    def on_samples(self, window: Window) -> None:
        pass

    def on_decision(self, decision: DecisionEvent) -> None:
        pass

    def on_command(self, command: CommandEvent) -> None:
        pass

    def on_tick(self, stats: TickStats, loop: LoopView) -> None:
        pass

    def close(self) -> None:
        pass


class ListenerFailed(NeurostimError):
    """An output of the loop raised while the loop ran: what it wrote is incomplete."""


class Listeners:
    """The loop's listeners, each call guarded. A listener that raises is logged (its first failure with the
    traceback, then at most once per `log_every_s` with a count) and counted in `failures`; its first failure also
    goes to `on_first_failure` (the loop writes an `output_failed` audit record, so the session's record says from
    when an output such as the recorder is missing). The other listeners, and the loop, carry on: the outputs are
    not safety layers (the audit log is not a listener; it cannot fail without the safe state)."""

    def __init__(self, listeners: Iterable[LoopListener] = (), *, failures: dict[str, int] | None = None,
                 log_every_s: float = 60.0, now: Callable[[], float] = time.monotonic,
                 on_first_failure: Callable[[str, str, str], object] | None = None) -> None:
        self._all: list[LoopListener] = []
        self.on_first_failure = on_first_failure  # (listener, method, error): the loop audits it
        self.failures: dict[str, int] = {} if failures is None else failures
        self.log_every_s = log_every_s
        self._now = now
        self._names: dict[int, str] = {}
        self._logged: dict[str, tuple[float, int]] = {}  # name -> (when last logged, failures then)
        for listener in listeners:
            self.add(listener)

    def __iter__(self) -> Iterator[LoopListener]:
        return iter(list(self._all))

    def __len__(self) -> int:
        return len(self._all)

    def add(self, listener: LoopListener) -> None:
        """Call `listener` from the next tick on (after those already there)."""
        name = type(listener).__name__
        taken = set(self._names.values())
        n = 2
        base = name
        while name in taken:
            name, n = f"{base}#{n}", n + 1
        self._names[id(listener)] = name
        self._all.append(listener)

    def remove(self, listener: LoopListener) -> None:
        """Stop calling `listener` (it is not closed)."""
        self._all.remove(listener)
        self._names.pop(id(listener), None)

    # --- the loop's calls ------------------------------------------------------------------------------------------
    def samples(self, window: Window) -> None:
        for ls in self._all:
            try:
                ls.on_samples(window)
            except Exception as err:
                self._failed(ls, "on_samples", err)

    def decision(self, decision: DecisionEvent) -> None:
        for ls in self._all:
            try:
                ls.on_decision(decision)
            except Exception as err:
                self._failed(ls, "on_decision", err)

    def command(self, command: CommandEvent) -> None:
        for ls in self._all:
            try:
                ls.on_command(command)
            except Exception as err:
                self._failed(ls, "on_command", err)

    def tick(self, stats: TickStats, loop: LoopView) -> None:
        for ls in self._all:
            try:
                ls.on_tick(stats, loop)
            except Exception as err:
                self._failed(ls, "on_tick", err)

    def _failed(self, listener: LoopListener, method: str, err: Exception) -> None:
        name = self._names.get(id(listener), type(listener).__name__)
        total = self.failures[name] = self.failures.get(name, 0) + 1
        now = self._now()
        last = self._logged.get(name)
        if last is None:
            self._logged[name] = (now, total)
            if self.on_first_failure is not None:
                try:
                    self.on_first_failure(name, method, repr(err))
                except Exception as audit_err:  # the loop's audit writer does not raise; never let this one stop it
                    log.error("listener_failure_unrecorded", listener=name, error=repr(audit_err))
            log.error("listener_failed", listener=name, method=method, error=repr(err), exc_info=err,
                      detail="the loop and its commands carry on without this output; further failures are "
                             f"counted and logged at most every {self.log_every_s:g} s")
        elif now - last[0] >= self.log_every_s:
            self._logged[name] = (now, total)
            log.error("listener_still_failing", listener=name, method=method, error=repr(err),
                      failures_since=total - last[1], failures=total)


def close_all(listeners: Sequence[LoopListener] | Listeners) -> None:
    """Close every listener; one that raises is logged and the others are still closed."""
    for ls in list(listeners):
        try:
            ls.close()
        except Exception as err:
            log.error("close_failed", what=type(ls).__name__, error=repr(err))
