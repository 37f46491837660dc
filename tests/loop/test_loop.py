"""The ClosedLoop itself, on a virtual clock with the in-process virtual board (the real driver and protocol)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from structlog.testing import capture_logs

from neurostimd.clock import VirtualClock
from neurostimd.config import Config
from neurostimd.drivers.types import StimParams
from neurostimd.firmware_sim.generate import generate_recording
from neurostimd.firmware_sim.inprocess import VirtualBoardDriver
from neurostimd.loop import ClosedLoop
from neurostimd.outputs.audit import AuditLog, read_audit
from neurostimd.sources.replay import ReplaySource
from tests.loop.collect import DecisionLog, OnTick
from tests.loops import board_loop


def _events(tmp_path: Path) -> list[dict[str, Any]]:
    return read_audit(tmp_path / "audit.jsonl").records


def test_first_decision_stops_a_board_left_stimulating(cfg: Config, bundle: Any, tmp_path: Path) -> None:
    """A board still stimulating from an earlier host is sent an audited STOP at the loop's first decision."""
    loop, drv, audit, _ = board_loop(cfg, bundle, tmp_path)
    try:
        drv.set_stimulation(StimParams(20.0, 1.0, 100.0))
        assert drv.board.stimulating
        loop.tick()
        assert not drv.board.stimulating
        ev = _events(tmp_path)
        stop = next(r for r in ev if r["event"] == "stim_stop")
        assert any(r["event"] == "stim_ack" and r["command_seq"] == stop["seq"] and r["ack"] for r in ev)
    finally:
        audit.close()
        drv.close()


def test_every_command_is_on_disk_before_the_board_sees_it(cfg: Config, bundle: Any, tmp_path: Path) -> None:
    """When SET_STIM reaches the board, the audit log already holds the stim_command with those parameters."""
    loop, drv, audit, _ = board_loop(cfg, bundle, tmp_path)
    seen: list[bool] = []
    real_feed = drv.board.feed

    def feed(data: bytes, now_ns: int) -> bytes:
        before = drv.board.params
        out = real_feed(data, now_ns)
        after = drv.board.params
        if after is not None and after != before:
            cmds = [r for r in read_audit(tmp_path / "audit.jsonl").records if r["event"] == "stim_command"]
            seen.append(bool(cmds) and abs(cmds[-1]["applied"]["amplitude_ma"] - after.amplitude_ma) < 1e-3)
        return out

    drv.board.feed = feed  # type: ignore[method-assign]
    try:
        loop.run(should_stop=lambda: False, duration_s=6.0)
    finally:
        audit.close()
        drv.close()
    assert seen and all(seen), f"{seen.count(False)} of {len(seen)} commands reached the board before the audit log"


def test_a_nak_leads_to_the_safe_state_at_the_next_decision(cfg: Config, bundle: Any, tmp_path: Path) -> None:
    """A board fault that NAKs SET_STIM: the loop records the NAK, raises the `nak` fault and sends STOP."""
    loop, drv, audit, clock = board_loop(cfg, bundle, tmp_path)
    try:
        loop.run(should_stop=lambda: drv.board.stimulating, duration_s=10.0)
        assert drv.board.stimulating, "the loop started stimulating on clean data"
        drv.board.inject_fault(clock.now_ns())
        loop.run(should_stop=lambda: False, duration_s=1.0)
    finally:
        audit.close()
        drv.close()
    ev = _events(tmp_path)
    nak = next(i for i, r in enumerate(ev) if r["event"] == "stim_ack" and r.get("reply") == "nak")
    after = ev[nak + 1:]
    assert any(r["event"] == "fault" and "nak" in r["faults"] for r in after)
    assert any(r["event"] == "stim_stop" for r in after)


def test_nan_burst_faults_then_recovers(cfg: Config, bundle: Any, tmp_path: Path) -> None:
    """A NaN burst stops stimulation at once; once clean data returns the loop decides and stimulates again."""
    rec = generate_recording(30.0, 32, 1000.0, seed=3)
    data = rec["data"].copy()
    data[10_000:10_020, 5] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(path, **{**rec, "data": data})
    clock = VirtualClock()
    drv = VirtualBoardDriver(n_channels=32, sample_rate_hz=1000.0, clock=clock, stream_samples=False)
    drv.open()
    src = ReplaySource(path, 1.0, clock)
    src.open()
    decisions: list[dict[str, Any]] = []
    with AuditLog(tmp_path / "audit.jsonl", durable=False) as audit:
        loop = ClosedLoop(cfg, clock=clock, source=src, bundle=bundle, audit=audit, driver=drv,
                          listeners=[DecisionLog(decisions)])
        loop.run(should_stop=lambda: False)
    drv.close()
    nan_ticks = [d for d in decisions if "quality_nan_inf" in d["faults"]]
    assert nan_ticks, "the NaN window was flagged"
    t_nan = nan_ticks[0]["t_data_s"]
    assert all(d["applied"] is None for d in nan_ticks)
    later = [d for d in decisions if d["t_data_s"] is not None and d["t_data_s"] > t_nan + 5.0]
    assert any(d["probs"] is not None for d in later), "the classifier decides again after the burst"
    assert any(d["applied"] is not None for d in later), "stimulation resumes after clean data"


def test_overruns_are_counted_and_logged(cfg: Config, bundle: Any, tmp_path: Path) -> None:
    """A 170 ms stall in a 50 ms cadence: the late tick's jitter shows it, the skipped deadlines are counted as
    overruns and logged at warning level, and the cadence resumes on the original grid (absolute deadlines)."""
    loop, drv, audit, clock = board_loop(cfg, bundle, tmp_path)
    ticks: list[Any] = []
    loop.listeners.add(OnTick(ticks.append))
    slow = {"n": 0}

    def stall(_stats: Any) -> None:
        slow["n"] += 1
        if slow["n"] == 10:
            clock.advance(170_000_000)

    try:
        with capture_logs() as logs:
            loop.listeners.add(OnTick(stall))
            loop.run(should_stop=lambda: False, duration_s=2.0)
    finally:
        audit.close()
        drv.close()
    late = ticks[10]
    assert late.jitter_ms >= 100.0  # due 50 ms after tick 9, started ~170 ms after it
    # deadlines t0 + 11·50 and t0 + 12·50 ms passed during the late tick: skipped, counted, logged
    assert loop.state.overruns == 2 and late.overrun_ticks == 2
    over = [e for e in logs if e["event"] == "overrun"]
    assert len(over) == 1 and over[0]["log_level"] == "warning" and over[0]["missed_ticks"] == 2
    grid = {(t.deadline_ns - ticks[0].deadline_ns) % 50_000_000 for t in ticks}
    assert grid == {0}, "every deadline stays on the original 50 ms grid"
