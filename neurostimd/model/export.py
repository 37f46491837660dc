"""Keras model definition and its export to a LiteRT (`.tflite`) flatbuffer made of builtin ops only.

The notebook's Bidirectional LSTMs convert, as Keras 3 traces them, to TensorList/While ops that need Flex
(SELECT_TF_OPS), which ai-edge-litert cannot run. Two builtin-only exports exist:

- fused (preferred): each LSTM direction becomes one `UNIDIRECTIONAL_SEQUENCE_LSTM` op (14 ops for the notebook's
  model). The converter fuses a `tf.function` marked as a Keras LSTM (`api_implements="lstm_…"`) whose arguments are
  (inputs, init_h, init_c, kernel, recurrent_kernel, bias); Keras 3 no longer marks its LSTM that way, so the export
  rebuilds the forward pass from the trained weights with such functions. The fused op keeps h and c in variable
  tensors that it leaves at the last step's values, so a runtime must reset them before each window
  (`Interpreter.reset_all_variables()`, which `runtime.Bundle.predict` does).
- unrolled (fallback): the same architecture with `unroll=True` and batch 1, ~590 small FULLY_CONNECTED / LOGISTIC /
  TANH ops; used only when the fused route cannot express or reproduce the model.

Each export is checked against Keras on random windows before it is returned. TensorFlow is imported here and only
here (plus training and the benchmark)."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from neurostimd.errors import BundleError
from neurostimd.model import architectures

log = structlog.get_logger(__name__)

LSTM_FUSED = "fused"
LSTM_UNROLLED = "unrolled"
NO_LSTM = "none"  # a model without recurrent layers (CNN, linear): converted as it is
FUSED_LSTM_OP = "UNIDIRECTIONAL_SEQUENCE_LSTM"
# Same bound as the runtime's check of a bundle against its stored Keras outputs.
EXPORT_TOLERANCE = 1e-4
N_EXPORT_CHECKS = 8


class FusedExportError(BundleError):
    """The model cannot be exported with fused LSTM ops (an unsupported layer or setting, or a converter failure)."""


def build_model(n_frames: int, n_features: int, n_classes: int, *, unroll: bool = False,
                batch_size: int | None = None) -> Any:
    """The notebook's architecture: BiLSTM(64, seq) → Dropout(0.3) → BiLSTM(32) → Dropout(0.3) → Dense(16, relu)
    → Dense(n_classes, softmax)."""
    return architectures.build(architectures.NOTEBOOK, n_frames, n_features, n_classes, unroll=unroll,
                               batch_size=batch_size)


def export_tflite(model: Any, *, lstm: str = "auto") -> tuple[bytes, str]:
    """The model as a batch-1, builtin-only flatbuffer, and which LSTM form it holds (`"fused"` or `"unrolled"`).

    `lstm="auto"` tries the fused export and falls back to the unrolled one if the fused route fails; `"fused"` or
    `"unrolled"` forces one. Either result is verified against Keras within 1e-4 before it is returned."""
    if lstm not in ("auto", LSTM_FUSED, LSTM_UNROLLED):
        raise ValueError(f"lstm must be 'auto', {LSTM_FUSED!r} or {LSTM_UNROLLED!r}, not {lstm!r}")
    if not any(_is_recurrent(layer) for layer in _all_layers(model)):
        if lstm == LSTM_FUSED:
            raise FusedExportError("the model has no LSTM to fuse")
        content = to_tflite_unrolled(model)
        _check_against_keras(model, content, NO_LSTM)
        return content, NO_LSTM
    if lstm != LSTM_UNROLLED:
        try:
            return to_tflite_fused(model), LSTM_FUSED
        except FusedExportError as err:
            if lstm == LSTM_FUSED:
                raise
            log.warning("tflite_fused_lstm_unavailable", reason=str(err), fallback=LSTM_UNROLLED)
    content = to_tflite_unrolled(model)
    _check_against_keras(model, content, LSTM_UNROLLED)
    return content, LSTM_UNROLLED


def to_tflite_unrolled(model: Any) -> bytes:
    """Convert a trained model (any batch size, rolled or not; a single model or an ensemble) to a batch-1,
    builtin-ops-only flatbuffer, its LSTMs unrolled."""
    import tensorflow as tf

    fixed = _batch1_unrolled(model)
    conv = tf.lite.TFLiteConverter.from_keras_model(fixed)
    # Builtins only: a Flex op would make the bundle unloadable by ai-edge-litert, so fail the export instead.
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    # The converter prints the traced function's captures on stdout; keep the command's output readable.
    with contextlib.redirect_stdout(io.StringIO()):
        return bytes(conv.convert())


def _batch1_unrolled(model: Any) -> Any:
    """A copy of `model` (nested ensemble members included) with a batch-1 input and every LSTM unrolled, carrying
    the trained weights."""
    import keras

    def clone(layer: Any) -> Any:
        if isinstance(layer, keras.Model):
            return _batch1_unrolled(layer)
        config = layer.get_config()
        if isinstance(layer, keras.layers.LSTM):
            config["unroll"] = True
        elif _is_bidirectional(layer):
            config["layer"]["config"]["unroll"] = True
            if "backward_layer" in config:
                config["backward_layer"]["config"]["unroll"] = True
        return layer.__class__.from_config(config)

    _, n_frames, n_features = model.input_shape
    inp = keras.Input(batch_shape=(1, n_frames, n_features), name="window")
    fixed = keras.models.clone_model(model, input_tensors=inp, clone_function=clone)
    fixed.set_weights(model.get_weights())
    return fixed


def to_tflite_fused(model: Any) -> bytes:
    """Convert a trained model whose layers form a chain of LSTM / Bidirectional(LSTM) / Dropout / Dense layers to a
    batch-1 flatbuffer with one fused LSTM op per direction; FusedExportError when that is not possible."""
    import tensorflow as tf

    _, n_frames, n_features = model.input_shape
    forward = _fused_forward(model, tf)
    fn = tf.function(forward, input_signature=[tf.TensorSpec((1, n_frames, n_features), tf.float32, name="window")],
                     autograph=False)
    concrete = fn.get_concrete_function()
    with tempfile.TemporaryDirectory(prefix="neurostimd-export-") as tmp:
        # The composite-function pass that fuses the LSTMs runs on the saved-model path; converting the concrete
        # function directly inlines the marked functions first and yields the unrolled ops again.
        module = tf.Module()
        module.forward = fn
        try:
            tf.saved_model.save(module, tmp, signatures=concrete)
            conv = tf.lite.TFLiteConverter.from_saved_model(tmp)
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            with contextlib.redirect_stdout(io.StringIO()):
                content = bytes(conv.convert())
        except Exception as err:  # the converter raises its own ConverterError and assorted TF errors
            raise FusedExportError(f"the TFLite converter failed on the fused-LSTM graph: "
                                   f"{type(err).__name__}: {str(err)[:400]}") from err
    n_lstm = sum(2 if _is_bidirectional(layer) else 1 for layer in _all_layers(model) if _is_recurrent(layer))
    ops = tflite_op_counts(content)
    if ops.get(FUSED_LSTM_OP, 0) != n_lstm:
        raise FusedExportError(f"the converter left the LSTMs unfused: {ops.get(FUSED_LSTM_OP, 0)} "
                               f"{FUSED_LSTM_OP} ops for {n_lstm} LSTM directions (ops {dict(ops)})")
    _check_against_keras(model, content, LSTM_FUSED)
    return content


def tflite_op_counts(content: bytes) -> Counter[str]:
    """How many ops of each kind a flatbuffer holds (as LiteRT reads it)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_content=content,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    return Counter(str(op["op_name"]) for op in interp._get_ops_details())


def reexport_bundle(bundle_dir: str | Path, *, lstm: str = "auto") -> str:
    """Re-export a bundle's `.tflite` from its `model.keras` (no retraining), update that file's sha256 and the
    `tflite_lstm` field in the manifest (every other field is kept), and return the LSTM form written."""
    import keras

    from neurostimd.model import bundle as files

    d = Path(bundle_dir)
    manifest = files.read_verified_manifest(d)
    model = keras.saving.load_model(d / files.MODEL_KERAS, compile=False)
    content, kind = export_tflite(model, lstm=lstm)
    (d / files.MODEL_TFLITE).write_bytes(content)
    manifest["files"][files.MODEL_TFLITE] = files.sha256_file(d / files.MODEL_TFLITE)
    manifest["tflite_lstm"] = kind
    (d / files.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    log.info("bundle_reexported", path=str(d), tflite_lstm=kind, n_ops=sum(tflite_op_counts(content).values()))
    return kind


def _all_layers(model: Any) -> list[Any]:
    """The model's layers, an ensemble's members' layers in their place."""
    import keras

    out: list[Any] = []
    for layer in model.layers:
        out += _all_layers(layer) if isinstance(layer, keras.Model) else [layer]
    return out


def _is_recurrent(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.layers.LSTM) or _is_bidirectional(layer)


def _is_bidirectional(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.layers.Bidirectional)


def _fused_forward(model: Any, tf: Any) -> Any:
    """The model's inference pass as TensorFlow ops on constant weights, each LSTM direction a marked function; an
    ensemble's is the mean of its members' passes."""
    import keras

    members = architectures.members_of(model)
    if members:
        if not any(isinstance(layer, keras.layers.Average) for layer in model.layers):
            raise FusedExportError(f"model {model.name!r} nests models without averaging them; the fused export "
                                   f"handles single models and ensembles of averaged members")
        # Members of another architecture (a CNN's Conv1D) raise FusedExportError here: auto falls back to unrolled.
        passes = [_fused_forward(m, tf) for m in members]
        return lambda x: tf.add_n([p(x) for p in passes]) / float(len(passes))

    steps: list[Any] = []
    prev = None
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            prev = layer
            continue
        if prev is not None and layer.input is not prev.output:
            raise FusedExportError(f"layer {layer.name!r} does not take the previous layer's output; the fused "
                                   f"export handles a plain chain of layers only")
        prev = layer
        if isinstance(layer, keras.layers.Dropout):
            continue  # identity at inference
        if isinstance(layer, keras.layers.Dense):
            steps.append(_dense_step(layer, tf))
        elif _is_bidirectional(layer):
            if layer.merge_mode != "concat":
                raise FusedExportError(f"Bidirectional layer {layer.name!r} merges with {layer.merge_mode!r}; "
                                       f"the fused export supports 'concat'")
            fw = _lstm_step(layer.forward_layer, tf)
            bw = _lstm_step(layer.backward_layer, tf)
            steps.append(lambda x, fw=fw, bw=bw: tf.concat([fw(x), bw(x)], axis=-1))
        elif isinstance(layer, keras.layers.LSTM):
            steps.append(_lstm_step(layer, tf))
        else:
            raise FusedExportError(f"layer {layer.name!r} ({type(layer).__name__}) has no fused export; only LSTM, "
                                   f"Bidirectional(LSTM), Dropout and Dense are supported")

    def forward(x: Any) -> Any:
        for step in steps:
            x = step(x)
        return x

    return forward


def _dense_step(layer: Any, tf: Any) -> Any:
    weights = layer.get_weights()
    kernel = tf.constant(weights[0])
    bias = tf.constant(weights[1]) if layer.use_bias else None
    activation = layer.activation

    def dense(x: Any) -> Any:
        y = tf.matmul(x, kernel)
        return activation(y + bias if bias is not None else y)

    return dense


def _lstm_step(layer: Any, tf: Any) -> Any:
    """One LSTM direction as the converter's fusable composite, returning what Keras returns for that direction."""
    import keras

    cell = layer.cell
    unsupported = {
        "activation is not tanh": cell.activation is not keras.activations.tanh,
        "recurrent_activation is not sigmoid": cell.recurrent_activation is not keras.activations.sigmoid,
        "use_bias is False": not cell.use_bias,
        "stateful": layer.stateful,
        "return_state": layer.return_state,
    }
    problems = [name for name, bad in unsupported.items() if bad]
    if problems:
        raise FusedExportError(f"LSTM layer {layer.name!r} cannot become {FUSED_LSTM_OP}: {', '.join(problems)}")
    units = int(cell.units)
    kernel, recurrent_kernel, bias = (tf.constant(w) for w in layer.get_weights())
    go_backwards = bool(layer.go_backwards)
    # The attributes the converter's composite pass reads: the "lstm_" prefix selects the Keras-LSTM rewrite, the
    # unique suffix keeps distinct layers apart, time_major / go_backwards describe the layout.
    attributes = {"api_implements": f"lstm_{uuid.uuid4()}", "api_preferred_device": "CPU",
                  "time_major": False, "go_backwards": go_backwards}

    def composite(inputs: Any, init_h: Any, init_c: Any, w: Any, r: Any, b: Any) -> Any:
        # The converter discards this body; it has to be right for TensorFlow, which runs it when tracing.
        seq = tf.unstack(inputs, axis=1)
        h, c = init_h, init_c
        outputs = []
        for x_t in reversed(seq) if go_backwards else seq:
            gates = tf.matmul(x_t, w) + tf.matmul(h, r) + b
            i, f, g, o = tf.split(gates, 4, axis=1)
            c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
            h = tf.sigmoid(o) * tf.tanh(c)
            outputs.append(h)
        return outputs[-1], tf.stack(outputs, axis=1), h, c, tf.constant(0.0)

    fused = tf.function(composite, autograph=False, experimental_attributes=attributes)

    def run(x: Any) -> Any:
        zeros = tf.zeros((1, units), tf.float32)
        last, seq, _, _, _ = fused(x, zeros, zeros, kernel, recurrent_kernel, bias)
        if not layer.return_sequences:
            return last
        # Keras returns a backward layer's sequence in processing order; Bidirectional flips it back to input time.
        return tf.reverse(seq, [1]) if go_backwards else seq

    return run


def _check_against_keras(model: Any, content: bytes, kind: str) -> None:
    """LiteRT on the flatbuffer equals Keras within EXPORT_TOLERANCE on seeded random windows, invoked back to back."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    _, n_frames, n_features = model.input_shape
    windows = np.random.default_rng(0).standard_normal((N_EXPORT_CHECKS, n_frames, n_features)).astype(np.float32)
    expected = np.asarray(model(windows, training=False), dtype=np.float32)
    interp = Interpreter(model_content=content,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    in_idx = interp.get_input_details()[0]["index"]
    out_idx = interp.get_output_details()[0]["index"]
    got = np.empty_like(expected)
    for i, w in enumerate(windows):
        interp.reset_all_variables()
        interp.set_tensor(in_idx, w[None])
        interp.invoke()
        got[i] = interp.get_tensor(out_idx)[0]
    diff = float(np.max(np.abs(got - expected)))
    if not diff <= EXPORT_TOLERANCE:
        err = FusedExportError if kind == LSTM_FUSED else BundleError
        raise err(f"the {kind} LiteRT export differs from the Keras model by {diff:.2e} (> {EXPORT_TOLERANCE:g}) "
                  f"on random windows; the model has a layer or setting the export does not reproduce")
