"""The in-process virtual board: the serial board driver, unchanged, over an in-memory link whose far end is the
simulator's board logic (neurostimd.firmware_sim.board.Board), stepped synchronously in the caller's thread.

A write is handled by the board at once; time comes from an injectable clock (MonotonicClock by default, a
VirtualClock for replay), so a replay at hundreds of times real time is deterministic and needs no threads. Unit
tests and replay therefore exercise the real protocol path: framing, CRC, ACKs, device limits, dead-man timer.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar, Protocol

from neurostimd.drivers.base import Capability
from neurostimd.drivers.errors import DriverError
from neurostimd.drivers.neurostim_board.driver import SerialBoardDriver
from neurostimd.drivers.transport import ByteLink
from neurostimd.drivers.types import BoardLimits
from neurostimd.firmware_sim.board import Board, EventLog
from neurostimd.firmware_sim.generator import FileSource, Playable, SampleSource, SyntheticSource
from neurostimd.firmware_sim.plant import Plant, PlantParams
from neurostimd.firmware_sim.plants import DEFAULT_PLANT, PlantModel, make_plant
from neurostimd.firmware_sim.plants.markov import MarkovPlant


class Clock(Protocol):
    """The time the in-memory board runs on (neurostimd's MonotonicClock and VirtualClock are ones)."""

    def now_ns(self) -> int: ...

    def sleep_until(self, t_ns: int) -> None: ...


class _Monotonic:
    """time.monotonic_ns, sleeping for real."""

    def now_ns(self) -> int:
        return time.monotonic_ns()

    def sleep_until(self, t_ns: int) -> None:
        dt = (t_ns - time.monotonic_ns()) / 1e9
        if dt > 0:
            time.sleep(dt)


class SteppedDevice(Protocol):
    """A simulated device stepped by its caller: bytes in at a time, bytes out as time passes (Board is one)."""

    def feed(self, data: bytes, now_ns: int) -> bytes: ...

    def advance(self, now_ns: int) -> bytes: ...

    def next_wakeup_ns(self) -> int | None: ...


class BoardLink(ByteLink):
    """A link to a simulated device in memory (the Board, or another SteppedDevice). write() feeds it now; read()
    advances it, sleeping on the clock (a VirtualClock jumps) until it has something to send or the timeout is
    over. `what` names the device in errors."""

    def __init__(self, board: SteppedDevice, clock: Clock, *, what: str = "virtual board") -> None:
        self.board = board
        self.clock = clock
        self.what = what
        self._rx = bytearray()
        self._closed = False

    def write(self, data: bytes) -> None:
        if self._closed:
            raise DriverError(f"{self.what} link is closed")
        self._rx += self.board.feed(data, self.clock.now_ns())

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        if self._closed:
            raise DriverError(f"{self.what} link is closed")
        deadline = self.clock.now_ns() + int(max(0.0, timeout_s) * 1e9)
        while True:
            self._rx += self.board.advance(self.clock.now_ns())
            now = self.clock.now_ns()
            if self._rx or now >= deadline:
                break
            wake = self.board.next_wakeup_ns()
            self.clock.sleep_until(deadline if wake is None else min(max(wake, now), deadline))
        out = bytes(self._rx[:max_bytes])
        del self._rx[:max_bytes]
        return out

    def close(self) -> None:
        self._closed = True
        self._rx.clear()


class VirtualBoardDriver(SerialBoardDriver):
    """The serial board driver talking to an in-memory simulated board.

    The board persists across close()/open() like a physical board would; `board` and `plant` give tests and the
    closed-loop evaluation access to its state. With `signal` (a recording the caller has read, e.g. with
    neurostimd.sources.recordings.read_recording) the board streams that recording
    instead of the synthetic generator; with stream_samples=False it streams nothing (replay reads its file itself).
    `plant` names the simulated tissue behind the synthetic signal (neurostimd.firmware_sim.plants.PLANTS; the
    default, "markov", is the SyntheticSource as before, and streams the same samples).
    """

    # the driver's, whatever the board streams: with stream_samples=False read_samples() returns no blocks
    capabilities: ClassVar[frozenset[Capability]] = frozenset({"samples"})

    def __init__(self, n_channels: int = 8, sample_rate_hz: float = 1000.0, watchdog_ms: float = 250.0,
                 seed: int = 0, *, clock: Clock | None = None, stream_samples: bool = True,
                 log_path: str | Path | None = None, block_size: int = 10, sample_format: str = "int16",
                 impedance_ohm: float | None = None, limits: BoardLimits | None = None,
                 signal: Playable | None = None, loop_signal: bool = False, initial_state: int = 0,
                 plant_params: PlantParams | None = None, ack_timeout_ms: float = 100.0, retries: int = 2,
                 heartbeat_ms: float = 100.0, reconnect_interval_ms: float = 500.0, max_watchdog_ms: float = 500.0,
                 check_session: bool = True, plant: str = DEFAULT_PLANT) -> None:
        self.clock: Clock = clock if clock is not None else _Monotonic()
        source: SampleSource
        if signal is not None:
            if plant != DEFAULT_PLANT:
                raise DriverError(f"virtual board: plant {plant!r} makes the synthetic signal; a recording has none")
            try:
                source = FileSource(signal, loop=loop_signal)
            except ValueError as err:
                raise DriverError(f"virtual board cannot play the recording: {err}") from err
        elif plant == DEFAULT_PLANT:
            # the Markov plant: SyntheticSource itself, with the plant interface on top (the same samples)
            source = MarkovPlant(n_channels, sample_rate_hz, seed, initial_state=initial_state,
                                 plant_params=plant_params)
        else:
            try:
                source = make_plant(plant, n_channels, sample_rate_hz, seed, initial_state=initial_state)
            except ValueError as err:
                raise DriverError(f"virtual board: {err}") from err
        self.event_log = EventLog(log_path)
        self.board = Board(source=source, block_size=block_size, sample_format=sample_format,
                           watchdog_ms=round(watchdog_ms), limits=limits, impedance_ohm=impedance_ohm,
                           device_id=f"virtual-{seed}", event_log=self.event_log,
                           stream_samples=stream_samples, start_ns=self.clock.now_ns(), check_session=check_session)
        super().__init__(port="virtual", ack_timeout_ms=ack_timeout_ms, retries=retries, heartbeat_ms=heartbeat_ms,
                         reconnect_interval_ms=reconnect_interval_ms, max_watchdog_ms=max_watchdog_ms,
                         reconnect_max_interval_ms=max(5000.0, reconnect_interval_ms),
                         link_factory=lambda: BoardLink(self.board, self.clock), now_ns=self.clock.now_ns)

    @property
    def plant(self) -> Plant | None:
        """The Markov plant when the signal is the default synthetic one, else None."""
        return self.board.source.plant if isinstance(self.board.source, SyntheticSource) else None

    @property
    def plant_model(self) -> PlantModel | None:
        """The plant the board streams (firmware_sim.plants), None when it plays a recording."""
        src = self.board.source
        return src if isinstance(src, PlantModel) else None

    def _close(self) -> None:
        super()._close()
        self.event_log.close()
