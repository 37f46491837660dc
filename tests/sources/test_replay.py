"""Replay source: deterministic on a virtual clock, paced on the real clock, and the Eye State recording streams
into the ring sample for sample (replay source and neurostimd-sim --signal)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from neurostimd.clock import MonotonicClock, VirtualClock
from neurostimd.core.ringbuffer import RingBuffer
from neurostimd.sources import make_source
from neurostimd.sources.recordings import Recording, read_recording, to_npz
from neurostimd.sources.replay import ReplaySource
from neurostimd.sources.settings import ReplaySourceConfig


def noisy_recording(n: int = 3000, ch: int = 4, fs: float = 250.0, seed: int = 7) -> Recording:
    rng = np.random.default_rng(seed)
    return Recording(rng.normal(0, 40, (n, ch)).astype(np.float32), fs, [f"c{i}" for i in range(ch)])


def run_max_speed(path: Path, tick_ns: int = 50_000_000) -> tuple[bytes, bytes, int]:
    """Replay `path` at speed "max" through make_source, ticking a virtual clock, and return the ring's bytes."""
    clock = VirtualClock()
    src = make_source(ReplaySourceConfig(kind="replay", path=path, speed="max"), clock=clock)
    with src:
        ring = RingBuffer(src.n_channels, 20_000, src.sample_rate_hz)
        while not src.exhausted:
            clock.sleep_until(clock.now_ns() + tick_ns)
            src.pump(ring, 0.0)
    w = ring.latest(ring.total_written)
    return w.data.tobytes(), w.timestamps.tobytes(), ring.total_written


def test_replay_is_byte_identical_across_runs(tmp_path):
    """The same file replayed twice at speed max gives byte-identical samples and timestamps in the ring."""
    path = to_npz(noisy_recording(), tmp_path / "r.npz")
    a = run_max_speed(path)
    b = run_max_speed(path)
    assert a == b and a[2] == 3000


def test_virtual_clock_releases_exactly_the_samples_due():
    """On a virtual clock, pump() releases the samples due by now and never moves the clock itself."""
    rec = noisy_recording(1000, 2, 100.0)
    clock = VirtualClock(start_ns=5_000_000_000)
    ring = RingBuffer(2, 2000, 100.0)
    with ReplaySource(rec, 1.0, clock) as src:
        assert src.pump(ring, 1.0) == 1  # sample 0 is due at open
        clock.advance(95_000_000)
        assert src.pump(ring) == 9  # samples 1..9 (due at 10..90 ms)
        assert clock.now_ns() == 5_095_000_000
        assert src.t_data_s == pytest.approx(0.09)
        clock.advance(100_000_000_000)
        assert src.pump(ring) == 990 and src.exhausted and src.stale
    w = ring.latest(1000)
    np.testing.assert_array_equal(w.data, rec.data)
    np.testing.assert_allclose(w.timestamps, 5.0 + np.arange(1000) / 100.0)


def test_replay_at_speed_is_paced_by_the_real_clock():
    """At x4 on the real clock, a replay releases about four seconds of recording per second, in order."""
    rec = noisy_recording(4000, 2, 500.0)
    ring = RingBuffer(2, 5000, 500.0)
    with ReplaySource(rec, 4.0, MonotonicClock()) as src:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.5:
            src.pump(ring, 0.02)
        elapsed = time.monotonic() - t0
        n = ring.total_written
    # Generous margins: the machine is shared. The count follows elapsed time at 2000 samples/s.
    assert 0.6 * 2000 * 0.5 <= n <= 2000 * elapsed + 50
    np.testing.assert_array_equal(ring.latest(n).data, rec.data[:n])


def test_looping_replay_wraps_and_keeps_counting():
    """A looping replay starts over at the end of the file without a gap in the sample index."""
    rec = noisy_recording(100, 1, 100.0)
    clock = VirtualClock()
    ring = RingBuffer(1, 1000, 100.0)
    with ReplaySource(rec, 1.0, clock, loop=True) as src:
        clock.advance(2_495_000_000)
        src.pump(ring)
        assert not src.exhausted and ring.total_written == 250 and ring.gaps == 0
        assert src.t_data_s == pytest.approx(0.49)
    np.testing.assert_array_equal(ring.latest(250).data[:, 0], np.tile(rec.data[:, 0], 3)[:250])


@pytest.mark.needs_data
def test_eye_state_replays_sample_for_sample_at_max_and_x1(shared_data, tmp_path):
    """The Eye State recording streams into the ring exactly, at speed max (whole file) and x1 (a short stretch)."""
    rec = read_recording(shared_data / "eeg_eye_state" / "EEG_Eye_State.arff", fs=128.0)
    npz = to_npz(rec, tmp_path / "eyestate.npz")
    data, _ts, n = run_max_speed(npz)
    assert n == 14980
    assert data == rec.data.tobytes()
    # The ARFF directly through the config, at x1 for about a second of recording.
    src = make_source(ReplaySourceConfig(kind="replay", path=shared_data / "eeg_eye_state" / "EEG_Eye_State.arff",
                                         speed=1.0, sample_rate_hz=128.0))
    ring = RingBuffer(14, 2000, 128.0)
    with src:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:
            src.pump(ring, 0.05)
    k = ring.total_written
    assert 64 <= k <= 200
    np.testing.assert_array_equal(ring.latest(k).data, rec.data[:k])
    assert ring.gaps == 0


def test_make_source_needs_a_driver_for_the_board_and_a_rate_for_bare_csv(tmp_path):
    """make_source refuses a board source without a driver, and a CSV without a rate unless the config gives one."""
    from neurostimd.errors import DataFormatError, SourceError
    from neurostimd.sources.settings import BoardSourceConfig

    with pytest.raises(SourceError, match="no driver"):
        make_source(BoardSourceConfig())
    p = tmp_path / "r.csv"
    p.write_text("a,b\n" + "\n".join(f"{i},{-i}" for i in range(50)) + "\n")
    with pytest.raises(DataFormatError, match="pass fs"):
        make_source(ReplaySourceConfig(kind="replay", path=p, speed="max"))
    src = make_source(ReplaySourceConfig(kind="replay", path=p, speed="max", sample_rate_hz=50.0))
    assert src.sample_rate_hz == 50.0 and src.n_channels == 2 and src.channel_names == ["a", "b"]
