"""LSL source against outlet processes on loopback: gaps in a stream's own timestamps reach the ring exactly, and the
source stays with the stream it was opened on — another process's outlet of the same name is refused (and logged),
the real outlet's restart is accepted, and an ambiguous start is refused."""

from __future__ import annotations

import time

import numpy as np
import pytest
from structlog.testing import capture_logs

from neurostimd.core.ringbuffer import FLAG_GAP, RingBuffer
from neurostimd.errors import SourceError
from neurostimd.sources.lsl import LslSource
from neurostimd.sources.settings import LslSourceConfig
from tests.sources.test_lsl_source import OutletProcess, pump_until, unique


@pytest.mark.parametrize("missing", [20, 1])
def test_a_gap_in_the_streams_stamps_is_flagged_exactly(outlets, missing: int) -> None:
    """A 20 ms hole (or one missing sample) at 1 kHz is one gap of exactly that many samples, flagged on the first
    sample after it; nothing else is flagged."""
    name = unique("gap")
    outlets.append(OutletProcess(name=name, source_id=name, channels=2, rate=1000.0, samples=1500, chunk=10,
                                 wait_consumer=20, gap_after=700, gap_samples=missing))
    cfg = LslSourceConfig(kind="lsl", source_id=name, n_channels=2, sample_rate_hz=1000.0, resolve_timeout_s=10)
    ring = RingBuffer(2, 4000, 1000.0)
    with LslSource(cfg) as src:
        assert pump_until(src, ring, lambda: ring.total_written >= 1500 - missing, 30.0), ring.total_written
    assert ring.counters.gaps == 1 and ring.counters.missing_samples == missing
    w = ring.latest(ring.total_written)
    flagged = np.flatnonzero(w.flags & FLAG_GAP)
    assert flagged.size == 1 and w.data[flagged[0], 0] == 701 + missing
    assert ring.counters.clock_jumps == 0 and ring.counters.out_of_order == 0


def test_push_time_stamps_need_the_configured_jitter_to_be_gap_free(outlets) -> None:
    """An outlet that lets liblsl stamp chunks at push time reads without false gaps once timestamp_jitter_ms
    allows its jitter."""
    name = unique("push")
    outlets.append(OutletProcess(name=name, source_id=name, channels=2, rate=1000.0, samples=2000, chunk=10,
                                 wait_consumer=20, stamp="push"))
    cfg = LslSourceConfig(kind="lsl", source_id=name, n_channels=2, sample_rate_hz=1000.0, resolve_timeout_s=10,
                          timestamp_jitter_ms=50.0)
    ring = RingBuffer(2, 4000, 1000.0, jitter_tolerance_s=0.05)
    with LslSource(cfg) as src:
        assert pump_until(src, ring, lambda: ring.total_written >= 2000, 30.0)
    assert ring.counters.gaps == 0
    np.testing.assert_array_equal(np.diff(ring.latest(2000).data[:, 0]), 1.0)


def test_a_foreign_outlet_of_the_same_name_is_refused_and_the_real_restart_accepted(outlets) -> None:
    """After the real outlet vanishes, another process's outlet with the same name (another source_id) delivers
    nothing and is logged as refused once, with both identities; the real outlet restarted with its source_id is
    read again."""
    name = unique("pin")
    real_sid = f"{name}-amp"
    outlets.append(OutletProcess(name=name, source_id=real_sid, channels=2, rate=500.0, wait_consumer=20))
    cfg = LslSourceConfig(kind="lsl", name=name, n_channels=2, sample_rate_hz=500.0, stale_after_ms=150,
                          resolve_timeout_s=10)
    ring = RingBuffer(2, 50_000, 500.0)
    with capture_logs() as logs, LslSource(cfg) as src:
        assert pump_until(src, ring, lambda: ring.total_written > 100 and not src.stale, 20.0)
        outlets[0].kill()
        assert pump_until(src, ring, lambda: src.stale, 10.0)
        outlets.append(OutletProcess(name=name, source_id=f"{name}-intruder", channels=2, rate=500.0,
                                     start=5_000_000))
        before = ring.total_written
        pump_until(src, ring, lambda: False, 4.0)  # long enough for the resolver to see it and to be refused
        assert ring.total_written == before and src.stale
        outlets.append(OutletProcess(name=name, source_id=real_sid, channels=2, rate=500.0, start=1_000_000))
        assert pump_until(src, ring, lambda: not src.stale and ring.total_written > before + 50, 30.0)
        got = ring.since(before).data[:, 0]
    assert got.min() >= 1_000_000 and got.max() < 5_000_000, "only the real outlet's samples"
    refused = [e for e in logs if e["event"] == "lsl_stream_refused"]
    assert len(refused) == 1
    assert refused[0]["pinned"]["source_id"] == real_sid and refused[0]["candidate"]["source_id"] == f"{name}-intruder"


def test_a_stall_does_not_move_the_source_to_another_outlet(outlets) -> None:
    """A 600 ms stall of the real outlet makes the source stale, but it stays with that outlet (refusing a second
    same-name one) and reads it on when it resumes."""
    name = unique("stall")
    outlets.append(OutletProcess(name=name, source_id=f"{name}-a", channels=2, rate=500.0, wait_consumer=20,
                                 stall_after=1500, stall_s=0.6))
    cfg = LslSourceConfig(kind="lsl", name=name, n_channels=2, sample_rate_hz=500.0, stale_after_ms=150,
                          resolve_timeout_s=10)
    ring = RingBuffer(2, 50_000, 500.0)
    with capture_logs() as logs, LslSource(cfg) as src:
        assert pump_until(src, ring, lambda: ring.total_written > 50, 20.0)
        outlets.append(OutletProcess(name=name, source_id=f"{name}-b", channels=2, rate=500.0, start=5_000_000))
        assert pump_until(src, ring, lambda: src.stale, 15.0)
        assert pump_until(src, ring, lambda: not src.stale and ring.total_written > 2500, 20.0)
    vals = ring.latest(ring.total_written).data[:, 0]
    assert vals.max() < 5_000_000
    np.testing.assert_array_equal(np.diff(vals), 1.0)
    assert not any(e["event"] == "lsl_source_reconnected" for e in logs)


def test_several_matching_streams_at_start_are_refused_with_the_list(outlets) -> None:
    """Two different outlets of one name at start: open() refuses, lists both and says to set source_id."""
    name = unique("twins")
    outlets.append(OutletProcess(name=name, source_id=f"{name}-1", channels=2, rate=500.0))
    outlets.append(OutletProcess(name=name, source_id=f"{name}-2", channels=2, rate=500.0))
    cfg = LslSourceConfig(kind="lsl", name=name, n_channels=2, sample_rate_hz=500.0, resolve_timeout_s=2.0)
    t0 = time.monotonic()
    with pytest.raises(SourceError) as exc:
        LslSource(cfg).open()
    msg = str(exc.value)
    assert time.monotonic() - t0 >= 2.0, "the timeout is waited out before judging"
    assert f"{name}-1" in msg and f"{name}-2" in msg and "source_id (or hostname)" in msg


def test_the_ghost_of_a_just_restarted_outlet_does_not_fail_the_start(outlets) -> None:
    """An outlet restarted just before the start (its old run still in the resolver's memory) is opened normally,
    with or without a source_id, and the new run is the one read."""
    for sid in ("restart-sid", ""):
        name = unique("ghost")
        first = OutletProcess(name=name, source_id=sid and f"{name}-{sid}", channels=2, rate=500.0)
        outlets.append(first)
        time.sleep(1.0)
        first.kill()
        outlets.append(OutletProcess(name=name, source_id=sid and f"{name}-{sid}", channels=2, rate=500.0,
                                     start=1_000_000))
        cfg = LslSourceConfig(kind="lsl", name=name, n_channels=2, sample_rate_hz=500.0, resolve_timeout_s=6.0)
        ring = RingBuffer(2, 10_000, 500.0)
        with LslSource(cfg) as src:
            assert pump_until(src, ring, lambda r=ring: r.total_written > 50, 20.0)
        assert ring.latest(1).data[0, 0] >= 1_000_000
