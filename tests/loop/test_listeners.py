"""The loop's outputs as listeners: what each gets, in what order, and why one that raises changes nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from structlog.testing import capture_logs

from neurostimd.config import Config
from neurostimd.core.controller import params_dict
from neurostimd.listeners import (
    BaseListener,
    CommandEvent,
    DecisionEvent,
    Listeners,
    LoopView,
    TickStats,
)
from neurostimd.outputs.audit import read_audit
from neurostimd.outputs.metrics import STAGES
from tests.loops import board_loop


class Collect(BaseListener):
    """Everything the loop says, in the order it says it."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.indices: list[np.ndarray] = []
        self.decisions: list[DecisionEvent] = []
        self.commands: list[CommandEvent] = []
        self.ticks: list[TickStats] = []

    def on_samples(self, window: Any) -> None:
        self.calls.append("samples")
        self.indices.append(np.array(window.indices))  # a view into the ring: copy what is kept

    def on_command(self, command: CommandEvent) -> None:
        self.calls.append("command")
        self.commands.append(command)

    def on_decision(self, decision: DecisionEvent) -> None:
        self.calls.append("decision")
        self.decisions.append(decision)

    def on_tick(self, stats: TickStats, loop: LoopView) -> None:
        self.calls.append("tick")
        self.ticks.append(stats)


class Broken(BaseListener):
    """An output that fails at every call."""

    def on_samples(self, window: Any) -> None:
        raise OSError("disk full")

    def on_command(self, command: CommandEvent) -> None:
        raise RuntimeError("bug in on_command")

    def on_decision(self, decision: DecisionEvent) -> None:
        raise ValueError("bug in on_decision")

    def on_tick(self, stats: TickStats, loop: LoopView) -> None:
        raise KeyError("bug in on_tick")


def _run(cfg: Config, bundle: Any, tmp_path: Path, *listeners: Any, seconds: float = 6.0) -> Any:
    loop, drv, audit, _ = board_loop(cfg, bundle, tmp_path)
    for ls in listeners:
        loop.listeners.add(ls)
    try:
        loop.run(should_stop=lambda: False, duration_s=seconds)
    finally:
        audit.close()
        drv.close()
    return loop, drv


def test_listeners_get_every_sample_once_every_command_and_every_decision(cfg: Config, bundle: Any,
                                                                         tmp_path: Path) -> None:
    """Per tick: the new samples (each sample exactly once, in order), the command sent with the board's answer and
    its audit record, the decision, then the tick's statistics — in that order, after the command path."""
    c = Collect()
    loop, drv = _run(cfg, bundle, tmp_path, c)
    idx = np.concatenate(c.indices)
    assert len(idx) == loop.ring.total_written and np.array_equal(idx, np.arange(len(idx)))
    assert len(c.decisions) == len(c.ticks) == loop.state.ticks > 100
    assert [d.tick for d in c.decisions] == [t.index for t in c.ticks] == list(range(loop.state.ticks))
    recs = read_audit(tmp_path / "audit.jsonl").records
    sent = [r for r in recs if r["event"] in ("stim_command", "stim_stop")]
    acks = {r["command_seq"]: r for r in recs if r["event"] == "stim_ack"}
    assert len(c.commands) == loop.state.commands == len(sent) and any(r["applied"] for r in sent)
    for ev, rec in zip(c.commands, sent, strict=True):
        assert ev.record == rec and ev.acked == acks[rec["seq"]]["ack"] and ev.reply == "ack"
        assert ev.t_ack_mono_ns == acks[rec["seq"]]["t_mono_ns"]
        assert params_dict(ev.command.applied) == rec["applied"]
    # the ticks that sent are the decisions whose command the listener got, and their record says what was sent
    by_tick = {t.index: t for t in c.ticks}
    assert sum(by_tick[d.tick].command_sent for d in c.decisions) == len(c.commands)
    # every tick tells samples (when there are new ones), command (when sent), decision, then tick
    per_tick = " ".join(c.calls).replace("samples command decision tick", "S").replace(
        "samples decision tick", "s").replace("command decision tick", "C").replace("decision tick", "d").split()
    assert set(per_tick) <= {"S", "s", "C", "d"} and len(per_tick) == loop.state.ticks
    last = c.decisions[-1].record
    assert last["tick"] == loop.state.ticks - 1 and last["state"] == loop.state.state
    assert drv.board.stimulating or loop.state.commands > 1


def _commands(path: Path) -> list[tuple[Any, ...]]:
    return [(r["event"], r.get("applied"), r.get("ack"), r.get("limited_by")) for r in read_audit(path).records
            if r["event"] in ("stim_command", "stim_stop", "stim_ack", "fault", "fault_cleared", "state_change")]


def test_a_listener_that_raises_stops_nothing_else(cfg: Config, bundle: Any, tmp_path: Path) -> None:
    """An output that raises at every call: the loop ticks on and audits and sends exactly the commands it sends
    without it, the next listener still gets everything, and the failure is logged once per listener (not once per
    call) and counted in the loop state (the status file shows it)."""
    (tmp_path / "clean").mkdir()
    (tmp_path / "broken").mkdir()
    clean, _ = _run(cfg, bundle, tmp_path / "clean")
    c = Collect()
    with capture_logs() as logs:
        loop, _ = _run(cfg, bundle, tmp_path / "broken", Broken(), c)
    got = _commands(tmp_path / "broken" / "audit.jsonl")
    assert got == _commands(tmp_path / "clean" / "audit.jsonl")
    assert any(ev == "stim_command" and applied for ev, applied, *_ in got), "the loop stimulated"
    assert loop.state.ticks == clean.state.ticks and loop.state.commands == clean.state.commands
    assert len(c.decisions) == len(c.ticks) == loop.state.ticks
    assert len(c.commands) == loop.state.commands > 1
    failed = [e for e in logs if e["event"] == "listener_failed"]
    assert len(failed) == 1 and failed[0]["listener"] == "Broken" and failed[0]["log_level"] == "error"
    assert failed[0]["method"] == "on_command" and "exc_info" in failed[0]  # the first tick: its STOP, no samples yet
    # every call raised: samples (when there were new ones) and decisions every tick, ticks, commands when sent
    n = loop.state.ticks
    assert loop.state.listener_failures == {"Broken": len(c.indices) + 2 * n + len(c.commands)}
    # and the session's record says from when that output is missing: one output_failed record, its first failure
    out = [r for r in read_audit(tmp_path / "broken" / "audit.jsonl").records if r["event"] == "output_failed"]
    assert len(out) == 1 and out[0]["listener"] == "Broken" and out[0]["method"] == "on_command"
    assert "bug in on_command" in out[0]["error"]


def test_failures_are_logged_at_most_once_per_interval() -> None:
    """The first failure is logged with its traceback; later ones at most once per interval, with a count."""
    now = [0.0]
    ls = Listeners([Broken(), Broken()], log_every_s=60.0, now=lambda: now[0])
    with capture_logs() as logs:
        for _ in range(100):
            ls.decision(None)  # type: ignore[arg-type]
            now[0] += 1.0
    first = [e for e in logs if e["event"] == "listener_failed"]
    again = [e for e in logs if e["event"] == "listener_still_failing"]
    assert [e["listener"] for e in first] == ["Broken", "Broken#2"]
    assert isinstance(first[0]["exc_info"], ValueError)
    assert [(e["listener"], e["failures_since"], e["failures"]) for e in again] == [
        ("Broken", 60, 61), ("Broken#2", 60, 61)]
    assert ls.failures == {"Broken": 100, "Broken#2": 100}


def test_stage_names_are_the_benchs_and_the_timings_files(cfg: Config, bundle: Any, tmp_path: Path) -> None:
    """`stages_ms` keeps its names and order: the bench, the timings file and the metrics read them."""
    c = Collect()
    _run(cfg, bundle, tmp_path, c, seconds=1.0)
    assert all(tuple(t.stages_ms) == STAGES == ("audit", "ingest", "features", "inference", "checks", "policy_safety",
                                                   "driver")
               for t in c.ticks)


def test_a_listener_sees_the_drivers_counters_but_not_the_driver(cfg: Config, bundle: Any, tmp_path: Path) -> None:
    """Only the loop commands the board (through the gate and the audit log): what `on_tick` gets has the loop's
    state, its ring and the driver's health counters, and no way to the driver."""
    seen: list[Any] = []

    class Peek(BaseListener):
        def on_tick(self, stats: TickStats, loop: LoopView) -> None:
            seen.append(loop)

    loop, drv = _run(cfg, bundle, tmp_path, Peek(), seconds=1.0)
    view = seen[-1]
    assert view.state is loop.state and view.ring is loop.ring and view.driver_counters is drv.counters
    assert not hasattr(view, "driver") and not hasattr(view, "__dict__")
    assert not any(isinstance(getattr(view, name, None), type(drv)) for name in dir(view))
