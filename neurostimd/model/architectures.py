"""The classifier architectures a bundle can hold, as data (`ModelSpec`) and as Keras models (`build`).

The notebook's BiLSTM is the default and the one `neurostimd train` uses without `--search`; the search may let a
1D CNN or a linear model on the same features compete with it (docs/classifier.md, "Search"). Every architecture is
made of layers that LiteRT runs with builtin ops only. An ensemble is one Keras model whose members read the same
window and whose outputs are averaged, so the daemon still invokes one model per decision.

Keras is imported inside the functions, so importing this module stays cheap."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Arch = Literal["bilstm", "cnn", "linear"]


class ModelSpec(BaseModel):
    """One architecture and its sizes; the defaults are the notebook's BiLSTM(64)-BiLSTM(32)-Dense(16)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: Arch = "bilstm"
    units: int = Field(default=64, ge=2, le=512, description="bilstm: first BiLSTM's units (the second has half); "
                                                              "cnn: filters of the first convolution (then twice)")
    dense: int = Field(default=16, ge=0, le=512, description="units of the ReLU dense layer before the softmax "
                                                             "(0: none; ignored by linear)")
    dropout: float = Field(default=0.3, ge=0.0, lt=1.0)
    kernel: int = Field(default=3, ge=1, le=15, description="cnn: convolution kernel length in frames")
    learning_rate: float = Field(default=1e-3, gt=0, le=1.0, description="Adam's learning rate")

    def describe(self) -> str:
        """The architecture in one line, as the manifest shows it."""
        d = f"-Dense({self.dense},relu)" if self.dense else ""
        if self.arch == "bilstm":
            return (f"BiLSTM({self.units},seq)-Dropout({self.dropout:g})-BiLSTM({max(1, self.units // 2)})-"
                    f"Dropout({self.dropout:g}){d}-Dense(softmax)")
        if self.arch == "cnn":
            return (f"Conv1D({self.units},k{self.kernel},relu)-Conv1D({2 * self.units},k{self.kernel},relu)-"
                    f"GlobalAvgPool-Dropout({self.dropout:g}){d}-Dense(softmax)")
        return f"[mean,mean-square over time]-Dropout({self.dropout:g})-Dense(softmax)"


NOTEBOOK = ModelSpec()


def build(spec: ModelSpec, n_frames: int, n_features: int, n_classes: int, *, unroll: bool = False,
          batch_size: int | None = None, name: str | None = None) -> Any:
    """The Keras model for `spec` on (n_frames, n_features) windows; `unroll` unrolls LSTMs (the export's fallback)."""
    import keras

    layers = keras.layers
    inp = keras.Input((n_frames, n_features), batch_size=batch_size, name="window")
    if spec.arch == "bilstm":
        x = layers.Bidirectional(layers.LSTM(spec.units, return_sequences=True, unroll=unroll),
                                 name=f"bilstm_{spec.units}")(inp)
        x = layers.Dropout(spec.dropout, name="dropout_1")(x)
        second = max(1, spec.units // 2)
        x = layers.Bidirectional(layers.LSTM(second, unroll=unroll), name=f"bilstm_{second}")(x)
        x = layers.Dropout(spec.dropout, name="dropout_2")(x)
    elif spec.arch == "cnn":
        x = layers.Conv1D(spec.units, spec.kernel, padding="same", activation="relu", name="conv_1")(inp)
        x = layers.Conv1D(2 * spec.units, spec.kernel, padding="same", activation="relu", name="conv_2")(x)
        x = layers.GlobalAveragePooling1D(name="pool")(x)
        x = layers.Dropout(spec.dropout, name="dropout")(x)
    else:
        # The same features as the scikit-learn baseline's, learned end to end: each feature's mean over the window
        # and its mean square (spread and level), then one softmax layer.
        sq = layers.Multiply(name="square")([inp, inp])
        x = layers.Concatenate(name="moments")([layers.GlobalAveragePooling1D(name="mean")(inp),
                                                layers.GlobalAveragePooling1D(name="mean_square")(sq)])
        x = layers.Dropout(spec.dropout, name="dropout")(x)
    if spec.dense and spec.arch != "linear":
        x = layers.Dense(spec.dense, activation="relu", name=f"dense_{spec.dense}")(x)
    out = layers.Dense(n_classes, activation="softmax", name="probs")(x)
    default = "neurostimd_bilstm" if spec.arch == "bilstm" else f"neurostimd_{spec.arch}"
    return keras.Model(inp, out, name=name or default)


def ensemble(members: list[Any], *, name: str = "neurostimd_ensemble") -> Any:
    """One model that averages the members' probabilities on the same window (members keep their weights)."""
    import keras

    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
    shapes = {tuple(m.input_shape[1:]) for m in members}
    if len(shapes) != 1:
        raise ValueError(f"ensemble members read different windows {sorted(shapes)}; they must share one front end")
    (n_frames, n_features), = shapes
    inp = keras.Input((n_frames, n_features), name="window")
    outs = []
    for i, m in enumerate(members):
        m.name = f"member_{i}"
        outs.append(m(inp))
    return keras.Model(inp, keras.layers.Average(name="mean_probs")(outs), name=name)


def members_of(model: Any) -> list[Any]:
    """The member models of an ensemble built by `ensemble` (empty for a single model)."""
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.Model)]
