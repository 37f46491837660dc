"""Training-signal statistics in a bundle: computed from the training segments, stored in the manifest, added to an
existing bundle only from its own training data, and refused when malformed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neurostimd.core.stats import SignalStats, compute_signal_stats
from neurostimd.errors import BundleError
from neurostimd.firmware_sim.generate import generate_recording
from neurostimd.model import bundle as files
from neurostimd.model.runtime import load_bundle

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "models" / "default"


def test_statistics_of_known_signals_are_exact() -> None:
    """abs_max, RMS and the window RMS range of a constant-amplitude square wave and a ramp are what they must be."""
    n = 1000
    square = np.where(np.arange(n) % 2 == 0, 3.0, -3.0)
    ramp = np.linspace(-10.0, 10.0, n)
    seg = np.stack([square, ramp], axis=1).astype(np.float32)
    st = compute_signal_stats([seg, seg[:500]], window_samples=100, channel_names=["a", "b"])
    assert st.n_samples == 1500 and st.window_samples == 100 and st.channel_names == ["a", "b"]
    np.testing.assert_allclose(st.abs_max, [3.0, 10.0], rtol=1e-6)
    np.testing.assert_allclose(st.rms[0], 3.0, rtol=1e-6)
    np.testing.assert_allclose(st.window_rms_lo[0], 3.0, rtol=1e-6)
    np.testing.assert_allclose(st.window_rms_hi[0], 3.0, rtol=1e-6)
    assert st.window_rms_lo[1] < 1.0 < 9.0 < st.window_rms_hi[1] <= 10.0


def test_malformed_statistics_are_refused_when_parsed() -> None:
    """Statistics with the wrong channel count, a NaN or a negative RMS are not used."""
    good = compute_signal_stats([np.ones((200, 2), np.float32)], 50).to_json()
    assert SignalStats.from_json(good, 2).n_channels == 2
    with pytest.raises(ValueError, match="3 finite"):
        SignalStats.from_json(good, 3)
    for key, value in (("abs_max", [1.0, float("nan")]), ("window_rms_lo", [-1.0, 1.0])):
        with pytest.raises(ValueError, match=key):
            SignalStats.from_json({**good, key: value}, 2)
    with pytest.raises(ValueError, match="format"):
        SignalStats.from_json({**good, "units": "V"}, 2)


def test_default_bundle_carries_statistics_for_its_channels() -> None:
    """The shipped bundle's manifest holds statistics for its 32 channels, in its channel order, from the sha256 or
    content-verified training file."""
    b = load_bundle(DEFAULT, verify=False)
    st = b.signal_stats
    assert st is not None and st.n_channels == 32 and st.channel_names == b.channel_names
    assert (st.window_rms_lo > 1.0).all() and (st.window_rms_hi < st.abs_max).all()
    assert b.manifest["signal_stats"]["verified_by"].startswith(("sha256", "content"))


def test_bundle_with_malformed_statistics_is_refused(default_copy: Path) -> None:
    """A manifest whose signal_stats do not fit the bundle makes load_bundle refuse it with the repair command."""
    m = json.loads((default_copy / files.MANIFEST).read_text())
    m["signal_stats"]["rms"] = m["signal_stats"]["rms"][:5]
    (default_copy / files.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"signal_stats\.rms.*add-stats"):
        load_bundle(default_copy, verify=False)


def test_add_stats_refuses_data_the_bundle_was_not_trained_on(default_copy: Path, tmp_path: Path) -> None:
    """Other data is refused by its sha256, and by content too when content proof is asked for; the manifest is
    left as it was."""
    other = tmp_path / "other.npz"
    np.savez(other, **generate_recording(30.0, 32, 1000.0, seed=11))
    before = (default_copy / files.MANIFEST).read_bytes()
    with pytest.raises(BundleError, match="sha256"):
        files.add_signal_stats(default_copy, [other])
    with pytest.raises(BundleError, match="not the data it was trained on"):
        files.add_signal_stats(default_copy, [other], by_content=True)
    assert (default_copy / files.MANIFEST).read_bytes() == before


def test_add_stats_on_the_readme_training_data_reproduces_the_shipped_statistics(default_copy: Path,
                                                                                tmp_path: Path) -> None:
    """The README's generate command regenerates the default bundle's training data; add-stats on it (by content:
    the file bytes differ from the original's) gives the committed statistics and changes no other bundle file."""
    data = tmp_path / "sim_train.npz"
    subprocess.run([sys.executable, "-m", "neurostimd.firmware_sim.generate", "--out", str(data), "--duration", "600",
                    "--channels", "32", "--rate", "1000", "--seed", "7"], cwd=ROOT, check=True, capture_output=True)
    m = json.loads((default_copy / files.MANIFEST).read_text())
    shipped = m.pop("signal_stats")
    (default_copy / files.MANIFEST).write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    r = subprocess.run([sys.executable, "-m", "neurostimd.model.bundle", "add-stats", "--bundle", str(default_copy),
                        "--data", str(data), "--by-content"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads((default_copy / files.MANIFEST).read_text())
    assert {k: v for k, v in got.items() if k != "signal_stats"} == m
    assert {k: v for k, v in got["signal_stats"].items() if k != "data_sha256"} == \
        {k: v for k, v in shipped.items() if k != "data_sha256"}
    for name, digest in m["files"].items():
        assert files.sha256_file(default_copy / name) == digest
