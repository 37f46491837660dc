"""Keras model definition and its export to a LiteRT (`.tflite`) flatbuffer made of builtin ops only.

The notebook's Bidirectional LSTMs convert to TensorList/While ops that need Flex (SELECT_TF_OPS), which
ai-edge-litert cannot run. With a fixed batch of 1 and a fixed T the recurrence can be unrolled instead, which
converts to plain FULLY_CONNECTED / LOGISTIC / TANH ops. TensorFlow is imported here and only here (plus training)."""

from __future__ import annotations

import contextlib
import io
from typing import Any


def build_model(n_frames: int, n_features: int, n_classes: int, *, unroll: bool = False,
                batch_size: int | None = None) -> Any:
    """The notebook's architecture: BiLSTM(64, seq) → Dropout(0.3) → BiLSTM(32) → Dropout(0.3) → Dense(16, relu)
    → Dense(n_classes, softmax)."""
    import keras

    inp = keras.Input((n_frames, n_features), batch_size=batch_size, name="window")
    x = keras.layers.Bidirectional(keras.layers.LSTM(64, return_sequences=True, unroll=unroll), name="bilstm_64")(inp)
    x = keras.layers.Dropout(0.3, name="dropout_1")(x)
    x = keras.layers.Bidirectional(keras.layers.LSTM(32, unroll=unroll), name="bilstm_32")(x)
    x = keras.layers.Dropout(0.3, name="dropout_2")(x)
    x = keras.layers.Dense(16, activation="relu", name="dense_16")(x)
    out = keras.layers.Dense(n_classes, activation="softmax", name="probs")(x)
    return keras.Model(inp, out, name="neurostimd_bilstm")


def to_tflite(model: Any) -> bytes:
    """Convert a trained model (any batch size, rolled or not) to a batch-1, unrolled, builtin-ops-only flatbuffer."""
    import tensorflow as tf

    _, n_frames, n_features = model.input_shape
    n_classes = model.output_shape[-1]
    fixed = build_model(n_frames, n_features, n_classes, unroll=True, batch_size=1)
    fixed.set_weights(model.get_weights())
    conv = tf.lite.TFLiteConverter.from_keras_model(fixed)
    # Builtins only: a Flex op would make the bundle unloadable by ai-edge-litert, so fail the export instead.
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    # The converter prints the traced function's captures on stdout; keep the command's output readable.
    with contextlib.redirect_stdout(io.StringIO()):
        return bytes(conv.convert())
