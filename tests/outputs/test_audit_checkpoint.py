"""Dose checkpoints: the loop, on a virtual clock with the in-process virtual board (the real driver and protocol),
writes a durable record at least every checkpoint interval while the board may be stimulating, and a loop killed at
any moment leaves a log that recovers at least the dose the board itself delivered."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from neurostimd.clock import VirtualClock
from neurostimd.config import Config
from neurostimd.firmware_sim.inprocess import VirtualBoardDriver
from neurostimd.loop import ClosedLoop
from neurostimd.outputs.audit import AuditLog, board_timing, read_audit
from neurostimd.sources.board import BoardSource
from tests.outputs.audit_clocks import T0_WALL

CHECKPOINT_NS = 1_000_000_000


class _Run:
    """A loop on a virtual clock whose audit log carries that clock's time, started as the daemon starts one."""

    def __init__(self, cfg: Config, bundle: Any, path: Path, *, seed: int = 0) -> None:
        self.clock = VirtualClock(start_ns=10**12)
        self.drv = VirtualBoardDriver(n_channels=32, sample_rate_hz=1000.0, clock=self.clock, block_size=50,
                                      seed=seed)
        self.drv.open()
        self.src = BoardSource(self.drv)
        self.src.open()
        self.path = path
        self.audit = self.open_audit()
        self.audit.write("startup", boot_id="boot-A", checkpoint_ms=cfg.audit.checkpoint_ms)
        self.audit.write("board_ready", **board_timing(self.drv))
        self.loop = ClosedLoop(cfg, clock=self.clock, source=self.src, bundle=bundle, audit=self.audit,
                               driver=self.drv)

    def open_audit(self) -> AuditLog:
        return AuditLog(self.path, durable=False, boot_id="boot-A", mono_ns=self.clock.now_ns,
                        wall_s=lambda: T0_WALL + self.clock.now_ns() / 1e9)

    def board_on_intervals(self) -> list[tuple[int, int]]:
        out, on_since = [], None
        for e in self.drv.event_log.events:
            if e["event"] == "stim_applied" and on_since is None:
                on_since = e["t_mono_ns"]
            elif e["event"] == "stim_off" and on_since is not None:
                out.append((on_since, e["t_mono_ns"]))
                on_since = None
        if on_since is not None:
            out.append((on_since, self.clock.now_ns()))
        return out

    def close(self) -> None:
        self.audit.close()
        self.src.close()
        self.drv.close()


def test_a_durable_record_at_least_every_checkpoint_interval_while_stimulating(cfg: Config, bundle: Any,
                                                                              tmp_path: Path) -> None:
    """While the board stimulates no gap between durable records exceeds checkpoint_ms; steady stimulation costs one
    dose_checkpoint (one fsync) per interval, not one per tick; checkpoints name what runs and the bounds."""
    run = _Run(cfg, bundle, tmp_path / "audit.jsonl")
    try:
        run.loop.run(should_stop=lambda: False, duration_s=40.0)
    finally:
        run.close()
    recs = read_audit(run.path).records
    durable = [r["t_mono_ns"] for r in recs if r["event"] != "stim_ack"]  # the loop's only non-durable record
    on = run.board_on_intervals()
    on_s = sum(b - a for a, b in on) / 1e9
    assert on_s > 10, "the board stimulated for a while"
    for a, b in on:
        inside = [a] + [t for t in durable if a < t < b] + [b]
        before = max(t for t in durable if t <= a)
        assert max(y - x for x, y in zip([before, *inside[1:]], inside[1:], strict=False)) <= CHECKPOINT_NS
    checkpoints = [r for r in recs if r["event"] == "dose_checkpoint"]
    assert len(checkpoints) <= on_s + len(on) + 1, f"{len(checkpoints)} checkpoints in {on_s:.1f} s of stimulation"
    assert len(checkpoints) >= on_s / 2, "steady stimulation is checkpointed"
    cp = checkpoints[-1]
    assert cp["checkpoint_ms"] == 1000 and cp["board_watchdog_ms"] == 250 and cp["exchange_ms"] == 300
    assert cp["session_stim_s"] > 0 and cp["daily_stim_s"] >= cp["session_stim_s"]
    assert cp["applied"] == "unknown" or set(cp["applied"]) == {"frequency_hz", "amplitude_ma", "pulse_width_us"}
    for r in checkpoints:  # none while the board is known to be off
        assert r["applied"] == "unknown" or any(a <= r["t_mono_ns"] <= b for a, b in on), r


def test_a_loop_killed_at_any_moment_leaves_at_least_the_boards_dose(cfg: Config, bundle: Any,
                                                                    tmp_path: Path) -> None:
    """Abandoned mid-run at random moments (ramping, steady, between a command and its ACK): the board stops by its
    watchdog, and the dose the next open recovers covers what the board's own event log shows, with at most the
    crash allowance over it."""
    rng = random.Random(7)
    for k in range(8):
        run = _Run(cfg, bundle, tmp_path / f"r{k}" / "audit.jsonl", seed=k)
        try:
            run.loop.run(should_stop=lambda run=run: run.drv.board.stimulating, duration_s=60.0)
            assert run.drv.board.stimulating
            run.loop.run(should_stop=lambda: False, duration_s=rng.uniform(0.0, 6.0))
            # killed: nothing more from the host; the board, stepped every millisecond, runs out its dead-man timer
            for _ in range(2000):
                run.clock.advance(1_000_000)
                run.drv.board.advance(run.clock.now_ns())
            assert not run.drv.board.stimulating
            board_s = sum(b - a for a, b in run.board_on_intervals()) / 1e9
            with run.open_audit() as reopened:
                recovered = reopened.recovered_daily_stim_s()
        finally:
            run.close()
        assert board_s <= recovered <= board_s + 1.55 + 0.1, (k, recovered, board_s)
