"""`neurostimd train --search`: choose the feature front end and the model by cross-validation on the training
data only, then train the best K models and write them as one averaged ensemble bundle.

The held-out test segments (`--test-fraction`) are split off first, by the same code as a plain `train`, and the
search never reads them; `evaluate` scores the bundle on them afterwards. Cross-validation holds out whole segments
(an epoch, or a time block of `--block-s`), stratified by class, so no window of a held-out segment, nor its
overlapping neighbours, is trained on.

Two stages, each an Optuna TPE study seeded from `--seed`:

1. Front end: feature kind (band powers or the low-passed raw signal), bands (the default set or a finer one, with
   or without a slow band of 0.1–1 Hz), the slow potential below 1 Hz as a signed feature, hop, frame length and
   window length T.
   Each candidate is scored by a logistic regression on the window's mean and spread of each feature (the
   baseline's model): seconds per candidate, where a neural fit would take minutes.
2. Model on the chosen front end: the notebook's BiLSTM (always tried first, with its own sizes), a 1D CNN, or a
   linear model on the same features; sizes, dropout and learning rate. Each candidate is trained once per fold,
   with early stopping on an inner validation split of that fold's training segments, and scored on the fold's
   held-out segments.

The best K candidates of the winning architecture are retrained on the training segments (early stopping on the
validation segments, as `train` does) and averaged into one Keras model, exported to one LiteRT model and verified
against Keras like any bundle. Windows per fit are capped (`max_windows`) by striding through the overlapping
windows. TensorFlow, scikit-learn and Optuna are imported inside the functions."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neurostimd.core.features import DEFAULT_BANDS_HZ, FeatureSettings, Scaler
from neurostimd.core.stimtable import StimTable, notebook_table
from neurostimd.errors import DataFormatError
from neurostimd.model.architectures import NOTEBOOK, ModelSpec
from neurostimd.model.dataset import Segment, block_samples, split_segments, windows_for
from neurostimd.model.evaluate import per_segment, window_moments
from neurostimd.model.train import Prepared, fit_model, prepare, write_bundle
from neurostimd.parallel import Runner, SerialRunner
from neurostimd.progress import progress_bar

Progress = Callable[[str], None]
SLOW_BAND_HZ = (0.1, 1.0)
SLOW_HZ = 1.0
HOPS_MS = (25.0, 50.0, 100.0, 250.0, 500.0)
FRAME_HOPS = (1, 2, 4, 8)
N_FRAMES = (5, 10, 20)
# The fine band set: the classic bands split in two (about 2-10 Hz wide below 30 Hz), for spectra whose shape, not
# only their power per classic band, tells the states apart; edges above 0.45 fs are dropped.
FINE_EDGES_HZ = (1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 13.0, 20.0, 30.0, 45.0, 70.0, 100.0, 150.0, 200.0, 300.0)


def _progress(msg: str) -> None:
    print(f"[search {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class SearchOptions:
    """The search's budget and bounds (`neurostimd train --search` options)."""

    folds: int = 3
    front_end_trials: int = 24
    model_trials: int = 8
    ensemble: int = 3
    search_epochs: int = 20
    patience: int = 4
    max_windows: int = 6000
    max_window_s: float = 5.0
    archs: tuple[str, ...] = ("bilstm", "cnn", "linear")

    def check(self) -> None:
        bad = [f"{name} {value} (need >= {least})" for name, value, least in (
            ("--folds", self.folds, 2), ("--front-end-trials", self.front_end_trials, 1),
            ("--search-trials", self.model_trials, 1), ("--ensemble", self.ensemble, 1),
            ("--search-epochs", self.search_epochs, 1), ("--max-windows", self.max_windows, 100))
            if value < least]
        if not self.max_window_s > 0:
            bad.append(f"--max-window-s {self.max_window_s} (need > 0)")
        unknown = sorted(set(self.archs) - {"bilstm", "cnn", "linear"})
        if unknown or not self.archs:
            bad.append(f"--archs {','.join(self.archs)} (choose from bilstm, cnn, linear)")
        if bad:
            raise ValueError("train --search: " + "; ".join(bad))


def cv_folds(segs: list[Segment], pool: list[int], k: int, seed: int) -> list[list[int]]:
    """`pool` (segment indices) dealt into k folds of whole segments, stratified by each segment's majority label
    (a class with fewer segments than folds is missing from some folds); DataFormatError when the pool has fewer
    segments than folds."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i in pool:
        by_class.setdefault(segs[i].majority_label, []).append(i)
    if len(pool) < k:
        raise DataFormatError(f"{len(pool)} training segments cannot make {k} cross-validation folds; give more "
                              f"data, a shorter --block-s or fewer --folds")
    folds: list[list[int]] = [[] for _ in range(k)]
    offset = 0
    for c in sorted(by_class):
        for j, i in enumerate(rng.permutation(by_class[c])):
            folds[(offset + j) % k].append(int(i))
        offset += len(by_class[c])  # the next class starts where this one ended, so fold sizes stay even
    return [sorted(f) for f in folds]


def _stride_for(n_windows: int, max_windows: int) -> int:
    return max(1, math.ceil(n_windows / max_windows))


def _count_windows(segs: list[Segment], which: list[int], settings: FeatureSettings, fs: float) -> int:
    w = settings.window_samples(fs)
    hop = settings.hop_samples(fs)
    return sum(max(0, (len(segs[i].data) - w) // hop + 1) for i in which)


def _windows(p: Prepared, which: list[int], settings: FeatureSettings, max_windows: int | None) -> Any:
    stride = 1 if max_windows is None else _stride_for(_count_windows(p.segs, which, settings, p.fs), max_windows)
    return windows_for(p.segs, which, settings, p.fs, stride)


def _front_end_space(trial: Any, base: FeatureSettings, fixed: dict[str, Any], fs: float, max_window_s: float,
                     block_s: float) -> FeatureSettings | None:
    """The candidate front end of one trial (None when its window is longer than max_window_s, or so long that it
    would change the time blocks of continuous recordings); `fixed` holds the settings the user gave on the command
    line, which are not searched."""
    def pick(name: str, choices: list[Any]) -> Any:
        return fixed[name] if fixed.get(name) is not None else trial.suggest_categorical(name, choices)

    kind = pick("kind", ["bandpower", "raw"])
    hop = pick("hop_ms", list(HOPS_MS))
    frame_hops = pick("frame_hops", list(FRAME_HOPS))
    n_frames = pick("n_frames", list(N_FRAMES))
    extra: dict[str, Any] = {}
    if kind == "bandpower":
        if trial.suggest_categorical("bands", ["default", "fine"]) == "fine":
            bands = [(lo, hi) for lo, hi in itertools.pairwise(FINE_EDGES_HZ) if hi < 0.45 * fs]
        else:
            bands = [b for b in DEFAULT_BANDS_HZ if b[1] < 0.45 * fs]
        if trial.suggest_categorical("slow_band", [False, True]):
            bands = [SLOW_BAND_HZ, *bands]
        extra["bands_hz"] = bands
        if trial.suggest_categorical("slow_potential", [False, True]):
            extra["slow_hz"] = SLOW_HZ
    settings = base.model_copy(update={"kind": kind, "hop_ms": float(hop), "frame_hops": int(frame_hops),
                                       "n_frames": int(n_frames), **extra})
    settings = FeatureSettings.model_validate(settings.model_dump())
    if settings.window_samples(fs) / fs > max_window_s:
        return None
    if block_samples(settings, fs, block_s) != block_samples(base, fs, block_s):
        # A long window lengthens a recording's time blocks (at least four windows each): the split, made once
        # with the base settings, would no longer be the one evaluate cuts from the bundle's settings.
        return None
    return settings


def score_front_end(p: Prepared, folds: list[list[int]], settings: FeatureSettings, max_windows: int,
                    seed: int) -> dict[str, Any]:
    """Cross-validated window accuracy of a logistic regression on the window moments of these features."""
    from sklearn.linear_model import LogisticRegression

    accs, n_test = [], 0
    for k, held in enumerate(folds):
        train = sorted(i for f in folds[:k] + folds[k + 1:] for i in f)
        tr = _windows(p, train, settings, max_windows)
        te = _windows(p, held, settings, None)
        if len(tr.X) == 0 or len(te.X) == 0 or len(set(tr.y.tolist())) < 2:
            return {"score": None, "reason": "too few windows per fold for this window length"}
        scaler = Scaler.fit(settings.scaler, np.concatenate(tr.frames))
        clf = LogisticRegression(max_iter=500, random_state=seed)
        clf.fit(window_moments(scaler.transform(tr.X)), tr.y)
        accs.append(float(np.mean(clf.predict(window_moments(scaler.transform(te.X))) == te.y)))
        n_test += len(te.X)
    return {"score": float(np.mean(accs)), "fold_scores": accs, "n_scored_windows": n_test}


def _model_space(trial: Any, archs: tuple[str, ...]) -> ModelSpec:
    arch = trial.suggest_categorical("arch", list(archs))
    kw: dict[str, Any] = {"arch": arch, "dropout": trial.suggest_float("dropout", 0.0, 0.5),
                          "learning_rate": trial.suggest_float("learning_rate", 3e-4, 3e-3, log=True)}
    if arch != "linear":
        kw["units"] = trial.suggest_categorical("units", [16, 32, 64])
        kw["dense"] = trial.suggest_categorical("dense", [0, 16, 32])
    if arch == "cnn":
        kw["kernel"] = trial.suggest_categorical("kernel", [3, 5])
    return ModelSpec(**kw)


def score_model(p: Prepared, folds: list[list[int]], settings: FeatureSettings, spec: ModelSpec,
                opts: SearchOptions, seed: int, batch_size: int, progress: Progress) -> dict[str, Any]:
    """Cross-validated window accuracy of `spec` on these features: one fit per fold, early stopping on an inner
    validation split of the fold's training segments (never on the fold it is scored on)."""
    accs, seg_accs, epochs = [], [], []
    n_classes = len(p.class_names)
    for k, held in enumerate(folds):
        train = sorted(i for f in folds[:k] + folds[k + 1:] for i in f)
        sub = [p.segs[i] for i in train]
        inner_tr, inner_va, _ = split_segments(sub, 0.0, 0.15, seed + k)
        tr_idx, va_idx = [train[i] for i in inner_tr], [train[i] for i in inner_va]
        tr = _windows(p, tr_idx, settings, opts.max_windows)
        va = _windows(p, va_idx, settings, opts.max_windows)
        te = _windows(p, held, settings, None)
        if min(len(tr.X), len(va.X), len(te.X)) == 0:
            return {"score": None, "reason": "too few windows per fold"}
        scaler = Scaler.fit(settings.scaler, np.concatenate(tr.frames))
        model, history, _ = fit_model(spec, scaler.transform(tr.X), tr.y, scaler.transform(va.X), va.y, n_classes,
                                      epochs=opts.search_epochs, batch_size=batch_size, seed=seed + k,
                                      patience=opts.patience)
        probs = model.predict(scaler.transform(te.X), batch_size=512, verbose=0)
        accs.append(float(np.mean(probs.argmax(1) == te.y)))
        seg_true, seg_pred = per_segment(probs, te.y, te.segment)
        seg_accs.append(float(np.mean(seg_true == seg_pred)))
        epochs.append(len(history["loss"]))
        progress(f" fold {k + 1}/{len(folds)}: window accuracy {accs[-1]:.4f}, segment {seg_accs[-1]:.4f} "
                 f"({epochs[-1]} epochs)")
    return {"score": float(np.mean(accs)), "fold_scores": accs, "segment_score": float(np.mean(seg_accs)),
            "epochs": epochs}


def _worker_setup() -> None:
    from neurostimd.model.train import quiet_tensorflow

    quiet_tensorflow()


def _front_end_job(shared: tuple[Prepared, list[list[int]], int, int], settings: dict[str, Any]) -> dict[str, Any]:
    p, folds, max_windows, seed = shared
    return score_front_end(p, folds, FeatureSettings.model_validate(settings), max_windows, seed)


def _quiet(msg: str) -> None:
    pass


def _model_job(shared: tuple[Prepared, list[list[int]], dict[str, Any], SearchOptions, int, int, bool],
               item: tuple[int, dict[str, Any]]) -> dict[str, Any]:
    p, folds, settings, opts, seed, batch_size, verbose = shared
    n, spec = item
    return score_model(p, folds, FeatureSettings.model_validate(settings), ModelSpec.model_validate(spec), opts,
                       seed, batch_size, (lambda msg: _progress(f"model {n + 1}{msg}")) if verbose else _quiet)


def _member_job(shared: tuple[Any, ...], item: tuple[int, dict[str, Any]]) -> dict[str, Any]:
    """One ensemble member trained on the training segments; its weights, history and seconds (a Keras model is
    rebuilt from them where the bundle is written)."""
    x_tr, y_tr, x_va, y_va, n_classes, epochs, batch_size, seed, verbose = shared
    j, spec = item
    model, history, fit_s = fit_model(ModelSpec.model_validate(spec), x_tr, y_tr, x_va, y_va, n_classes,
                                      epochs=epochs, batch_size=batch_size, seed=seed + 100 + j,
                                      progress=(lambda msg: _progress(f"  member {j + 1}: {msg}")) if verbose
                                      else _quiet)
    return {"weights": model.get_weights(), "history": history, "fit_s": fit_s}


def _importance(study: Any, seed: int, params: list[str] | None = None) -> dict[str, float] | None:
    """fANOVA importance of `params` (default: the settings every scored trial has); None with fewer than 4
    scored trials, or with one score for all."""
    import optuna

    # Only the trials that were scored, once each: an infeasible candidate told 0 (too long a window) or a repeat of
    # one already scored would make the importance measure the feasibility cut-off or count a point twice.
    done = [t for t in study.trials if t.value is not None and t.user_attrs.get("scored", True)]
    if len(done) < 4 or len({t.value for t in done}) < 2 or len(params or study.best_params) < 2:
        return None
    scored = optuna.create_study(direction="maximize", study_name=study.study_name)
    scored.add_trials(done)
    try:
        imp = optuna.importance.get_param_importances(
            scored, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed), params=params)
    except (RuntimeError, ValueError) as err:  # e.g. a dynamic space whose trials share too few parameters
        _progress(f"no importance for {study.study_name} ({err})")
        return None
    return {k: float(v) for k, v in imp.items()}


def _conditional_importance(study: Any, seed: int, root: str) -> dict[str, Any] | None:
    """The importance within the trials of one value of `root` (kind, arch): the value with the most settings of
    its own among those with at least 4 scored trials (the bands of band powers, the sizes of a BiLSTM or CNN),
    which the all-trial importance has to leave out."""
    import optuna

    done = [t for t in study.trials if t.value is not None and root in t.params and t.user_attrs.get("scored", True)]
    groups: dict[Any, list[Any]] = {}
    for t in done:
        groups.setdefault(t.params[root], []).append(t)
    names = {v: sorted(set.intersection(*(set(t.params) for t in ts)) - {root}) for v, ts in groups.items()}
    eligible = [v for v, ts in groups.items() if len(ts) >= 4]
    if not eligible:
        return None
    top = max(eligible, key=lambda v: (len(names[v]), len(groups[v])))
    sub_study = optuna.create_study(direction="maximize", study_name=f"{study.study_name}[{root}={top}]")
    sub_study.add_trials(groups[top])
    imp = _importance(sub_study, seed, params=names[top])
    return None if imp is None else {"where": f"{root} = {top}", "trials": len(groups[top]), "importance": imp}


def _sampler(seed: int, n_trials: int, jobs: int) -> Any:
    import warnings

    import optuna

    # constant liar (the trials of a batch are asked before any is told): a running trial counts as a poor result,
    # which pushes a batch's points apart
    kw: dict[str, Any] = {"constant_liar": True} if jobs > 1 else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, n_trials // 3)), **kw)


def search_bundle(data: list[str | Path], out: str | Path, report_dir: str | Path, *, opts: SearchOptions,
                  epochs: int = 100, seed: int = 0, batch_size: int = 32, base: FeatureSettings | None = None,
                  fixed: dict[str, Any] | None = None, table: StimTable | None = None, val_fraction: float = 0.2,
                  test_fraction: float = 0.0, block_s: float = 20.0, labels: str | None = None,
                  classes: str | None = None, reading: dict[str, Any] | None = None,
                  progress: Progress = _progress, jobs: int = 1, runner: Runner | None = None) -> dict[str, Any]:
    """Search, train the ensemble, write the bundle to `out` and the search's report (summary.json, trials.csv,
    search.png) to `report_dir`; return the summary. `jobs` trials are asked at a time (Optuna's constant liar
    keeps a batch's points apart) and run by `runner` (one by one by default; the same history either way); the
    ensemble's members are trained `jobs` at a time."""
    import optuna

    from neurostimd.model.architectures import build, ensemble

    opts.check()
    if jobs < 1:
        raise ValueError(f"train --search: --jobs {jobs} (need >= 1)")
    runner = runner or SerialRunner()
    # A job's fold and epoch lines go to stderr from wherever it runs (a Ray worker cannot call `progress`); a
    # caller that passes its own `progress` silences them.
    verbose = progress is _progress
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = base or FeatureSettings()
    fixed = {k: v for k, v in (fixed or {}).items() if v is not None}
    table = table or notebook_table()
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs ({epochs}) and batch size ({batch_size}) must be >= 1")
    try:
        base_fixed = FeatureSettings.model_validate({**base.model_dump(), **fixed})
    except ValueError as err:
        raise ValueError(f"train --search: the fixed feature settings {fixed}: {err}") from err
    p = prepare(data, settings=base_fixed, table=table, val_fraction=val_fraction, test_fraction=test_fraction,
                block_s=block_s, seed=seed, labels=labels, classes=classes, reading=reading, progress=progress)
    if not p.val_idx:
        raise DataFormatError(f"no validation segment: {len(p.segs)} segments leave none for --val-fraction "
                              f"{val_fraction:g} in any class; give more data or a shorter --block-s")
    pool = sorted(p.train_idx + p.val_idx)  # everything but the held-out test segments
    folds = cv_folds(p.segs, pool, opts.folds, seed)
    progress(f"search on {len(pool)} training segments in {opts.folds} folds of whole segments "
             f"({', '.join(str(len(f)) for f in folds)}); {len(p.test_idx)} test segments are not read")
    t0 = time.perf_counter()

    # Stage 1: the front end, scored by the linear proxy.
    fe_study = optuna.create_study(direction="maximize", study_name="front_end",
                                   sampler=_sampler(seed, opts.front_end_trials, jobs))
    fe_study.enqueue_trial({"kind": "bandpower", "hop_ms": base_fixed.hop_ms, "frame_hops": base_fixed.frame_hops,
                            "n_frames": base_fixed.n_frames, "bands": "default", "slow_band": False,
                            "slow_potential": False},
                           skip_if_exists=True)
    fe_trials: list[dict[str, Any]] = []
    slim = dataclasses.replace(p, recs=[])  # what a job needs: the segments, not the recordings again
    with progress_bar(opts.front_end_trials, "front end", log=progress) as bar:
        while len(fe_trials) < opts.front_end_trials:
            batch = [fe_study.ask() for _ in range(min(jobs, opts.front_end_trials - len(fe_trials)))]
            cands = [_front_end_space(t, base_fixed, fixed, p.fs, opts.max_window_s, block_s) for t in batch]
            # each distinct front end not scored before is scored once (the same folds give the same score)
            todo: list[dict[str, Any]] = []
            for c in cands:
                if c is not None and _settings_json(c) not in todo and \
                        not any(t["settings"] == _settings_json(c) for t in fe_trials):
                    todo.append(_settings_json(c))
            scores = runner.map(_front_end_job, (slim, folds, opts.max_windows, seed), todo, setup=_worker_setup)
            for trial, settings in zip(batch, cands, strict=True):
                n = len(fe_trials)
                seen = next((t for t in fe_trials if settings is not None and t["settings"] == _settings_json(
                    settings) and "repeat_of" not in t), None)
                if settings is None:
                    result: dict[str, Any] = {
                        "score": None, "reason": f"window longer than {opts.max_window_s:g} s or than a quarter of "
                                                 f"--block-s {block_s:g} s"}
                elif seen is not None:  # the sampler proposed a front end already scored: the same score
                    result = {k: seen[k] for k in ("score", "fold_scores", "n_scored_windows", "reason") if k in seen}
                    result["repeat_of"] = seen["trial"]
                else:
                    result = scores[todo.index(_settings_json(settings))]
                # An infeasible candidate (too long a window, too few windows) ranks below any scored one.
                trial.set_user_attr("scored", result["score"] is not None and "repeat_of" not in result)
                fe_study.tell(trial, result["score"] if result["score"] is not None else 0.0)
                fe_trials.append({"trial": n, "params": dict(trial.params), **result,
                                  "window_s": None if settings is None else settings.window_samples(p.fs) / p.fs,
                                  "settings": None if settings is None else _settings_json(settings)})
                best = max((t["score"] for t in fe_trials if t["score"] is not None), default=None)
                bar.update(f"front end {n + 1}/{opts.front_end_trials}: {_short(trial.params)} -> "
                           f"{_fmt(result['score'])} (best {_fmt(best)})")
    scored_fe = [t for t in fe_trials if t["score"] is not None]
    if not scored_fe:
        if all(t.get("settings") is None for t in fe_trials):
            raise ValueError(f"train --search: every front-end candidate's window is longer than --max-window-s "
                             f"{opts.max_window_s:g} s (or a quarter of --block-s {block_s:g} s); raise them or fix "
                             f"a shorter --frames / --hop-ms")
        raise DataFormatError("no front-end candidate produced windows in every fold; give longer segments, a "
                              "larger --max-window-s or fewer --folds")
    best_fe = max(scored_fe, key=lambda t: t["score"])
    settings = FeatureSettings.model_validate(best_fe["settings"])
    progress(f"front end chosen: {_describe_settings(settings, p.fs)} (proxy CV accuracy {best_fe['score']:.4f})")

    # Stage 2: the model on that front end, trained per fold.
    m_study = optuna.create_study(direction="maximize", study_name="model",
                                  sampler=_sampler(seed + 1, opts.model_trials, jobs))
    if "bilstm" in opts.archs:
        m_study.enqueue_trial({"arch": "bilstm", "units": NOTEBOOK.units, "dense": NOTEBOOK.dense,
                               "dropout": NOTEBOOK.dropout, "learning_rate": NOTEBOOK.learning_rate})
    m_trials: list[dict[str, Any]] = []
    with progress_bar(opts.model_trials, "model", log=progress) as bar:
        while len(m_trials) < opts.model_trials:
            batch = [m_study.ask() for _ in range(min(jobs, opts.model_trials - len(m_trials)))]
            specs = [_model_space(t, opts.archs) for t in batch]
            first = len(m_trials)
            for i, spec in enumerate(specs):
                bar.write(f"model {first + i + 1}/{opts.model_trials}: {spec.describe()}, lr "
                          f"{spec.learning_rate:.2g}")
            results = runner.map(_model_job, (slim, folds, _settings_json(settings), opts, seed, batch_size,
                                              verbose),
                                 [(first + i, spec.model_dump(mode="json")) for i, spec in enumerate(specs)],
                                 setup=_worker_setup)
            for trial, spec, result in zip(batch, specs, results, strict=True):
                n = len(m_trials)
                trial.set_user_attr("scored", result["score"] is not None)
                m_study.tell(trial, result["score"] if result["score"] is not None else 0.0)
                m_trials.append({"trial": n, "params": dict(trial.params), "spec": spec.model_dump(mode="json"),
                                 **result})
                best = max((t["score"] for t in m_trials if t["score"] is not None), default=None)
                bar.update(f"model {n + 1}/{opts.model_trials}: CV window accuracy {_fmt(result['score'])}, "
                           f"segment {_fmt(result.get('segment_score'))} (best {_fmt(best)})")
    scored_m = sorted((t for t in m_trials if t["score"] is not None), key=lambda t: -t["score"])
    if not scored_m:
        raise DataFormatError("no model candidate could be scored in every fold; give more data or fewer --folds")
    arch = scored_m[0]["spec"]["arch"]
    chosen = [t for t in scored_m if t["spec"]["arch"] == arch][:opts.ensemble]
    progress(f"model chosen: {arch}, the best {len(chosen)} candidate(s) (trials "
             f"{', '.join(str(t['trial'] + 1) for t in chosen)}) averaged")

    # Final: each chosen candidate trained on the training segments, early stopping on the validation segments.
    tr = _windows(p, p.train_idx, settings, opts.max_windows)
    va = _windows(p, p.val_idx, settings, None)
    if len(tr.X) == 0 or len(va.X) == 0:
        raise DataFormatError(f"too little data for the chosen front end: {len(tr.X)} training and {len(va.X)} "
                              f"validation windows")
    scaler = Scaler.fit(settings.scaler, np.concatenate(tr.frames))
    x_tr, x_va = scaler.transform(tr.X), scaler.transform(va.X)
    members, member_metrics, histories = [], [], {}
    fits = runner.map(_member_job, (x_tr, tr.y, x_va, va.y, len(p.class_names), epochs, batch_size, seed, verbose),
                      [(j, t["spec"]) for j, t in enumerate(chosen)], setup=_worker_setup)
    for j, (t, fit) in enumerate(zip(chosen, fits, strict=True)):
        spec = ModelSpec.model_validate(t["spec"])
        model = build(spec, x_tr.shape[1], x_tr.shape[2], len(p.class_names))
        model.set_weights(fit["weights"])
        history = fit["history"]
        acc = float(np.mean(model.predict(x_va, batch_size=512, verbose=0).argmax(1) == va.y))
        progress(f"member {j + 1}/{len(chosen)}: {len(history['loss'])} epochs in {fit['fit_s']:.0f} s, val window "
                 f"accuracy {acc:.4f}")
        members.append(model)  # ensemble() names the members member_0, member_1, ...
        member_metrics.append({"trial": t["trial"], "spec": t["spec"], "cv_score": t["score"],
                               "cv_segment_score": t.get("segment_score"), "val_window_accuracy": acc,
                               "epochs_run": len(history["loss"]), "fit_seconds": round(fit["fit_s"], 1)})
        histories[f"member_{j}"] = history
    final = members[0] if len(members) == 1 else ensemble(members)
    val_acc = float(np.mean(final.predict(x_va, batch_size=512, verbose=0).argmax(1) == va.y))
    progress(f"{'ensemble' if len(members) > 1 else 'model'} val window accuracy {val_acc:.4f}")
    summary: dict[str, Any] = {
        "seed": seed, "folds": [[p.segs[i].index for i in f] for f in folds],
        "fold_sources": [[p.segs[i].source for i in f] for f in folds], "options": opts.__dict__,
        "fixed_by_user": fixed,
        "front_end": {"chosen": _settings_json(settings), "description": _describe_settings(settings, p.fs),
                      "proxy_cv_score": best_fe["score"], "trials": fe_trials,
                      "importance": _importance(fe_study, seed),
                      "importance_within": _conditional_importance(fe_study, seed, "kind")},
        "model": {"architecture": arch, "members": member_metrics, "trials": m_trials,
                  "importance": _importance(m_study, seed),
                  "importance_within": _conditional_importance(m_study, seed, "arch")},
        "val_window_accuracy": val_acc, "search_seconds": round(time.perf_counter() - t0, 1),
    }
    metrics = {"val_window_accuracy": val_acc, "n_train_windows": len(x_tr), "n_val_windows": len(x_va),
               "members": member_metrics, "cv_window_accuracy": chosen[0]["score"]}
    training = {"epochs": epochs, "seed": seed, "batch_size": batch_size, "stride": "auto",
                "max_windows": opts.max_windows,
                "architecture": (member_metrics and " + ".join(ModelSpec.model_validate(m["spec"]).describe()
                                                               for m in member_metrics)),
                "ensemble": len(members), "optimizer": "adam", "loss": "sparse_categorical_crossentropy",
                "searched": True}
    compact = {"front_end": summary["front_end"]["description"], "proxy_cv_score": best_fe["score"],
               "architecture": arch, "members": [m["spec"] for m in member_metrics],
               "cv_window_accuracy": chosen[0]["score"], "report": str(Path(report_dir).resolve())}
    write_bundle(out, p, final, settings=settings, scaler=scaler, table=table, x_check=x_va, metrics=metrics,
                 history=histories, training=training, extra={"search": compact}, progress=progress)
    write_report(report_dir, summary)
    progress(f"search report in {report_dir}; whole search {time.perf_counter() - p.t_start:.0f} s")
    return summary


def _settings_json(s: FeatureSettings) -> dict[str, Any]:
    return s.model_dump(mode="json")


def _describe_settings(s: FeatureSettings, fs: float) -> str:
    if s.kind == "raw":
        what = "low-passed raw signal"
    else:
        bands = ", ".join(f"{lo:g}-{hi:g}" for lo, hi in s.resolve_bands(fs))
        what = f"band powers {bands} Hz" + (f" + slow potential < {s.slow_hz:g} Hz" if s.slow_hz else "")
    return (f"{what}; hop {s.hop_ms:g} ms, frames of {s.frame_hops} hops, T = {s.n_frames} "
            f"({s.window_samples(fs) / fs:.2f} s window)")


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.4f}"


def _short(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def write_report(report_dir: str | Path, summary: dict[str, Any]) -> None:
    """summary.json, summary.md, trials.csv (both stages) and search.png (score per trial, importance per
    setting)."""
    d = Path(report_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
    rows = ["stage,trial,score,params"]
    for stage in ("front_end", "model"):
        for t in summary[stage]["trials"]:
            params = json.dumps(t["params"], sort_keys=True).replace('"', '""')
            rows.append(f"{stage},{t['trial'] + 1},{'' if t['score'] is None else round(t['score'], 6)},\"{params}\"")
    (d / "trials.csv").write_text("\n".join(rows) + "\n")
    (d / "summary.md").write_text(summary_markdown(summary))
    _plot(d / "search.png", summary)


def summary_markdown(summary: dict[str, Any]) -> str:
    """What the search chose, every trial of both stages and the importance of each setting, as a table."""
    fe, m = summary["front_end"], summary["model"]
    lines = [f"# train --search (seed {summary['seed']}, {summary['search_seconds']:g} s)", "",
             f"- Front end chosen: {fe['description']} (proxy CV window accuracy {_fmt(fe['proxy_cv_score'])})",
             f"- Model chosen: {m['architecture']}, {len(m['members'])} member(s) averaged: "
             + "; ".join(f"trial {x['trial'] + 1} (CV {_fmt(x['cv_score'])})" for x in m["members"]),
             f"- Validation window accuracy of the bundle: {_fmt(summary['val_window_accuracy'])} (optimistic: the "
             f"validation segments were in the folds; `evaluate` on the test segments is the figure to quote)", ""]
    for stage, title, extra in (("front_end", "Front end (linear proxy)", None),
                                ("model", "Model (per-fold fits)", "segment_score")):
        lines += [f"## {title}", "", "| trial | CV window accuracy |" + (" CV segment accuracy |" if extra else "")
                  + " settings |", "|---:|---:|" + ("---:|" if extra else "") + "---|"]
        for t in summary[stage]["trials"]:
            score = _fmt(t["score"]) if t["score"] is not None else f"— ({t.get('reason', 'not scored')})"
            seg = f" {_fmt(t.get(extra))} |" if extra else ""
            lines.append(f"| {t['trial'] + 1} | {score} |{seg} {_short(t['params'])} |")
        for key, what in (("importance", "all trials"), ("importance_within", None)):
            imp = summary[stage].get(key)
            if imp and key == "importance_within":
                what, imp = f"the {imp['trials']} trials with {imp['where']}", imp["importance"]
            if imp:
                lines += ["", f"Importance (fANOVA, {what}): " + ", ".join(f"{k} {v:.2f}" for k, v in imp.items())]
        lines.append("")
    return "\n".join(lines)


def _plot(path: Path, summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 2, figsize=(11, 10.5))
    for col, stage, title in ((0, "front_end", "front end (linear proxy)"), (1, "model", "model (per-fold fits)")):
        ax = axes[0, col]
        trials = summary[stage]["trials"]
        xs = [t["trial"] + 1 for t in trials if t["score"] is not None]
        ys = [t["score"] for t in trials if t["score"] is not None]
        ax.plot(xs, ys, "o", color="tab:blue", label="trial")
        ax.plot(xs, np.maximum.accumulate(ys) if ys else [], "-", color="tab:orange", label="best so far")
        ax.set(title=f"{title}: CV window accuracy", xlabel="trial", ylabel="accuracy")
        ax.legend(loc="lower right")
        within = summary[stage].get("importance_within") or {}
        for row, imp, what in ((1, summary[stage]["importance"], "settings all trials have"),
                               (2, within.get("importance"), f"trials with {within.get('where')}")):
            ax2 = axes[row, col]
            if imp:
                names = list(imp)[::-1]
                ax2.barh(names, [imp[n] for n in names], color="tab:green")
                ax2.set(title=f"{stage.replace('_', ' ')}: importance (fANOVA, {what})", xlabel="share of variance")
            else:
                ax2.text(0.5, 0.5, "importance needs >= 4 scored trials\nwith different scores", ha="center",
                         va="center", transform=ax2.transAxes)
                ax2.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
