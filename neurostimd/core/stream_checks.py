"""Checks of what a stream delivers against what it declares and what the model was trained on: the montage (channel
names), gaps in a stream's own timestamps, the effective sample rate, the saturation threshold and the plausibility of
the amplitudes. Pure core: no I/O, no clock; time is an argument. The loop turns their verdicts into boundary causes
of the fault monitor (faults.FAULT_RATE_MISMATCH, faults.FAULT_IMPLAUSIBLE_SIGNAL); the sources use the gap counter.
docs/safety.md, "What the daemon checks at its boundary", says what each one catches and why its numbers are what
they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from neurostimd.core.stats import SignalStats


# --- montage ----------------------------------------------------------------------------------------------------------
def normal_name(name: str) -> str:
    """Channel names compare without surrounding whitespace and without case ("Fp1" is "FP1", " Cz" is "Cz"):
    10-20 labels are written both ways by different amplifiers, and no montage uses case to tell two electrodes
    apart. Two channels of one stream that compare equal make its names ambiguous."""
    return str(name).strip().casefold()


class MontageError(ValueError):
    """Channel names that do not fit: `missing` (wanted, not there), `extra` (there, not wanted), `ambiguous`
    (wanted, but several channels carry that name)."""

    def __init__(self, message: str, *, missing: Sequence[str] = (), extra: Sequence[str] = (),
                 ambiguous: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.missing = list(missing)
        self.extra = list(extra)
        self.ambiguous = list(ambiguous)


def _short(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def pick_channels(wanted: Sequence[str], available: Sequence[str]) -> npt.NDArray[np.intp]:
    """Index into `available` of each name in `wanted`, in wanted's order (names compared as normal_name says).
    MontageError naming what is missing or ambiguous."""
    where: dict[str, list[int]] = {}
    for i, n in enumerate(available):
        where.setdefault(normal_name(n), []).append(i)
    missing = [w for w in wanted if normal_name(w) not in where]
    ambiguous = [w for w in wanted if len(where.get(normal_name(w), [])) > 1]
    twice = sorted({w for w in wanted if sum(normal_name(v) == normal_name(w) for v in wanted) > 1})
    problems = []
    if missing:
        problems.append(f"missing: {_short(missing)}")
    if ambiguous:
        problems.append(f"named more than once: {_short(ambiguous)}")
    if twice:
        problems.append(f"asked for more than once: {_short(twice)}")
    if problems:
        raise MontageError("; ".join(problems), missing=missing, ambiguous=ambiguous + twice)
    return np.array([where[normal_name(w)][0] for w in wanted], dtype=np.intp)


def match_montage(model_names: Sequence[str], source_names: Sequence[str]) -> npt.NDArray[np.intp]:
    """For each of the model's channels, the index of the source channel with that name. The source must carry
    exactly the model's channels (in any order): MontageError names the missing and the extra ones otherwise."""
    model_set = {normal_name(n) for n in model_names}
    extra = [n for n in source_names if normal_name(n) not in model_set]
    try:
        idx = pick_channels(model_names, source_names)
    except MontageError as err:
        raise MontageError(str(err) + (f"; not in the model: {_short(extra)}" if extra else ""),
                           missing=err.missing, extra=extra, ambiguous=err.ambiguous) from err
    if extra:
        raise MontageError(f"not in the model: {_short(extra)}", extra=extra)
    return idx


# --- gaps in a stream's own timestamps --------------------------------------------------------------------------------
def gap_threshold_s(sample_rate_hz: float, jitter_s: float = 0.0) -> float:
    """A step between consecutive timestamps longer than this means samples are missing: one and a half periods
    (a missing sample makes the step two periods), plus the jitter the outlet's stamps are allowed."""
    return 1.5 / sample_rate_hz + max(0.0, jitter_s)


def missing_in_step(step_s: float, sample_rate_hz: float) -> int:
    """How many samples a timestamp step that exceeds the gap threshold stands for (at least one)."""
    if not math.isfinite(step_s):
        return 1
    return max(1, round(step_s * sample_rate_hz) - 1)


def virtual_counter(timestamps: npt.ArrayLike, sample_rate_hz: float, jitter_s: float = 0.0) -> npt.NDArray[np.int64]:
    """A sample counter for a recording with timestamps: consecutive samples count 1 apart, and after a step longer
    than gap_threshold_s the counter jumps by the samples the step stands for. Steps that are short or backwards
    count 1 (they are not gaps)."""
    ts = np.asarray(timestamps, dtype=np.float64)
    if ts.ndim != 1 or ts.size == 0:
        return np.zeros(0, dtype=np.int64)
    inc = np.ones(ts.size, dtype=np.int64)
    inc[0] = 0
    steps = np.diff(ts)
    with np.errstate(invalid="ignore"):
        gap = ~(steps <= gap_threshold_s(sample_rate_hz, jitter_s)) & np.isfinite(steps) & (steps > 0)
    if gap.any():
        where = np.flatnonzero(gap)
        inc[where + 1] += np.maximum(1, np.rint(steps[where] * sample_rate_hz).astype(np.int64) - 1)
    return np.cumsum(inc)


# --- effective rate ---------------------------------------------------------------------------------------------------
RATE_WINDOW_S = 5.0  # trailing window the effective rate is judged over
RATE_EDGE_S = 0.5  # at each end of the window, the least-late tick stands for the stream's position
RATE_MIN_SPAN_S = 1.0  # the first verdict needs this much history
RATE_TOLERANCE = 0.02  # allowed |effective / declared - 1| once the window is full (docs/safety.md)
RATE_LATENESS_S = 0.1  # allowed error of a "least-late" position estimate; its share shrinks as the window grows
RECURRING_GAPS = 3  # this many gaps inside the window and missing samples are no longer credited


class RateMonitor:
    """The stream's effective sample rate against its declared one, from the sample position at each tick.

    Fed once per tick with the tick's time and the source's sample position: samples written plus samples a counter
    says are missing (a gap is not a slow stream). Arrival is late by a varying amount (chunks, jitter, a stall),
    never early, so each end of the trailing window is represented by its least-late tick: the effective rate is the
    change of the position between those two ticks over the time between them. That estimate is wrong by at most
    the change in least lateness (RATE_LATENESS_S) over that time, so the allowed error is RATE_TOLERANCE plus that
    share. When gaps keep coming (RECURRING_GAPS inside the window), the samples they declare missing are not credited:
    a stream whose stamps skip at every chunk delivers fewer samples than it declares, whatever its stamps say.
    Time spent stale is skipped (staleness is reported on its own). `rel_error` is None until RATE_MIN_SPAN_S of
    history exist.
    """

    def __init__(self, declared_hz: float, cadence_s: float, *, window_s: float = RATE_WINDOW_S,
                 edge_s: float = RATE_EDGE_S, tolerance: float = RATE_TOLERANCE,
                 lateness_s: float = RATE_LATENESS_S, min_span_s: float = RATE_MIN_SPAN_S) -> None:
        if not (declared_hz > 0 and cadence_s > 0):
            raise ValueError(f"need a positive declared rate and cadence, got {declared_hz} Hz, {cadence_s} s")
        self.declared_hz = float(declared_hz)
        self.window_s = float(window_s)
        self.edge_s = float(edge_s)
        self.tolerance = float(tolerance)
        self.lateness_s = float(lateness_s)
        self.min_span_s = float(min_span_s)
        cap = math.ceil(window_s / cadence_s) * 2 + 8  # ticks can come faster than the cadence (catch-up)
        self._t = np.zeros(cap, dtype=np.float64)
        self._e_all = np.zeros(cap, dtype=np.float64)  # declared·t − (written + missing), in samples
        self._e_written = np.zeros(cap, dtype=np.float64)  # declared·t − written
        self._gaps = np.zeros(cap, dtype=np.int64)
        self._cap = cap
        self._head = 0  # oldest entry
        self._n = 0
        self.rel_error: float | None = None
        self.threshold: float | None = None
        self.mismatch = False

    @property
    def judged(self) -> bool:
        """True once there is a verdict (enough history)."""
        return self.rel_error is not None

    def update(self, t_s: float, written: int, missing: int, gap_events: int, *, flowing: bool = True) -> bool:
        """Record the position at tick time `t_s`; return whether the rate is off (False while no verdict)."""
        if not flowing:
            return False
        cap = self._cap
        if self._n == cap:  # more ticks than room: drop the oldest (the window is judged by time anyway)
            self._head = (self._head + 1) % cap
            self._n -= 1
        k = (self._head + self._n) % cap
        self._t[k] = t_s
        self._e_all[k] = self.declared_hz * t_s - (written + missing)
        self._e_written[k] = self.declared_hz * t_s - written
        self._gaps[k] = gap_events
        self._n += 1
        while self._n > 1 and self._t[self._head] < t_s - self.window_s:
            self._head = (self._head + 1) % cap
            self._n -= 1
        self._judge(t_s)
        return self.mismatch

    def _judge(self, t_now: float) -> None:
        cap, head, n = self._cap, self._head, self._n
        t = self._t
        t_old = float(t[head])
        span = t_now - t_old
        if span < self.min_span_s:
            self.rel_error, self.threshold, self.mismatch = None, None, False
            return
        newest = (head + n - 1) % cap
        recurring = int(self._gaps[newest] - self._gaps[head]) >= RECURRING_GAPS
        e = self._e_written if recurring else self._e_all
        edge = min(self.edge_s, span / 4.0)
        i1 = head
        j = head
        for _ in range(n):  # least-late tick of the oldest edge
            if t[j] > t_old + edge:
                break
            if e[j] < e[i1]:
                i1 = j
            j = (j + 1) % cap
        i2 = newest
        j = newest
        for _ in range(n):  # least-late tick of the newest edge
            if t[j] < t_now - edge:
                break
            if e[j] < e[i2]:
                i2 = j
            j = (j - 1) % cap
        dt = float(t[i2] - t[i1])
        if dt <= 0:
            self.rel_error, self.threshold, self.mismatch = None, None, False
            return
        self.rel_error = float(e[i1] - e[i2]) / (self.declared_hz * dt)
        self.threshold = self.tolerance + self.lateness_s / dt
        self.mismatch = abs(self.rel_error) > self.threshold

    @property
    def effective_hz(self) -> float | None:
        return None if self.rel_error is None else self.declared_hz * (1.0 + self.rel_error)


# --- saturation and plausibility ----------------------------------------------------------------------------------
SATURATION_STATS_FACTOR = 3.0  # default saturation threshold without a declared range: this × the training |x| max
PLAUSIBILITY_FACTOR = 5.0  # default [loop] plausibility_factor
HARD_BOUND_UV = 1e6  # without training statistics: |x| at or above 1 V is not a neural signal


@dataclass(frozen=True)
class SaturationRule:
    """Per-channel thresholds (µV): a sample at or below `lo` or at or above `hi` is saturated. `origin` says where
    the thresholds came from (config, the source's declared range, the bundle's training statistics)."""

    lo: npt.NDArray[np.float32]
    hi: npt.NDArray[np.float32]
    origin: str


def saturation_rule(n_channels: int, *, configured_uv: float | None,
                    source_range_uv: tuple[npt.ArrayLike, npt.ArrayLike] | None,
                    stats: SignalStats | None) -> SaturationRule | None:
    """The saturation thresholds, from the first of: `[loop] saturation_uv` (symmetric), the range the source
    declares (its converter's rails), SATURATION_STATS_FACTOR × the bundle's largest |x| in training per channel.
    None when none of them is known."""
    if configured_uv is not None:
        hi = np.full(n_channels, configured_uv, dtype=np.float32)
        return SaturationRule(-hi, hi, "config")
    if source_range_uv is not None:
        lo = np.broadcast_to(np.asarray(source_range_uv[0], dtype=np.float32), (n_channels,)).copy()
        hi = np.broadcast_to(np.asarray(source_range_uv[1], dtype=np.float32), (n_channels,)).copy()
        return SaturationRule(lo, hi, "source_range")
    if stats is not None:
        hi = (SATURATION_STATS_FACTOR * stats.abs_max).astype(np.float32)
        return SaturationRule(-hi, hi, "training_stats")
    return None


class PlausibilityCheck:
    """Is a decision window's signal far outside anything the model was trained on?

    With training statistics: implausible when some channel's RMS over the window is below `window_rms_lo / F` or
    above `window_rms_hi · F`, or some |x| exceeds `F · abs_max` (F = factor). Without: only |x| ≥ HARD_BOUND_UV.
    Non-finite samples are left to the ring's nan_inf flag.

    Two ways in: `check(window)` judges a whole window; the loop instead `push`es each tick's new samples (their
    per-channel max, min and sum of squares go into a preallocated ring of block summaries) and `judge`s the newest
    blocks that cover a window — a few microseconds per tick instead of a pass over the whole window. Nothing is
    allocated per call.
    """

    def __init__(self, n_channels: int, stats: SignalStats | None, factor: float = PLAUSIBILITY_FACTOR, *,
                 window_samples: int = 1) -> None:
        if not factor > 1.0:
            raise ValueError(f"plausibility factor must be above 1, got {factor}")
        self.n_channels = int(n_channels)
        self.stats = stats
        self.factor = float(factor)
        self.window_samples = max(1, int(window_samples))
        if stats is not None:
            self._rms_lo = (stats.window_rms_lo / factor).astype(np.float64)
            self._rms_hi = (stats.window_rms_hi * factor).astype(np.float64)
            self._abs = (stats.abs_max * factor).astype(np.float32)
        else:
            self._rms_lo = np.zeros(n_channels, dtype=np.float64)
            self._rms_hi = np.full(n_channels, np.inf, dtype=np.float64)
            self._abs = np.full(n_channels, HARD_BOUND_UV, dtype=np.float32)
        self._neg_abs = -self._abs
        # mean squares are compared with squared bounds: no square root per tick
        self._ms_lo = self._rms_lo ** 2
        self._ms_hi = self._rms_hi ** 2
        self._ms = np.zeros(n_channels, dtype=np.float64)
        self._mx = np.zeros(n_channels, dtype=np.float32)
        self._mn = np.zeros(n_channels, dtype=np.float32)
        self._bad = np.zeros(n_channels, dtype=bool)
        self._tmp = np.zeros(n_channels, dtype=bool)
        # block summaries, mirrored (slot i and i + cap) so that the newest k blocks are one contiguous slice
        cap = self.window_samples + 1  # enough for one-sample blocks
        self._cap = cap
        # per block: row 0 max, row 1 min, row 2 sum of squares (float64 throughout: one copy mirrors all three)
        self._b = np.zeros((2 * cap, 3, n_channels), dtype=np.float64)
        self._b_n = [0] * cap  # samples per block (a list: read element-wise in Python)
        self._blocks = 0  # pushed so far
        self.last_reason: str | None = None

    def push(self, block: npt.NDArray[np.float32]) -> bool:
        """Summarise one tick's new samples (n, n_channels); True when the block itself holds an amplitude beyond
        the bound (the caller keeps such samples out of anything with memory, e.g. the feature filters)."""
        n = block.shape[0]
        if n == 0:
            return False
        i = self._blocks % self._cap
        row = self._b[i]
        np.max(block, axis=0, out=row[0])
        np.min(block, axis=0, out=row[1])
        np.einsum("ij,ij->j", block, block, dtype=np.float64, out=row[2])
        self._b[i + self._cap] = row
        self._b_n[i] = n
        self._blocks += 1
        if self.stats is None:  # the hard bound: at or beyond
            return bool((row[0] >= self._abs).any() or (row[1] <= self._neg_abs).any())
        return bool((row[0] > self._abs).any() or (row[1] < self._neg_abs).any())

    def judge(self) -> bool | None:
        """Over the newest pushed blocks that cover `window_samples`: True when implausible (`last_reason` says
        why), False when not, None while fewer samples than a window have been pushed."""
        cap = self._cap
        last = (self._blocks - 1) % cap
        sizes = self._b_n
        k, covered = 0, 0
        avail = min(self._blocks, cap)
        while k < avail and covered < self.window_samples:
            covered += sizes[last - k]  # negative indices wrap around the list, as the blocks do
            k += 1
        if covered < self.window_samples:
            return None
        newest = last + cap  # the mirrored copy: the k newest blocks are one slice ending here
        b = self._b[newest - k + 1:newest + 1]
        np.max(b[:, 0], axis=0, out=self._mx)
        np.min(b[:, 1], axis=0, out=self._mn)
        np.sum(b[:, 2], axis=0, out=self._ms)
        self._ms /= covered
        return self._verdict()

    def check(self, window: npt.NDArray[np.float32]) -> bool:
        """True when `window` (n_samples, n_channels) µV is implausible; `last_reason` then says why."""
        n = window.shape[0]
        if n == 0:
            return False
        np.max(window, axis=0, out=self._mx)
        np.min(window, axis=0, out=self._mn)
        np.einsum("ij,ij->j", window, window, dtype=np.float64, out=self._ms)
        self._ms /= n
        return self._verdict()

    def _verdict(self) -> bool:
        if self.stats is None:  # the hard bound: at or beyond
            np.greater_equal(self._mx, self._abs, out=self._bad)
            np.less_equal(self._mn, self._neg_abs, out=self._tmp)
        else:
            np.greater(self._mx, self._abs, out=self._bad)
            np.less(self._mn, self._neg_abs, out=self._tmp)
        np.logical_or(self._bad, self._tmp, out=self._bad)
        if self._bad.any():
            self.last_reason = "amplitude"
            return True
        if self.stats is None:
            self.last_reason = None
            return False
        with np.errstate(invalid="ignore"):
            np.less(self._ms, self._ms_lo, out=self._bad)
            np.greater(self._ms, self._ms_hi, out=self._tmp)
        if self._bad.any():
            self.last_reason = "rms_low"
            return True
        if self._tmp.any():
            self.last_reason = "rms_high"
            return True
        self.last_reason = None
        return False

    def channels(self, window: npt.NDArray[np.float32]) -> list[int]:
        """The channels that make `window` implausible (for the log; allocates)."""
        w = np.asarray(window, dtype=np.float64)
        bad = (np.abs(w).max(axis=0) > self._abs) if self.stats is not None else \
            (np.abs(w).max(axis=0) >= self._abs)
        if self.stats is not None:
            ms = (w * w).mean(axis=0)
            bad |= (ms < self._ms_lo) | (ms > self._ms_hi)
        return [int(i) for i in np.flatnonzero(bad)]
