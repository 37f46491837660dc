"""Replay of a recording as a live source: each sample is released when its due time comes on a clock — the real
monotonic clock (x1, xN) or a virtual clock that the loop moves as fast as it can ("max"). The same file, config and
virtual clock give byte-identical ring contents, hence byte-identical decisions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import structlog

from neurostimd.clock import Clock, MonotonicClock, VirtualClock
from neurostimd.readers import Recording, read_recording
from neurostimd.ringbuffer import RingBuffer
from neurostimd.sources.base import Source

log = structlog.get_logger(__name__)

_NS = 1_000_000_000


class ReplaySource(Source):
    """Plays `recording` at `speed` x real time on `clock`.

    Sample i is due at t0 + i / (fs · speed) on the clock (t0 = clock time at open()); pump() writes every sample due
    by clock.now_ns(), stamped with its due time in clock seconds. On a VirtualClock pump() never waits: time moves
    only when the loop moves it. A clock that is itself scaled (it has a `speed` attribute, like
    neurostimd.clock.ScaledClock) already runs at recording pace, so the source then releases at 1x clock time.
    """

    kind = "replay"

    def __init__(self, recording: Recording | str | Path, speed: float = 1.0, clock: Clock | None = None, *,
                 loop: bool = False, fs: float | None = None) -> None:
        super().__init__()
        self.recording = recording if isinstance(recording, Recording) else read_recording(recording, fs=fs)
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

    @property
    def n_channels(self) -> int:
        return self.recording.n_channels

    @property
    def sample_rate_hz(self) -> float:
        return self.recording.fs

    @property
    def channel_names(self) -> list[str]:
        return list(self.recording.channel_names)

    @property
    def released(self) -> int:
        """How many samples have been written so far."""
        return self._released

    @property
    def t_data_s(self) -> float | None:
        if self._released == 0:
            return None
        return ((self._released - 1) % self.recording.n_samples) / self.recording.fs

    @property
    def exhausted(self) -> bool:
        return not self.loop and self._released >= self.recording.n_samples

    def _open(self) -> None:
        self._t0_ns = self.clock.now_ns()
        self._released = 0
        self._stale_reason = None
        log.info("replay_source_open", source=self.recording.source, n_samples=self.recording.n_samples,
                 fs=self.recording.fs, speed=self.speed, virtual=self._virtual)

    def _close(self) -> None:
        return None

    def _due_ns(self, i: int) -> int:
        """Clock time at which sample i is due (exact integer arithmetic, so replays are reproducible)."""
        return self._t0_ns + int(np.floor(np.float64(i) * self._ns_per_sample))

    def _count_due(self, now_ns: int) -> int:
        if now_ns < self._t0_ns:
            return 0
        k = int((now_ns - self._t0_ns) * self._rate / _NS) + 1  # estimate; fixed up against _due_ns exactly
        while k > 0 and self._due_ns(k - 1) > now_ns:
            k -= 1
        while self._due_ns(k) <= now_ns:
            k += 1
        if not self.loop:
            k = min(k, self.recording.n_samples)
        return k

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
        due_ns = self._t0_ns + np.floor(idx.astype(np.float64) * self._ns_per_sample).astype(np.int64)
        ts = due_ns.astype(np.float64) / _NS
        data = self.recording.data[idx % n_rec] if self.loop else self.recording.data[start:end]
        ring.write(data, ts, first_index=start)
        self._released = end
        if self.exhausted:
            self._stale_reason = "replay reached the end of the recording"
            log.info("replay_source_exhausted", n_samples=n_rec)
        return end - start
