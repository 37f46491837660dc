"""The simulated Pulse Pal in memory: a ByteLink whose far end is the firmware model (device.PulsePal), stepped
synchronously in the caller's thread on an injectable clock, as firmware_sim.inprocess does for the board. With a
`latency_ns` (a number, or a function for jitter), each write reaches the device that long after it was sent (on
the clock), as over USB."""

from __future__ import annotations

from collections.abc import Callable

from neurostimd.drivers.errors import DriverError
from neurostimd.drivers.transport import ByteLink
from neurostimd.firmware_sim.inprocess import Clock
from neurostimd.firmware_sim.pulsepal.device import PulsePal


class PulsePalLink(ByteLink):
    """A link to a PulsePal in memory. write() feeds the device (after `latency_ns`); read() advances it, sleeping
    on the clock until it has something to send or the timeout is over."""

    def __init__(self, device: PulsePal, clock: Clock, *, latency_ns: int | Callable[[], int] = 0) -> None:
        self.device = device
        self.clock = clock
        self.latency_ns = latency_ns
        self._rx = bytearray()
        self._closed = False

    def write(self, data: bytes) -> None:
        if self._closed:
            raise DriverError("virtual Pulse Pal link is closed")
        lat = self.latency_ns() if callable(self.latency_ns) else self.latency_ns
        self._rx += self.device.feed(data, self.clock.now_ns() + lat)

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        if self._closed:
            raise DriverError("virtual Pulse Pal link is closed")
        deadline = self.clock.now_ns() + int(max(0.0, timeout_s) * 1e9)
        while True:
            self.device.advance(self.clock.now_ns())
            now = self.clock.now_ns()
            if self._rx or now >= deadline:
                break
            wake = self.device.next_wakeup_ns()
            self.clock.sleep_until(deadline if wake is None else min(max(wake, now + 1), deadline))
        out = bytes(self._rx[:max_bytes])
        del self._rx[:max_bytes]
        return out

    def close(self) -> None:
        self._closed = True
        self._rx.clear()
