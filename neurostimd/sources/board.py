"""Samples from the stimulator board itself (SAMPLES frames through the driver). The board's sample counter gives
exact gap detection; sample times are the counter mapped onto the local monotonic clock. The board names no channels
(the montage can be checked by count only); an int16 board declares its rails."""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt
import structlog

from neurostimd.core.ringbuffer import RingBuffer
from neurostimd.drivers.base import Driver
from neurostimd.drivers.errors import DriverError
from neurostimd.errors import SourceError
from neurostimd.sources.base import Source

log = structlog.get_logger(__name__)


class CounterClockMap:
    """Maps a board sample counter onto local monotonic seconds.

    The offset (host time minus counter time) follows the lower envelope of arrival times, i.e. the least-delayed
    blocks: it drops at once to an earlier arrival and creeps up slowly, which follows clock drift without turning
    transfer jitter into timestamp jitter. A block whose offset differs from the current one by more than
    `rebase_s` cannot come from the same running counter (no transfer is delayed that long): the counter jumped or
    the board restarted, and the map starts again from that block (the ring flags the discontinuity from the
    counter itself). Without that, a counter 10^12 ahead, or one back at 0, would stamp every later sample
    centuries away from now, and the data would look stale (or fresh) for ever.
    """

    def __init__(self, sample_rate_hz: float, creep: float = 0.002, rebase_s: float = 1.0) -> None:
        self.period_s = 1.0 / sample_rate_hz
        self.creep = creep
        self.rebase_s = rebase_s
        self.offset_s: float | None = None
        self._last_stamp_s: float | None = None
        self.rebases = 0

    def stamp(self, first_index: int, n: int, t_recv_s: float) -> np.ndarray:
        last_counter_s = (first_index + n - 1) * self.period_s
        cand = t_recv_s - last_counter_s
        if self.offset_s is not None and abs(cand - self.offset_s) > self.rebase_s:
            self.rebases += 1
            self.offset_s = None
            # stamps go on from the last one: never backwards, never ahead of the arrival
            if self._last_stamp_s is not None:
                cand = max(cand, self._last_stamp_s + self.period_s - first_index * self.period_s)
        if self.offset_s is None:
            self.offset_s = cand
        elif cand < self.offset_s:
            self.offset_s = cand
            if self._last_stamp_s is not None:
                # Never stamp a sample before the previous one: an earlier arrival lowers the offset at most to
                # just above the last stamp (it catches up over the next blocks).
                floor = self._last_stamp_s + 0.1 * self.period_s - first_index * self.period_s
                self.offset_s = max(cand, floor)
        else:
            self.offset_s += (cand - self.offset_s) * self.creep
        ts = (first_index + np.arange(n, dtype=np.float64)) * self.period_s + self.offset_s
        self._last_stamp_s = float(ts[-1])
        return ts


class BoardSource(Source):
    """The board's own sample stream. Opens the driver only if it was not open yet, and then also closes it."""

    kind = "board"

    def __init__(self, driver: Driver, *, stale_after_ms: float = 250.0) -> None:
        super().__init__()
        self.driver = driver
        self.stale_after_ms = stale_after_ms
        self._owns_driver = False
        self._n_channels = 0
        self._rate_hz = 0.0
        self._range: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = None
        self._map: CounterClockMap | None = None
        self._first_counter: int | None = None
        self._newest_counter: int | None = None
        self._last_data_mono_s = 0.0
        self.bad_blocks = 0

    def _offered_channels(self) -> int:
        return self._n_channels

    def _offered_range_uv(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None:
        return self._range

    @property
    def sample_rate_hz(self) -> float:
        return self._rate_hz

    @property
    def first_counter(self) -> int | None:
        """The board's sample counter of the first sample this source received."""
        return self._first_counter

    @property
    def t_data_s(self) -> float | None:
        """The board's own time of the newest sample: its sample counter over the rate, i.e. seconds from the
        board's first sample. A recording played by `neurostimd-sim --signal` starts at counter 0, so this is
        recording time there, as in replay."""
        if self._newest_counter is None:
            return None
        return self._newest_counter / self._rate_hz

    def _open(self) -> None:
        if "samples" not in self.driver.capabilities:
            raise SourceError(f"[source] kind = \"board\" reads samples from the stimulator, but "
                              f"{type(self.driver).__name__} streams none (it lacks the \"samples\" capability); "
                              f"choose another [source] kind (lsl, replay) for the signal")
        if not self.driver.is_open:
            self.driver.open()
            self._owns_driver = True
        info = self.driver.info()
        self._n_channels = int(info.n_channels)
        self._rate_hz = float(info.sample_rate_hz)
        if info.sample_format == "int16":
            # one count inside the rails: a clipped int16 converter sits at +32767 / -32768 counts
            hi = np.full(self._n_channels, 32766 * info.uv_per_lsb, dtype=np.float32)
            self._range = (-hi, hi)
        self._map = CounterClockMap(self._rate_hz)
        self._last_data_mono_s = time.monotonic()
        self._stale_reason = "no samples received yet"
        log.info("board_source_open", device_id=info.device_id, n_channels=self._n_channels, rate_hz=self._rate_hz)

    def _close(self) -> None:
        if self._owns_driver:
            self.driver.close()
            self._owns_driver = False

    def pump(self, ring: RingBuffer, timeout_s: float = 0.0) -> int:
        if not self._is_open or self._map is None:
            return 0
        try:
            blocks = self.driver.read_samples(timeout_s)
        except DriverError as err:
            # A lost board is the driver's to reconnect; the source only reports that data stopped.
            self._stale_reason = f"board link failed: {err}"
            return 0
        moved = 0
        for b in blocks:
            data = np.asarray(b.data, dtype=np.float32)
            if data.ndim != 2 or data.shape[1] != self._n_channels or data.shape[0] == 0:
                self.bad_blocks += 1
                log.warning("board_block_refused", shape=list(data.shape), n_channels=self._n_channels)
                continue
            ts = self._map.stamp(b.first_index, data.shape[0], b.t_recv_ns / 1e9)
            if self._order is not None:
                data = data[:, self._order]
            ring.write(data, ts, first_index=b.first_index)
            if self._first_counter is None:
                self._first_counter = b.first_index
            self._newest_counter = b.first_index + data.shape[0] - 1
            moved += data.shape[0]
        now = time.monotonic()
        if moved:
            self._last_data_mono_s = now
            self._stale_reason = None
        elif (now - self._last_data_mono_s) * 1e3 > self.stale_after_ms and (
                self._stale_reason is None or self._stale_reason.startswith("no samples")):
            self._stale_reason = f"no samples from the board for {(now - self._last_data_mono_s) * 1e3:.0f} ms"
        return moved
