"""Replay source: a recording's own timestamps mark its gaps (in the counter and in time), `channels` picks by name,
and the replay config's units reach the reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neurostimd.clock import VirtualClock
from neurostimd.core.ringbuffer import FLAG_GAP, RingBuffer
from neurostimd.errors import DataFormatError, SourceError
from neurostimd.sources import make_source
from neurostimd.sources.replay import ReplaySource
from neurostimd.sources.settings import ReplaySourceConfig
from tests.sources.test_readers import sine_data, write_xdf


def test_a_gap_in_the_stamps_is_waited_for_and_flagged(tmp_path: Path) -> None:
    """Samples after a 20-sample hole in the stamps are due 20 ms later, carry the gap flag, and t_data_s is recording
    time across the hole."""
    fs = 1000.0
    k = np.concatenate([np.arange(0, 100), np.arange(120, 200)]).astype(np.float64)
    p = tmp_path / "g.npz"
    np.savez(p, data=np.arange(180, dtype=np.float32)[:, None], fs=fs, timestamps=7.0 + k / fs)
    clock = VirtualClock()
    ring = RingBuffer(1, 1000, fs)
    with ReplaySource(p, 1.0, clock) as src:
        clock.advance(110_000_000)  # 110 ms: samples 0..99 are due, the next one only at 120 ms
        assert src.pump(ring) == 100
        clock.advance(10_000_000)
        assert src.pump(ring) == 1 and src.t_data_s == pytest.approx(0.120)
        clock.advance(100_000_000)
        src.pump(ring)
    w = ring.latest(ring.total_written)
    assert ring.counters.missing_samples == 20 and np.flatnonzero(w.flags & FLAG_GAP).tolist() == [100]
    assert w.timestamps[100] - w.timestamps[99] == pytest.approx(0.021)


def test_jitter_allowance_keeps_jittery_stamps_gap_free(tmp_path: Path) -> None:
    """Stamps jittering by up to 3 ms are gaps without an allowance and none with timestamp_jitter_ms = 5."""
    fs = 500.0
    ts = np.arange(2000) / fs + np.random.default_rng(1).uniform(0, 0.003, 2000)
    p = tmp_path / "j.npz"
    np.savez(p, data=np.zeros((2000, 1), np.float32) + np.arange(2000)[:, None], fs=fs, timestamps=ts)
    for jitter, gappy in ((0.0, True), (5.0, False)):
        src = make_source(ReplaySourceConfig(kind="replay", path=p, speed="max", timestamp_jitter_ms=jitter),
                          clock=VirtualClock())
        assert isinstance(src, ReplaySource)
        assert bool(src._breaks.size) is gappy


def test_channels_pick_by_name_and_need_names(tmp_path: Path) -> None:
    """`channels` delivers the named columns in its order; a missing name or a file without names is refused."""
    p = tmp_path / "n.npz"
    np.savez(p, data=np.array([[1.0, 2.0, 3.0]] * 10, np.float32), fs=100.0, channel_names=np.array(["A", "B", "C"]))
    clock = VirtualClock()
    ring = RingBuffer(2, 100, 100.0)
    with ReplaySource(p, 1.0, clock, channels=["C", "a"]) as src:
        assert src.declared_channel_names == ["C", "A"]
        clock.advance(1_000_000_000)
        src.pump(ring)
    np.testing.assert_array_equal(ring.latest(1).data, [[3.0, 1.0]])
    with pytest.raises(SourceError, match="missing: 'Z'"):
        ReplaySource(p, 1.0, clock, channels=["Z"])
    np.savez(p, data=np.zeros((10, 3), np.float32), fs=100.0)
    with pytest.raises(SourceError, match="names none"):
        ReplaySource(p, 1.0, clock, channels=["A"])


def test_the_replay_configs_units_reach_the_reader(tmp_path: Path) -> None:
    """An XDF without units is refused by a replay config without units and read in the stated unit with them."""
    p = tmp_path / "u.xdf"
    write_xdf(p, sine_data(200, 2, 100.0), 100.0, ["C3", "C4"])
    with pytest.raises(DataFormatError, match="units"):
        make_source(ReplaySourceConfig(kind="replay", path=p, speed="max"))
    src = make_source(ReplaySourceConfig(kind="replay", path=p, speed="max", units="mV"), clock=VirtualClock())
    assert isinstance(src, ReplaySource)
    np.testing.assert_allclose(src.recording.data, sine_data(200, 2, 100.0) * 1e3, rtol=1e-5)
