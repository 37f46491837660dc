"""The driver contract against the in-process virtual board (serial driver over an in-memory link)."""

from __future__ import annotations

from neurostimd.drivers.base import Driver, make_driver
from neurostimd.firmware_sim.inprocess import VirtualBoardDriver
from tests.contract.suite import DriverContract


class TestVirtualBoard(DriverContract):
    def make_driver(self) -> Driver:
        return VirtualBoardDriver(n_channels=8, sample_rate_hz=1000.0, seed=1)


class TestVirtualBoardFromRegistry(DriverContract):
    def make_driver(self) -> Driver:
        return make_driver("virtual", n_channels=4, sample_rate_hz=500.0, watchdog_ms=250.0, seed=2)
