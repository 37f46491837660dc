"""The fixed-size sample store between a source and the loop: one writer, any number of readers, a monotonic sample
index, per-sample timestamps on the local monotonic clock, and honest data-quality flags for any recent span.

Pure core: no I/O, no clock. Bad data (NaN bursts, flatlines, clock jumps, out-of-order timestamps, counter jumps)
never raises here; it is counted and flagged so that the loop can fall back to its safe state.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
import numpy.typing as npt

# Per-sample event bits, set on the first sample after the discontinuity they describe.
FLAG_GAP = 1  # samples are missing before this one (source counter jump, or a timestamp jump without a counter)
FLAG_CLOCK_JUMP = 2  # the timestamp jumped (forward with a contiguous counter, or a non-finite timestamp)
FLAG_OUT_OF_ORDER = 4  # the timestamp went backwards by more than the jitter tolerance

# per-sample quality bits (RingBuffer._bad)
_BAD_NONFINITE = 1
_BAD_SATURATED = 2

_EMPTY_F32 = np.zeros((0, 0), dtype=np.float32)


@dataclass
class Window:
    """Consecutive samples read from the ring.

    `data` (n, ch) float32 µV, `indices` (n,) int64 ring indices, `timestamps` (n,) float64 seconds on the local
    monotonic clock. `overrun` is how many requested samples had already been overwritten (since() only).
    `flags` holds the per-sample event bits (FLAG_*).
    """

    data: npt.NDArray[np.float32]
    indices: npt.NDArray[np.int64]
    timestamps: npt.NDArray[np.float64]
    flags: npt.NDArray[np.uint8]
    overrun: int = 0

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @property
    def first_index(self) -> int:
        """Ring index of the first sample (or of where the next sample will land, for an empty window)."""
        return int(self.indices[0]) if len(self) else self._next_index

    @property
    def end_index(self) -> int:
        """One past the ring index of the last sample."""
        return int(self.indices[-1]) + 1 if len(self) else self._next_index

    _next_index: int = 0


@dataclass
class Quality:
    """Data-quality verdict for a span of samples: `ok` is False when any flag is set; `reasons` names them."""

    n_samples: int
    nan_inf: bool = False
    flatline: bool = False
    saturation: bool = False
    gap: bool = False
    clock_jump: bool = False
    out_of_order: bool = False
    flat_channels: list[int] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        names = ("nan_inf", "flatline", "saturation", "gap", "clock_jump", "out_of_order")
        return [n for n in names if getattr(self, n)]

    @property
    def ok(self) -> bool:
        return not self.reasons


@dataclass
class RingCounters:
    """Lifetime counters of a ring buffer; the daemon exports them as metrics."""

    samples_written: int = 0
    gaps: int = 0  # discontinuities seen (each counter jump or timestamp gap counts once)
    missing_samples: int = 0  # samples a source counter says were skipped
    overruns: int = 0  # since() calls that asked for samples already overwritten
    overrun_samples: int = 0
    clock_jumps: int = 0
    out_of_order: int = 0


class RingBuffer:
    """Preallocated ring of (capacity, n_channels) float32 samples.

    Storage is mirrored (every sample is written at slot i and i + capacity), so any span up to `capacity` is one
    contiguous slice: `latest(n, copy=False)` costs no copy at all, and `copy=True` exactly one.

    Index bookkeeping is published after the data, and readers re-check it after copying, so a reader in another
    thread never returns samples that the writer overwrote mid-copy without saying so (overrun).
    """

    def __init__(
        self,
        n_channels: int,
        capacity_samples: int,
        sample_rate_hz: float,
        *,
        saturation_uv: float | None = None,
        flatline_samples: int | None = None,
        jitter_tolerance_s: float = 0.1,
        saturation_bounds_uv: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
    ) -> None:
        if n_channels <= 0 or capacity_samples <= 1:
            raise ValueError(f"a ring needs n_channels > 0 and capacity_samples > 1 "
                             f"(got {n_channels} channels, {capacity_samples} samples)")
        if not (sample_rate_hz > 0 and np.isfinite(sample_rate_hz)):
            raise ValueError(f"sample_rate_hz must be a positive number, got {sample_rate_hz}")
        self.n_channels = int(n_channels)
        self.capacity = int(capacity_samples)
        self.sample_rate_hz = float(sample_rate_hz)
        self.saturation_uv = saturation_uv
        # Per-channel rails (lo, hi): a sample at or beyond either is saturated. `saturation_uv` is the symmetric case.
        self._sat_lo: npt.NDArray[np.float32] | None = None
        self._sat_hi: npt.NDArray[np.float32] | None = None
        if saturation_bounds_uv is not None:
            self._sat_lo = np.broadcast_to(np.asarray(saturation_bounds_uv[0], dtype=np.float32),
                                           (self.n_channels,)).copy()
            self._sat_hi = np.broadcast_to(np.asarray(saturation_bounds_uv[1], dtype=np.float32),
                                           (self.n_channels,)).copy()
        elif saturation_uv is not None:
            self._sat_hi = np.full(self.n_channels, saturation_uv, dtype=np.float32)
            self._sat_lo = -self._sat_hi
        # Default: a quarter second of bit-identical values on one channel; shorter runs happen in quiet,
        # coarsely quantized recordings, longer ones mean a disconnected electrode or a stuck converter.
        self.flatline_samples = max(3, int(flatline_samples if flatline_samples is not None
                                           else round(0.25 * sample_rate_hz)))
        self.jitter_tolerance_s = float(jitter_tolerance_s)
        self._period_s = 1.0 / self.sample_rate_hz
        cap2 = 2 * self.capacity
        self._data = np.zeros((cap2, self.n_channels), dtype=np.float32)
        self._ts = np.zeros(cap2, dtype=np.float64)
        self._flags = np.zeros(cap2, dtype=np.uint8)
        # Flatline bookkeeping, computed lazily by quality() for the samples added since its last call (so a tick
        # costs O(new samples), not O(window)): per sample, 1 if some channel has then been bit-identical for at
        # least flatline_samples samples; per channel, the current run length and the last value.
        self._flat = np.zeros(cap2, dtype=np.uint8)
        self._flat_scanned = 0
        self._flat_run = np.zeros(self.n_channels, dtype=np.int64)
        self._flat_last: npt.NDArray[np.float32] | None = None
        # Likewise per sample: bit _BAD_NONFINITE if some channel is NaN/Inf, bit _BAD_SATURATED if some finite value
        # is at or beyond the rails; so quality() looks at each sample once, not at the whole window every tick.
        self._bad = np.zeros(cap2, dtype=np.uint8)
        self._flat_lock = threading.Lock()  # readers in several threads share the scan state
        self._total = 0  # published index of the next sample
        self._next_source_index: int | None = None
        self._last_ts = float("nan")
        self.counters = RingCounters()

    # --- state -----------------------------------------------------------------------------------------------------
    @property
    def total_written(self) -> int:
        """Monotonic ring index of the next sample to be written (= samples written so far)."""
        return self._total

    @property
    def samples_written(self) -> int:
        return self._total

    @property
    def gaps(self) -> int:
        return self.counters.gaps

    @property
    def overruns(self) -> int:
        return self.counters.overruns

    @property
    def available(self) -> int:
        """How many samples can still be read (at most the capacity)."""
        return min(self._total, self.capacity)

    @property
    def newest_timestamp(self) -> float | None:
        """Local monotonic time (s) of the newest sample, None before the first write; for staleness checks."""
        return None if self._total == 0 else float(self._last_ts)

    # --- writer ----------------------------------------------------------------------------------------------------
    def write(
        self,
        data: npt.ArrayLike,
        timestamps: npt.ArrayLike | None = None,
        first_index: int | None = None,
    ) -> int:
        """Append samples (n, n_channels) with their local-monotonic timestamps (s) and optional source counter.

        A source counter jump counts a gap and flags the first sample after it; so do timestamp jumps larger than
        the rate and jitter tolerance allow. Without timestamps, they are extrapolated at the nominal rate.
        Returns the number of samples written. Raises ValueError only for a wrong channel count (a wiring bug).
        """
        block = data if isinstance(data, np.ndarray) and data.dtype == np.float32 else \
            np.asarray(data, dtype=np.float32)
        if block.ndim == 1 and self.n_channels == 1:
            block = block.reshape(-1, 1)
        if block.ndim != 2 or block.shape[1] != self.n_channels:
            raise ValueError(f"ring holds {self.n_channels} channels but a block of shape {block.shape} was written")
        n = block.shape[0]
        if n == 0:
            return 0
        first_bits = 0
        contiguous = True
        if first_index is not None:
            expected = self._next_source_index
            if expected is not None and first_index != expected:
                contiguous = False
                first_bits = FLAG_GAP
                self.counters.gaps += 1
                if first_index > expected:
                    self.counters.missing_samples += first_index - expected
            self._next_source_index = first_index + n
        ts = self._timestamps_for(n, timestamps)
        # Fast path (the common case, kept to a handful of numpy calls): every step within the tolerance.
        # NaN fails every comparison, so non-finite stamps also take the careful path.
        tol = self.jitter_tolerance_s
        hi = self._period_s + tol
        d0 = float(ts[0]) - self._last_ts if self._total else self._period_s
        ok = -tol <= d0 <= hi
        if ok and n > 1:
            if n <= 16:  # small blocks (a pull every millisecond): plain floats beat numpy's per-call overhead
                tl = ts.tolist()
                ok = all(-tol <= b - a <= hi for a, b in pairwise(tl))
            else:
                d = ts[1:] - ts[:-1]
                ok = bool(d.min() >= -tol) and bool(d.max() <= hi)
        flags: npt.NDArray[np.uint8] | None = None
        if not ok:
            ts = np.array(ts, dtype=np.float64)  # never repair the caller's array in place
            flags = np.zeros(n, dtype=np.uint8)
            flags[0] |= first_bits
            self._check_times(ts, flags, counter_known=first_index is not None, contiguous=contiguous)
        self._store(block, ts, flags, first_bits)
        self._last_ts = float(ts[-1])
        self._total += n  # publish last: readers trust only [total - capacity, total)
        self.counters.samples_written = self._total
        return n

    def _timestamps_for(self, n: int, timestamps: npt.ArrayLike | None) -> npt.NDArray[np.float64]:
        if timestamps is not None:
            ts = np.asarray(timestamps, dtype=np.float64)
            if ts.ndim == 1 and ts.shape[0] == n:
                return ts
            # A source handing over mismatched timestamps is a source bug; keep the data, rebuild the times.
            self.counters.clock_jumps += 1
        start = 0.0 if self._total == 0 else self._last_ts + self._period_s
        return start + np.arange(n, dtype=np.float64) * self._period_s

    def _check_times(self, ts: npt.NDArray[np.float64], flags: npt.NDArray[np.uint8], *,
                     counter_known: bool, contiguous: bool) -> None:
        bad = ~np.isfinite(ts)
        if bad.any():
            # Keep a usable time axis: replace non-finite stamps by the nominal-rate extrapolation.
            idx = np.flatnonzero(bad)
            self.counters.clock_jumps += 1
            flags[idx] |= FLAG_CLOCK_JUMP
            prev = self._last_ts if self._total else 0.0
            for i in idx:  # rare path: a per-element loop is fine
                prev_i = ts[i - 1] if i > 0 else prev
                ts[i] = (prev_i if np.isfinite(prev_i) else 0.0) + self._period_s
        if self._total:
            d0 = ts[0] - self._last_ts
            dts = np.diff(ts)
            deltas = np.concatenate(([d0], dts)) if dts.size else np.array([d0])
        else:
            deltas = np.concatenate(([self._period_s], np.diff(ts)))
        tol = self.jitter_tolerance_s
        backwards = deltas < -tol
        if backwards.any():
            flags[backwards] |= FLAG_OUT_OF_ORDER
            self.counters.out_of_order += int(backwards.sum())
        forward = deltas > self._period_s + tol
        if forward.any():
            if counter_known:
                # The counter says no sample is missing, so the clock moved: flag the time axis, not the data.
                jump = forward.copy()
                if not contiguous:
                    jump[0] = False  # the counter jump already explains the first delta
                if jump.any():
                    flags[jump] |= FLAG_CLOCK_JUMP
                    self.counters.clock_jumps += int(jump.sum())
            else:
                flags[forward] |= FLAG_GAP
                self.counters.gaps += int(forward.sum())

    def _store(self, block: npt.NDArray[np.float32], ts: npt.NDArray[np.float64],
               flags: npt.NDArray[np.uint8] | None, first_bits: int) -> None:
        cap = self.capacity
        n = block.shape[0]
        base = self._total
        if n > cap:  # only the newest `capacity` samples can be kept
            skip = n - cap
            base += skip
            block, ts = block[skip:], ts[skip:]
            if flags is not None:
                flags = flags[skip:]
            first_bits = 0
            n = cap
        p = base % cap
        d, t, f = self._data, self._ts, self._flags
        if p + n <= cap and flags is None:  # the common case: no wrap, no events
            q = p + cap
            d[p:p + n] = block
            d[q:q + n] = block
            t[p:p + n] = ts
            t[q:q + n] = ts
            f[p:p + n] = 0
            f[q:q + n] = 0
            if first_bits:
                f[p] = f[q] = first_bits
            return
        first = min(n, cap - p)
        for lo, a, b in ((p, 0, first), (0, first, n)):
            m = b - a
            if m <= 0:
                continue
            for off in (lo, lo + cap):
                d[off:off + m] = block[a:b]
                t[off:off + m] = ts[a:b]
                if flags is None:
                    f[off:off + m] = 0
                else:
                    f[off:off + m] = flags[a:b]
        if first_bits and flags is None:
            f[p] = first_bits
            f[p + cap] = first_bits

    # --- readers ---------------------------------------------------------------------------------------------------
    def _span(self, start: int, end: int, copy: bool) -> Window:
        n = end - start
        p = start % self.capacity
        sl = slice(p, p + n)
        data = self._data[sl]
        ts = self._ts[sl]
        fl = self._flags[sl]
        if copy:
            data, ts, fl = data.copy(), ts.copy(), fl.copy()
        w = Window(data, np.arange(start, end, dtype=np.int64), ts, fl)
        w._next_index = end
        return w

    def _empty(self, at: int, overrun: int = 0) -> Window:
        w = Window(_EMPTY_F32.reshape(0, self.n_channels) if self.n_channels else _EMPTY_F32,
                   np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.uint8),
                   overrun)
        w._next_index = at
        return w

    def latest(self, n: int, *, copy: bool = True) -> Window:
        """The newest n samples (fewer if fewer were written). copy=False returns views into the ring that stay
        valid only until the next write (for a single-threaded loop that consumes them at once)."""
        total = self._total
        n = max(0, min(int(n), total, self.capacity))
        if n == 0:
            return self._empty(total)
        w = self._span(total - n, total, copy)
        self._check_overwritten(w, total - n, copy)
        return w

    def latest_data(self, n: int) -> npt.NDArray[np.float32]:
        """A view of the newest n samples' data (fewer if fewer were written), valid until the next write: for a
        single-threaded reader that only looks at the values (no Window, no index array)."""
        total = self._total
        n = max(0, min(int(n), total, self.capacity))
        p = (total - n) % self.capacity
        return self._data[p:p + n]

    def since(self, index: int, *, copy: bool = True, max_samples: int | None = None) -> Window:
        """Samples with ring index >= index (up to max_samples of the oldest such). If some were already
        overwritten, the window starts at the oldest sample still held and `overrun` says how many were lost."""
        total = self._total
        start = max(int(index), 0)
        oldest = total - min(total, self.capacity)
        lost = 0
        if start < oldest:
            lost = oldest - start
            start = oldest
        end = total if max_samples is None else min(total, start + max(0, int(max_samples)))
        if lost:
            self.counters.overruns += 1
            self.counters.overrun_samples += lost
        if end <= start:
            return self._empty(max(start, min(int(index), total)) if not lost else start, lost)
        w = self._span(start, end, copy)
        w.overrun = lost
        self._check_overwritten(w, start, copy)
        return w

    def _check_overwritten(self, w: Window, start: int, copy: bool) -> None:
        # A concurrent writer may have lapped the reader while it copied; drop what may be torn and say so.
        newest_total = self._total
        oldest_valid = newest_total - self.capacity
        if start >= oldest_valid:
            return
        torn = min(oldest_valid - start, len(w))
        keep = slice(torn, None)
        w.data, w.indices, w.timestamps, w.flags = w.data[keep], w.indices[keep], w.timestamps[keep], w.flags[keep]
        w.overrun += torn
        self.counters.overruns += 1
        self.counters.overrun_samples += torn

    # --- quality ---------------------------------------------------------------------------------------------------
    def _scan_flat(self, total: int) -> None:
        """Bring the per-sample flatline bits up to `total`, looking only at samples not scanned before."""
        cap = self.capacity
        start = max(self._flat_scanned, total - min(total, cap))
        if start != self._flat_scanned:  # fell more than a ring behind: start the runs afresh
            self._flat_run[:] = 0
            self._flat_last = None
        if start >= total:
            return
        span = self._span(start, total, copy=False).data
        k = span.shape[0]
        eq = np.empty(span.shape, dtype=bool)
        if self._flat_last is None:
            eq[0] = False
        else:
            np.equal(span[0], self._flat_last, out=eq[0])
        np.equal(span[1:], span[:-1], out=eq[1:])
        idx = np.arange(k, dtype=np.int64)[:, None]
        # index of the latest sample (so far) where the value changed; -1 while the run from before goes on
        last_change = np.maximum.accumulate(np.where(eq, -1, idx), axis=0)
        run = np.where(last_change >= 0, idx - last_change + 1, self._flat_run + idx + 1)
        bits: npt.NDArray[np.uint8] = np.asarray((run >= self.flatline_samples).any(axis=1), dtype=np.uint8)
        finite = np.isfinite(span)
        bad: npt.NDArray[np.uint8] = np.where(finite.all(axis=1), 0, _BAD_NONFINITE).astype(np.uint8)
        if self._sat_hi is not None and self._sat_lo is not None:
            with np.errstate(invalid="ignore"):  # infinities are non-finite, not a saturated converter
                railed = (((span >= self._sat_hi) | (span <= self._sat_lo)) & finite).any(axis=1)
            bad |= np.where(railed, _BAD_SATURATED, 0).astype(np.uint8)
        p = start % cap
        first = min(k, cap - p)
        for lo, a, b in ((p, 0, first), (0, first, k)):
            if b > a:
                self._flat[lo:lo + b - a] = bits[a:b]
                self._flat[lo + cap:lo + cap + b - a] = bits[a:b]
                self._bad[lo:lo + b - a] = bad[a:b]
                self._bad[lo + cap:lo + cap + b - a] = bad[a:b]
        self._flat_run = run[-1].copy()
        self._flat_last = span[-1].copy()
        self._flat_scanned = total

    def _flat_channels(self, total: int, n: int) -> list[int]:
        """Which channels are flat in a span already known to hold a flatline (rare: the slow, exact look)."""
        run = self.flatline_samples
        m = min(total, self.capacity, max(n, n + run - 1))
        if m < run:
            return []
        span = self._span(total - m, total, copy=False).data
        eq = (span[1:] == span[:-1]).astype(np.int32)
        csum = np.cumsum(eq, axis=0)
        need = run - 1
        win = csum[need - 1:].copy()
        win[1:] -= csum[:-need]
        return [int(c) for c in np.flatnonzero((win >= need).any(axis=0))]

    def quality(self, n: int) -> Quality:
        """Data-quality flags for the newest n samples: NaN/Inf, flatline (some channel bit-identical for at least
        `flatline_samples` samples ending inside the span), saturation (at or beyond the rails: |x| >= saturation_uv,
        or the per-channel saturation_bounds_uv), gaps and clock events. Never raises."""
        total = self._total
        n = max(0, min(int(n), total, self.capacity))
        q = Quality(n_samples=n)
        if n == 0:
            return q
        p = (total - n) % self.capacity
        ev = int(np.bitwise_or.reduce(self._flags[p:p + n]))
        q.gap = bool(ev & FLAG_GAP)
        q.clock_jump = bool(ev & FLAG_CLOCK_JUMP)
        q.out_of_order = bool(ev & FLAG_OUT_OF_ORDER)
        with self._flat_lock:
            self._scan_flat(total)
            flat = bool(self._flat[p:p + n].any())
            bad = int(np.bitwise_or.reduce(self._bad[p:p + n]))
        q.nan_inf = bool(bad & _BAD_NONFINITE)
        q.saturation = bool(bad & _BAD_SATURATED)
        if flat:
            q.flatline = True
            q.flat_channels = self._flat_channels(total, n)
        return q
