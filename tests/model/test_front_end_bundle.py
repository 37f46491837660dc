"""A bundle trained with a front end (picks from a wider recording, common average, 50 Hz notch): the bundle stores
and shows it, the runtime reproduces the trained check windows from the raw picked samples with the stored filters,
evaluate and add-stats pick the same channels, bad options are refused, and the daemon takes the picks from a wider
source or refuses one that lacks them (exit 78)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from neurostimd.commands.cli import main
from neurostimd.commands.replay import run_replay
from neurostimd.config import Config, parse_config
from neurostimd.core.features import FeatureSettings, FrontEnd, StreamingFeatures, design_notch
from neurostimd.errors import BundleError, DataFormatError
from neurostimd.firmware_sim.generate import generate_recording
from neurostimd.model import bundle as files
from neurostimd.model.dataset import load_recording, pick_inputs, segments
from neurostimd.model.runtime import load_bundle
from neurostimd.service.daemon import EX_CONFIG, Daemon
from neurostimd.service.notify import SystemdNotifier

pytestmark = [pytest.mark.train, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
FS = 250.0
WIDE = ["F3", "C3", "Pz", "F4", "C4", "EOG"]  # what the recording (and the source) offers
PICKS = ["F3", "C3", "F4", "C4"]  # what the model takes


def _recording(path: Path, names: list[str], seed: int = 5, duration_s: float = 60.0) -> Path:
    """Generator signal on named channels with 200 µV of 50 Hz mains on every channel."""
    rec: dict[str, Any] = dict(generate_recording(duration_s, len(names), FS, seed=seed))
    t = np.arange(len(rec["data"])) / FS
    rec["data"] = (rec["data"] + 200.0 * np.sin(2 * np.pi * 50.0 * t)[:, None]).astype(np.float32)
    rec["channel_names"] = np.array(names)
    np.savez(path, **rec)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 1-epoch bundle trained by `neurostimd train --channels F3,C3,F4,C4 --reference car --notch 50` on a
    6-channel recording (and that recording)."""
    d = tmp_path_factory.mktemp("frontend")
    data = _recording(d / "wide.npz", WIDE)
    rc = main(["train", "--data", str(data), "--out", str(d / "bundle"), "--epochs", "1", "--seed", "1",
               "--block-s", "4", "--test-fraction", "0.3", "--stride", "2",
               "--channels", ",".join(PICKS), "--reference", "car", "--notch", "50"])
    assert rc == 0
    return d / "bundle", data


def test_bundle_stores_and_shows_its_front_end(trained: tuple[Path, Path]) -> None:
    """The manifest names the picks, the reference and the notch harmonics; features are per re-referenced channel;
    features.json stores the notch's coefficients as designed."""
    bdir, _ = trained
    manifest = json.loads((bdir / files.MANIFEST).read_text())
    assert manifest["n_channels"] == 4 and manifest["channel_names"] == PICKS
    assert manifest["front_end"] == {"channels": PICKS, "reference": "car",
                                     "derived_channels": ["F3-avg", "C3-avg", "F4-avg", "C4-avg"],
                                     "notch_hz": 50, "notch_harmonics_hz": [50.0, 100.0], "notch_q": 30.0}
    feat = json.loads((bdir / files.FEATURES).read_text())
    settings = FeatureSettings.model_validate(feat["settings"])
    assert settings.front_end == FrontEnd(channels=PICKS, reference="car", notch_hz=50)
    assert feat["feature_names"][0] == "F3-avg:logpow_1-4Hz"
    assert len(feat["feature_names"]) == 4 * 6  # 5 bands below 0.45 fs, and the line length
    designed = design_notch(settings, FS)
    assert designed is not None
    np.testing.assert_allclose(np.asarray(feat["notch_filter"]), designed, rtol=1e-12)


def test_runtime_features_from_raw_picked_samples_reproduce_the_check_windows(trained: tuple[Path, Path]) -> None:
    """The daemon's pipeline (stored filters and notch, CAR, scaler) fed the raw picked validation samples tick by
    tick gives the check windows LiteRT was verified on (so the bundle's front end is what the daemon applies)."""
    bdir, data = trained
    b = load_bundle(bdir)  # verifies LiteRT == Keras on check.npz
    split = json.loads((bdir / files.SPLIT).read_text())
    rec = pick_inputs(load_recording(data), b.settings)
    segs = segments([rec], b.settings, float(split["block_s"]))
    val = [s for s in segs if s.index in set(split["sources"][0]["val"])]
    hop = b.settings.hop_samples(FS)
    plain = FeatureSettings.model_validate({**b.settings.model_dump(), "front_end": {}})

    def stream(make: Any) -> np.ndarray:
        out = []
        for seg in val:
            f = make()
            for i in range(0, len(seg.data), hop):
                if f.push(seg.data[i:i + hop]):
                    w = f.window()
                    if w is not None:
                        out.append(w)
        return np.asarray(out)

    x_va = stream(b.new_features)
    with np.load(bdir / files.CHECK) as z:
        check = z["windows"]
    pick = np.sort(np.random.default_rng(int(split["seed"])).choice(len(x_va), size=len(check), replace=False))
    np.testing.assert_allclose(x_va[pick], check, atol=1e-4)
    # the same samples through the same filters and scaler without the front end are far from them
    without = stream(lambda: StreamingFeatures(plain, 4, FS, b.scaler, b.sos))
    assert float(np.max(np.abs(without[pick] - check))) > 1.0


def test_a_front_end_bundle_runs_without_scipy_signal_or_tensorflow(trained: tuple[Path, Path]) -> None:
    """Loading the bundle and streaming its features (CAR + notch) in a fresh process imports neither
    scipy.signal nor TensorFlow: the notch comes from the bundle."""
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        from neurostimd.model.runtime import load_bundle
        b = load_bundle({str(trained[0])!r}, expect_channels=4, expect_rate_hz={FS})
        f = b.new_features()
        f.push(np.random.default_rng(0).standard_normal((b.window_samples + 20, 4)).astype(np.float32))
        assert b.predict(f.window()).shape == (3,)
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras") or m == "scipy.signal")
        print("LOADED", bad)
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "LOADED []" in r.stdout


def test_evaluate_and_add_stats_pick_the_bundles_channels(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """`evaluate` on the 6-channel recording scores the 4-channel bundle, and add-stats recomputes the stored
    training statistics from the picked channels."""
    from neurostimd.model.bundle import add_signal_stats
    from neurostimd.model.evaluate import evaluate_bundle

    bdir, data = trained
    m = evaluate_bundle(bdir, data, tmp_path / "report", progress=lambda _: None)
    assert m["n_decisions"] > 100 and 0.0 <= m["accuracy"] <= 1.0
    copy = tmp_path / "bundle"
    shutil.copytree(bdir, copy)
    manifest = json.loads((copy / files.MANIFEST).read_text())
    stored = manifest.pop("signal_stats")
    (copy / files.MANIFEST).write_text(json.dumps(manifest))
    again = add_signal_stats(copy, [data])["signal_stats"]
    assert again["channel_names"] == PICKS
    np.testing.assert_allclose(again["abs_max"], stored["abs_max"], rtol=1e-6)


def test_evaluate_refuses_a_recording_without_the_bundles_channels(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """`evaluate` on a recording that lacks one of the bundle's input channels names the file and the channel."""
    from neurostimd.model.evaluate import evaluate_bundle

    other = _recording(tmp_path / "noc4.npz", ["F3", "C3", "F4", "Pz"], seed=6, duration_s=10.0)
    with pytest.raises(DataFormatError, match=r"noc4\.npz: the front end takes channels .*missing: 'C4'"):
        evaluate_bundle(trained[0], other, tmp_path / "report", split="all", progress=lambda _: None)


@pytest.mark.parametrize(("opts", "match"), [
    ({"channels": ["F3", "Oz"]}, r"wide\.npz: the front end takes channels \['F3', 'Oz'\].*missing: 'Oz'"),
    ({"reference": [("F3", "T7")]}, r"wide\.npz: .*missing: 'T7'"),
])
def test_options_the_recording_cannot_meet_are_refused(trained: tuple[Path, Path], tmp_path: Path,
                                                       opts: dict[str, Any], match: str) -> None:
    """A pick or a bipolar channel that is not in the recording: DataFormatError naming the file and the channel."""
    from neurostimd.model.train import train_bundle

    with pytest.raises(DataFormatError, match=match):
        train_bundle([trained[1]], tmp_path / "b", epochs=1, settings=FeatureSettings(front_end=FrontEnd(**opts)),
                     progress=lambda _: None)


def test_cli_refuses_a_notch_the_rate_cannot_carry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--notch 60` on 100 Hz data fails naming the file and the rate it needs; a malformed pair fails naming it."""
    rec: dict[str, Any] = dict(generate_recording(20.0, 2, 100.0, seed=1))
    np.savez(tmp_path / "slow.npz", **rec)
    rc = main(["train", "--data", str(tmp_path / "slow.npz"), "--out", str(tmp_path / "b"), "--notch", "60"])
    err = capsys.readouterr().err
    assert rc != 0 and "slow.npz" in err and "needs sampling above 133.3 Hz" in err
    assert not (tmp_path / "b").exists()
    rc = main(["train", "--data", str(tmp_path / "slow.npz"), "--out", str(tmp_path / "b"), "--reference", "F3C3"])
    assert rc != 0 and "'F3C3' is not a bipolar pair" in capsys.readouterr().err


def _replay_cfg(tmp_path: Path, bundle: Path, recording: Path, **source: Any) -> Config:
    return parse_config({
        "source": {"kind": "replay", "path": str(recording), "speed": "max", **source},
        "device": {"kind": "none"},
        "model": {"bundle": str(bundle)},
        "audit": {"path": str(tmp_path / "audit.jsonl")},
        "runtime": {"state_file": str(tmp_path / "state.json")},
    })


def _refusal(cfg: Config) -> str:
    with capture_logs() as logs:
        code = Daemon(cfg, None, notifier=SystemdNotifier({})).run(duration_s=5.0)
    assert code == EX_CONFIG
    return str(next(e["error"] for e in logs if e["event"] == "startup_refused"))


def test_the_bundle_runs_on_a_wider_source_that_picks_its_channels(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """Replaying the 6-channel recording with `[source] channels` = the bundle's picks decides at every tick."""
    bdir, data = trained
    cfg = parse_config({"source": {"kind": "replay", "path": str(data), "channels": PICKS},
                        "device": {"kind": "virtual", "n_channels": 4, "sample_rate_hz": FS},
                        "model": {"bundle": str(bdir)}})
    summary = run_replay(cfg, data, tmp_path / "out", progress=False, plot=False)
    assert summary["ticks"] >= 1000  # 60 s at 50 ms
    probs = [json.loads(line) for line in (tmp_path / "out" / "decisions.jsonl").read_text().splitlines()]
    assert len(probs) == summary["ticks"]


def test_a_wider_source_without_picks_is_refused_naming_the_fix(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """The daemon on the 6-channel source without `[source] channels`: exit 78 naming the extra channels and the
    `[source] channels` line that picks the bundle's."""
    msg = _refusal(_replay_cfg(tmp_path, trained[0], trained[1]))
    assert "'EOG'" in msg and "[source] channels = ['F3', 'C3', 'F4', 'C4']" in msg


def test_a_source_lacking_a_pick_is_refused_naming_it(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """A source that offers F3, C3, F4 and Pz but no C4: exit 78, the montage refusal naming C4 as missing."""
    other = _recording(tmp_path / "noc4.npz", ["F3", "C3", "F4", "Pz"], seed=6, duration_s=5.0)
    msg = _refusal(_replay_cfg(tmp_path, trained[0], other))
    assert "missing: 'C4'" in msg


def test_a_source_that_names_no_channels_is_refused_for_a_bundle_that_picks_by_name(trained: tuple[Path, Path],
                                                                                    tmp_path: Path) -> None:
    """Four unnamed channels (an .npz without channel_names): the count fits, but the bundle's picks are names, and
    by position they could be other electrodes — exit 78 saying the source names no channels."""
    rec: dict[str, Any] = dict(generate_recording(5.0, 4, FS, seed=7))
    rec.pop("channel_names", None)
    unnamed = tmp_path / "unnamed.npz"
    np.savez(unnamed, **rec)
    msg = _refusal(_replay_cfg(tmp_path, trained[0], unnamed))
    assert "takes the channels ['F3', 'C3', 'F4', 'C4'] by name" in msg and "names no channels" in msg


def test_evaluate_takes_all_of_a_file_the_bundle_never_saw_and_the_held_out_part_of_its_own(
        trained: tuple[Path, Path], tmp_path: Path) -> None:
    """Without --split: a recording that was not part of training is evaluated whole (and says so); the training
    recording only on its held-out segments, with the baseline beside it."""
    from neurostimd.model.evaluate import evaluate_bundle

    bdir, data = trained
    unseen = _recording(tmp_path / "unseen.npz", WIDE, seed=9, duration_s=20.0)
    said: list[str] = []
    m = evaluate_bundle(bdir, unseen, tmp_path / "r1", progress=said.append)
    assert m["split"] == "all"
    assert any("not among the bundle's training files: all of it" in s for s in said)
    held = evaluate_bundle(bdir, data, tmp_path / "r2", progress=lambda _: None)
    assert held["split"] == "test" and "baseline_accuracy" in held
    assert m["n_segments"] == len(segments_of(unseen, bdir))  # every segment of the unseen file


def segments_of(path: Path, bdir: Path) -> list[Any]:
    b = load_bundle(bdir)
    rec = pick_inputs(load_recording(path, None, None), b.settings)
    return segments([rec], b.settings, json.loads((bdir / files.SPLIT).read_text())["block_s"])


def test_evaluate_without_a_recorded_split_asks_which(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from neurostimd.model.evaluate import evaluate_bundle

    copy = tmp_path / "bundle"
    shutil.copytree(trained[0], copy)
    (copy / files.SPLIT).unlink()  # a bundle from before splits were recorded
    manifest = json.loads((copy / files.MANIFEST).read_text())
    del manifest["files"][files.SPLIT]
    (copy / files.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"records no training files .*pass --split all"):
        evaluate_bundle(copy, trained[1], tmp_path / "r", progress=lambda _: None)


def test_evaluate_and_train_name_a_missing_extra_before_reading_anything(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """scikit-learn (or TensorFlow) absent: exit 69 with the pip command, before the data is even opened (the file
    here does not exist, so reading it would fail differently)."""
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name: str, *a: Any, **kw: Any) -> Any:
        return None if name in ("sklearn", "keras") else real(name, *a, **kw)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    missing = str(tmp_path / "nothing.npz")
    assert main(["evaluate", "--bundle", str(tmp_path), "--data", missing, "--report", str(tmp_path / "r")]) == 69
    err = capsys.readouterr().err
    assert "neurostimd evaluate needs sklearn, which is not installed: pip install 'neurostimd[train]'" in err
    assert main(["train", "--data", missing, "--out", str(tmp_path / "b")]) == 69
    assert "neurostimd train needs keras, sklearn, which are not installed: pip install 'neurostimd[train]'" in \
        capsys.readouterr().err
