"""The driver contract against the in-process virtual board (serial driver over an in-memory link)."""

from __future__ import annotations

from neurostimd.devices import DeviceContext
from neurostimd.drivers.base import Driver
from neurostimd.firmware_sim.inprocess import VirtualBoardDriver
from neurostimd.registry import DEVICES
from tests.contract.suite import DriverContract


class TestVirtualBoard(DriverContract):
    CAPABILITIES = frozenset({"samples"})

    def make_driver(self) -> Driver:
        return VirtualBoardDriver(n_channels=8, sample_rate_hz=1000.0, seed=1)


class TestVirtualBoardFromRegistry(DriverContract):
    CAPABILITIES = frozenset({"samples"})

    def make_driver(self) -> Driver:
        # through the device table, as the daemon builds it from `[device] kind = "virtual"`
        settings = DEVICES.model("virtual").model_validate({"kind": "virtual", "n_channels": 4,
                                                            "sample_rate_hz": 500.0, "watchdog_ms": 250.0, "seed": 2})
        driver = settings.build(DeviceContext())  # type: ignore[attr-defined]
        assert isinstance(driver, Driver)
        return driver
