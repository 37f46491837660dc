"""`neurostimd evaluate`: score a bundle the way the daemon would use it, on segments it never trained on.

Each held-out segment is streamed through the bundle's own StreamingFeatures in chunks of one decision tick
(`cadence_ms`), and the LiteRT model decides on the newest window at every tick — `accuracy` is over those decisions.
Epoch sets also get `epoch_accuracy` (mean probability over an epoch's decisions). A scikit-learn logistic
regression on the same band-power windows, fitted on the bundle's training segments in the same run, is reported
beside it as `baseline_*`."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from neurostimd.errors import BundleError, DataFormatError
from neurostimd.model import bundle as files
from neurostimd.model import report
from neurostimd.model.dataset import load_recording, pick_inputs, segments, windows_for
from neurostimd.model.labels import classes_text, summary
from neurostimd.model.runtime import Bundle, load_bundle
from neurostimd.progress import eta

Progress = Callable[[str], None]
DEFAULT_CADENCE_MS = 50.0


def _progress(msg: str) -> None:
    print(f"[evaluate {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def stream_decisions(b: Bundle, data: np.ndarray, labels: np.ndarray, cadence_ms: float) -> dict[str, np.ndarray]:
    """Run one segment tick by tick as the daemon would: returns per-decision probs, labels and window ids."""
    chunk = max(1, round(cadence_ms * b.sample_rate_hz / 1000.0))
    feats = b.new_features()
    probs: list[np.ndarray] = []
    labs: list[int] = []
    win_ids: list[int] = []
    windows: list[np.ndarray] = []
    last: np.ndarray | None = None
    for pos in range(0, len(data), chunk):
        new = feats.push(data[pos:pos + chunk])
        if new or last is None:
            w = feats.window()
            if w is None:
                continue
            last = b.predict(w)
            windows.append(w)
        probs.append(last)
        labs.append(int(labels[min(pos + chunk, len(data)) - 1]))
        win_ids.append(len(windows) - 1)
    n_feat = b.input_shape[1]
    return {
        "probs": np.asarray(probs, dtype=np.float32).reshape(-1, b.n_classes),
        "labels": np.asarray(labs, dtype=np.int64),
        "window_ids": np.asarray(win_ids, dtype=np.int64),
        "windows": np.asarray(windows, dtype=np.float32).reshape(-1, b.input_shape[0], n_feat),
    }


def window_moments(windows: np.ndarray) -> np.ndarray:
    """(n, T, F) windows → (n, 2F): each feature's mean and spread over the window, what a classic band-power
    classifier sees (the baseline's features, and the search's front-end proxy's)."""
    return np.concatenate([windows.mean(axis=1), windows.std(axis=1)], axis=1)


def evaluate_bundle(bundle_dir: str | Path, data_path: str | Path, report_dir: str | Path, *, split: str = "auto",
                    cadence_ms: float = DEFAULT_CADENCE_MS, labels: str | None = None, classes: str | None = None,
                    reading: dict[str, Any] | None = None, progress: Progress = _progress) -> dict[str, Any]:
    """Score the bundle on `data_path` (labels from `labels`/`classes` as for train; with `labels` and no `classes`,
    the bundle's own description → class mapping; `reading` the reader's options as for train) and write the
    report; return the metrics."""
    t0 = time.perf_counter()
    if labels is not None and classes is None:
        classes = _bundle_classes(Path(bundle_dir))
    rec = load_recording(data_path, labels, classes, **{k: v for k, v in (reading or {}).items() if v is not None})
    if labels is not None or classes is not None:
        progress(f"{data_path}: {summary(rec.label_info)}")
    # The bundle's front end names its input channels: take them from a wider recording first (as training did).
    b = load_bundle(bundle_dir, expect_rate_hz=rec.fs)
    rec = pick_inputs(rec, b.settings)
    if rec.n_channels != b.n_channels:
        raise BundleError(f"model bundle {b.path} was trained on {b.n_channels} channels but {data_path} has "
                          f"{rec.n_channels}; evaluate on data of the bundle's montage")
    if rec.class_names != b.class_names:
        raise DataFormatError(f"{data_path}: its labels (from {rec.label_info.get('source', 'file')}) give the "
                              f"classes {rec.class_names}, but the bundle {b.path} predicts {b.class_names}; label "
                              f"the data with the bundle's classes in its order, e.g. --classes "
                              f"\"{','.join(b.class_names)}\" (NAME=DESCRIPTION maps another spelling)")
    split_info = json.loads((b.path / files.SPLIT).read_text()) if (b.path / files.SPLIT).is_file() else {}
    block_s = float(split_info.get("block_s", 20.0))
    segs = segments([rec], b.settings, block_s)
    source = next((s for s in split_info.get("sources", []) if s["sha256"] == rec.sha256), None)
    train_keys: list[int] = []
    if split == "auto":  # the held-out segments of a file the bundle trained on; all of any other file
        if not split_info.get("sources"):
            raise BundleError(f"model bundle {b.path} records no training files ({files.SPLIT}), so it cannot tell "
                              f"whether {data_path} was one: pass --split all for data it never saw")
        split = "test" if source is not None else "all"
        progress(f"{data_path}: " + ("a training file of the bundle (same sha256): its held-out segments "
                                     "(--split test)" if split == "test" else
                                     "its sha256 is not among the bundle's training files: all of it (--split all; "
                                     "a converted copy of a training file is not recognised, pass --split test "
                                     "with the original)"))
    if split == "test":
        if source is None:
            raise BundleError(f"{data_path} was not part of this bundle's training data, so it has no held-out "
                              f"split; pass --split all (or leave --split out) to evaluate on all of it")
        if not source["test"]:
            raise BundleError(f"the bundle held no segments of {data_path} out for testing; retrain with "
                              f"--test-fraction 0.3 (or pass --split all for unseen data)")
        eval_keys = list(source["test"])
        train_keys = list(source["train"]) + list(source["val"])
    else:
        if source is not None:
            raise BundleError(f"{data_path} was used to train this bundle; --split all would score training data. "
                              f"Use --split test")
        eval_keys = [s.index for s in segs]
    by_key = {s.index: i for i, s in enumerate(segs)}
    # A held-out block with no labelled sample under these labels is no segment: nothing in it can be scored.
    eval_idx = [by_key[k] for k in eval_keys if k in by_key]
    train_keys = [k for k in train_keys if k in by_key]
    progress(f"{len(eval_idx)} held-out segments of {data_path}; streaming at {cadence_ms:g} ms ticks through LiteRT")

    runs = []
    t_stream = time.perf_counter()
    for n, i in enumerate(eval_idx):
        r = stream_decisions(b, segs[i].data, segs[i].labels, cadence_ms)
        r["segment"] = np.full(len(r["probs"]), segs[i].index)
        runs.append(r)
        if (n + 1) % max(1, len(eval_idx) // 5) == 0:
            progress(f"  {n + 1}/{len(eval_idx)} segments, ETA "
                     f"{eta(time.perf_counter() - t_stream, n + 1, len(eval_idx))}")
    if not runs:
        raise DataFormatError(f"{data_path}: none of the segments to evaluate holds a labelled sample; check --labels "
                              f"and --classes")
    # Decisions at unlabelled samples are made (the stream runs through) but not scored.
    known = np.concatenate([r["labels"] for r in runs]) >= 0
    probs = np.concatenate([r["probs"] for r in runs])[known]
    y_true = np.concatenate([r["labels"] for r in runs])[known]
    seg_of = np.concatenate([r["segment"] for r in runs])[known]
    if len(probs) == 0:
        raise BundleError(f"no decision could be made: held-out segments are shorter than one model window "
                          f"({b.window_samples} samples)")
    pred = probs.argmax(1)
    n_cls = b.n_classes
    cm = report.confusion(y_true, pred, n_cls)
    pc = report.per_class(cm, b.class_names)
    metrics: dict[str, Any] = {
        "accuracy": float(np.mean(pred == y_true)), "n_decisions": len(y_true), "cadence_ms": cadence_ms,
        "per_class": pc, "macro_f1": report.macro_f1(pc), "confusion_matrix": cm.tolist(),
        "class_names": b.class_names, "split": split, "n_segments": len(eval_idx), "data": str(data_path),
        "data_sha256": rec.sha256, "bundle": str(b.path), "window_samples": b.window_samples,
        "window_s": b.window_samples / b.sample_rate_hz, "labels": rec.label_info,
    }
    metrics.update(report.agreement(y_true, pred))
    # each segment judged by its mean probability (an epoch's one label; a time block's majority label)
    sg_true, sg_pred = per_segment(probs, y_true, seg_of)
    seg_cm = report.confusion(sg_true, sg_pred, n_cls)
    metrics.update({"segment_accuracy": float(np.mean(sg_true == sg_pred)), "n_scored_segments": len(sg_true),
                    "segment_confusion_matrix": seg_cm.tolist(),
                    **{f"segment_{k}": v for k, v in report.agreement(sg_true, sg_pred).items()}})
    if rec.kind == "epochs":
        metrics["epoch_accuracy"] = metrics["segment_accuracy"]
        metrics["n_epochs"] = len(sg_true)
        metrics["epoch_confusion_matrix"] = metrics["segment_confusion_matrix"]

    if train_keys:
        progress("baseline: logistic regression on window band-power statistics, fitted on the training segments")
        metrics.update(_baseline(b, segs, [by_key[k] for k in train_keys], runs, known, y_true, seg_of, rec.kind))
    metrics["seconds"] = round(time.perf_counter() - t0, 1)

    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    hist_path = b.path / files.HISTORY
    if hist_path.is_file():
        report.plot_learning_curves(json.loads(hist_path.read_text()), out / "learning_curves.png",
                                    n_classes=n_cls)
    report.plot_confusion(
        cm, b.class_names, out / "confusion_matrix.png",
        f"per decision ({cadence_ms:g} ms ticks): accuracy {metrics['accuracy']:.3f}\n"
        f"balanced {metrics['balanced_accuracy']:.3f}, κ {metrics['kappa']:.3f}",
        segment_cm=seg_cm, segment_title=f"per segment ({len(sg_true)}, mean probability): accuracy "
                                         f"{metrics['segment_accuracy']:.3f}\nbalanced "
                                         f"{metrics['segment_balanced_accuracy']:.3f}, κ "
                                         f"{metrics['segment_kappa']:.3f}")
    name = Path(data_path).name
    names = {segs[i].index: (f"{name}\nepoch {segs[i].index}" if rec.kind == "epochs" else
                             f"{name}\nfrom {segs[i].start_sample / rec.fs:.0f} s") for i in eval_idx}
    report.plot_probabilities(probs, y_true, seg_of, b.class_names, cadence_ms, out / "probabilities.png",
                              segment_names=names)
    progress(f"accuracy {metrics['accuracy']:.4f} over {len(y_true)} decisions"
             + (f"; epoch accuracy {metrics['epoch_accuracy']:.4f}" if "epoch_accuracy" in metrics else "")
             + (f"; baseline {metrics['baseline_accuracy']:.4f}" if "baseline_accuracy" in metrics else "")
             + f"; wrote {out}")
    return metrics


def per_segment(probs: np.ndarray, labels: np.ndarray, seg_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each segment's label (its majority label: an epoch's only one) and the class of its mean probability."""
    ids = list(dict.fromkeys(seg_of.tolist()))
    true = np.array([int(np.bincount(labels[seg_of == s]).argmax()) for s in ids])
    pred = np.array([int(probs[seg_of == s].mean(0).argmax()) for s in ids])
    return true, pred


def _baseline(b: Bundle, segs: list[Any], train_idx: list[int], runs: list[dict[str, np.ndarray]], known: np.ndarray,
              labels: np.ndarray, seg_of: np.ndarray, kind: str) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    tr = windows_for(segs, train_idx, b.settings, b.sample_rate_hz, stride=1)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(window_moments(b.scaler.transform(tr.X)), tr.y)
    probs_list = []
    for r in runs:
        if len(r["windows"]) == 0:
            continue
        p_win = np.zeros((len(r["windows"]), b.n_classes))
        p_win[:, clf.classes_] = clf.predict_proba(window_moments(r["windows"]))
        probs_list.append(p_win[r["window_ids"]])
    probs = np.concatenate(probs_list)[known]
    pred = probs.argmax(1)
    cm = report.confusion(labels, pred, b.n_classes)
    pc = report.per_class(cm, b.class_names)
    out: dict[str, Any] = {
        "baseline_model": "sklearn StandardScaler+LogisticRegression on per-window mean and std of each scaled feature",
        "baseline_accuracy": float(np.mean(pred == labels)), "baseline_macro_f1": report.macro_f1(pc),
        "baseline_confusion_matrix": cm.tolist(), "baseline_n_train_windows": len(tr.X),
    }
    out.update({f"baseline_{k}": v for k, v in report.agreement(labels, pred).items()})
    t, p = per_segment(probs, labels, seg_of)
    out["baseline_segment_accuracy"] = float(np.mean(t == p))
    if kind == "epochs":
        out["baseline_epoch_accuracy"] = out["baseline_segment_accuracy"]
    return out


def _bundle_classes(bundle_dir: Path) -> str | None:
    """The --classes text that maps descriptions as the bundle's training did (None if it recorded none)."""
    try:
        lab = json.loads((bundle_dir / files.MANIFEST).read_text()).get("labels")
    except (OSError, ValueError, AttributeError):
        return None  # load_bundle reports the unreadable manifest
    return classes_text(lab)
