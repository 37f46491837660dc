"""Inference benchmark: the daemon's per-decision cost (features + LiteRT) against Keras `predict` and a
`tf.function`-wrapped model call, on the same bundle and the same windows, measured in this run."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from neurostimd.model.runtime import Bundle, load_bundle

DEFAULT_BUNDLE = Path(__file__).resolve().parents[3] / "models" / "default"
CADENCE_MS = 50.0


def _pct(samples_s: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples_s) * 1e6, q))


def _signal(n_channels: int, fs: float, n_samples: int) -> np.ndarray:
    """Generator signal cycling through the three states, so the windows look like what the daemon sees."""
    from neurostimd.firmware_sim.generator import SignalGenerator

    gen = SignalGenerator(n_channels, fs, seed=11)
    per_state = n_samples // 3 + 1
    return np.concatenate([gen.generate(s, per_state) for s in (0, 1, 2)])[:n_samples]


def run(progress: Callable[[str], None], quick: bool, bundle_path: str | Path | None = None) -> dict[str, Any]:
    path = Path(bundle_path) if bundle_path is not None else DEFAULT_BUNDLE
    b = load_bundle(path)
    chunk = max(1, round(CADENCE_MS * b.sample_rate_hz / 1000.0))
    n_decisions = 300 if quick else 3000
    warm = b.settings.window_samples(b.sample_rate_hz) + chunk
    x = _signal(b.n_channels, b.sample_rate_hz, warm + n_decisions * chunk)

    progress(f"inference: runtime (features + LiteRT) over {n_decisions} decisions of {chunk} new samples x "
             f"{b.n_channels} ch")
    feats = b.new_features()
    feats.push(x[:warm])
    total, feat_t, invoke_t, windows = [], [], [], []
    for i in range(n_decisions):
        block = x[warm + i * chunk: warm + (i + 1) * chunk]
        t0 = time.perf_counter()
        feats.push(block)
        w = feats.window()
        t1 = time.perf_counter()
        assert w is not None
        b.predict(w)
        t2 = time.perf_counter()
        total.append(t2 - t0)
        feat_t.append(t1 - t0)
        invoke_t.append(t2 - t1)
        windows.append(w)

    fe_figures = _front_end_cost(b, x, warm, chunk, n_decisions, progress)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(b.path / "model.keras", compile=False)
    n_keras = 30 if quick else 200
    progress(f"inference: Keras model.predict x {n_keras}")
    batch = [w[None] for w in windows[:n_keras]]
    model.predict(batch[0], verbose=0)  # first call traces; not what a steady-state loop pays
    pred_t = []
    for xb in batch:
        t0 = time.perf_counter()
        model.predict(xb, verbose=0)
        pred_t.append(time.perf_counter() - t0)

    t_shape, f_shape = b.input_shape
    call = tf.function(lambda v: model(v, training=False),
                       input_signature=[tf.TensorSpec((1, t_shape, f_shape), tf.float32)])
    n_tf = 100 if quick else 1000
    progress(f"inference: tf.function model call x {n_tf}")
    call(tf.constant(batch[0])).numpy()
    tf_t = []
    for i in range(n_tf):
        xb = windows[i % len(windows)][None]
        t0 = time.perf_counter()
        call(tf.constant(xb)).numpy()
        tf_t.append(time.perf_counter() - t0)

    rt_p50 = _pct(total, 50)
    pred_p50 = _pct(pred_t, 50)
    tf_p50 = _pct(tf_t, 50)
    return {
        "inference.bundle": str(b.path),
        "inference.input_shape": f"{t_shape}x{f_shape}",
        "inference.n_decisions": n_decisions,
        "inference.runtime_p50_us": rt_p50,
        "inference.runtime_p99_us": _pct(total, 99),
        "inference.features_p50_us": _pct(feat_t, 50),
        "inference.litert_invoke_p50_us": _pct(invoke_t, 50),
        "inference.keras_predict_p50_us": pred_p50,
        "inference.tf_function_p50_us": tf_p50,
        "inference.speedup_vs_predict": pred_p50 / rt_p50,
        "inference.speedup_vs_tf_function": tf_p50 / rt_p50,
        **fe_figures,
    }


def _front_end_cost(b: Bundle, x: np.ndarray, warm: int, chunk: int, n_decisions: int,
                    progress: Callable[[str], None]) -> dict[str, Any]:
    """Per-tick feature cost of the bundle's own settings against the same settings with a front end (common
    average + 50 Hz notch and harmonics), interleaved tick by tick on the same samples so both see the same load."""
    from neurostimd.core.features import FeatureSettings, FrontEnd, StreamingFeatures, design_notch

    fe_settings = FeatureSettings.model_validate(
        {**b.settings.model_dump(), "front_end": FrontEnd(reference="car", notch_hz=50).model_dump()})
    fs = b.sample_rate_hz
    plain = StreamingFeatures(b.settings, b.n_channels, fs, b.scaler, b.sos)
    front = StreamingFeatures(fe_settings, b.n_channels, fs, b.scaler, b.sos, design_notch(fe_settings, fs))
    n_notch = len(fe_settings.front_end.notch_harmonics_hz(fs))
    progress(f"inference: features without / with the front end (CAR + {n_notch} notches) x {n_decisions}")
    plain.push(x[:warm])
    front.push(x[:warm])
    plain_t: list[float] = []
    front_t: list[float] = []
    for i in range(n_decisions):
        block = x[warm + i * chunk: warm + (i + 1) * chunk]
        for feats, times in ((plain, plain_t), (front, front_t)) if i % 2 else ((front, front_t), (plain, plain_t)):
            t0 = time.perf_counter()
            feats.push(block)
            feats.window()
            times.append(time.perf_counter() - t0)
    p50_plain, p50_front = _pct(plain_t, 50), _pct(front_t, 50)
    return {
        "inference.features_plain_p50_us": p50_plain,
        "inference.features_front_end_p50_us": p50_front,
        "inference.front_end_cost_ratio": p50_front / p50_plain,
        "inference.front_end": f"car + notch 50 Hz x {n_notch} harmonics",
    }
