"""The bundle carries its trained filter coefficients, and the runtime's biquad state space equals scipy's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import signal

from neurostimd.core.features import FeatureSettings, StreamingFeatures, _biquad_ss, design_filters

DEFAULT = Path(__file__).resolve().parents[2] / "models" / "default"


def test_biquad_state_space_matches_tf2ss() -> None:
    """Each SOS row's state space is exactly scipy.signal.tf2ss of the same section."""
    for sos in design_filters(FeatureSettings(), 1000.0):
        for sec in sos:
            for mine, ref in zip(_biquad_ss(sec), signal.tf2ss(sec[:3], sec[3:]), strict=True):
                np.testing.assert_allclose(mine, ref, rtol=1e-12, atol=1e-15)


def test_default_bundle_stores_the_filters_it_was_trained_with() -> None:
    """features.json holds the SOS that the settings design, so the daemon needs no filter design at run time."""
    feat = json.loads((DEFAULT / "features.json").read_text())
    settings = FeatureSettings.model_validate(feat["settings"])
    stored = [np.asarray(x) for x in feat["filters"]]
    designed = design_filters(settings, 1000.0)
    assert len(stored) == len(designed)
    for a, b in zip(stored, designed, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_stored_and_designed_filters_give_the_same_features() -> None:
    """Features from stored coefficients equal features from a fresh design on the same signal."""
    s = FeatureSettings()
    x = np.random.default_rng(1).standard_normal((3000, 3)).astype(np.float32)
    a, b = StreamingFeatures(s, 3, 1000.0), StreamingFeatures(s, 3, 1000.0, sos=design_filters(s, 1000.0))
    a.push(x)
    b.push(x)
    np.testing.assert_array_equal(a.window(), b.window())
