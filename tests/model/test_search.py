"""`train --search`: folds of whole segments that never touch the test split, a slow potential that reaches the
model, the alternative architectures and ensembles exported to one verified LiteRT model, and a small end-to-end
search that writes a bundle the daemon loads, with its report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from neurostimd.core.features import FeatureSettings
from neurostimd.model.dataset import Segment

FS = 128.0


def _epochs(tmp_path: Path, n_per_class: int = 12, n_samples: int = 1024, seed: int = 0) -> Path:
    """An epoch set whose three classes differ only in a slow potential (a DC shift of class-dependent sign, with a
    0.2 Hz drift and the same broadband noise on top): nothing at or above 1 Hz tells them apart."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / FS
    X, y = [], []
    for c in range(3):
        for _ in range(n_per_class):
            slow = (c - 1) * 30.0 + 10.0 * np.sin(2 * np.pi * 0.2 * t + rng.uniform(0, 2 * np.pi))
            X.append((rng.standard_normal(n_samples) * 10.0 + slow)[None, :])
            y.append(c)
    path = tmp_path / "slow.npz"
    np.savez(path, X=np.asarray(X, np.float32), y=np.asarray(y), fs=FS, channel_names=np.array(["Cz"]),
             class_names=np.array(["healthy", "interictal", "seizure"]))
    return path


def _segs(labels: list[int]) -> list[Segment]:
    return [Segment(0, i, np.zeros((10, 1), np.float32), np.full(10, c)) for i, c in enumerate(labels)]


def test_folds_deal_whole_segments_stratified_and_only_from_the_pool() -> None:
    from neurostimd.model.search import cv_folds

    segs = _segs([0] * 9 + [1] * 6 + [2] * 3)
    pool = [i for i in range(18) if i not in (0, 9)]  # 0 and 9 are "test"
    folds = cv_folds(segs, pool, 3, seed=4)
    flat = [i for f in folds for i in f]
    assert sorted(flat) == pool and len(flat) == len(set(flat))  # a partition of the pool: no test segment
    for f in folds:
        assert {segs[i].majority_label for i in f} == {0, 1, 2}  # every class in every fold
    assert cv_folds(segs, pool, 3, seed=4) == folds
    assert cv_folds(segs, pool, 3, seed=5) != folds


def test_too_few_segments_for_the_folds_is_refused() -> None:
    from neurostimd.errors import DataFormatError
    from neurostimd.model.search import cv_folds

    with pytest.raises(DataFormatError, match="2 training segments cannot make 3 cross-validation folds"):
        cv_folds(_segs([0, 1]), [0, 1], 3, seed=0)


def test_the_slow_potential_feature_follows_the_signed_signal_below_1_hz() -> None:
    """The slow feature is the signed low-passed signal, not a power: +wave and −wave give opposite features, and
    a 10 Hz tone of any size leaves it near zero."""
    from neurostimd.core.features import extract_frames

    s = FeatureSettings(hop_ms=250, frame_hops=2, slow_hz=1.0)
    t = np.arange(int(60 * FS)) / FS
    wave = 50 * np.sin(2 * np.pi * 0.2 * t)
    up = extract_frames(s, wave[:, None], FS)
    down = extract_frames(s, -wave[:, None], FS)
    col = s.feature_names(["Cz"], FS).index("Cz:slow_below_1Hz")
    assert np.allclose(up[20:, col], -down[20:, col], atol=1e-3)
    assert np.ptp(up[20:, col]) > 60  # most of the 100 µV peak to peak passes
    tone = extract_frames(s, (100 * np.sin(2 * np.pi * 10 * t))[:, None], FS)
    assert np.max(np.abs(tone[20:, col])) < 1.0
    with pytest.raises(ValueError, match="slow_hz applies to bandpower"):
        FeatureSettings(kind="raw", slow_hz=1.0)


def test_a_slow_potential_is_invisible_to_the_default_features_and_found_with_the_slow_feature(
        tmp_path: Path) -> None:
    """Classes that differ only below 1 Hz: the default bands score near chance in cross-validation, the same
    bands with the slow potential near perfectly (the proxy the search ranks front ends with)."""
    from neurostimd.core.stimtable import notebook_table
    from neurostimd.model.search import cv_folds, score_front_end
    from neurostimd.model.train import prepare

    data = _epochs(tmp_path)
    base = FeatureSettings(hop_ms=250, frame_hops=2)
    p = prepare([data], settings=base, table=notebook_table(), val_fraction=0.2, test_fraction=0.0, block_s=20,
                seed=0, labels=None, classes=None, reading=None, progress=lambda m: None)
    folds = cv_folds(p.segs, sorted(p.train_idx + p.val_idx), 3, seed=0)
    default = score_front_end(p, folds, base, 6000, seed=0)["score"]
    slow = score_front_end(p, folds, base.model_copy(update={"slow_hz": 1.0}), 6000, seed=0)["score"]
    assert default < 0.6
    assert slow > 0.9


def _keras_vs_litert(model: Any, content: bytes) -> float:
    from ai_edge_litert.interpreter import Interpreter

    _, t, f = model.input_shape
    w = np.random.default_rng(1).standard_normal((4, t, f)).astype(np.float32)
    interp = Interpreter(model_content=content)
    interp.allocate_tensors()
    i_in, i_out = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
    got = []
    for x in w:
        interp.reset_all_variables()
        interp.set_tensor(i_in, x[None])
        interp.invoke()
        got.append(interp.get_tensor(i_out)[0].copy())
    return float(np.max(np.abs(np.asarray(got) - np.asarray(model(w, training=False)))))


@pytest.mark.train
def test_alternatives_and_ensembles_export_to_one_verified_litert_model() -> None:
    """A CNN and the linear model convert as they are; an ensemble of BiLSTMs keeps one fused op per LSTM
    direction; an ensemble that mixes architectures falls back to the unrolled form. Each equals Keras."""
    import keras

    from neurostimd.model.architectures import ModelSpec, build, ensemble
    from neurostimd.model.export import (
        FUSED_LSTM_OP,
        LSTM_FUSED,
        LSTM_UNROLLED,
        NO_LSTM,
        export_tflite,
        tflite_op_counts,
    )

    keras.utils.set_random_seed(2)
    cases = [([ModelSpec(arch="cnn", units=8)], NO_LSTM), ([ModelSpec(arch="linear")], NO_LSTM),
             ([ModelSpec(units=8), ModelSpec(units=16, dense=0)], LSTM_FUSED),
             ([ModelSpec(units=8), ModelSpec(arch="cnn", units=4)], LSTM_UNROLLED)]
    for specs, kind in cases:
        members = [build(s, 6, 5, 3, name=f"member_{i}") for i, s in enumerate(specs)]
        model = members[0] if len(members) == 1 else ensemble(members)
        content, got = export_tflite(model)
        assert got == kind, specs
        assert _keras_vs_litert(model, content) < 1e-4
        if kind == LSTM_FUSED:
            assert tflite_op_counts(content)[FUSED_LSTM_OP] == 8  # 2 members x 2 BiLSTMs x 2 directions
    with pytest.raises(ValueError, match="share one front end"):
        ensemble([build(ModelSpec(arch="linear"), 6, 5, 3, name="a"), build(ModelSpec(arch="linear"), 7, 5, 3,
                                                                            name="b")])


@pytest.mark.train
@pytest.mark.slow
def test_a_small_search_writes_a_loadable_ensemble_bundle_and_its_report(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """End to end on data whose classes differ only below 1 Hz: the search picks a front end that sees the slow
    potential, never reads the test segments, averages K models into one LiteRT model the daemon loads, and writes
    summary.json, trials.csv and search.png; evaluate then scores the held-out segments well above chance."""
    from neurostimd.model.evaluate import evaluate_bundle
    from neurostimd.model.runtime import load_bundle
    from neurostimd.model.search import SearchOptions, search_bundle

    data = _epochs(tmp_path, n_per_class=10)
    out, report = tmp_path / "bundle", tmp_path / "report"
    opts = SearchOptions(folds=2, front_end_trials=6, model_trials=3, ensemble=2, search_epochs=3,
                         max_windows=600, archs=("bilstm", "linear"))
    summary = search_bundle([data], out, report, opts=opts, epochs=4, seed=3, test_fraction=0.3,
                            fixed={"hop_ms": 250.0, "frame_hops": 2}, progress=lambda m: None)
    err = capsys.readouterr().err
    assert "fold 1/2" not in err and "epoch 1/" not in err  # its own progress callback silenced the jobs' lines
    chosen = FeatureSettings.model_validate(summary["front_end"]["chosen"])
    assert chosen.hop_ms == 250.0 and chosen.frame_hops == 2  # what the user fixed is not searched
    assert chosen.kind == "raw" or chosen.slow_hz is not None or (0.1, 1.0) in (chosen.bands_hz or [])
    assert summary["model"]["trials"][0]["spec"]["arch"] == "bilstm"  # the notebook's model always competes
    assert summary["model"]["trials"][0]["spec"]["units"] == 64
    split = json.loads((out / "split.json").read_text())["sources"][0]
    searched = {k for fold in summary["folds"] for k in fold}
    assert searched == set(split["train"]) | set(split["val"]) and not searched & set(split["test"])
    b = load_bundle(out)  # hashes, shapes and LiteRT == Keras on the stored check windows
    assert b.settings == chosen
    n_members = len(summary["model"]["members"])
    assert n_members in (1, 2)  # --ensemble 2: the winning architecture may have had only one candidate
    assert b.manifest["training"]["ensemble"] == n_members
    assert b.manifest["search"]["architecture"] == summary["model"]["architecture"]
    for name in ("summary.json", "summary.md", "trials.csv", "search.png"):
        assert (report / name).stat().st_size > 0
    md = (report / "summary.md").read_text()
    assert summary["front_end"]["description"] in md and md.count("| bandpower") + md.count("kind=") >= 1
    rows = (report / "trials.csv").read_text().splitlines()
    assert len(rows) == 1 + opts.front_end_trials + opts.model_trials
    metrics = evaluate_bundle(out, data, tmp_path / "eval", progress=lambda m: None)
    assert metrics["accuracy"] > 0.6  # three classes: chance is 1/3


@pytest.mark.parametrize(("extra", "message"), [
    (["--folds", "1"], "--folds 1 (need >= 2)"),
    (["--archs", "bilstm,transformer"], "--archs bilstm,transformer (choose from bilstm, cnn, linear)"),
    (["--stride", "2"], "--stride does not apply to --search"),
    (["--max-window-s", "0"], "--max-window-s 0.0 (need > 0)"),
    (["--hop-ms", "0"], "hop_ms"),
    (["--max-window-s", "0.5", "--frames", "20", "--hop-ms", "100"], "every front-end candidate's window is longer"),
])
def test_bad_search_options_exit_78_with_what_to_change(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        extra: list[str], message: str) -> None:
    from neurostimd.commands.cli import main

    data = _epochs(tmp_path, n_per_class=3, n_samples=512)
    out = tmp_path / "bundle"
    assert main(["train", "--data", str(data), "--out", str(out), "--search", *extra]) == 78
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_search_with_too_few_segments_for_its_folds_or_validation_exits_65(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from neurostimd.commands.cli import main

    data = _epochs(tmp_path, n_per_class=3, n_samples=512)  # 9 segments: 3 for validation, 6 for training
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "b"), "--search", "--folds", "10"]) == 65
    assert "9 training segments cannot make 10 cross-validation folds" in capsys.readouterr().err
    data = _epochs(tmp_path, n_per_class=2, n_samples=512)  # 2 per class: none for validation
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "b"), "--search"]) == 65
    assert "no validation segment" in capsys.readouterr().err


def test_a_window_that_would_lengthen_the_time_blocks_is_not_a_candidate() -> None:
    """Time blocks hold at least four windows, so a long window would re-cut a continuous recording: the split made
    before the search would no longer be the segments evaluate cuts from the bundle (test data trained on). Such a
    candidate is infeasible; one whose blocks stay the same is kept."""
    import optuna

    from neurostimd.model.search import _front_end_space

    base = FeatureSettings()
    params = {"kind": "bandpower", "bands": "default", "slow_band": False, "slow_potential": False}
    long = optuna.trial.FixedTrial({**params, "hop_ms": 250.0, "frame_hops": 4, "n_frames": 10})  # 3.25 s window
    assert _front_end_space(long, base, {}, 256.0, max_window_s=5.0, block_s=10.0) is None
    assert _front_end_space(long, base, {}, 256.0, max_window_s=5.0, block_s=20.0) is not None
    short = optuna.trial.FixedTrial({**params, "hop_ms": 50.0, "frame_hops": 2, "n_frames": 10})
    assert _front_end_space(short, base, {}, 256.0, max_window_s=5.0, block_s=10.0) is not None


_SMALL = ["--folds", "2", "--front-end-trials", "4", "--search-trials", "2", "--ensemble", "2", "--search-epochs",
          "2", "--epochs", "2", "--max-windows", "300", "--archs", "bilstm,linear", "--hop-ms", "250",
          "--frame-hops", "2", "--test-fraction", "0.3", "--seed", "3"]


def _history(summary: dict[str, Any]) -> dict[str, Any]:
    """What a search decided and measured, without its wall-clock times."""
    members = [{k: v for k, v in m.items() if k != "fit_seconds"} for m in summary["model"]["members"]]
    return {"front_end": summary["front_end"]["trials"], "model": summary["model"]["trials"], "members": members,
            "chosen": summary["front_end"]["chosen"], "val": summary["val_window_accuracy"]}


@pytest.mark.train
@pytest.mark.slow
def test_a_search_on_a_local_ray_instance_gives_the_history_of_the_same_batches_run_one_by_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--jobs 2 asks two trials at a time and runs them (and the ensemble's members) as Ray tasks on a local Ray
    instance; --no-ray runs the same batches in this process. Every trial's proposal and score, the members and the
    bundle's validation accuracy are the same."""
    pytest.importorskip("ray", reason="the scale extra (Ray) is not installed")
    from neurostimd.commands.cli import main

    data = _epochs(tmp_path, n_per_class=10)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "ray"), "--search", "--jobs", "2",
                 *_SMALL]) == 0
    assert "2 at once on a local Ray instance" in capsys.readouterr().err
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "serial"), "--search", "--jobs", "2",
                 "--no-ray", *_SMALL]) == 0
    assert "one by one in this process" in capsys.readouterr().err
    on_ray = json.loads((tmp_path / "ray-search" / "summary.json").read_text())
    serial = json.loads((tmp_path / "serial-search" / "summary.json").read_text())
    assert len(on_ray["front_end"]["trials"]) == 4 and len(on_ray["model"]["trials"]) == 2
    assert _history(on_ray) == _history(serial)


def test_parallel_options_belong_to_the_search_and_a_cluster_needs_ray(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain train is one fit: --jobs is refused (78). Without Ray, --address is refused with exit 69 naming the
    extra before any data is read, and --jobs 2 runs the batches one by one, saying so."""
    import sys

    from neurostimd.commands.cli import main

    data = _epochs(tmp_path, n_per_class=3, n_samples=512)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "a"), "--jobs", "2"]) == 78
    assert "--jobs, --address and --no-ray apply to --search" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert main(["train", "--data", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "b"), "--search",
                 "--address", "ray://127.0.0.1:10001"]) == 69
    err = capsys.readouterr().err
    assert "--address needs Ray" in err and "neurostimd[scale]" in err
    assert main(["train", "--data", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "b"), "--search",
                 "--jobs", "2"]) != 0  # the missing file is reported after the runner is chosen
    assert "Ray is not installed" in capsys.readouterr().err


def test_the_settings_only_one_kind_has_get_their_importance_within_that_kind() -> None:
    """fANOVA over all trials sees only the settings every trial has; the bands exist only for band-power trials.
    Within the band-power trials, a score that moves 100x more with the bands than with the hop gives the bands
    > 0.9 of the variance."""
    import optuna

    from neurostimd.model.search import _conditional_importance, _importance

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", study_name="front_end",
                                sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(40):
        t = study.ask()
        kind = t.suggest_categorical("kind", ["bandpower", "raw"])
        hop = t.suggest_categorical("hop_ms", [25.0, 50.0, 100.0])
        score = 0.5 + 0.0001 * hop
        if kind == "bandpower":
            score += 0.01 * hop / 100 + (0.4 if t.suggest_categorical("bands", ["default", "fine"]) == "fine" else 0)
        study.tell(t, score)
    everywhere = _importance(study, seed=0)
    assert everywhere is not None and "bands" not in everywhere
    within = _conditional_importance(study, seed=0, root="kind")
    assert within is not None and within["where"] == "kind = bandpower"
    assert within["importance"]["bands"] > 0.9
    assert within["trials"] == sum(1 for t in study.trials if t.params["kind"] == "bandpower")


def test_the_importance_leaves_out_the_candidates_that_were_not_scored() -> None:
    """Infeasible candidates (told 0) and repeats would make the importance measure the feasibility cut-off: with
    the scored trials' score depending on `b` only, `a` (which alone decides feasibility) gets almost none."""
    import optuna

    from neurostimd.model.search import _importance

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=2))
    for _ in range(60):
        t = study.ask()
        a = t.suggest_categorical("a", ["short", "long"])
        b = t.suggest_float("b", 0.0, 1.0)
        feasible = a == "short"
        t.set_user_attr("scored", feasible)
        study.tell(t, 0.5 + 0.1 * b if feasible else 0.0)
    imp = _importance(study, seed=0, params=["a", "b"])
    assert imp is not None and imp["b"] > 0.9
