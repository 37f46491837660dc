"""The daemon's classifier: load a verified bundle and run its `.tflite` through LiteRT (never TensorFlow).

`load_bundle` refuses a bundle whose files do not hash to the manifest, whose model input does not match its feature
settings, whose recording geometry differs from what the caller expects, or whose LiteRT outputs differ from the
stored Keras outputs by more than 1e-4 on the check windows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from neurostimd.core.features import FeatureSettings, Scaler, StreamingFeatures
from neurostimd.core.stats import SignalStats
from neurostimd.core.stimtable import StimTable
from neurostimd.errors import BundleError
from neurostimd.model import bundle as files

log = structlog.get_logger(__name__)

CHECK_TOLERANCE = 1e-4


class Bundle:
    """A loaded, verified model bundle: features factory, class names, stimulation table and a fast `predict`."""

    def __init__(self, path: Path, manifest: dict[str, Any], settings: FeatureSettings, scaler: Scaler,
                 class_names: list[str], table: StimTable, interpreter: Any,
                 sos: list[np.ndarray] | None = None, notch_sos: np.ndarray | None = None) -> None:
        self.path = path
        self.sos = sos
        self.notch_sos = notch_sos
        self.manifest = manifest
        self.settings = settings
        self.scaler = scaler
        self.class_names = class_names
        self.table = table
        self.n_channels = int(manifest["n_channels"])
        self.sample_rate_hz = float(manifest["sample_rate_hz"])
        self.input_shape = (int(manifest["input_shape"][0]), int(manifest["input_shape"][1]))
        self.window_samples = settings.window_samples(self.sample_rate_hz)
        names = manifest.get("channel_names")
        # The montage the model was trained on; None when unknown (an older manifest, or training files without
        # channel_names, whose generated ch0, ch1, ... say nothing about electrodes).
        self.channel_names: list[str] | None = (
            [str(n) for n in names] if isinstance(names, list) and len(names) == self.n_channels
            and manifest.get("channel_names_declared", True) else None)
        # The training signal's amplitudes (None for a bundle trained before they were stored).
        self.signal_stats: SignalStats | None = None
        if "signal_stats" in manifest:
            try:
                self.signal_stats = SignalStats.from_json(manifest["signal_stats"], self.n_channels)
            except ValueError as err:
                raise BundleError(f"model bundle {path}: {err}; {files.REBUILD_HINT}, or add the statistics with "
                                  f"`python -m neurostimd.model.bundle add-stats`") from err
        self._interp = interpreter
        self._in_index = interpreter.get_input_details()[0]["index"]
        self._out_index = interpreter.get_output_details()[0]["index"]
        # One preallocated input buffer: predict() copies the window in, so no per-call allocation of the batch.
        self._in = np.zeros((1, *self.input_shape), dtype=np.float32)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def new_features(self) -> StreamingFeatures:
        """A fresh streaming feature pipeline with this bundle's settings and fitted scaler."""
        return StreamingFeatures(self.settings, self.n_channels, self.sample_rate_hz, self.scaler, self.sos,
                                 self.notch_sos)

    def predict(self, window: np.ndarray) -> np.ndarray:
        """Class probabilities (n_classes,) float32 for one scaled (T, F) window."""
        if window.shape != self.input_shape:
            raise ValueError(f"window shape {window.shape} != model input {self.input_shape}")
        self._in[0] = window
        # A fused-LSTM export keeps h and c in variable tensors that each invoke leaves at the last step's values;
        # zero them so every window starts from the zero state Keras starts from (a no-op for an unrolled export).
        self._interp.reset_all_variables()
        self._interp.set_tensor(self._in_index, self._in)
        self._interp.invoke()
        return np.array(self._interp.get_tensor(self._out_index)[0], dtype=np.float32)

    def predict_many(self, windows: np.ndarray) -> np.ndarray:
        """Probabilities (n, n_classes) for a stack of windows, one invoke each (the model has batch 1)."""
        out = np.empty((len(windows), self.n_classes), dtype=np.float32)
        for i, w in enumerate(windows):
            out[i] = self.predict(w)
        return out


def load_bundle(path: str | Path, *, expect_channels: int | None = None, expect_rate_hz: float | None = None,
                verify: bool = True, num_threads: int = 1) -> Bundle:
    """Load and verify a bundle; raise BundleError saying what does not match and what to do."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    d = Path(path)
    manifest = files.read_verified_manifest(d)
    n_ch = int(manifest["n_channels"])
    fs = float(manifest["sample_rate_hz"])
    if expect_channels is not None and expect_channels != n_ch:
        raise BundleError(f"model bundle {d} was trained on {n_ch} channels but the source delivers "
                          f"{expect_channels}; use a bundle trained on this montage (neurostimd train --data ...) "
                          f"or fix the source's channel selection")
    if expect_rate_hz is not None and abs(expect_rate_hz - fs) > 1e-6 * max(fs, 1.0):
        raise BundleError(f"model bundle {d} was trained at {fs:g} Hz but the source runs at {expect_rate_hz:g} Hz; "
                          f"use a bundle trained at this rate or change the source's sampling rate")
    try:
        feat = json.loads((d / files.FEATURES).read_text())
        settings = FeatureSettings.model_validate(feat["settings"])
        scaler = Scaler.from_dict(feat["scaler"])
        # The trained filter coefficients; bundles written before they were stored get them designed (scipy).
        sos = [np.asarray(x, dtype=float) for x in feat["filters"]] if "filters" in feat else None
        notch_sos = np.asarray(feat["notch_filter"], dtype=float) if "notch_filter" in feat else None
        class_names = [str(c) for c in json.loads((d / files.CLASSES).read_text())["class_names"]]
        table = StimTable.model_validate_json((d / files.STIM_TABLE).read_text())
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BundleError(f"model bundle {d}: cannot read its settings ({type(err).__name__}: {err}); "
                          f"{files.REBUILD_HINT}") from err
    _check_front_end(d, settings, notch_sos, n_ch, fs)
    t, f = (int(x) for x in manifest["input_shape"])
    n_feat = settings.n_features(n_ch, fs)
    if (t, f) != (settings.n_frames, n_feat) or scaler.offset.shape != (n_feat,):
        raise BundleError(f"model bundle {d}: manifest input shape ({t}, {f}) does not match its feature settings "
                          f"({settings.n_frames} frames x {n_feat} features, scaler {scaler.offset.shape[0]}); "
                          f"{files.REBUILD_HINT}")
    if class_names != [str(c) for c in manifest["class_names"]]:
        raise BundleError(f"model bundle {d}: classes.json {class_names} disagrees with the manifest "
                          f"{manifest['class_names']}; {files.REBUILD_HINT}")
    missing = [c for c in range(len(class_names)) if c not in {s.state for s in table.states}]
    if missing:
        raise BundleError(f"model bundle {d}: stimulation table has no entry for state(s) {missing}; add them to the "
                          f"table and retrain with --table")
    try:
        # The builtin kernels beat the default XNNPACK delegate on this model (~250 vs ~400 µs per invoke, measured
        # by `neurostimd bench --only inference`): the unrolled LSTM is ~590 small ops, and the delegate's partitions
        # around the ops it cannot take (PACK, SPLIT, REVERSE_V2) cost more than its faster matrix kernels save. On the
        # fused-LSTM export (14 ops) the two measure the same: XNNPACK takes none of the LSTM ops.
        interp = Interpreter(model_path=str(d / files.MODEL_TFLITE), num_threads=num_threads,
                             experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as err:
        raise BundleError(f"model bundle {d}: LiteRT cannot load {files.MODEL_TFLITE} ({err}); "
                          f"{files.REBUILD_HINT}") from err
    in_shape = tuple(int(x) for x in interp.get_input_details()[0]["shape"])
    out_shape = tuple(int(x) for x in interp.get_output_details()[0]["shape"])
    if in_shape != (1, t, f) or out_shape != (1, len(class_names)):
        raise BundleError(f"model bundle {d}: {files.MODEL_TFLITE} takes {in_shape} and gives {out_shape}, but the "
                          f"manifest says input (1, {t}, {f}) and {len(class_names)} classes; {files.REBUILD_HINT}")
    b = Bundle(d, manifest, settings, scaler, class_names, table, interp, sos, notch_sos)
    if verify:
        _verify_outputs(b)
    log.info("bundle_loaded", path=str(d), n_channels=n_ch, sample_rate_hz=fs, input_shape=[t, f],
             classes=class_names, verified=verify)
    return b


def _check_front_end(d: Path, settings: FeatureSettings, notch_sos: np.ndarray | None, n_ch: int, fs: float) -> None:
    """BundleError unless the stored front end runs on the bundle's channels and rate and its notch coefficients
    are the ones its settings call for (one biquad per harmonic, stored: the daemon designs no filter)."""
    fe = settings.front_end
    try:
        fe.check_fits(n_ch, fs)
        harmonics = fe.notch_harmonics_hz(fs)
    except ValueError as err:
        raise BundleError(f"model bundle {d}: its front end does not fit {n_ch} channels at {fs:g} Hz ({err}); "
                          f"{files.REBUILD_HINT}") from err
    if harmonics and (notch_sos is None or notch_sos.shape != (len(harmonics), 6)):
        got = "none" if notch_sos is None else f"shape {notch_sos.shape}"
        raise BundleError(f"model bundle {d}: {files.FEATURES} asks for a {fe.notch_hz} Hz notch at {harmonics} Hz but "
                          f"stores notch coefficients {got} (need ({len(harmonics)}, 6)); {files.REBUILD_HINT}")
    if not harmonics and notch_sos is not None:
        raise BundleError(f"model bundle {d}: {files.FEATURES} stores notch coefficients but its settings ask for no "
                          f"notch; {files.REBUILD_HINT}")


def _verify_outputs(b: Bundle) -> None:
    try:
        with np.load(b.path / files.CHECK, allow_pickle=False) as z:
            windows = np.asarray(z["windows"], dtype=np.float32)
            expected = np.asarray(z["keras_probs"], dtype=np.float32)
    except (OSError, ValueError, KeyError) as err:
        raise BundleError(f"model bundle {b.path}: {files.CHECK} is unreadable ({err}); {files.REBUILD_HINT}") from err
    if windows.ndim != 3 or windows.shape[1:] != b.input_shape or expected.shape != (len(windows), b.n_classes):
        raise BundleError(f"model bundle {b.path}: check windows {windows.shape} / outputs {expected.shape} do not "
                          f"fit input {b.input_shape} and {b.n_classes} classes; {files.REBUILD_HINT}")
    got = b.predict_many(windows)
    diff = float(np.max(np.abs(got - expected))) if len(windows) else 0.0
    if not diff <= CHECK_TOLERANCE:
        raise BundleError(f"model bundle {b.path}: LiteRT outputs differ from the stored Keras outputs by {diff:.2e} "
                          f"(> {CHECK_TOLERANCE:g}) on the check windows, so {files.MODEL_TFLITE} is not the trained "
                          f"model; re-export it ({files.REBUILD_HINT})")
