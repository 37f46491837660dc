"""The pure stream checks: montage matching, gaps in a stream's own timestamps, the effective-rate monitor, the
saturation rule and the plausibility check against training statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neurostimd.core.stats import compute_signal_stats
from neurostimd.core.stream_checks import (
    HARD_BOUND_UV,
    MontageError,
    PlausibilityCheck,
    RateMonitor,
    gap_threshold_s,
    match_montage,
    missing_in_step,
    pick_channels,
    saturation_rule,
    virtual_counter,
)
from neurostimd.firmware_sim.generate import generate_recording
from neurostimd.model.runtime import load_bundle

ROOT = Path(__file__).resolve().parents[2]


# --- montage ---------------------------------------------------------------------------------------------------------
def test_reversed_channels_are_matched_by_name() -> None:
    """A source with the model's channels in reverse order gives the index array that restores the model's order."""
    model = ["Fz", "Cz", "Pz", "Oz"]
    src = model[::-1]
    idx = match_montage(model, src)
    assert [src[i] for i in idx] == model


def test_names_compare_without_case_and_surrounding_space() -> None:
    """'FP1', ' fp2 ' and 'Fp1'/'Fp2' are the same channels."""
    idx = match_montage(["Fp1", "Fp2"], [" fp2 ", "FP1"])
    assert idx.tolist() == [1, 0]


def test_missing_and_extra_channels_are_named() -> None:
    """A source lacking a model channel and carrying another is refused with both names."""
    with pytest.raises(MontageError) as exc:
        match_montage(["Fz", "Cz", "Pz"], ["Fz", "Cz", "T7"])
    assert exc.value.missing == ["Pz"] and exc.value.extra == ["T7"]
    assert "'Pz'" in str(exc.value) and "'T7'" in str(exc.value)


def test_a_wider_source_is_refused_by_the_matcher_and_picked_by_name() -> None:
    """A superset of the model's channels is not a match, but pick_channels chooses the model's from it."""
    with pytest.raises(MontageError, match="not in the model: 'EOG'"):
        match_montage(["Fz", "Cz"], ["Cz", "EOG", "Fz"])
    assert pick_channels(["Fz", "Cz"], ["Cz", "EOG", "Fz"]).tolist() == [2, 0]


def test_ambiguous_names_are_refused() -> None:
    """Two source channels that compare equal, or a name asked for twice, cannot be matched."""
    with pytest.raises(MontageError, match="named more than once: 'Cz'"):
        pick_channels(["Cz"], ["Cz", "CZ"])
    with pytest.raises(MontageError, match="asked for more than once"):
        pick_channels(["Cz", "cz"], ["Cz", "Fz"])


# --- gaps ------------------------------------------------------------------------------------------------------------
def test_virtual_counter_jumps_by_the_missing_samples() -> None:
    """Stamps at 1 kHz with a 20 ms hole and a one-sample hole give a counter that skips 19 and then 1."""
    fs = 1000.0
    k = np.concatenate([np.arange(0, 100), np.arange(120, 200), np.arange(201, 300)])
    ts = 5.0 + k / fs
    np.testing.assert_array_equal(virtual_counter(ts, fs), k)


def test_jitter_below_the_threshold_is_not_a_gap() -> None:
    """Steps up to 1.5 periods (plus the allowed jitter) count one; backwards steps count one too."""
    fs = 500.0
    ts = np.array([0.0, 0.0029, 0.0049, 0.0045, 0.0065])  # a 1.45-period step, then a step backwards
    np.testing.assert_array_equal(virtual_counter(ts, fs), [0, 1, 2, 3, 4])
    ts = np.array([0.0, 0.004, 0.006])  # a two-period step is one missing sample ...
    np.testing.assert_array_equal(virtual_counter(ts, fs), [0, 2, 3])
    np.testing.assert_array_equal(virtual_counter(ts, fs, jitter_s=0.002), [0, 1, 2])  # ... unless jitter allows it
    assert gap_threshold_s(fs, 0.001) == pytest.approx(0.004)
    assert missing_in_step(0.0201, 1000.0) == 19 and missing_in_step(float("inf"), 1000.0) == 1


# --- effective rate --------------------------------------------------------------------------------------------------
def feed(mon: RateMonitor, true_hz: float, seconds: float, *, cadence_s: float = 0.05, chunk_s: float = 0.01,
         jitter_s: float = 0.0, seed: int = 0, stall_at: float | None = None, stall_s: float = 0.0,
         gap_every_chunk: bool = False) -> list[bool]:
    """Tick `mon` over a stream that truly runs at true_hz, arriving in chunks late by up to jitter_s."""
    rng = np.random.default_rng(seed)
    out = []
    missing = 0
    gaps = 0
    for k in range(int(seconds / cadence_s)):
        t = k * cadence_s
        arrived = t - jitter_s * rng.random()
        if stall_at is not None and stall_at <= t < stall_at + stall_s:
            arrived = stall_at
        arrived = np.floor(arrived / chunk_s) * chunk_s
        written = int(max(0.0, arrived) * true_hz)
        if gap_every_chunk:  # the stamps skip at every chunk: the counter claims the declared rate
            missing = int(max(0.0, arrived) * mon.declared_hz) - written
            gaps = int(max(0.0, arrived) / chunk_s)
        out.append(mon.update(t, written, missing, gaps))
    return out


def test_a_stream_at_its_declared_rate_never_trips_the_monitor() -> None:
    """Ten minutes of chunked, jittery arrival at the declared rate (0.05 % clock error) give no mismatch."""
    mon = RateMonitor(1000.0, 0.05)
    verdicts = feed(mon, 1000.5, 600.0, jitter_s=0.04, seed=1)
    assert mon.judged and not any(verdicts)
    assert abs(mon.rel_error or 1.0) < 0.005


@pytest.mark.parametrize("factor", [2.0, 0.5])
def test_twice_and_half_the_declared_rate_are_caught_within_two_seconds(factor: float) -> None:
    """A stream at 2x or 0.5x its declared rate is a mismatch as soon as there is a verdict (≤ 2 s)."""
    mon = RateMonitor(1000.0, 0.05)
    verdicts = feed(mon, 1000.0 * factor, 10.0, jitter_s=0.02)
    first = next(i for i, v in enumerate(verdicts) if v)
    assert first * 0.05 <= 2.0 and all(verdicts[first:])
    assert mon.effective_hz == pytest.approx(1000.0 * factor, rel=0.05)


def test_a_stall_that_catches_up_is_not_a_rate_mismatch() -> None:
    """A 200 ms stall whose samples then arrive at once leaves the rate verdict clean."""
    mon = RateMonitor(1000.0, 0.05)
    assert not any(feed(mon, 1000.0, 20.0, stall_at=7.0, stall_s=0.2))


def test_stamps_that_skip_at_every_chunk_are_judged_on_what_arrives() -> None:
    """Half the declared rate with a gap in every chunk (the counter claiming the declared rate) is a mismatch."""
    mon = RateMonitor(1000.0, 0.05)
    assert any(feed(mon, 500.0, 5.0, gap_every_chunk=True))


def test_one_outage_with_its_missing_samples_credited_is_not_a_mismatch() -> None:
    """An outlet down for a second whose samples a counter declares missing keeps the rate verdict clean."""
    mon = RateMonitor(500.0, 0.05)
    out = []
    for k in range(400):
        t = k * 0.05
        n = int(t * 500)
        if 5.0 <= t < 6.0:  # nothing arrives, the source is stale and says so
            out.append(mon.update(t, 2500, 0, 0, flowing=False))
            continue
        out.append(mon.update(t, n - (500 if t >= 6.0 else 0), 500 if t >= 6.0 else 0, 1 if t >= 6.0 else 0))
    assert not any(out)


def test_no_verdict_before_a_second_of_history() -> None:
    """The monitor says nothing (and flags nothing) until it has a second of history."""
    mon = RateMonitor(1000.0, 0.05)
    for k in range(19):
        assert not mon.update(k * 0.05, k * 100, 0, 0)
    assert not mon.judged
    mon.update(1.0, 2000, 0, 0)
    assert mon.judged and mon.mismatch


# --- saturation and plausibility -------------------------------------------------------------------------------------
def test_saturation_threshold_comes_from_config_then_range_then_statistics() -> None:
    """[loop] saturation_uv wins over the source's range, which wins over 3x the training maximum."""
    st = compute_signal_stats([np.full((100, 2), 50.0, np.float32)], 10)
    r = saturation_rule(2, configured_uv=100.0, source_range_uv=(-5.0, 5.0), stats=st)
    assert r is not None and r.origin == "config" and r.hi.tolist() == [100.0, 100.0]
    r = saturation_rule(2, configured_uv=None, source_range_uv=([-5.0, -6.0], [5.0, 6.0]), stats=st)
    assert r is not None and r.origin == "source_range" and r.lo.tolist() == [-5.0, -6.0]
    r = saturation_rule(2, configured_uv=None, source_range_uv=None, stats=st)
    assert r is not None and r.origin == "training_stats" and r.hi.tolist() == [150.0, 150.0]
    assert saturation_rule(2, configured_uv=None, source_range_uv=None, stats=None) is None


@pytest.fixture(scope="module")
def default_stats():
    st = load_bundle(ROOT / "models" / "default", verify=False).signal_stats
    assert st is not None
    return st


@pytest.fixture(scope="module")
def sim_windows() -> np.ndarray:
    data = generate_recording(20.0, 32, 1000.0, seed=21)["data"]
    return np.stack([data[s:s + 550] for s in range(0, len(data) - 550, 500)])


def test_unseen_simulator_signal_is_plausible(default_stats, sim_windows) -> None:
    """Every decision window of a fresh simulator recording passes the default bundle's plausibility check."""
    chk = PlausibilityCheck(32, default_stats)
    assert not any(chk.check(w) for w in sim_windows)


@pytest.mark.parametrize(("scale", "why"), [(1e-6, "V read as µV"), (1e-3, "mV read as µV"),
                                            (100.0, "100x µV per LSB"), (1e20, "1e20 µV")])
def test_scale_errors_are_implausible_in_every_window(default_stats, sim_windows, scale: float, why: str) -> None:
    """A unit or scale error makes every window of the same recording implausible."""
    chk = PlausibilityCheck(32, default_stats)
    assert all(chk.check((w.astype(np.float64) * scale).astype(np.float32)) for w in sim_windows), why


def test_one_exploding_channel_is_implausible_and_named(default_stats, sim_windows) -> None:
    """Samples of 1e20 µV on a single channel make the window implausible, and `channels` names that channel."""
    w = sim_windows[0].copy()
    w[100:110, 7] = 1e20
    chk = PlausibilityCheck(32, default_stats)
    assert chk.check(w) and chk.last_reason == "amplitude" and chk.channels(w) == [7]


def test_without_statistics_only_the_hard_bound_applies(sim_windows) -> None:
    """A bundle without statistics flags |x| of 1 V and more, and nothing of ordinary amplitude."""
    chk = PlausibilityCheck(32, None)
    assert not chk.check(sim_windows[0])
    w = sim_windows[0].copy()
    w[0, 0] = -HARD_BOUND_UV
    assert chk.check(w)


def test_nan_is_left_to_the_quality_flags(default_stats, sim_windows) -> None:
    """A window with NaN is not called implausible (the ring's nan_inf flag reports it)."""
    w = sim_windows[0].copy()
    w[5, 3] = np.nan
    assert not PlausibilityCheck(32, default_stats).check(w)


def test_pushed_blocks_are_judged_like_the_window_they_cover(default_stats, sim_windows) -> None:
    """Ticks of 50 samples pushed one by one give no verdict before a window's worth, then the verdict and mean
    squares of check() on the same 550 samples; a 1e20 sample is flagged while its block is in the window."""
    data = np.concatenate(list(sim_windows[:4]))
    inc = PlausibilityCheck(32, default_stats, window_samples=550)
    whole = PlausibilityCheck(32, default_stats)
    for k in range(10):
        inc.push(data[50 * k:50 * k + 50])
        assert inc.judge() is None
    for k in range(10, 30):
        inc.push(data[50 * k:50 * k + 50])
        got, ms = inc.judge(), inc._ms.copy()
        assert got == whole.check(data[50 * k + 50 - 550:50 * k + 50]) is False
        np.testing.assert_allclose(ms, whole._ms, rtol=1e-6)
    spike = data[:50].copy()
    spike[3, 2] = 1e20
    inc.push(spike)
    assert inc.judge() is True and inc.last_reason == "amplitude"
    for k in range(10):
        inc.push(data[50 * k:50 * k + 50])
        assert inc.judge() is True
    inc.push(data[500:550])
    assert inc.judge() is False
