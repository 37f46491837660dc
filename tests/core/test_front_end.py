"""The front end before the band filters: the mains notch rejects 50/60 Hz and harmonics and leaves 40 Hz alone,
common average and bipolar references do what they say, bad options are refused, and the defaults are the old
pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from neurostimd.core.features import (
    FeatureSettings,
    FrontEnd,
    _FilterBank,
    design_notch,
    extract_frames,
)

FS = 1000.0
DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "models" / "default"


def _sine(f_hz: float, amp_uv: float, n: int, fs: float = FS) -> np.ndarray:
    return amp_uv * np.sin(2 * np.pi * f_hz * np.arange(n) / fs)


def _band_power(settings: FeatureSettings, x: np.ndarray, band: str, fs: float = FS) -> float:
    """Mean power (µV²) in feature `band` of channel c0 over the last second of frames."""
    names = settings.feature_names([f"c{i}" for i in range(x.shape[1])], fs)
    col = next(i for i, n in enumerate(names) if n.startswith("c0") and band in n)
    frames = extract_frames(settings, x, fs)
    return float(np.mean(np.exp(frames[-10:, col].astype(np.float64))))


def _gain_db(sos: np.ndarray, f_hz: float, fs: float) -> float:
    """Steady-state gain of the notch cascade at f_hz, measured on a sine through the engine's own filter bank."""
    bank = _FilterBank([sos])
    n = int(4 * fs)
    x = _sine(f_hz, 1.0, n, fs)[:, None]
    y, _ = bank.run(x, np.zeros((bank.n_state, 1)))
    tail = slice(n // 2, n)  # transients (time constant Q / (pi f0) ~ 0.2 s) long gone
    return 20 * np.log10(np.sqrt(np.mean(y[0, tail] ** 2)) / np.sqrt(np.mean(x[tail] ** 2)))


@pytest.mark.parametrize(("mains", "fs"), [(50, 1000.0), (60, 1000.0), (50, 250.0), (60, 256.0)])
def test_notch_rejects_mains_and_harmonics_and_passes_40_hz(mains: int, fs: float) -> None:
    """At each harmonic below 0.45 fs the notch takes >= 30 dB off; at 40 Hz it changes < 0.1 dB, at 45 Hz < 0.25 dB."""
    s = FeatureSettings(front_end=FrontEnd(notch_hz=mains))
    sos = design_notch(s, fs)
    harmonics = s.front_end.notch_harmonics_hz(fs)
    assert sos is not None and sos.shape == (len(harmonics), 6)
    assert harmonics[0] == mains and all(h < 0.45 * fs for h in harmonics)
    assert harmonics[-1] + mains >= 0.45 * fs  # no harmonic below the limit is left out
    for h in harmonics:
        assert _gain_db(sos, h, fs) <= -30.0, h
    assert abs(_gain_db(sos, 40.0, fs)) < 0.1
    assert abs(_gain_db(sos, 45.0, fs)) < 0.25


def test_notch_keeps_the_30_70_hz_band_to_the_signal_not_the_mains() -> None:
    """A 1000 µV 50 Hz mains (with 100 and 150 Hz harmonics) over a 10 µV 40 Hz signal: without the notch the
    30-70 Hz band power is mains (> 30 dB above the signal's), with it within 0.5 dB of the 40 Hz signal alone."""
    n = 20_000
    rng = np.random.default_rng(4)
    signal_40 = _sine(40.0, 10.0, n) + rng.standard_normal(n) * 0.5
    mains = _sine(50.0, 1000.0, n) + _sine(100.0, 300.0, n) + _sine(150.0, 100.0, n)
    x = np.column_stack([signal_40 + mains, signal_40])
    plain, notched = FeatureSettings(), FeatureSettings(front_end=FrontEnd(notch_hz=50))
    alone = _band_power(plain, signal_40[:, None], "30-70Hz")
    without = _band_power(plain, x, "30-70Hz")
    with_notch = _band_power(notched, x, "30-70Hz")
    assert 10 * np.log10(without / alone) > 30.0
    assert abs(10 * np.log10(with_notch / alone)) < 0.5
    # the 70-150 Hz band held the 100 and 150 Hz harmonics: gone as well
    assert 10 * np.log10(_band_power(notched, x, "70-150Hz") / _band_power(plain, signal_40[:, None], "70-150Hz")) \
        < 3.0


def test_common_average_removes_a_common_mode_signal() -> None:
    """Adding the same large 10 Hz wave to every channel leaves the CAR features unchanged; without CAR it does not."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8_000, 4)) * 20
    common = _sine(10.0, 500.0, 8_000)[:, None]
    car = FeatureSettings(front_end=FrontEnd(reference="car"))
    np.testing.assert_allclose(extract_frames(car, x + common, FS), extract_frames(car, x, FS), atol=1e-4)
    plain = FeatureSettings()
    assert np.max(np.abs(extract_frames(plain, x + common, FS) - extract_frames(plain, x, FS))) > 1.0
    assert car.feature_names(["F3", "C3", "F4", "C4"], FS)[0] == "F3-avg:logpow_1-4Hz"


def test_bipolar_gives_the_difference_of_each_pair() -> None:
    """Each bipolar channel's features are the plain features of the difference of its pair, in the pairs' order."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8_000, 3)) * 20 + _sine(12.0, 30.0, 8_000)[:, None] * np.array([1.0, 0.2, 0.5])
    fe = FrontEnd(channels=["F3", "C3", "Cz"], reference=[("C3", "F3"), ("F3", "Cz")])
    s = FeatureSettings(front_end=fe)
    diff = np.column_stack([x[:, 1] - x[:, 0], x[:, 0] - x[:, 2]])
    np.testing.assert_allclose(extract_frames(s, x, FS), extract_frames(FeatureSettings(), diff, FS), atol=1e-5)
    assert s.n_features(3, FS) == 2 * 8
    assert s.feature_names(fe.channels or [], FS)[:2] == ["C3-F3:logpow_1-4Hz", "F3-Cz:logpow_1-4Hz"]
    # without explicit picks the pairs' channels are the inputs, in the order the pairs name them
    assert FrontEnd(reference=[("F3", "C3"), ("F4", "C3")]).input_names() == ["F3", "C3", "F4"]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"channels": ["F3", "C3"], "reference": [("F3", "Pz")]}, r"\['Pz'\].*not among channels"),
    ({"reference": [("F3", "f3")]}, "from itself"),
    ({"reference": []}, "no pairs"),
    ({"channels": ["F3", "f3"]}, "listed twice"),
    ({"channels": ["F3"], "reference": "car"}, "at least 2 channels"),
    ({"notch_hz": 55}, "notch_hz"),
])
def test_bad_front_end_options_are_refused(kwargs: dict[str, object], match: str) -> None:
    """Malformed front ends are refused with a message naming the problem."""
    with pytest.raises(ValidationError, match=match):
        FrontEnd(**kwargs)


def test_notch_above_the_rate_allows_is_refused() -> None:
    """A 60 Hz notch for 128 Hz data (above 0.45 fs) is refused naming the rate it needs; 50 Hz fits."""
    with pytest.raises(ValueError, match=r"60 Hz notch needs sampling above 133\.3 Hz"):
        FrontEnd(notch_hz=60).check_fits(4, 128.0)
    assert FrontEnd(notch_hz=50).notch_harmonics_hz(128.0) == [50.0]


def test_engine_refuses_inputs_that_do_not_fit_the_front_end() -> None:
    """An engine for a front end of 3 named channels refuses 4 input channels, and a CAR over one channel."""
    with pytest.raises(ValueError, match="takes channels"):
        extract_frames(FeatureSettings(front_end=FrontEnd(channels=["a", "b", "c"])), np.zeros((500, 4)), FS)
    with pytest.raises(ValueError, match="at least 2"):
        extract_frames(FeatureSettings(front_end=FrontEnd(reference="car")), np.zeros((500, 1)), FS)


def test_old_settings_load_with_the_identity_front_end_and_the_same_names() -> None:
    """models/default's features.json (written before the front end) loads with picks, reference and notch off, and
    its stored feature names are what the settings name today."""
    feat = json.loads((DEFAULT_BUNDLE / "features.json").read_text())
    assert "front_end" not in feat["settings"] and "notch_filter" not in feat
    s = FeatureSettings.model_validate(feat["settings"])
    assert s.front_end == FrontEnd() and s.front_end.is_identity and s.front_end.input_names() is None
    assert s.feature_names(feat["channel_names"], 1000.0) == feat["feature_names"]
    assert design_notch(s, 1000.0) is None
