"""The capability seam: a driver without a sample stream (tests/contract/train_driver.py) through the contract suite,
and what the rest of neurostimd does with one: a board source refuses it, the loop services it every tick."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from neurostimd.clock import VirtualClock
from neurostimd.config import Config
from neurostimd.drivers.base import Capability, Driver
from neurostimd.drivers.types import BoardInfo, BoardStatus, DriverCounters, StimParams
from neurostimd.errors import SourceError
from neurostimd.firmware_sim.generate import generate_recording
from neurostimd.loop import ClosedLoop
from neurostimd.outputs.audit import AuditLog, read_audit
from neurostimd.sources.board import BoardSource
from neurostimd.sources.replay import ReplaySource
from tests.contract.suite import SAFE, DriverContract
from tests.contract.train_driver import TrainDevice, TrainDriver
from tests.loop.collect import DecisionLog


class TestTrainDriver(DriverContract):
    CAPABILITIES = frozenset()

    def make_driver(self) -> Driver:
        return TrainDriver(TrainDevice())


def test_a_train_that_is_not_rearmed_runs_out_and_stays_off() -> None:
    """The device's own rule, which the driver's service() exists for: a train lasts one train length from its last
    arming, and a re-arm after it ran out starts nothing."""
    now = {"ns": 0}
    dev = TrainDevice(now_ns=lambda: now["ns"])
    with TrainDriver(dev) as d:
        d.set_stimulation(SAFE)
        for t_ms in range(0, 2000, 50):  # a 50 ms loop: re-armed every 200 ms
            now["ns"] = t_ms * 1_000_000
            d.service(now["ns"])
        assert d.status().params == SAFE and d.counters.extra["rearms"] >= 9
        now["ns"] += dev.train_ns
        assert not d.status().stimulating and dev.trains_ran_out == 1
        d.service(now["ns"])
        assert not d.status().stimulating, "a train that ran out was started again by service()"


def test_a_board_source_refuses_a_driver_without_samples_at_open() -> None:
    """[source] kind = "board" with a stimulator that streams nothing is a config error at open, naming the missing
    capability and what to do; the driver is left unopened."""
    drv = TrainDriver(TrainDevice())
    src = BoardSource(drv)
    with pytest.raises(SourceError, match=r'TrainDriver streams none \(it lacks the "samples" capability\).*'
                                          r'another \[source\]'):
        src.open()
    assert not src.is_open and not drv.is_open


def test_a_driver_must_implement_what_it_declares() -> None:
    """Declaring "samples" without read_samples, or a capability the ABC does not know, fails at class creation."""

    class _Base(Driver):
        def _open(self) -> None: ...

        def _close(self) -> None: ...

        def info(self) -> BoardInfo:
            raise NotImplementedError

        def set_stimulation(self, params: StimParams) -> None: ...

        def stop(self) -> None: ...

        def status(self) -> BoardStatus:
            raise NotImplementedError

        @property
        def counters(self) -> DriverCounters:
            return DriverCounters()

    with pytest.raises(TypeError, match="does not implement read_samples"):
        type("Streams", (_Base,), {"capabilities": frozenset({"samples"})})
    with pytest.raises(TypeError, match=r"names \['impedence'\]"):
        type("Typo", (_Base,), {"capabilities": frozenset({"impedence"})})

    class Minimal(_Base):
        capabilities: ClassVar[frozenset[Capability]] = frozenset()

    d = Minimal()
    with d:
        assert not d.lost and d.reconnect() and d.session_epoch == 0 and d.resets == 0
        d.service(0)  # nothing to do


def test_the_loop_services_the_driver_every_tick_and_keeps_its_train_running(cfg: Config, bundle: Any,
                                                                              tmp_path: Path) -> None:
    """A replay loop on a driver without samples: service() once per tick at the loop's time, so the finite train
    the loop asked for never runs out under it (a run-out shows as the board stopping by itself), and no tick
    counts the driver as failed (read_samples, which it refuses, is never called)."""
    rec = generate_recording(20.0, 32, 1000.0, seed=3)
    path = tmp_path / "rec.npz"
    np.savez(path, **rec)
    clock = VirtualClock()
    dev = TrainDevice(now_ns=clock.now_ns)
    calls: list[int] = []

    class Recording(TrainDriver):
        def service(self, now_ns: int) -> None:
            calls.append(now_ns)
            super().service(now_ns)

    drv = Recording(dev)
    drv.open()
    src = ReplaySource(path, 1.0, clock)
    src.open()
    decisions: list[dict[str, Any]] = []
    try:
        with AuditLog(tmp_path / "audit.jsonl", durable=False) as audit:
            loop = ClosedLoop(cfg, clock=clock, source=src, bundle=bundle, audit=audit, driver=drv,
                              listeners=[DecisionLog(decisions)])
            loop.run(should_stop=lambda: False)
    finally:
        src.close()
        drv.close()
    assert len(calls) == len(decisions) > 300
    assert all(b > a for a, b in itertools.pairwise(calls))
    stimulating = [d for d in decisions if d["applied"] is not None]
    assert len(stimulating) * cfg.loop.cadence_ms > 2 * dev.limits.watchdog_ms, "the loop stimulated too briefly"
    assert dev.trains_ran_out == 0
    events = read_audit(tmp_path / "audit.jsonl").records
    assert not any(r["event"] == "board_stopped" for r in events)
    assert not any("board" in f for d in decisions for f in d["faults"]), "a tick counted the driver as failed"
