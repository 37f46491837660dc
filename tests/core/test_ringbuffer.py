"""Ring buffer: ordering, wrap-around, overruns, gaps, and quality flags for bad data (never exceptions)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neurostimd.core.ringbuffer import FLAG_GAP, RingBuffer


def counter_block(start: int, n: int, ch: int = 3) -> np.ndarray:
    return (np.arange(start, start + n, dtype=np.float32)[:, None] + np.arange(ch, dtype=np.float32) * 0.25)


def times(start: int, n: int, fs: float = 100.0) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float64) / fs


def test_latest_returns_newest_samples_in_order_across_wraparound():
    """latest(n) returns exactly the newest n samples, in order, with their indices, after the ring wrapped."""
    ring = RingBuffer(3, 50, 100.0)
    k = 0
    for n in (7, 13, 29, 1, 40, 11):
        ring.write(counter_block(k, n), times(k, n), first_index=k)
        k += n
    w = ring.latest(45)
    assert ring.total_written == k
    np.testing.assert_array_equal(w.indices, np.arange(k - 45, k))
    np.testing.assert_array_equal(w.data, counter_block(k - 45, 45))
    np.testing.assert_array_equal(w.timestamps, times(k - 45, 45))
    assert ring.latest(500).data.shape == (50, 3)
    assert ring.counters.gaps == 0


def test_latest_without_copy_is_a_view_into_the_ring():
    """latest(n, copy=False) hands back a view (no copy), even when the span wraps around the storage end."""
    ring = RingBuffer(2, 10, 100.0)
    ring.write(counter_block(0, 8, 2), times(0, 8))
    ring.write(counter_block(8, 6, 2), times(8, 6))  # wraps
    w = ring.latest(10, copy=False)
    assert w.data.base is not None
    np.testing.assert_array_equal(w.data[:, 0], np.arange(4, 14))


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=30), cap=st.integers(2, 64),
       n=st.integers(0, 80))
def test_latest_matches_the_tail_of_everything_written(sizes: list[int], cap: int, n: int):
    """For any block sizes and capacity, latest(n) equals the tail of the concatenation of all writes."""
    ring = RingBuffer(2, cap, 50.0)
    k = 0
    for s in sizes:
        ring.write(counter_block(k, s, 2), times(k, s, 50.0), first_index=k)
        k += s
    m = min(n, k, cap)
    w = ring.latest(n)
    np.testing.assert_array_equal(w.data, counter_block(k - m, m, 2))
    np.testing.assert_array_equal(w.indices, np.arange(k - m, k))


def test_since_reports_overrun_when_samples_were_overwritten():
    """since(index) for samples already overwritten starts at the oldest held sample and counts the loss."""
    ring = RingBuffer(3, 20, 100.0)
    ring.write(counter_block(0, 15), times(0, 15))
    w = ring.since(10)
    np.testing.assert_array_equal(w.indices, np.arange(10, 15))
    assert w.overrun == 0
    ring.write(counter_block(15, 30), times(15, 30))
    w = ring.since(15)
    assert w.overrun == 10 and w.first_index == 25 and w.end_index == 45
    np.testing.assert_array_equal(w.data, counter_block(25, 20))
    assert ring.overruns == 1 and ring.counters.overrun_samples == 10
    empty = ring.since(45)
    assert len(empty) == 0 and empty.first_index == 45 and empty.overrun == 0


def test_counter_jump_counts_a_gap_and_flags_the_window():
    """A jump in the source's sample counter counts a gap with its missing samples and flags windows spanning it."""
    ring = RingBuffer(3, 100, 100.0)
    ring.write(counter_block(0, 10), times(0, 10), first_index=0)
    ring.write(counter_block(15, 10), times(15, 10), first_index=15)
    assert ring.gaps == 1 and ring.counters.missing_samples == 5
    assert ring.quality(20).gap and "gap" in ring.quality(20).reasons
    assert not ring.quality(9).gap  # the flag belongs to the first sample after the jump
    assert ring.latest(10).flags[0] & FLAG_GAP


def test_timestamp_gap_without_counter_is_flagged():
    """Without a counter, a timestamp step larger than the rate and jitter tolerance allow is a gap."""
    ring = RingBuffer(1, 1000, 100.0, jitter_tolerance_s=0.05)
    ring.write(np.zeros((10, 1)) + np.arange(10)[:, None], times(0, 10))
    ring.write(np.zeros((10, 1)) + np.arange(10)[:, None], times(30, 10))  # 200 ms missing
    assert ring.gaps == 1 and ring.quality(15).gap


def test_nan_burst_flatline_and_saturation_are_flags_not_exceptions():
    """NaN/Inf bursts, a flat channel and saturated values each raise their own flag and never an exception."""
    fs = 200.0
    rng = np.random.default_rng(1)
    ring = RingBuffer(4, 2000, fs, saturation_uv=1000.0, flatline_samples=40)
    clean = rng.normal(0, 20, (200, 4)).astype(np.float32)
    ring.write(clean, times(0, 200, fs))
    assert ring.quality(200).ok and ring.quality(200).reasons == []
    burst = rng.normal(0, 20, (20, 4)).astype(np.float32)
    burst[5:9, 1] = np.nan
    burst[12, 2] = np.inf
    ring.write(burst, times(200, 20, fs))
    q = ring.quality(50)
    assert q.nan_inf and not q.ok and q.reasons == ["nan_inf"]
    ring.write(rng.normal(0, 20, (100, 4)).astype(np.float32), times(220, 100, fs))
    assert ring.quality(50).ok
    flat = rng.normal(0, 20, (60, 4)).astype(np.float32)
    flat[:, 3] = 12.5
    ring.write(flat, times(320, 60, fs))
    q = ring.quality(60)
    assert q.flatline and q.flat_channels == [3]
    # A flat run that ended just before the window still counts when it reaches into it.
    ring.write(rng.normal(0, 20, (10, 4)).astype(np.float32), times(380, 10, fs))
    assert ring.quality(11).flatline
    sat = rng.normal(0, 20, (10, 4)).astype(np.float32)
    sat[4, 0] = -1500.0
    ring.write(sat, times(390, 10, fs))
    assert ring.quality(10).saturation


def test_clock_jumps_and_out_of_order_timestamps_are_flagged():
    """Backward timestamps, forward clock jumps with a contiguous counter and non-finite stamps are flagged."""
    fs = 100.0
    ring = RingBuffer(2, 1000, fs, jitter_tolerance_s=0.05)
    ring.write(counter_block(0, 10, 2), times(0, 10), first_index=0)
    ring.write(counter_block(10, 10, 2), times(10, 10) - 1.0, first_index=10)  # 1 s backwards
    q = ring.quality(10)
    assert q.out_of_order and ring.counters.out_of_order == 1 and not q.gap
    ring.write(counter_block(20, 10, 2), times(20, 10) + 5.0, first_index=20)  # clock leaps, counter contiguous
    q = ring.quality(10)
    assert q.clock_jump and not q.gap and ring.counters.clock_jumps == 1
    bad_ts = times(30, 10) + 5.0
    bad_ts[3] = np.nan
    ring.write(counter_block(30, 10, 2), bad_ts, first_index=30)
    w = ring.latest(10)
    assert np.isfinite(w.timestamps).all() and ring.quality(10).clock_jump
    # jitter inside the tolerance is not an event
    jitter = times(40, 10) + 5.0 + np.array([0, 0.004, -0.003, 0.002, 0, 0.001, -0.002, 0, 0.003, 0])
    ring.write(counter_block(40, 10, 2), jitter, first_index=40)
    assert ring.quality(10).ok


def test_wrong_channel_count_is_a_clear_error_and_bad_shapes_of_timestamps_are_repaired():
    """Writing the wrong number of channels names both shapes; mismatched timestamps are rebuilt, not fatal."""
    ring = RingBuffer(4, 100, 100.0)
    with pytest.raises(ValueError, match="4 channels"):
        ring.write(np.zeros((5, 3)), None)
    ring.write(np.ones((5, 4)), np.zeros(3))
    assert ring.total_written == 5 and np.all(np.diff(ring.latest(5).timestamps) > 0)


def test_block_larger_than_capacity_keeps_the_newest_samples():
    """A block longer than the ring keeps its newest `capacity` samples and advances the index by the whole block."""
    ring = RingBuffer(3, 16, 100.0)
    ring.write(counter_block(0, 5), times(0, 5))
    ring.write(counter_block(5, 40), times(5, 40))
    assert ring.total_written == 45
    np.testing.assert_array_equal(ring.latest(16).data, counter_block(29, 16))


def test_per_channel_rails_flag_saturation_on_either_side():
    """With per-channel rails, a sample at a channel's own lower or upper rail is saturation; within them it is not,
    and an infinity is nan_inf, not saturation."""
    ring = RingBuffer(2, 100, 100.0, saturation_bounds_uv=([-10.0, -1000.0], [50.0, 1000.0]))
    ring.write(np.array([[49.0, -999.0], [-9.0, 999.0]], dtype=np.float32))
    assert not ring.quality(2).saturation
    ring.write(np.array([[0.0, 0.0], [-10.0, 0.0]], dtype=np.float32))
    assert ring.quality(2).saturation
    ring.write(np.array([[0.0, 1000.0]], dtype=np.float32))
    assert ring.quality(1).saturation
    ring.write(np.array([[0.0, np.inf]], dtype=np.float32))
    q = ring.quality(1)
    assert q.nan_inf and not q.saturation


def _quality_by_brute_force(ring: RingBuffer, n: int, lo: np.ndarray, hi: np.ndarray) -> tuple[bool, bool]:
    """NaN/Inf and saturation of the newest n samples, looked at whole (what quality() did every tick before)."""
    data = ring.latest_data(n)
    finite = np.isfinite(data)
    with np.errstate(invalid="ignore"):
        railed = bool((((data >= hi) | (data <= lo)) & finite).any())
    return (not bool(finite.all())), railed


@pytest.mark.parametrize("seed", range(6))
def test_incremental_nan_and_saturation_bits_agree_with_a_whole_window_look(seed: int) -> None:
    """quality() looks at each sample once (per-sample bits), not at the whole window per call; over random writes
    of NaN, ±Inf, railed and ordinary values, in blocks of any size (across the ring's wrap, and more than a ring
    between two calls), it says exactly what a look at the whole window says."""
    rng = np.random.default_rng(seed)
    n_ch, cap = 5, 97
    lo, hi = np.full(n_ch, -100.0, np.float32), np.array([100.0, 50.0, 100.0, 80.0, 100.0], np.float32)
    ring = RingBuffer(n_ch, cap, 1000.0, saturation_bounds_uv=(lo, hi))
    for _ in range(300):
        k = int(rng.choice([1, 3, 10, 40, 150]))
        block = rng.normal(0, 20, (k, n_ch)).astype(np.float32)
        for _hit in range(int(rng.integers(0, 3))):
            block[rng.integers(k), rng.integers(n_ch)] = rng.choice([np.nan, np.inf, -np.inf, 120.0, -150.0, 60.0])
        ring.write(block)
        if rng.random() < 0.7:  # sometimes several writes before a look
            n = int(rng.integers(1, cap + 1))
            q = ring.quality(n)
            assert (q.nan_inf, q.saturation) == _quality_by_brute_force(ring, q.n_samples, lo, hi)
