"""Replay of a recording as a live source: each sample is released when its due time comes on a clock — the real
monotonic clock (x1, xN) or a virtual clock that the loop moves as fast as it can ("max"). The same file, config and
virtual clock give byte-identical ring contents, hence byte-identical decisions.

A recording's own timestamps (XDF, .npz `timestamps`, a session) mark its gaps as the LSL source marks them live: a
step longer than 1.5 periods (plus `timestamp_jitter_ms`) skips the samples it stands for; its sample index
(`Recording.sample_index`: a session's ring indices, where a jump is samples the recorder lost; an MNE recording's
skipped acquisition) marks them where it jumps. A step skips what either says, whichever is more: the skipped samples
are missing from the sample counter handed to the ring (which flags the gap) and from time (the replay waits for
them, as the live daemon did)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import structlog

from neurostimd.clock import Clock, MonotonicClock, VirtualClock
from neurostimd.core.ringbuffer import RingBuffer
from neurostimd.core.stream_checks import MontageError, pick_channels, virtual_counter
from neurostimd.errors import SourceError
from neurostimd.sources.base import Source
from neurostimd.sources.recordings import Recording, read_recording

log = structlog.get_logger(__name__)

_NS = 1_000_000_000


class ReplaySource(Source):
    """Plays `recording` at `speed` x real time on `clock`.

    Sample i is due at t0 + c(i) / (fs · speed) on the clock (t0 = clock time at open(), c the sample counter: i for
    a recording without gaps); pump() writes every sample due by clock.now_ns(), stamped with its due time in clock
    seconds. On a VirtualClock pump() never waits: time moves only when the loop moves it. A clock that is itself
    scaled (it has a `speed` attribute, like neurostimd.clock.ScaledClock) already runs at recording pace, so the
    source then releases at 1x clock time. `units` states the unit of a file that declares none; `channels` picks
    channels by name; `stream_name` / `stream_type` choose an XDF file's signal stream.
    """

    kind = "replay"

    def __init__(self, recording: Recording | str | Path, speed: float = 1.0, clock: Clock | None = None, *,
                 loop: bool = False, fs: float | None = None, units: str | None = None,
                 channels: Sequence[str] | None = None, timestamp_jitter_ms: float = 0.0,
                 stream_name: str | None = None, stream_type: str | None = None) -> None:
        super().__init__()
        self.recording = recording if isinstance(recording, Recording) else \
            read_recording(recording, fs=fs, units=units, stream_name=stream_name, stream_type=stream_type)
        if not (speed > 0):
            raise ValueError(f"replay speed must be positive, got {speed}")
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self.clock_speed = float(getattr(self.clock, "speed", 1.0))
        self.speed = 1.0 if hasattr(self.clock, "speed") else float(speed)
        self.loop = loop
        self._virtual = isinstance(self.clock, VirtualClock)
        self._rate = self.recording.fs * self.speed  # samples per clock second
        self._ns_per_sample = np.float64(_NS) / np.float64(self._rate)
        self._t0_ns = 0
        self._released = 0
        rec = self.recording
        self._pick: npt.NDArray[np.intp] | None = None
        if channels is not None:
            if not rec.channel_names_declared:
                raise SourceError(f"[source] channels picks channels by name, but {rec.source} names none; remove "
                                  f"channels from the config or use a file with channel names")
            try:
                self._pick = pick_channels(list(channels), rec.channel_names)
            except MontageError as err:
                raise SourceError(f"[source] channels does not fit {rec.source} ({err}); its channels are "
                                  f"{rec.channel_names}") from err
        self._take = self._pick
        # The counter: consecutive samples 1 apart, jumps where the recording's own stamps skip samples.
        n = rec.n_samples
        if rec.timestamps is not None and n > 1:
            self._counter = virtual_counter(rec.timestamps, rec.fs, timestamp_jitter_ms / 1000.0)
        else:
            self._counter = np.arange(n, dtype=np.int64)
        if rec.sample_index is not None and n > 1:
            # The file's own sample positions (a session's ring indices: a jump is samples the recorder lost; an MNE
            # recording's skipped acquisition). Each step skips what the index or the stamps say, whichever is more:
            # a session's stamps also hold the gaps of the live stream, which its ring index does not.
            steps = np.maximum(np.diff(rec.sample_index), np.diff(self._counter))
            self._counter = np.concatenate(([0], np.cumsum(steps))).astype(np.int64)
        self._span = int(self._counter[-1]) + 1  # counter values one pass of the recording covers
        self._breaks = np.flatnonzero(np.diff(self._counter) != 1) + 1  # first sample after each jump
        if self._breaks.size:
            log.info("replay_recording_gaps", source=rec.source, gaps=int(self._breaks.size),
                     missing_samples=int(self._span - n))

    # --- description -----------------------------------------------------------------------------------------------
    def _offered_channels(self) -> int:
        return int(self._pick.shape[0]) if self._pick is not None else self.recording.n_channels

    def _offered_names(self) -> list[str] | None:
        rec = self.recording
        if not rec.channel_names_declared:
            return None
        return [rec.channel_names[i] for i in self._pick] if self._pick is not None else list(rec.channel_names)

    def _offered_range_uv(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None:
        r = self.recording.range_uv
        if r is None or self._pick is None:
            return r
        return r[0][self._pick], r[1][self._pick]

    def _order_changed(self) -> None:
        base = self._pick if self._pick is not None else np.arange(self.recording.n_channels, dtype=np.intp)
        take = base if self._order is None else base[self._order]
        self._take = None if np.array_equal(take, np.arange(self.recording.n_channels)) else take

    @property
    def sample_rate_hz(self) -> float:
        return self.recording.fs

    @property
    def timestamp_tolerance_s(self) -> float:
        # Due times are exact (integer nanoseconds): half a period is plenty, and a wrong step is a real event.
        return 0.5 / self._rate

    @property
    def released(self) -> int:
        """How many samples have been written so far."""
        return self._released

    @property
    def sample_positions(self) -> np.ndarray:
        """Each sample's position on the replay's sample clock (`t_data_s` × fs of the newest sample released):
        0, 1, 2, … with jumps where the recording's stamps or sample index skip samples."""
        return self._counter

    @property
    def t_data_s(self) -> float | None:
        if self._released == 0:
            return None
        return int(self._counter[(self._released - 1) % self.recording.n_samples]) / self.recording.fs

    @property
    def exhausted(self) -> bool:
        return not self.loop and self._released >= self.recording.n_samples

    def _open(self) -> None:
        self._t0_ns = self.clock.now_ns()
        self._released = 0
        self._stale_reason = None
        rec = self.recording
        log.info("replay_source_open", source=rec.source, n_samples=rec.n_samples, fs=rec.fs, speed=self.speed,
                 virtual=self._virtual, units=rec.units)

    def _close(self) -> None:
        return None

    # --- timing ----------------------------------------------------------------------------------------------------
    def _count(self, i: int) -> int:
        """Counter value of (global, possibly looped) sample i."""
        n = self.recording.n_samples
        return (i // n) * self._span + int(self._counter[i % n])

    def _due_ns(self, i: int) -> int:
        """Clock time at which sample i is due (exact integer arithmetic, so replays are reproducible)."""
        return self._t0_ns + int(np.floor(np.float64(self._count(i)) * self._ns_per_sample))

    def _count_due(self, now_ns: int) -> int:
        if now_ns < self._t0_ns:
            return 0
        # the newest counter value due by now (estimate, fixed up exactly), then how many samples have one <= it
        c = int((now_ns - self._t0_ns) * self._rate / _NS) + 1
        while c > 0 and self._t0_ns + int(np.floor(np.float64(c - 1) * self._ns_per_sample)) > now_ns:
            c -= 1
        while self._t0_ns + int(np.floor(np.float64(c) * self._ns_per_sample)) <= now_ns:
            c += 1
        # counter values 0 .. c-1 are due
        n = self.recording.n_samples
        loops, rest = divmod(c, self._span)
        k = loops * n + int(np.searchsorted(self._counter, rest, side="left"))
        if not self.loop:
            k = min(k, n)
        return k

    # --- data ------------------------------------------------------------------------------------------------------
    def pump(self, ring: RingBuffer, timeout_s: float = 0.0) -> int:
        if not self._is_open or self.exhausted:
            return 0
        due = self._count_due(self.clock.now_ns())
        if due <= self._released and timeout_s > 0 and not self._virtual:
            deadline = self.clock.now_ns() + int(timeout_s * _NS * self.clock_speed)
            self.clock.sleep_until(min(self._due_ns(self._released), deadline))
            due = self._count_due(self.clock.now_ns())
        if due <= self._released:
            return 0
        start, end = self._released, due
        n_rec = self.recording.n_samples
        idx = np.arange(start, end, dtype=np.int64)
        local = idx % n_rec
        counts = (idx // n_rec) * self._span + self._counter[local]
        due_ns = self._t0_ns + np.floor(counts.astype(np.float64) * self._ns_per_sample).astype(np.int64)
        ts = due_ns.astype(np.float64) / _NS
        rows = self.recording.data[local] if (self.loop or self._breaks.size) else self.recording.data[start:end]
        data = rows if self._take is None else rows[:, self._take]
        if self._breaks.size == 0:
            ring.write(data, ts, first_index=int(counts[0]))
        else:  # one write per contiguous run, so that the ring sees each counter jump
            cuts = np.flatnonzero(np.diff(counts) != 1) + 1
            for a, b in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [len(counts)])), strict=True):
                ring.write(data[a:b], ts[a:b], first_index=int(counts[a]))
        self._released = end
        if self.exhausted:
            self._stale_reason = "replay reached the end of the recording"
            log.info("replay_source_exhausted", n_samples=n_rec)
        return end - start
