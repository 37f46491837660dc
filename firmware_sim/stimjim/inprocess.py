"""The StimJim driver over an in-memory link to the simulated firmware, stepped in the caller's thread on an
injectable clock (as firmware_sim.inprocess does for neurostimd's own board)."""

from __future__ import annotations

from neurostimd.firmware_sim.inprocess import BoardLink, Clock
from neurostimd.firmware_sim.stimjim.device import StimJimDevice


class StimJimLink(BoardLink):
    """A link to a StimJimDevice in memory: write() feeds it now; read() advances it on the clock (a virtual clock
    jumps) until it has something to say or the timeout is over. Opening one is the host connecting (DTR)."""

    def __init__(self, device: StimJimDevice, clock: Clock) -> None:
        super().__init__(device, clock, what="in-memory StimJim")
        self.device = device
        self._rx += device.connect(clock.now_ns())
