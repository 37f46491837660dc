"""The feature pipeline the classifier sees, one code path for training (offline) and the daemon (streaming).

Raw samples → front end (the model's input channels, re-referenced: none, common average or bipolar pairs; then an
optional mains notch at 50 or 60 Hz and its harmonics) → causal IIR filter bank (scipy Butterworth sections, state
carried between calls) → per-sample power in each band (plus the sample-to-sample line length) → sums over
non-overlapping hops → frames of `frame_hops` hops (log of the mean) → the newest `n_frames` frames, scaled with
statistics fitted on training data only.

Offline extraction is literally the streaming engine fed the whole signal at once, so a model trained on offline
features sees exactly what the daemon computes tick by tick (tests/core/test_features_stream.py proves it)."""

from __future__ import annotations

from collections import deque
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from neurostimd.core.stream_checks import normal_name

# Candidate bands (Hz): the classic EEG bands, then high-gamma / multi-unit ranges that matter at 1 kHz sampling.
DEFAULT_BANDS_HZ: tuple[tuple[float, float], ...] = (
    (1.0, 4.0), (4.0, 8.0), (8.0, 13.0), (13.0, 30.0), (30.0, 70.0), (70.0, 150.0), (150.0, 300.0),
)
# A band is kept only if its upper edge stays below this fraction of the sampling rate (i.e. clear of Nyquist).
_MAX_EDGE_FRACTION_OF_FS = 0.45
# Floor under powers before the log: keeps a flat (all-zero) channel finite instead of -inf.
_LOG_FLOOR = 1e-20
# Quality factor of each mains notch (centre / -3 dB bandwidth): 1.7 Hz wide at 50 Hz, 2 Hz at 60 Hz, so the
# notches leave a 40 Hz or 45 Hz component alone; mains that drifts off its nominal frequency is taken less
# (measured: -12.6 dB at 0.2 Hz off, -5.8 dB at 0.5 Hz): a lab whose mains drifts sets a lower Q (Python API).
DEFAULT_NOTCH_Q = 30.0


class FrontEnd(BaseModel):
    """What happens to the raw samples before the band filters: which channels the model takes (by name), how they
    are re-referenced, and the mains notch. Stored in the bundle with the other feature settings, so training and
    the daemon agree; the defaults (all channels, no reference, no notch) are the pipeline of bundles older than
    these options, bit for bit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: list[str] | None = Field(
        default=None, description="the model's input channels by name, picked from the recording (None: all)")
    reference: Literal["none", "car"] | list[tuple[str, str]] = Field(
        default="none", description='"none", "car" (common average over the input channels) or bipolar pairs '
                                    '[["F3", "C3"], ...] (derived channels "F3-C3")')
    notch_hz: Literal[50, 60] | None = Field(
        default=None, description="mains frequency to notch out, with its harmonics below 0.45 fs (None: no notch)")
    notch_q: float = Field(default=DEFAULT_NOTCH_Q, gt=0, le=1000, description="quality factor of each notch")

    @model_validator(mode="after")
    def _consistent(self) -> FrontEnd:
        if self.channels is not None:
            if not self.channels:
                raise ValueError("channels is empty; list the model's input channels or leave it unset for all")
            seen: set[str] = set()
            for c in self.channels:
                if not c.strip():
                    raise ValueError(f"channels {self.channels}: a channel name is empty")
                if normal_name(c) in seen:
                    raise ValueError(f"channels {self.channels}: {c!r} is listed twice")
                seen.add(normal_name(c))
            if self.reference == "car" and len(self.channels) < 2:
                raise ValueError("a common average reference needs at least 2 channels; pick more or use "
                                 "reference 'none'")
        if isinstance(self.reference, list):
            if not self.reference:
                raise ValueError('the bipolar reference lists no pairs; give pairs like [["F3", "C3"]] or "none"')
            pairs: set[tuple[str, str]] = set()
            for a, b in self.reference:
                if normal_name(a) == normal_name(b):
                    raise ValueError(f"bipolar pair ({a!r}, {b!r}) takes a channel from itself")
                key = (normal_name(a), normal_name(b))
                if key in pairs:
                    raise ValueError(f"bipolar pair ({a!r}, {b!r}) is listed twice")
                pairs.add(key)
            if self.channels is not None:
                known = {normal_name(c) for c in self.channels}
                unknown = sorted({n for pair in self.reference for n in pair if normal_name(n) not in known})
                if unknown:
                    raise ValueError(f"bipolar pairs name {unknown}, which are not among channels {self.channels}; "
                                     f"add them to channels or leave channels unset (the pairs' channels are taken)")
        return self

    @property
    def is_identity(self) -> bool:
        """True when the samples reach the band filters as they come (a pick alone changes no sample)."""
        return self.reference == "none" and self.notch_hz is None

    def input_names(self) -> list[str] | None:
        """The channels the model takes, by name: `channels`, else a bipolar reference's channels in the order the
        pairs name them, else None (every channel of the recording or source)."""
        if self.channels is not None:
            return list(self.channels)
        if isinstance(self.reference, list):
            out: list[str] = []
            for pair in self.reference:
                out += [n for n in pair if normal_name(n) not in {normal_name(o) for o in out}]
            return out
        return None

    def n_derived(self, n_inputs: int) -> int:
        """Channels after re-referencing (what the features are computed on)."""
        return len(self.reference) if isinstance(self.reference, list) else n_inputs

    def derived_names(self, input_names: list[str]) -> list[str]:
        if isinstance(self.reference, list):
            return [f"{a}-{b}" for a, b in self.reference]
        if self.reference == "car":
            return [f"{c}-avg" for c in input_names]
        return list(input_names)

    def notch_harmonics_hz(self, fs: float) -> list[float]:
        """The notch frequencies at this sampling rate: the mains frequency and its harmonics below 0.45 fs. Raises
        ValueError when not even the mains frequency fits."""
        if self.notch_hz is None:
            return []
        limit = _MAX_EDGE_FRACTION_OF_FS * fs
        if self.notch_hz >= limit:
            raise ValueError(f"a {self.notch_hz} Hz notch needs sampling above {self.notch_hz / 0.45:.1f} Hz "
                             f"(the notch must sit below 0.45 x fs = {limit:.1f} Hz); drop --notch for {fs:g} Hz data")
        return [float(k * self.notch_hz) for k in range(1, int(limit // self.notch_hz) + 2)
                if k * self.notch_hz < limit]

    def check_fits(self, n_inputs: int, fs: float) -> None:
        """ValueError when this front end cannot run on `n_inputs` channels at `fs` Hz."""
        if self.reference == "car" and n_inputs < 2:
            raise ValueError(f"a common average reference needs at least 2 channels, the model takes {n_inputs}")
        names = self.input_names()
        if names is not None and len(names) != n_inputs:
            raise ValueError(f"the front end takes channels {names} but {n_inputs} channel(s) are given")
        self.notch_harmonics_hz(fs)

    def describe(self, input_names: list[str], fs: float) -> dict[str, Any]:
        """The front end as the manifest shows it."""
        return {"channels": list(input_names), "reference": self.reference if isinstance(self.reference, str)
                else [list(p) for p in self.reference], "derived_channels": self.derived_names(input_names),
                "notch_hz": self.notch_hz, "notch_harmonics_hz": self.notch_harmonics_hz(fs),
                "notch_q": self.notch_q if self.notch_hz is not None else None}


class FeatureSettings(BaseModel):
    """How raw samples become the (T, F) window the model sees. Stored in the bundle's `features.json`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["bandpower", "raw"] = "bandpower"
    hop_ms: float = Field(default=50.0, gt=0, description="one frame every hop; match the daemon's cadence")
    frame_hops: int = Field(default=2, ge=1, description="frame length in hops (frames overlap by frame_hops - 1 hops)")
    n_frames: int = Field(default=10, ge=1, description="T: frames per model window (the notebook's 10 time steps)")
    bands_hz: list[tuple[float, float]] | None = Field(
        default=None, description="band edges; None = DEFAULT_BANDS_HZ that fit below 0.45 fs")
    filter_order: int = Field(default=2, ge=1, le=8, description="Butterworth order of each band-pass")
    line_length: bool = True
    slow_hz: float | None = Field(
        default=None, gt=0, le=4.0,
        description="bandpower only: add each channel's signed signal low-passed below this frequency (the slow / DC "
                    "potential, mean over the frame; None: no slow feature)")
    scaler: Literal["standard", "minmax"] = "standard"
    front_end: FrontEnd = Field(default_factory=FrontEnd, description="channel picks, re-referencing, mains notch")

    @model_validator(mode="after")
    def _bands_ordered(self) -> FeatureSettings:
        for lo, hi in self.bands_hz or []:
            if not 0 < lo < hi:
                raise ValueError(f"band ({lo}, {hi}) Hz: need 0 < low < high")
        if self.slow_hz is not None and self.kind != "bandpower":
            raise ValueError(f"slow_hz applies to bandpower features; kind {self.kind!r} is already the low-passed "
                             f"signal (leave slow_hz unset)")
        return self

    def hop_samples(self, fs: float) -> int:
        return max(1, round(self.hop_ms * fs / 1000.0))

    def resolve_bands(self, fs: float) -> list[tuple[float, float]]:
        """The bands actually used at this sampling rate (raises if none fit)."""
        limit = _MAX_EDGE_FRACTION_OF_FS * fs
        if self.bands_hz is not None:
            bad = [b for b in self.bands_hz if b[1] >= limit]
            if bad:
                raise ValueError(f"bands {bad} reach past {limit:.1f} Hz (0.45 x {fs} Hz sampling); lower them")
            return [tuple(b) for b in self.bands_hz]  # type: ignore[misc]  # pydantic gives lists back as tuples
        bands = [b for b in DEFAULT_BANDS_HZ if b[1] < limit]
        if not bands:
            raise ValueError(f"no default band fits below {limit:.1f} Hz; pass bands_hz for fs={fs} Hz")
        return bands

    def n_features(self, n_channels: int, fs: float) -> int:
        """Features per frame for `n_channels` input channels (before re-referencing)."""
        n = self.front_end.n_derived(n_channels)
        if self.kind == "raw":
            return n
        return n * (len(self.resolve_bands(fs)) + (1 if self.slow_hz is not None else 0)
                    + (1 if self.line_length else 0))

    def window_samples(self, fs: float) -> int:
        """Raw samples one model window depends on (ignoring the IIR filters' fading memory)."""
        return (self.n_frames - 1 + self.frame_hops) * self.hop_samples(fs)

    def feature_names(self, channel_names: list[str], fs: float) -> list[str]:
        """Names of the features, from the input channels' names (features are per re-referenced channel)."""
        channel_names = self.front_end.derived_names(channel_names)
        if self.kind == "raw":
            return [f"{c}:lowpass" for c in channel_names]
        names = [f"{c}:logpow_{lo:g}-{hi:g}Hz" for lo, hi in self.resolve_bands(fs) for c in channel_names]
        if self.slow_hz is not None:
            names += [f"{c}:slow_below_{self.slow_hz:g}Hz" for c in channel_names]
        if self.line_length:
            names += [f"{c}:log_line_length" for c in channel_names]
        return names


class Scaler:
    """Per-feature affine scaling `(x - offset) / scale`, fitted on training frames only."""

    def __init__(self, kind: str, offset: np.ndarray, scale: np.ndarray) -> None:
        self.kind = kind
        self.offset = np.asarray(offset, dtype=np.float32)
        self.scale = np.asarray(scale, dtype=np.float32)
        if self.offset.shape != self.scale.shape or self.offset.ndim != 1:
            raise ValueError(f"scaler offset {self.offset.shape} and scale {self.scale.shape} must be equal 1-D shapes")
        self._inv = (1.0 / self.scale).astype(np.float32)

    @classmethod
    def fit(cls, kind: str, frames: np.ndarray) -> Scaler:
        x = np.asarray(frames, dtype=np.float64)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"need a non-empty (n_frames, F) array to fit the scaler, got shape {x.shape}")
        if kind == "minmax":
            offset, scale = x.min(0), x.max(0) - x.min(0)
        elif kind == "standard":
            offset, scale = x.mean(0), x.std(0)
        else:
            raise ValueError(f"unknown scaler {kind!r}; use 'standard' or 'minmax'")
        # A constant feature carries no information; scale 1 keeps it finite instead of dividing by zero.
        scale = np.where(scale > 1e-12, scale, 1.0)
        return cls(kind, offset, scale)

    def transform(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        out = np.subtract(x, self.offset, out=out, dtype=np.float32)
        return np.multiply(out, self._inv, out=out)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "offset": self.offset.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scaler:
        return cls(str(d["kind"]), np.asarray(d["offset"]), np.asarray(d["scale"]))


def _biquad_ss(sec: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """State space (controller canonical form, as scipy.signal.tf2ss gives it) of one SOS row b0 b1 b2 a0 a1 a2.

    Written out here so that the daemon runs a bundle's filters without importing scipy.signal (over a second of
    start-up on these machines); a test checks it against tf2ss."""
    b = np.asarray(sec[:3], dtype=float) / float(sec[3])
    a = np.asarray(sec[3:], dtype=float) / float(sec[3])
    a_m = np.array([[-a[1], -a[2]], [1.0, 0.0]])
    b_m = np.array([[1.0], [0.0]])
    c_m = np.array([[b[1] - b[0] * a[1], b[2] - b[0] * a[2]]])
    d_m = np.array([[b[0]]])
    return a_m, b_m, c_m, d_m


def design_filters(settings: FeatureSettings, fs: float) -> list[np.ndarray]:
    """The Butterworth sections (SOS) the settings call for at `fs`. Training stores them in the bundle, so the
    daemon uses exactly the trained filters and never needs scipy.signal."""
    from scipy import signal

    nyq = fs / 2.0
    if settings.kind == "bandpower":
        sos = [np.asarray(signal.butter(settings.filter_order, [lo / nyq, hi / nyq], btype="bandpass",
                                        output="sos")) for lo, hi in settings.resolve_bands(fs)]
        if settings.slow_hz is not None:
            # The slow potential: the signed signal below slow_hz, after the bands (FrameEngine neither squares nor
            # logs it).
            sos.append(np.asarray(signal.butter(settings.filter_order, settings.slow_hz / nyq, btype="low",
                                                output="sos")))
        return sos
    # Anti-alias low-pass at 80 % of the frame rate's Nyquist before averaging over each hop.
    cutoff = 0.8 * (fs / settings.hop_samples(fs)) / 2.0
    return [np.asarray(signal.butter(settings.filter_order, min(cutoff / nyq, 0.99), btype="low", output="sos"))]


def design_notch(settings: FeatureSettings, fs: float) -> np.ndarray | None:
    """The mains notches (scipy.signal.iirnotch at Q = notch_q, one biquad per harmonic) as one SOS cascade, or
    None without a notch. Stored in the bundle like the band filters."""
    freqs = settings.front_end.notch_harmonics_hz(fs)
    if not freqs:
        return None
    from scipy import signal

    rows = []
    for f0 in freqs:
        b, a = signal.iirnotch(f0, settings.front_end.notch_q, fs=fs)
        rows.append(np.concatenate([b, a]))
    return np.asarray(rows, dtype=float)


class _FilterBank:
    """A bank of SOS filters (same for every channel) run as one state-space system in blocks of samples.

    `scipy.signal.sosfilt` costs ~60 µs per call however short the chunk, i.e. ~0.5 ms per tick for 7 bands; the
    block form turns a whole chunk for all bands into one matrix product (~20 µs). Each biquad's state space is
    chained section by section (well conditioned, unlike one high-order transfer function)."""

    # Cost per sample grows with the block length (the output matrix is n x n), so long inputs go in short blocks.
    _MAX_BLOCK = 64
    _MAX_CACHED = 64

    def __init__(self, sos_list: list[np.ndarray]) -> None:
        blocks = [self._cascade(sos) for sos in sos_list]
        self.n_out = len(blocks)
        self.n_state = sum(a.shape[0] for a, _, _, _ in blocks)
        s = self.n_state
        self.A = np.zeros((s, s))
        self.B = np.zeros((s, 1))
        self.C = np.zeros((self.n_out, s))
        self.D = np.zeros(self.n_out)
        i = 0
        for k, (a, b, c, d) in enumerate(blocks):
            m = a.shape[0]
            self.A[i:i + m, i:i + m] = a
            self.B[i:i + m, 0] = b[:, 0]
            self.C[k, i:i + m] = c[0]
            self.D[k] = d[0, 0]
            i += m
        # Steady state for a constant unit input: z = A z + B  =>  z = (I - A)^-1 B.
        self.z_unit = np.linalg.solve(np.eye(s) - self.A, self.B)[:, 0]
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @staticmethod
    def _cascade(sos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        a_tot = b_tot = c_tot = d_tot = None
        for sec in np.atleast_2d(sos):
            a, b, c, d = _biquad_ss(sec)
            if a_tot is None:
                a_tot, b_tot, c_tot, d_tot = a, b, c, d
                continue
            assert b_tot is not None and c_tot is not None and d_tot is not None
            n1, n2 = a_tot.shape[0], a.shape[0]
            a_new = np.zeros((n1 + n2, n1 + n2))
            a_new[:n1, :n1] = a_tot
            a_new[n1:, :n1] = b @ c_tot
            a_new[n1:, n1:] = a
            b_tot, c_tot, d_tot = (np.vstack([b_tot, b @ d_tot]), np.hstack([d @ c_tot, c]), d @ d_tot)
            a_tot = a_new
        assert a_tot is not None and b_tot is not None and c_tot is not None and d_tot is not None
        return a_tot, b_tot, c_tot, d_tot

    def _matrices(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        m = self._cache.get(n)
        if m is not None:
            return m
        s, nb = self.n_state, self.n_out
        powers = [np.eye(s)]
        for _ in range(n):
            powers.append(self.A @ powers[-1])
        ab = np.stack([p @ self.B[:, 0] for p in powers[:n]])  # ab[k] = A^k B, shape (n, s)
        out = np.zeros((nb * n, s + n))
        for t in range(n):
            rows = slice(t, nb * n, n)  # band b's output at time t sits at row b*n + t
            out[rows, :s] = self.C @ powers[t]
            out[rows, s + t] = self.D
            if t:
                out[rows, s:s + t] = (ab[t - 1::-1] @ self.C.T).T  # C A^(t-1-j) B for j < t
        state = np.hstack([powers[n], ab[::-1].T])  # A^n | A^(n-1-j) B
        if len(self._cache) >= self._MAX_CACHED:
            self._cache.clear()
        self._cache[n] = (out, state)
        return out, state

    def run(self, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Filter x (n, ch) from state z (n_state, ch): returns y (n_out, n, ch) and the new state."""
        ys = []
        for start in range(0, len(x), self._MAX_BLOCK):
            xb = x[start:start + self._MAX_BLOCK]
            out, state = self._matrices(len(xb))
            zx = np.vstack([z, xb])
            ys.append((out @ zx).reshape(self.n_out, len(xb), -1))
            z = state @ zx
        return (ys[0] if len(ys) == 1 else np.concatenate(ys, axis=1)), z


_BANKS: dict[tuple[object, ...], _FilterBank] = {}


def _bank(sos: list[np.ndarray]) -> _FilterBank:
    """The shared filter bank (and its cached block matrices) for this design."""
    key = tuple(np.asarray(x, dtype=float).tobytes() for x in sos)
    bank = _BANKS.get(key)
    if bank is None:
        if len(_BANKS) >= 16:
            _BANKS.clear()
        bank = _BANKS[key] = _FilterBank([np.asarray(x, dtype=float) for x in sos])
    return bank


class FrameEngine:
    """Unscaled frames from raw samples, causally, with all filter and framing state carried between calls."""

    def __init__(self, settings: FeatureSettings, n_channels: int, fs: float,
                 sos: list[np.ndarray] | None = None, notch_sos: np.ndarray | None = None) -> None:
        if n_channels < 1:
            raise ValueError(f"n_channels must be >= 1, got {n_channels}")
        if not fs > 0:
            raise ValueError(f"sampling rate must be > 0 Hz, got {fs}")
        self.settings = settings
        self.n_channels = n_channels
        self.fs = float(fs)
        self.hop = settings.hop_samples(fs)
        fe = settings.front_end
        fe.check_fits(n_channels, fs)
        # Bipolar pairs as column indices into the input channels (the channels input_names() lists, in its order).
        self._pairs: tuple[np.ndarray, np.ndarray] | None = None
        if isinstance(fe.reference, list):
            inputs = [normal_name(n) for n in fe.input_names() or []]
            self._pairs = (np.array([inputs.index(normal_name(a)) for a, _ in fe.reference], dtype=np.intp),
                           np.array([inputs.index(normal_name(b)) for _, b in fe.reference], dtype=np.intp))
        self._car = fe.reference == "car"
        self._notch: _FilterBank | None = None
        self._notch_dc = 1.0
        if fe.notch_hz is not None:
            if notch_sos is None:
                notch_sos = design_notch(settings, fs)
            assert notch_sos is not None
            self._notch = _bank([np.asarray(notch_sos, dtype=float)])
            # The notch cascade's gain at DC (1 for iirnotch): what a constant input leaves after it.
            self._notch_dc = float(self._notch.C[0] @ self._notch.z_unit + self._notch.D[0])
        elif notch_sos is not None:
            raise ValueError("notch filter coefficients were given but the settings ask for no notch")
        self.n_derived = fe.n_derived(n_channels)
        # Filter banks (and their cached block matrices) are shared by every engine with the same design.
        if sos is None:
            sos = design_filters(settings, fs)
        self._bank = _bank(sos)
        self.n_features = settings.n_features(n_channels, fs)
        self._n_filt = self._bank.n_out * self.n_derived
        # Columns of the filter outputs that are powers (squared, then logged): all but the slow potential's.
        self._n_pow = self._n_filt - (self.n_derived if settings.kind == "bandpower" and settings.slow_hz is not None
                                      else 0)
        if settings.kind == "bandpower" and self._bank.n_out != len(settings.resolve_bands(fs)) + (
                settings.slow_hz is not None):
            raise ValueError(f"{self._bank.n_out} filters were given but the settings need "
                             f"{len(settings.resolve_bands(fs))} bands"
                             f"{' and the slow low-pass' if settings.slow_hz is not None else ''}")
        self._n_contrib = self._n_filt + (
            self.n_derived if settings.kind == "bandpower" and settings.line_length else 0)
        self.reset()

    def reset(self) -> None:
        self._z: np.ndarray | None = None
        self._zn: np.ndarray | None = None
        self._prev: np.ndarray | None = None
        self._pending = np.zeros((0, self._n_contrib), dtype=np.float64)
        self._blocks: deque[np.ndarray] = deque(maxlen=self.settings.frame_hops)
        self.samples_seen = 0

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Feed (n, n_channels) samples; return the frames completed by them, shape (k, F) float64."""
        x = np.asarray(samples, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_channels:
            raise ValueError(f"samples must be (n, {self.n_channels}), got shape {x.shape}")
        n = len(x)
        if n == 0:
            return np.zeros((0, self.n_features))
        # Front end: re-reference (one subtraction), then the mains notch once per channel, before the bands.
        if self._car:
            x = x - x.mean(axis=1, keepdims=True)
        elif self._pairs is not None:
            x = x[:, self._pairs[0]] - x[:, self._pairs[1]]
        if self._z is None:
            # Start the filters in their steady state for the first sample, so a DC offset does not ring.
            if self._notch is not None:
                self._zn = self._notch.z_unit[:, None] * x[0][None, :]
                first = x[0] * self._notch_dc
            else:
                first = x[0]
            self._z = self._bank.z_unit[:, None] * first[None, :]
            self._prev = first.copy()
        if self._notch is not None:
            assert self._zn is not None
            notched, self._zn = self._notch.run(x, self._zn)
            x = notched[0]
        y, self._z = self._bank.run(x, self._z)
        contrib = np.empty((n, self._n_contrib))
        # (bands, n, ch) -> (n, bands*ch), band-major like feature_names().
        filt = y.transpose(1, 0, 2).reshape(n, self._n_filt)
        if self.settings.kind == "bandpower":
            np.square(filt[:, :self._n_pow], out=contrib[:, :self._n_pow])
            contrib[:, self._n_pow:self._n_filt] = filt[:, self._n_pow:]
        else:
            contrib[:, :self._n_filt] = filt
        if self._n_contrib > self._n_filt:
            ll = contrib[:, self._n_filt:]
            assert self._prev is not None
            ll[0] = np.abs(x[0] - self._prev)
            np.abs(np.diff(x, axis=0), out=ll[1:])
        self._prev = x[-1].copy()
        self.samples_seen += n

        buf = np.concatenate([self._pending, contrib]) if len(self._pending) else contrib
        k = len(buf) // self.hop
        self._pending = buf[k * self.hop:].copy()
        if k == 0:
            return np.zeros((0, self.n_features))
        block_means = buf[: k * self.hop].reshape(k, self.hop, self._n_contrib).mean(axis=1)
        frames = []
        for b in block_means:
            self._blocks.append(b)
            if len(self._blocks) == self.settings.frame_hops:
                # Summed in a fixed order so streaming and offline give the same floats.
                acc = self._blocks[0].copy()
                for other in list(self._blocks)[1:]:
                    acc += other
                frames.append(acc / self.settings.frame_hops)
        if not frames:
            return np.zeros((0, self.n_features))
        out = np.asarray(frames)
        if self.settings.kind == "bandpower":
            logged = np.log(np.maximum(out, _LOG_FLOOR))
            if self._n_pow == self._n_filt:
                return logged
            # The slow potential stays signed (its mean over the frame); powers and line length are logged.
            logged[:, self._n_pow:self._n_filt] = out[:, self._n_pow:self._n_filt]
            return logged
        return out


def extract_frames(settings: FeatureSettings, data: np.ndarray, fs: float) -> np.ndarray:
    """Offline: every frame of a (n_samples, n_channels) recording, unscaled, float32 (n_frames, F)."""
    data = np.asarray(data)
    if data.ndim != 2:
        raise ValueError(f"data must be (n_samples, n_channels), got shape {data.shape}")
    return FrameEngine(settings, data.shape[1], fs).process(data).astype(np.float32)


def frame_end_sample(settings: FeatureSettings, fs: float, frame_index: int) -> int:
    """Index of the last raw sample that frame `frame_index` (0-based, from a reset) depends on."""
    return (frame_index + settings.frame_hops) * settings.hop_samples(fs) - 1


def sliding_windows(frames: np.ndarray, n_frames: int, stride: int = 1) -> np.ndarray:
    """All (T, F) windows of consecutive frames, as an (n_windows, T, F) view-backed copy."""
    if len(frames) < n_frames:
        return np.zeros((0, n_frames, frames.shape[1]), dtype=frames.dtype)
    v = np.lib.stride_tricks.sliding_window_view(frames, n_frames, axis=0)  # (n, F, T)
    return np.ascontiguousarray(v[::stride].transpose(0, 2, 1))


class StreamingFeatures:
    """The daemon's side: push raw samples as they arrive, ask for the newest scaled (T, F) window each tick."""

    def __init__(self, settings: FeatureSettings, n_channels: int, fs: float, scaler: Scaler | None = None,
                 sos: list[np.ndarray] | None = None, notch_sos: np.ndarray | None = None) -> None:
        self.settings = settings
        self.engine = FrameEngine(settings, n_channels, fs, sos, notch_sos)
        self.scaler = scaler
        if scaler is not None and scaler.offset.shape[0] != self.engine.n_features:
            raise ValueError(f"scaler has {scaler.offset.shape[0]} features, the settings give "
                             f"{self.engine.n_features} for {n_channels} channels at {fs} Hz")
        self.n_frames = settings.n_frames
        self.n_features = self.engine.n_features
        # Each frame is written twice, T rows apart, so the newest T frames are always one contiguous slice.
        self._ring = np.zeros((2 * self.n_frames, self.n_features), dtype=np.float32)
        self.reset()

    def reset(self) -> None:
        self.engine.reset()
        self._head = 0
        self.frames_seen = 0

    @property
    def samples_seen(self) -> int:
        return self.engine.samples_seen

    def push(self, samples: np.ndarray) -> int:
        """Feed (n, n_channels) samples; return how many new frames they completed."""
        new = self.engine.process(samples)
        t = self.n_frames
        for f in new[-t:]:
            self._ring[self._head] = f
            self._ring[self._head + t] = f
            self._head = (self._head + 1) % t
        self.frames_seen += len(new)
        return len(new)

    def window(self) -> np.ndarray | None:
        """The newest T frames, scaled, as a new (T, F) float32 array — or None until T frames exist."""
        if self.frames_seen < self.n_frames:
            return None
        w = self._ring[self._head:self._head + self.n_frames]
        if self.scaler is None:
            return w.copy()
        return self.scaler.transform(w)
