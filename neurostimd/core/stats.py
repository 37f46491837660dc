"""The amplitudes a model was trained on (`signal_stats` in a bundle's manifest), per channel in the bundle's channel
order, in µV: the largest |x|, the RMS, the 99.9th percentile of |x|, and the spread of the RMS over decision-sized
windows. The loop's saturation default and plausibility check compare live signal with them
(neurostimd.core.stream_checks). numpy only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

STATS_FORMAT = 1
ABS_PERCENTILE = 99.9
# The window RMS range is taken between these percentiles of all training windows, so that one artefact window in
# the training data does not widen it for good; the plausibility factor gives the margin beyond.
WINDOW_RMS_PERCENTILES = (0.1, 99.9)
WINDOWS_PER_SPAN = 10  # windows advance by a tenth of their length (about one decision cadence for the default)

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class SignalStats:
    """Training-signal statistics, one entry per channel (µV)."""

    abs_max: F64
    rms: F64
    abs_p999: F64
    window_rms_lo: F64
    window_rms_hi: F64
    window_samples: int
    n_samples: int
    channel_names: list[str] | None = None

    @property
    def n_channels(self) -> int:
        return int(self.abs_max.shape[0])

    def to_json(self) -> dict[str, Any]:
        def r(a: F64) -> list[float]:
            return [float(f"{v:.6g}") for v in a]

        out: dict[str, Any] = {
            "format": STATS_FORMAT, "units": "uV", "n_samples": int(self.n_samples),
            "window_samples": int(self.window_samples),
            "window_rms_percentiles": list(WINDOW_RMS_PERCENTILES), "abs_percentile": ABS_PERCENTILE,
            "abs_max": r(self.abs_max), "rms": r(self.rms), "abs_p999": r(self.abs_p999),
            "window_rms_lo": r(self.window_rms_lo), "window_rms_hi": r(self.window_rms_hi),
        }
        if self.channel_names is not None:
            out["channel_names"] = list(self.channel_names)
        return out

    @classmethod
    def from_json(cls, d: object, n_channels: int) -> SignalStats:
        """Parse and check a manifest's `signal_stats`; ValueError saying what is wrong."""
        if not isinstance(d, dict):
            raise ValueError(f"signal_stats is a {type(d).__name__}, not a table")
        if d.get("format") != STATS_FORMAT or d.get("units") != "uV":
            raise ValueError(f"signal_stats has format {d.get('format')!r} / units {d.get('units')!r}; expected "
                             f"format {STATS_FORMAT} in uV")
        arrays: dict[str, F64] = {}
        for key in ("abs_max", "rms", "abs_p999", "window_rms_lo", "window_rms_hi"):
            try:
                a = np.asarray(d[key], dtype=np.float64)
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"signal_stats.{key} is missing or not a list of numbers ({err})") from err
            if a.shape != (n_channels,) or not np.isfinite(a).all() or (a < 0).any():
                raise ValueError(f"signal_stats.{key} must be {n_channels} finite non-negative numbers, got shape "
                                 f"{a.shape}")
            arrays[key] = a
        if not ((arrays["abs_max"] > 0).all() and (arrays["window_rms_lo"] <= arrays["window_rms_hi"]).all()):
            raise ValueError("signal_stats: abs_max must be positive and window_rms_lo <= window_rms_hi")
        names = d.get("channel_names")
        return cls(**arrays, window_samples=int(d.get("window_samples", 0)), n_samples=int(d.get("n_samples", 0)),
                   channel_names=[str(n) for n in names] if isinstance(names, list) else None)


def window_rms(x: npt.NDArray[np.floating], window: int, hop: int) -> F64:
    """RMS per channel of every `window`-sample window of x (n, ch) advancing by `hop`; (n_windows, ch)."""
    if x.shape[0] < window:
        return np.zeros((0, x.shape[1]), dtype=np.float64)
    c = np.zeros((x.shape[0] + 1, x.shape[1]), dtype=np.float64)
    np.cumsum(np.square(x, dtype=np.float64), axis=0, out=c[1:])
    s = np.arange(0, x.shape[0] - window + 1, hop)
    return np.sqrt(np.maximum(c[s + window] - c[s], 0.0) / window)


def compute_signal_stats(segments: Sequence[npt.NDArray[np.floating]], window_samples: int,
                         channel_names: Sequence[str] | None = None) -> SignalStats:
    """Statistics of the training segments (each (n_samples, n_channels) µV)."""
    if not segments:
        raise ValueError("no training segments to compute signal statistics from")
    n_ch = int(segments[0].shape[1])
    window = max(1, int(window_samples))
    hop = max(1, window // WINDOWS_PER_SPAN)
    allx = np.concatenate([np.asarray(s, dtype=np.float32) for s in segments], axis=0)
    absx = np.abs(allx)
    abs_max = absx.max(axis=0).astype(np.float64)
    rms = np.sqrt(np.mean(np.square(allx, dtype=np.float64), axis=0))
    abs_p = np.percentile(absx, ABS_PERCENTILE, axis=0).astype(np.float64)
    del absx
    wins = [window_rms(np.asarray(s), window, hop) for s in segments]
    wr = np.concatenate(wins, axis=0) if wins else np.zeros((0, n_ch))
    if len(wr) == 0:  # every segment shorter than a window: use each whole segment as one
        wr = np.stack([np.sqrt(np.mean(np.square(np.asarray(s), dtype=np.float64), axis=0)) for s in segments])
    lo, hi = np.percentile(wr, WINDOW_RMS_PERCENTILES, axis=0)
    return SignalStats(abs_max=abs_max, rms=rms, abs_p999=abs_p, window_rms_lo=np.asarray(lo, dtype=np.float64),
                       window_rms_hi=np.asarray(hi, dtype=np.float64), window_samples=window,
                       n_samples=int(allx.shape[0]),
                       channel_names=list(channel_names) if channel_names is not None else None)
