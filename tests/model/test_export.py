"""LiteRT export: fused LSTM ops (no Flex, no unrolled graph) that reproduce Keras, a stateless runtime, the unrolled
fallback, and re-exporting a bundle without retraining."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from neurostimd.model import bundle as files
from neurostimd.model.runtime import load_bundle

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "models" / "default"
T, F, N_CLASSES = 6, 12, 3


@pytest.fixture(scope="module")
def small_model() -> Any:
    """The notebook architecture at a small input size, with seeded random (untrained) weights."""
    import keras

    from neurostimd.model.export import build_model

    keras.utils.set_random_seed(5)
    return build_model(T, F, N_CLASSES)


def _litert_probs(content: bytes, windows: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_content=content,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    i_in, i_out = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
    out = []
    for w in windows:
        interp.reset_all_variables()
        interp.set_tensor(i_in, w[None])
        interp.invoke()
        out.append(interp.get_tensor(i_out)[0].copy())
    return np.asarray(out)


def test_fused_export_has_one_lstm_op_per_direction_and_matches_keras(small_model: Any) -> None:
    """The default export turns each BiLSTM into two UNIDIRECTIONAL_SEQUENCE_LSTM ops, with no recurrence left
    unrolled, and LiteRT reproduces Keras within 1e-4."""
    from neurostimd.model.export import LSTM_FUSED, export_tflite, tflite_op_counts

    content, kind = export_tflite(small_model)
    ops = tflite_op_counts(content)
    assert kind == LSTM_FUSED
    assert ops["UNIDIRECTIONAL_SEQUENCE_LSTM"] == 4
    assert not {"LOGISTIC", "TANH", "WHILE", "DELEGATE"} & set(ops), ops
    assert sum(ops.values()) < 20, ops
    windows = np.random.default_rng(1).standard_normal((10, T, F)).astype(np.float32)
    expected = np.asarray(small_model(windows, training=False))
    assert np.max(np.abs(_litert_probs(content, windows) - expected)) <= 1e-4


def test_forced_unrolled_export_gives_the_same_outputs(small_model: Any) -> None:
    """The unrolled fallback is still available on request: many elementwise ops, no fused LSTM, the same outputs."""
    from neurostimd.model.export import LSTM_UNROLLED, export_tflite, tflite_op_counts

    content, kind = export_tflite(small_model, lstm=LSTM_UNROLLED)
    ops = tflite_op_counts(content)
    assert kind == LSTM_UNROLLED
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" not in ops and ops["LOGISTIC"] > 0
    windows = np.random.default_rng(2).standard_normal((5, T, F)).astype(np.float32)
    expected = np.asarray(small_model(windows, training=False))
    assert np.max(np.abs(_litert_probs(content, windows) - expected)) <= 1e-4


def test_fused_route_refuses_an_lstm_the_fused_op_cannot_express() -> None:
    """An LSTM with a non-tanh activation is refused by the fused route with an error naming the layer."""
    import keras

    from neurostimd.model.export import FusedExportError, to_tflite_fused

    inp = keras.Input((T, F))
    out = keras.layers.Dense(2)(keras.layers.LSTM(4, activation="relu", name="relu_lstm")(inp))
    with pytest.raises(FusedExportError, match=r"relu_lstm.*activation is not tanh"):
        to_tflite_fused(keras.Model(inp, out))


def test_export_rejects_an_unknown_lstm_form(small_model: Any) -> None:
    """Asking for an LSTM form other than auto / fused / unrolled is a ValueError listing the choices."""
    from neurostimd.model.export import export_tflite

    with pytest.raises(ValueError, match="'fused' or 'unrolled'"):
        export_tflite(small_model, lstm="rolled")


def test_default_bundle_is_fused_and_predicts_each_window_from_zero_state() -> None:
    """The committed bundle holds the fused export, says so in its manifest, and a window's probabilities do not
    depend on the windows predicted before it (the runtime resets the LSTM state)."""
    from neurostimd.model.export import tflite_op_counts

    b = load_bundle(DEFAULT, expect_channels=32, expect_rate_hz=1000.0)
    assert b.manifest["tflite_lstm"] == "fused"
    assert tflite_op_counts((DEFAULT / files.MODEL_TFLITE).read_bytes())["UNIDIRECTIONAL_SEQUENCE_LSTM"] == 4
    with np.load(DEFAULT / files.CHECK) as z:
        windows = np.asarray(z["windows"], dtype=np.float32)
    first = b.predict(windows[0])
    for w in windows[1:]:
        b.predict(w)
    np.testing.assert_array_equal(b.predict(windows[0]), first)


def test_reexport_keeps_the_manifest_and_the_bundle_still_verifies(tmp_path: Path) -> None:
    """Re-exporting a bundle's .tflite (forced to the unrolled form here) changes only that file's hash and the
    tflite_lstm field, and the bundle still passes load_bundle's check against the stored Keras outputs."""
    from neurostimd.model.export import LSTM_UNROLLED, reexport_bundle

    d = tmp_path / "bundle"
    shutil.copytree(DEFAULT, d)
    before = json.loads((d / files.MANIFEST).read_text())
    assert reexport_bundle(d, lstm=LSTM_UNROLLED) == LSTM_UNROLLED
    after = json.loads((d / files.MANIFEST).read_text())
    assert after["tflite_lstm"] == LSTM_UNROLLED
    assert after["files"][files.MODEL_TFLITE] != before["files"][files.MODEL_TFLITE]
    assert after["files"][files.MODEL_TFLITE] == files.sha256_file(d / files.MODEL_TFLITE)
    for key in set(before) - {"files", "tflite_lstm"}:
        assert after[key] == before[key], key
    assert {k: v for k, v in after["files"].items() if k != files.MODEL_TFLITE} == \
        {k: v for k, v in before["files"].items() if k != files.MODEL_TFLITE}
    assert load_bundle(d).manifest["tflite_lstm"] == LSTM_UNROLLED
