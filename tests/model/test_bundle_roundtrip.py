"""Train a tiny model through the CLI, then: LiteRT matches Keras, corrupt bundles are refused, evaluate reports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from neurostimd.commands.cli import main
from neurostimd.core.features import extract_frames, sliding_windows
from neurostimd.errors import BundleError
from neurostimd.firmware_sim.generate import generate_recording
from neurostimd.model import bundle as files
from neurostimd.model.runtime import load_bundle
from neurostimd.service.exitcodes import EX_CONFIG

pytestmark = [pytest.mark.train, pytest.mark.slow]

FS = 250.0
CH = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 1-epoch bundle trained by `neurostimd train` on 60 s of 4-channel generator signal (and its data file)."""
    d = tmp_path_factory.mktemp("tiny")
    data = d / "sim.npz"
    np.savez(data, **generate_recording(60.0, CH, FS, seed=3))
    rc = main(["train", "--data", str(data), "--out", str(d / "bundle"), "--epochs", "1", "--seed", "1",
               "--block-s", "4", "--test-fraction", "0.3", "--stride", "2"])
    assert rc == 0
    return d / "bundle", data


@pytest.fixture
def copy(tiny: tuple[Path, Path], tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(tiny[0], dst)
    return dst


def test_bundle_holds_every_file_and_litert_matches_keras(tiny: tuple[Path, Path]) -> None:
    """The bundle has all its files hashed, and LiteRT gives the Keras outputs within 1e-4 on fresh windows."""
    import keras

    bdir, data = tiny
    manifest = json.loads((bdir / files.MANIFEST).read_text())
    for name in (*files.REQUIRED, files.MODEL_KERAS, files.SPLIT, files.HISTORY):
        assert name in manifest["files"]
    assert manifest["n_channels"] == CH and manifest["sample_rate_hz"] == FS
    b = load_bundle(bdir, expect_channels=CH, expect_rate_hz=FS)
    z = np.load(data)
    frames = extract_frames(b.settings, z["data"][:8000], FS)
    windows = b.scaler.transform(sliding_windows(frames, b.settings.n_frames))[::7]
    model = keras.saving.load_model(bdir / files.MODEL_KERAS)
    expected = model.predict(windows, verbose=0)
    got = b.predict_many(windows)
    assert got.shape == expected.shape == (len(windows), 3)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert b.table.for_state(2).frequency_hz == 100.0 and b.class_names == list(z["class_names"])


def test_test_split_is_recorded_and_disjoint(tiny: tuple[Path, Path]) -> None:
    """split.json records held-out time blocks that appear in neither training nor validation."""
    split = json.loads((tiny[0] / files.SPLIT).read_text())
    src = split["sources"][0]
    assert src["test"] and not set(src["test"]) & (set(src["train"]) | set(src["val"]))


def test_flipped_byte_is_refused(copy: Path) -> None:
    """A single flipped byte in model.tflite is refused as a sha256 mismatch naming the file."""
    p = copy / files.MODEL_TFLITE
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    p.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"model\.tflite has sha256 .* but the manifest says"):
        load_bundle(copy)


def test_missing_file_is_refused(copy: Path) -> None:
    """A file listed in the manifest but deleted is refused by name."""
    (copy / files.CLASSES).unlink()
    with pytest.raises(BundleError, match=r"classes\.json listed in the manifest is missing"):
        load_bundle(copy)


def test_channel_and_rate_mismatch_are_refused(tiny: tuple[Path, Path]) -> None:
    """Asking for another channel count or sampling rate than the bundle was trained on is refused with both numbers."""
    with pytest.raises(BundleError, match=r"trained on 4 channels but the source delivers 32"):
        load_bundle(tiny[0], expect_channels=32)
    with pytest.raises(BundleError, match=r"trained at 250 Hz but the source runs at 1000 Hz"):
        load_bundle(tiny[0], expect_rate_hz=1000.0)


def test_wrong_input_shape_is_refused(copy: Path) -> None:
    """A manifest whose input shape disagrees with the feature settings is refused."""
    m = json.loads((copy / files.MANIFEST).read_text())
    m["input_shape"] = [m["input_shape"][0], m["input_shape"][1] + 1]
    (copy / files.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"input shape .* does not match its feature settings"):
        load_bundle(copy)


def test_model_that_is_not_the_trained_one_is_refused(copy: Path) -> None:
    """Check outputs that the LiteRT model does not reproduce (re-hashed, so only the numbers differ) are refused."""
    with np.load(copy / files.CHECK) as z:
        windows, probs = z["windows"], z["keras_probs"]
    np.savez(copy / files.CHECK, windows=windows, keras_probs=probs[:, ::-1].copy())
    m = json.loads((copy / files.MANIFEST).read_text())
    m["files"][files.CHECK] = files.sha256_file(copy / files.CHECK)
    (copy / files.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"LiteRT outputs differ from the stored Keras outputs"):
        load_bundle(copy)


def test_evaluate_writes_metrics_and_figures(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    """evaluate streams held-out blocks and writes metrics.json (accuracy, per-class, confusion, baseline) + PNGs."""
    bdir, data = tiny
    rc = main(["evaluate", "--bundle", str(bdir), "--data", str(data), "--report", str(tmp_path / "r")])
    assert rc == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert 0.0 <= m["accuracy"] <= 1.0 and m["n_decisions"] > 0
    assert set(m["per_class"]) == {"quiet", "activated", "pathological"}
    assert np.asarray(m["confusion_matrix"]).sum() == m["n_decisions"]
    assert 0.0 <= m["baseline_accuracy"] <= 1.0
    for png in ("learning_curves.png", "confusion_matrix.png", "probabilities.png"):
        assert (tmp_path / "r" / png).stat().st_size > 1000


def test_evaluate_refuses_scoring_training_data_as_unseen(tiny: tuple[Path, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """--split all on the bundle's own training file is a configuration error (78) that says to use --split test."""
    bdir, data = tiny
    rc = main(["evaluate", "--bundle", str(bdir), "--data", str(data), "--report", str(tmp_path / "r"),
               "--split", "all"])
    assert rc == EX_CONFIG and "--split test" in capsys.readouterr().err


def test_training_stores_signal_stats_that_add_stats_reproduces(tiny: tuple[Path, Path], copy: Path) -> None:
    """`neurostimd train` writes the training segments' statistics into the manifest, per channel, and add-stats run
    on the same bundle and data computes exactly the same."""
    bdir, data = tiny
    written = json.loads((bdir / files.MANIFEST).read_text())["signal_stats"]
    assert written["verified_by"] == "training" and len(written["abs_max"]) == CH
    assert written["channel_names"] == json.loads((bdir / files.MANIFEST).read_text())["channel_names"]
    b = load_bundle(bdir)
    assert b.signal_stats is not None and b.signal_stats.window_samples == b.window_samples
    again = files.add_signal_stats(copy, [data])["signal_stats"]
    assert again["verified_by"] == "sha256"
    keep = ("abs_max", "rms", "abs_p999", "window_rms_lo", "window_rms_hi", "n_samples", "window_samples")
    assert {k: again[k] for k in keep} == {k: written[k] for k in keep}
