"""The StimJim driver over an in-memory link to the simulated firmware, stepped in the caller's thread on an
injectable clock (as firmware_sim.inprocess does for neurostimd's own board)."""

from __future__ import annotations

from neurostimd.drivers.errors import DriverError
from neurostimd.drivers.transport import ByteLink
from neurostimd.firmware_sim.inprocess import Clock
from neurostimd.firmware_sim.stimjim.device import StimJimDevice


class StimJimLink(ByteLink):
    """A link to a StimJimDevice in memory: write() feeds it now; read() advances it on the clock (a virtual clock
    jumps) until it has something to say or the timeout is over. Opening one is the host connecting (DTR)."""

    def __init__(self, device: StimJimDevice, clock: Clock) -> None:
        self.device = device
        self.clock = clock
        self._rx = bytearray(device.connect(clock.now_ns()))
        self._closed = False

    def write(self, data: bytes) -> None:
        if self._closed:
            raise DriverError("in-memory StimJim link is closed")
        self._rx += self.device.feed(data, self.clock.now_ns())

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        if self._closed:
            raise DriverError("in-memory StimJim link is closed")
        deadline = self.clock.now_ns() + int(max(0.0, timeout_s) * 1e9)
        while True:
            self._rx += self.device.advance(self.clock.now_ns())
            now = self.clock.now_ns()
            if self._rx or now >= deadline:
                break
            wake = self.device.next_wakeup_ns()
            self.clock.sleep_until(deadline if wake is None else min(max(wake, now), deadline))
        out = bytes(self._rx[:max_bytes])
        del self._rx[:max_bytes]
        return out

    def close(self) -> None:
        self._closed = True
        self._rx.clear()
