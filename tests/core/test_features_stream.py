"""The feature pipeline: streaming equals offline, the filter bank equals scipy's sosfilt, windows and scaling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from neurostimd.core.features import (
    FeatureSettings,
    FrameEngine,
    FrontEnd,
    Scaler,
    StreamingFeatures,
    _FilterBank,
    extract_frames,
    sliding_windows,
)


def _signal(n: int, ch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None] / 1000.0
    return (rng.standard_normal((n, ch)) * 20 + 40 * np.sin(2 * np.pi * 10 * t) + 100).astype(np.float32)


NAMES6 = [f"c{i}" for i in range(6)]
# Every front-end option on: picks by name, each reference, the notch (50 and 60 Hz, harmonics up to 0.45 fs).
FRONT_ENDS = [
    FeatureSettings(front_end=FrontEnd(reference="car", notch_hz=50)),
    FeatureSettings(front_end=FrontEnd(channels=NAMES6, reference=[("c0", "c1"), ("c2", "c3"), ("c5", "c4")],
                                       notch_hz=60)),
    FeatureSettings(kind="raw", front_end=FrontEnd(channels=NAMES6, reference="car", notch_hz=50, notch_q=10)),
]


@pytest.mark.parametrize("settings", [FeatureSettings(), FeatureSettings(kind="raw"),
                                      FeatureSettings(hop_ms=30, frame_hops=3, n_frames=5, scaler="minmax"),
                                      *FRONT_ENDS])
def test_streaming_in_random_chunks_equals_offline(settings: FeatureSettings) -> None:
    """Frames computed from random-sized chunks equal the offline frames of the same signal."""
    x = _signal(12_000, 6)
    offline = extract_frames(settings, x, 1000.0)
    rng = np.random.default_rng(1)
    eng = FrameEngine(settings, 6, 1000.0)
    parts, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, 400))
        parts.append(eng.process(x[i:i + n]))
        i += n
    streamed = np.concatenate(parts).astype(np.float32)
    assert streamed.shape == offline.shape
    np.testing.assert_allclose(streamed, offline, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("s", [FeatureSettings(), FeatureSettings(front_end=FrontEnd(
    channels=["a", "b", "c", "d"], reference=[("a", "b"), ("c", "d"), ("a", "d")], notch_hz=50))])
def test_streaming_windows_equal_offline_windows_at_every_tick(s: FeatureSettings) -> None:
    """The daemon's scaled window after each 50-sample tick equals the matching offline window (also with a
    bipolar reference and the notch)."""
    x = _signal(6_000, 4)
    frames = extract_frames(s, x, 1000.0)
    scaler = Scaler.fit("standard", frames)
    offline = scaler.transform(sliding_windows(frames, s.n_frames))
    sf = StreamingFeatures(s, 4, 1000.0, scaler)
    got = []
    for i in range(0, len(x), 50):
        sf.push(x[i:i + 50])
        w = sf.window()
        if w is not None:
            got.append(w)
    assert len(got) == len(offline)
    np.testing.assert_allclose(np.asarray(got), offline, rtol=1e-5, atol=1e-5)


def test_window_is_none_until_t_frames_then_reset_clears() -> None:
    """window() is None until T frames exist, and reset() starts over."""
    s = FeatureSettings(hop_ms=50, frame_hops=2, n_frames=10)
    sf = StreamingFeatures(s, 2, 1000.0)
    x = _signal(2_000, 2)
    new = sf.push(x[: s.window_samples(1000.0) - 1])
    assert new == s.n_frames - 1 and sf.window() is None
    assert sf.push(x[s.window_samples(1000.0) - 1: s.window_samples(1000.0)]) == 1
    w = sf.window()
    assert w is not None and w.shape == (10, s.n_features(2, 1000.0)) and w.dtype == np.float32
    sf.reset()
    assert sf.window() is None and sf.samples_seen == 0


def test_filter_bank_matches_scipy_sosfilt() -> None:
    """The block state-space filter bank reproduces scipy.signal.sosfilt started in steady state."""
    sos = [signal.butter(2, [lo / 500, hi / 500], btype="bandpass", output="sos") for lo, hi in [(1, 4), (70, 150)]]
    bank = _FilterBank(sos)
    x = _signal(3_000, 3).astype(np.float64)
    y, _ = bank.run(x, bank.z_unit[:, None] * x[0][None, :])
    for i, s in enumerate(sos):
        ref, _ = signal.sosfilt(s, x, axis=0, zi=signal.sosfilt_zi(s)[:, :, None] * x[0][None, None, :])
        np.testing.assert_allclose(y[i], ref, atol=1e-8 * np.abs(ref).max())


def test_bands_that_do_not_fit_the_rate_are_dropped_or_refused() -> None:
    """Default bands above 0.45 fs are dropped; explicit ones are refused with the limit named."""
    assert max(hi for _, hi in FeatureSettings().resolve_bands(173.61)) < 0.45 * 173.61
    with pytest.raises(ValueError, match=r"0\.45"):
        FeatureSettings(bands_hz=[(10.0, 100.0)]).resolve_bands(128.0)


def test_wrong_channel_count_is_refused() -> None:
    """Pushing samples with the wrong number of channels raises a ValueError naming the expected shape."""
    sf = StreamingFeatures(FeatureSettings(), 4, 1000.0)
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        sf.push(np.zeros((50, 3), np.float32))


def test_flat_channel_gives_finite_features() -> None:
    """A flat (all-zero) channel yields finite features instead of -inf."""
    frames = extract_frames(FeatureSettings(), np.zeros((2_000, 2), np.float32), 1000.0)
    assert np.isfinite(frames).all()


def test_scaler_roundtrip_and_constant_feature() -> None:
    """A fitted scaler survives to_dict/from_dict and maps a constant feature to 0 rather than dividing by zero."""
    frames = np.column_stack([np.arange(10.0), np.full(10, 3.0)])
    for kind in ("standard", "minmax"):
        sc = Scaler.from_dict(Scaler.fit(kind, frames).to_dict())
        out = sc.transform(frames)
        assert np.isfinite(out).all() and np.all(out[:, 1] == 0)
