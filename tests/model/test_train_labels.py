"""`neurostimd train` / `evaluate` with --labels/--classes through the CLI: an EDF+ with trial annotations trains a
bundle that records where its labels came from, the file's own labels train exactly as an events file saying the
same, and every refusal has its message and exit code (65 bad data, 78 bad configuration)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from neurostimd.commands.cli import main
from neurostimd.model import bundle as files
from neurostimd.service.exitcodes import EX_CONFIG, EX_DATAERR

pytestmark = [pytest.mark.train, pytest.mark.slow]

FS = 128.0
TRIAL_S, GAP_S, N_TRIALS = 8.0, 2.0, 12
CLASSES = ("rest", "active")
FAST = ["--epochs", "1", "--seed", "0", "--hop-ms", "100", "--frame-hops", "2", "--frames", "5", "--stride", "2",
        "--block-s", "10", "--test-fraction", "0.3"]
TABLE = """\
[[states]]
state = 0
name = "off"
frequency_hz = 20.0
amplitude_ma = 0.5
pulse_width_us = 100.0

[[states]]
state = 1
name = "on"
frequency_hz = 50.0
amplitude_ma = 1.0
pulse_width_us = 100.0
"""


def _signal(seconds: float, classes: np.ndarray, seed: int = 0) -> np.ndarray:
    """Two channels whose band power tells the classes apart: 10 Hz at rest, 24 Hz when active, in noise (µV)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * FS)) / FS
    tone = np.where(classes == 1, np.sin(2 * np.pi * 24.0 * t), np.sin(2 * np.pi * 10.0 * t)) * 30.0
    return np.stack([tone + rng.standard_normal(t.size) * 5.0, 0.5 * tone + rng.standard_normal(t.size) * 5.0], 1)


def _trials() -> list[tuple[float, float, str]]:
    return [(k * (TRIAL_S + GAP_S), TRIAL_S, CLASSES[k % 2]) for k in range(N_TRIALS)]


def _per_sample(trials: list[tuple[float, float, str]], n: int) -> np.ndarray:
    y = np.zeros(n, dtype=np.int64)
    for onset, dur, text in (t for t in trials if t[2] in CLASSES):
        y[round(onset * FS):round((onset + dur) * FS)] = CLASSES.index(text)
    return y


def _edf(path: Path, trials: list[tuple[float, float, str]]) -> Path:
    """An EDF+ written by edfio: the two µV channels and the trials as annotations."""
    import edfio

    seconds = N_TRIALS * (TRIAL_S + GAP_S)
    data = _signal(seconds, _per_sample(trials, int(seconds * FS)))
    sigs = [edfio.EdfSignal(data[:, i], FS, label=name, physical_dimension="uV", physical_range=(-300.0, 300.0))
            for i, name in enumerate(("C3", "C4"))]
    edfio.Edf(sigs, annotations=[edfio.EdfAnnotation(o, d, t) for o, d, t in trials]).write(path)
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("labels")
    (d / "table.toml").write_text(TABLE)
    return d


@pytest.fixture(scope="module")
def edf_bundle(work: Path) -> tuple[Path, Path]:
    """A 1-epoch bundle trained from an EDF+ whose labels are its trial annotations (2 s unlabelled gaps)."""
    rec = _edf(work / "trials.edf", [*_trials(), (0.2, 0.0, "Recording starts")])
    out = work / "bundle"
    rc = main(["train", "--data", str(rec), "--labels", "annotations", "--classes", "rest,active", "--table",
               str(work / "table.toml"), "--out", str(out), *FAST])
    assert rc == 0
    return out, rec


def test_a_bundle_trained_from_annotations_records_where_its_labels_came_from(edf_bundle: tuple[Path, Path]) -> None:
    """The manifest keeps the label source and description → class; the training data entry the unlabelled
    seconds (the gaps between trials) and the annotation that mapped to no class."""
    m = json.loads((edf_bundle[0] / files.MANIFEST).read_text())
    assert m["class_names"] == ["rest", "active"] and m["channel_names"] == ["C3", "C4"]
    assert m["labels"]["source"] == "annotations"
    assert m["labels"]["classes"] == {"rest": "rest", "active": "active"}
    info = m["training_data"][0]["labels"]
    assert info["unlabelled_s"] == pytest.approx(N_TRIALS * GAP_S)
    assert info["labelled_s"] == {"rest": 48.0, "active": 48.0} and info["unmapped"] == {"Recording starts": 1}


def test_evaluate_takes_the_same_labels_and_the_bundles_classes(edf_bundle: tuple[Path, Path], tmp_path: Path) -> None:
    """evaluate --labels annotations (classes from the bundle) scores only labelled samples of the held-out blocks."""
    bdir, rec = edf_bundle
    rc = main(["evaluate", "--bundle", str(bdir), "--data", str(rec), "--labels", "annotations", "--report",
               str(tmp_path / "r")])
    assert rc == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["n_decisions"] > 0 and np.asarray(m["confusion_matrix"]).sum() == m["n_decisions"]
    assert m["labels"]["source"] == "annotations" and m["class_names"] == ["rest", "active"]


def test_evaluate_refuses_labels_that_give_other_classes_naming_both(edf_bundle: tuple[Path, Path], tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Classes in another order than the bundle's are bad data (65); the message names both lists and the fix."""
    bdir, rec = edf_bundle
    rc = main(["evaluate", "--bundle", str(bdir), "--data", str(rec), "--labels", "annotations", "--classes",
               "active,rest", "--report", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == EX_DATAERR
    assert "give the classes ['active', 'rest'], but the bundle" in err and "predicts ['rest', 'active']" in err
    assert '--classes "rest,active"' in err


def test_the_files_own_labels_train_exactly_as_an_events_file_saying_the_same(work: Path) -> None:
    """An .npz's labels (the default, unchanged) and the same labels as a BIDS events.tsv give the same scaler,
    split and check windows: the label path changes where labels come from, not what is trained."""
    seconds = 100.0
    trials = [(k * 10.0, 10.0, CLASSES[k % 2]) for k in range(10)]
    y = _per_sample(trials, int(seconds * FS))
    npz = work / "same.npz"
    np.savez(npz, data=_signal(seconds, y).astype(np.float32), fs=FS, channel_names=np.array(["C3", "C4"]),
             labels=y, class_names=np.array(CLASSES))
    events = work / "same_events.tsv"
    events.write_text("onset\tduration\ttrial_type\n" + "".join(f"{o}\t{d}\t{t}\n" for o, d, t in trials))
    table = ["--table", str(work / "table.toml")]
    assert main(["train", "--data", str(npz), "--out", str(work / "own"), *table, *FAST]) == 0
    assert main(["train", "--data", str(npz), "--labels", str(events), "--classes", "rest,active", "--out",
                 str(work / "ev"), *table, *FAST]) == 0
    for name in (files.FEATURES, files.SPLIT, files.CLASSES):
        assert json.loads((work / "own" / name).read_text()) == json.loads((work / "ev" / name).read_text())
    with np.load(work / "own" / files.CHECK) as a, np.load(work / "ev" / files.CHECK) as b:
        np.testing.assert_array_equal(a["windows"], b["windows"])
    own = json.loads((work / "own" / files.MANIFEST).read_text())
    ev = json.loads((work / "ev" / files.MANIFEST).read_text())
    assert own["labels"]["source"] == "file" and own["training_data"][0]["labels"] == {"source": "file"}
    assert ev["labels"]["source"] == "events" and ev["training_data"][0]["labels"]["unlabelled_s"] == 0.0


@pytest.mark.parametrize(("labels", "classes", "code", "message"), [
    ("annotations", "open,closed", EX_DATAERR, r"no label maps to the classes asked for: the descriptions found "
                                               r"are 'active' ×6, 'rest' ×6; --classes 'open,closed'"),
    ("annotations", None, EX_CONFIG, r"--labels annotations needs --classes .*found: \['active', 'rest'\]"),
    ("annotations", "rest=a,active=a", EX_CONFIG, r"'a' is mapped to both 'rest' and 'active'"),
    ("channel:STI", "rest,active", EX_DATAERR, r"no channel 'STI'; the channels are \['C3', 'C4'\]"),
    ("missing_events.tsv", "rest,active", EX_DATAERR, r"missing_events\.tsv: no such events file"),
], ids=["nothing-maps", "no-classes", "two-classes-one-description", "no-label-channel", "no-events-file"])
def test_train_refusals_name_the_problem_and_exit_65_for_data_78_for_configuration(
        work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], labels: str, classes: str | None, code: int,
        message: str) -> None:
    """Each bad --labels/--classes exits with its code, names the file and what to do, and writes no bundle."""
    import re

    rec = work / "refuse.edf"
    if not rec.exists():
        _edf(rec, _trials())
    args = ["train", "--data", str(rec), "--labels", labels, "--out", str(tmp_path / "b"), *FAST]
    if classes is not None:
        args += ["--classes", classes]
    assert main(args) == code
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "b").exists()


def test_an_edf_without_labels_or_annotations_exits_65(work: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """No --labels on an EDF (no labels of its own), and --labels annotations on one without any: bad data, 65."""
    import edfio

    plain = tmp_path / "plain.edf"
    edfio.Edf([edfio.EdfSignal(np.zeros(2560), FS, label="C3", physical_dimension="uV",
                               physical_range=(-1.0, 1.0))]).write(plain)
    assert main(["train", "--data", str(plain), "--out", str(tmp_path / "b"), *FAST]) == EX_DATAERR
    assert "--labels annotations" in capsys.readouterr().err
    assert main(["train", "--data", str(plain), "--labels", "annotations", "--classes", "a,b", "--out",
                 str(tmp_path / "b"), *FAST]) == EX_DATAERR
    assert "carries no annotations" in capsys.readouterr().err


def test_add_stats_takes_the_labels_from_where_training_took_them(edf_bundle: tuple[Path, Path],
                                                                   tmp_path: Path) -> None:
    """add-stats on a bundle trained from annotations reads the EDF's annotations as training did, so it finds the
    same segments and computes exactly the statistics training wrote."""
    import shutil

    bdir, rec = edf_bundle
    copy = tmp_path / "b"
    shutil.copytree(bdir, copy)
    written = json.loads((bdir / files.MANIFEST).read_text())["signal_stats"]
    again = files.add_signal_stats(copy, [rec])["signal_stats"]
    assert again["verified_by"] == "sha256"
    keep = ("abs_max", "rms", "abs_p999", "window_rms_lo", "window_rms_hi", "n_samples", "window_samples")
    assert {k: again[k] for k in keep} == {k: written[k] for k in keep}


def test_an_xdf_of_several_streams_trains_from_its_markers_with_the_stream_chosen(work: Path, tmp_path: Path,
                                                                                  capsys: pytest.CaptureFixture[str]
                                                                                  ) -> None:
    """A LabRecorder-style XDF (the amplifier, a second signal stream, a marker stream): train refuses to guess the
    signal stream (65, naming the streams), and with --stream-name trains from the marker stream's labels and records
    the choice, so add-stats reads the same stream again."""
    from tests.sources.xdf_files import XdfStream, marker_stream, write_xdf_streams

    seconds = N_TRIALS * TRIAL_S
    n = int(seconds * FS)
    y = np.repeat(np.arange(N_TRIALS) % 2, int(TRIAL_S * FS))
    ts = 100.0 + np.arange(n) / FS
    amp = XdfStream("amp", "EEG", FS, _signal(seconds, y).astype(np.float32), ts, labels=["C3", "C4"],
                    units=["microvolts"] * 2)
    aux = XdfStream("aux", "EEG", 2 * FS, np.zeros((2 * n, 1), np.float32), 100.0 + np.arange(2 * n) / (2 * FS),
                    labels=["X"], units=["microvolts"])
    marks = marker_stream("events", [100.0 + k * TRIAL_S for k in range(N_TRIALS)],
                          [CLASSES[k % 2] for k in range(N_TRIALS)])
    xdf = tmp_path / "session.xdf"
    write_xdf_streams(xdf, [amp, aux, marks])
    out = tmp_path / "bundle"
    args = ["train", "--data", str(xdf), "--labels", "annotations", "--classes", ",".join(CLASSES), "--table",
            str(work / "table.toml"), "--out", str(out), *FAST]
    assert main(args) == EX_DATAERR
    err = capsys.readouterr().err
    assert "'amp'" in err and "'aux'" in err and not out.exists()
    assert main([*args, "--stream-name", "amp"]) == 0
    manifest = json.loads((out / files.MANIFEST).read_text())
    assert manifest["read_options"] == {"stream_name": "amp"}
    assert manifest["channel_names"] == ["C3", "C4"]
    m = files.add_signal_stats(out, [xdf])
    assert m["signal_stats"]["verified_by"] == "sha256"


def test_an_arff_trains_through_the_cli_with_its_rate_given(work: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """ARFF carries no sample rate: train without --fs refuses naming the option (65); with --fs it trains at that
    rate and the manifest keeps it."""
    seconds = N_TRIALS * TRIAL_S
    y = np.repeat(np.arange(N_TRIALS) % 2, int(TRIAL_S * FS))
    data = _signal(seconds, y)
    lines = ["@relation test", "@attribute C3 numeric", "@attribute C4 numeric", "@attribute state {rest,active}",
             "@data", *(f"{a:.4f},{b:.4f},{CLASSES[c]}" for (a, b), c in zip(data, y, strict=True))]
    arff = tmp_path / "rec.arff"
    arff.write_text("\n".join(lines) + "\n")
    out = tmp_path / "bundle"
    args = ["train", "--data", str(arff), "--table", str(work / "table.toml"), "--out", str(out), *FAST]
    assert main(args) == EX_DATAERR
    assert "pass fs" in capsys.readouterr().err
    assert main([*args, "--fs", str(FS)]) == 0
    manifest = json.loads((out / files.MANIFEST).read_text())
    assert manifest["read_options"] == {"fs": FS} and manifest["sample_rate_hz"] == FS
