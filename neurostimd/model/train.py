"""`neurostimd train`: labelled recordings → leak-free windows → the notebook's BiLSTM → a verified model bundle.

TensorFlow is imported inside the functions, so importing this module stays cheap."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from neurostimd.core.features import FeatureSettings, FrontEnd, Scaler, design_filters, design_notch
from neurostimd.core.stats import compute_signal_stats
from neurostimd.core.stimtable import StimTable, notebook_table, table_mismatch
from neurostimd.errors import BundleError, DataFormatError
from neurostimd.model import bundle as files
from neurostimd.model.architectures import NOTEBOOK, ModelSpec
from neurostimd.model.dataset import (
    LabelledRecording,
    Segment,
    load_recordings,
    pick_inputs,
    segments,
    split_segments,
    windows_for,
)
from neurostimd.model.labels import summary

log = structlog.get_logger(__name__)

Progress = Callable[[str], None]
N_CHECK_WINDOWS = 16


def _progress(msg: str) -> None:
    print(f"[train {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _check_compatible(recs: list[LabelledRecording]) -> None:
    first = recs[0]
    for r in recs[1:]:
        if r.n_channels != first.n_channels or abs(r.fs - first.fs) > 1e-6 * first.fs:
            raise DataFormatError(f"{r.path}: {r.n_channels} channels at {r.fs:g} Hz, but {first.path} has "
                                  f"{first.n_channels} at {first.fs:g} Hz; train one bundle per montage and rate")
        if r.class_names != first.class_names:
            raise DataFormatError(f"{r.path}: class names {r.class_names} differ from {first.path}'s "
                                  f"{first.class_names}; relabel so all files share one class list")


@dataclass
class Prepared:
    """Training data read, checked and split into whole segments: what train_bundle and the search share."""

    recs: list[LabelledRecording]
    segs: list[Segment]
    fs: float
    n_channels: int
    class_names: list[str]
    train_idx: list[int]
    val_idx: list[int]
    test_idx: list[int]
    reading: dict[str, Any]
    labels: str | None
    classes: str | None
    block_s: float
    seed: int
    val_fraction: float
    test_fraction: float
    t_start: float


def prepare(data: list[str | Path], *, settings: FeatureSettings, table: StimTable, val_fraction: float,
            test_fraction: float, block_s: float, seed: int, labels: str | None, classes: str | None,
            reading: dict[str, Any] | None, progress: Progress) -> Prepared:
    """Read the recordings with their labels, apply the front end's picks, check they fit together, the table and
    the feature settings, and split whole segments into train / val / test."""
    if val_fraction <= 0:
        raise ValueError("--val-fraction must be > 0: early stopping and checkpointing watch the validation split")
    t_start = time.perf_counter()
    reading = {k: v for k, v in (reading or {}).items() if v is not None}
    recs = load_recordings(list(data), labels, classes, **reading)
    for r in recs:
        if labels is not None or classes is not None:
            progress(f"{r.path}: {summary(r.label_info)}")
    # Front end (picks, reference, notch): the model's input channels by name, and the options must fit the data.
    recs = [pick_inputs(r, settings) for r in recs]
    try:
        settings.front_end.check_fits(recs[0].n_channels, recs[0].fs)
    except ValueError as err:
        raise DataFormatError(f"{recs[0].path}: front end (--channels/--reference/--notch): {err}") from err
    _check_compatible(recs)
    fs, n_ch, class_names = recs[0].fs, recs[0].n_channels, recs[0].class_names
    mismatch = table_mismatch([s.state for s in table.states], class_names)
    if mismatch:
        # the daemon refuses a bundle whose table does not have one row per class: never write one
        raise ValueError(f"the stimulation table does not fit the data's {len(class_names)} classes "
                         f"{list(class_names)}: {mismatch}; pass a table with one row per class (--table FILE)")
    try:
        settings.resolve_bands(fs)
    except ValueError as err:
        raise DataFormatError(f"feature settings do not fit {fs:g} Hz data: {err}") from err
    segs = segments(recs, settings, block_s)
    train_idx, val_idx, test_idx = split_segments(segs, test_fraction, val_fraction, seed)
    progress(f"{len(recs)} file(s), {n_ch} ch at {fs:g} Hz, {len(segs)} segments -> train {len(train_idx)}, "
             f"val {len(val_idx)}, test {len(test_idx)} (whole segments)")
    return Prepared(recs, segs, fs, n_ch, class_names, train_idx, val_idx, test_idx, reading, labels, classes,
                    block_s, seed, val_fraction, test_fraction, t_start)


def fit_model(spec: ModelSpec, x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray, y_va: np.ndarray,
              n_classes: int, *, epochs: int, batch_size: int, seed: int, patience: int = 10,
              progress: Progress | None = None) -> tuple[Any, dict[str, list[float]], float]:
    """Train `spec` from seed `seed` with early stopping on the validation loss (best epoch restored); returns the
    model, the per-epoch history and the fit's seconds. `progress` gets one line per epoch."""
    import keras
    import tensorflow as tf

    from neurostimd.model.architectures import build

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    model = build(spec, x_tr.shape[1], x_tr.shape[2], n_classes)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=spec.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    t_fit = time.perf_counter()

    class _Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            lg = logs or {}
            if progress is not None:
                progress(f"epoch {epoch + 1}/{epochs}: loss {lg.get('loss', float('nan')):.4f} "
                         f"acc {lg.get('accuracy', float('nan')):.4f} val_loss {lg.get('val_loss', float('nan')):.4f}"
                         f" val_acc {lg.get('val_accuracy', float('nan')):.4f} ({time.perf_counter() - t_fit:.0f} s)")

    callbacks = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True),
                 _Report()]
    hist = model.fit(x_tr, y_tr, validation_data=(x_va, y_va), epochs=epochs, batch_size=batch_size,
                     shuffle=True, callbacks=callbacks, verbose=0)
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    return model, history, time.perf_counter() - t_fit


def train_bundle(data: list[str | Path], out: str | Path, *, epochs: int = 100, seed: int = 0, batch_size: int = 32,
                 settings: FeatureSettings | None = None, table: StimTable | None = None, val_fraction: float = 0.2,
                 test_fraction: float = 0.0, block_s: float = 20.0, stride: int = 1, labels: str | None = None,
                 classes: str | None = None, reading: dict[str, Any] | None = None, spec: ModelSpec | None = None,
                 progress: Progress = _progress) -> dict[str, Any]:
    """Train on `data`, write the bundle to `out`, return its manifest. `labels` and `classes` are `--labels` and
    `--classes` (neurostimd.model.labels); None = each file's own labels and class names. `reading` holds the
    reader's options (`fs` for a file without a rate, `stream_name` / `stream_type` for an XDF signal stream); the
    manifest keeps them, so that evaluate and add-stats read the data the same way. `spec` is the architecture
    (default: the notebook's BiLSTM)."""
    settings = settings or FeatureSettings()
    table = table or notebook_table()
    spec = spec or NOTEBOOK
    if epochs < 1 or batch_size < 1 or stride < 1:
        raise ValueError(f"epochs ({epochs}), batch size ({batch_size}) and stride ({stride}) must be >= 1")
    p = prepare(data, settings=settings, table=table, val_fraction=val_fraction, test_fraction=test_fraction,
                block_s=block_s, seed=seed, labels=labels, classes=classes, reading=reading, progress=progress)
    tr = windows_for(p.segs, p.train_idx, settings, p.fs, stride)
    va = windows_for(p.segs, p.val_idx, settings, p.fs, 1)
    if len(tr.X) == 0 or len(va.X) == 0:
        raise DataFormatError(f"too little data: {len(tr.X)} training and {len(va.X)} validation windows of "
                              f"{settings.window_samples(p.fs)} samples; give longer recordings or a smaller --frames")
    present = sorted(set(tr.y.tolist()))
    if len(present) < len(p.class_names):
        log.warning("classes_missing_in_training", present=present, n_classes=len(p.class_names))
    scaler = Scaler.fit(settings.scaler, np.concatenate(tr.frames))
    x_tr, x_va = scaler.transform(tr.X), scaler.transform(va.X)
    progress(f"windows: train {len(x_tr)}, val {len(x_va)}; input (T={settings.n_frames}, F={x_tr.shape[2]}); "
             f"features {time.perf_counter() - p.t_start:.1f} s")
    model, history, fit_s = fit_model(spec, x_tr, tr.y, x_va, va.y, len(p.class_names), epochs=epochs,
                                      batch_size=batch_size, seed=seed, progress=progress)
    val_probs = model.predict(x_va, batch_size=256, verbose=0)
    val_acc = float(np.mean(val_probs.argmax(1) == va.y))
    metrics: dict[str, Any] = {
        "val_window_accuracy": val_acc, "n_train_windows": len(x_tr), "n_val_windows": len(x_va),
        "epochs_run": len(history["loss"]), "best_val_loss_epoch": int(np.argmin(history["val_loss"])) + 1,
        "best_val_accuracy_epoch": int(np.argmax(history["val_accuracy"])) + 1,
        "best_val_accuracy": max(history["val_accuracy"]), "fit_seconds": round(fit_s, 1),
    }
    progress(f"trained {metrics['epochs_run']} epochs in {fit_s:.0f} s; val window accuracy {val_acc:.4f}")
    training = {"epochs": epochs, "seed": seed, "batch_size": batch_size, "stride": stride,
                "architecture": spec.describe(), "model_spec": spec.model_dump(mode="json"),
                "optimizer": "adam", "learning_rate": spec.learning_rate, "loss": "sparse_categorical_crossentropy"}
    return write_bundle(out, p, model, settings=settings, scaler=scaler, table=table, x_check=x_va,
                        metrics=metrics, history=history, training=training, progress=progress)


def write_bundle(out: str | Path, p: Prepared, model: Any, *, settings: FeatureSettings, scaler: Scaler,
                 table: StimTable, x_check: np.ndarray, metrics: dict[str, Any], history: dict[str, Any],
                 training: dict[str, Any], extra: dict[str, Any] | None = None,
                 progress: Progress = _progress) -> dict[str, Any]:
    """Export `model` to LiteRT and write the bundle (the Keras model, the features, the split, the manifest) to
    `out`; then load it the way the daemon does, which checks LiteRT against the stored Keras outputs."""
    import keras

    from neurostimd.model.export import export_tflite
    from neurostimd.model.runtime import load_bundle

    out_dir = Path(out)
    fs, class_names, segs, recs = p.fs, p.class_names, p.segs, p.recs
    rng = np.random.default_rng(p.seed)
    pick = rng.choice(len(x_check), size=min(N_CHECK_WINDOWS, len(x_check)), replace=False)
    check_windows = x_check[np.sort(pick)].astype(np.float32)
    check_probs = model.predict(check_windows, batch_size=len(check_windows), verbose=0).astype(np.float32)
    tflite, tflite_lstm = export_tflite(model)
    if out_dir.exists():
        if not (out_dir / files.MANIFEST).is_file() and any(out_dir.iterdir()):
            raise BundleError(f"{out_dir} exists and is not a model bundle; choose an empty or new --out folder")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    # Saved without optimizer state (a third of the size); the bundle is for inference, not for resuming.
    clean = keras.models.clone_model(model)
    clean.set_weights(model.get_weights())
    clean.save(out_dir / files.MODEL_KERAS)
    (out_dir / files.MODEL_TFLITE).write_bytes(tflite)
    channel_names = recs[0].channel_names
    (out_dir / files.FEATURES).write_text(json.dumps({
        # slow_hz only when used: a bundle without it reads in a daemon older than the option.
        "settings": settings.model_dump(mode="json", exclude={"slow_hz"} if settings.slow_hz is None else None),
        "scaler": scaler.to_dict(),
        "feature_names": settings.feature_names(channel_names, fs), "channel_names": channel_names,
        "filters": [sos.tolist() for sos in design_filters(settings, fs)],
        **({} if (notch := design_notch(settings, fs)) is None else {"notch_filter": notch.tolist()}),
    }, indent=1) + "\n")
    (out_dir / files.CLASSES).write_text(json.dumps({"class_names": class_names}, indent=2) + "\n")
    (out_dir / files.STIM_TABLE).write_text(table.to_json())
    np.savez(out_dir / files.CHECK, windows=check_windows, keras_probs=check_probs)
    sources: list[dict[str, Any]] = []
    split = {"block_s": p.block_s, "seed": p.seed, "val_fraction": p.val_fraction,
             "test_fraction": p.test_fraction, "sources": sources}
    for si, r in enumerate(recs):
        def keys(idx: list[int], si: int = si) -> list[int]:
            return [segs[i].index for i in idx if segs[i].source == si]
        sources.append({"path": r.path, "sha256": r.sha256, "kind": r.kind, "train": keys(p.train_idx),
                        "val": keys(p.val_idx), "test": keys(p.test_idx)})
    (out_dir / files.SPLIT).write_text(json.dumps(split, indent=1) + "\n")
    (out_dir / files.HISTORY).write_text(json.dumps(history) + "\n")
    data_hash = hashlib.sha256("".join(sorted(r.sha256 for r in recs)).encode()).hexdigest()
    # The amplitudes of the training segments (not validation or test): what live signal is compared with.
    stats = compute_signal_stats([segs[i].data for i in p.train_idx], settings.window_samples(fs), channel_names)
    manifest = files.write_manifest(out_dir, {
        "n_channels": p.n_channels, "sample_rate_hz": fs, "input_shape": [settings.n_frames, int(x_check.shape[2])],
        "class_names": class_names, "channel_names": channel_names,
        "channel_names_declared": all(r.names_declared for r in recs),
        "signal_stats": {**stats.to_json(), "verified_by": "training"},
        "training_data": [{"path": r.path, "sha256": r.sha256, "kind": r.kind, "labels": r.label_info}
                          for r in recs],
        "labels": _labels_manifest(recs, p.labels, p.classes),
        "read_options": p.reading,
        "training_data_sha256": data_hash, "metrics": metrics, "training": training,
        "window_samples": settings.window_samples(fs), "tflite_lstm": tflite_lstm,
        "front_end": settings.front_end.describe(channel_names, fs), **(extra or {}),
    })
    # Prove the bundle the daemon will load: hashes, shapes, and LiteRT == Keras on the check windows.
    load_bundle(out_dir)
    progress(f"wrote {out_dir} (LiteRT verified against Keras); total {time.perf_counter() - p.t_start:.0f} s")
    return manifest


def _labels_manifest(recs: list[LabelledRecording], labels: str | None, classes: str | None) -> dict[str, Any]:
    """Where the bundle's labels came from: the --labels source, the --classes text, description → class."""
    mapping: dict[str, str] = {}
    for r in recs:
        mapping.update(r.label_info.get("classes") or {})
    return {"source": recs[0].label_info.get("source", "file") if labels is not None else "file",
            "classes_arg": classes, "classes": mapping or {c: c for c in recs[0].class_names},
            "class_names": recs[0].class_names}


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ info logs for a command-line run (set before TensorFlow is first imported)."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def front_end_options(channels: str | None, reference: str | None, notch_hz: int | None) -> FrontEnd | None:
    """The front end that `--channels A,B,C`, `--reference car|none|F3-C3,F4-C4` and `--notch 50|60` ask for (None
    when none of them is given); ValueError saying which option is malformed."""
    if channels is None and reference is None and notch_hz is None:
        return None
    picks = None
    if channels is not None:
        picks = [c.strip() for c in channels.split(",")]
        if not all(picks):
            raise ValueError(f"--channels {channels!r}: an empty name; list channel names separated by commas")
    ref: str | list[tuple[str, str]] = "none"
    if reference is not None and reference.strip().lower() in ("car", "none"):
        ref = reference.strip().lower()
    elif reference is not None:
        pairs = []
        for item in reference.split(","):
            parts = [p.strip() for p in item.split("-")]
            if len(parts) != 2 or not all(parts):
                raise ValueError(f"--reference {reference!r}: {item!r} is not a bipolar pair A-B; use car, none or "
                                 f"pairs like F3-C3,F4-C4 (for channel names with '-' in them, pass the pairs in "
                                 f"FeatureSettings(front_end=FrontEnd(reference=[...])) through the Python API)")
            pairs.append((parts[0], parts[1]))
        ref = pairs
    return FrontEnd(channels=picks, reference=ref, notch_hz=notch_hz)

