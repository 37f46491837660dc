"""The driver contract against the simulated Pulse Pal (firmware 22 and 21) in its own process over a real pty, and
against a real Pulse Pal when NEUROSTIMD_TEST_PORT names one and NEUROSTIMD_TEST_DEVICE is "pulsepal"."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from neurostimd.drivers.base import Driver
from neurostimd.drivers.pulsepal.driver import PulsePalDriver
from tests.contract.suite import DriverContract
from tests.sim.test_pulsepal_process import PulsePalProcess


@pytest.fixture(scope="class")
def pulsepal_for_class(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                       ) -> Iterator[PulsePalProcess]:
    sim = PulsePalProcess(tmp_path_factory.mktemp("pulsepal"), *request.cls.SIM_ARGS)
    request.cls.port = sim.port
    try:
        yield sim
    finally:
        sim.stop()


@pytest.mark.usefixtures("pulsepal_for_class")
class TestPulsePalOverPty(DriverContract):
    SIM_ARGS: tuple[str, ...] = ("--firmware", "22")
    CAPABILITIES = frozenset()
    port = ""

    def make_driver(self) -> Driver:
        # 1 mA/V: the suite's 2 mA is 2 V, which the DAC codes exactly
        return PulsePalDriver(self.port, isolator_ma_per_v=1.0, isolator_max_ma=5.0, reply_timeout_ms=500.0)


class TestPulsePal2Fw21OverPty(TestPulsePalOverPty):
    SIM_ARGS = ("--firmware", "21")


_ON_HARDWARE = bool(os.environ.get("NEUROSTIMD_TEST_PORT")) and os.environ.get("NEUROSTIMD_TEST_DEVICE") == "pulsepal"


@pytest.mark.skipif(not _ON_HARDWARE,
                    reason="set NEUROSTIMD_TEST_PORT=/dev/ttyACM0 and NEUROSTIMD_TEST_DEVICE=pulsepal (a Pulse Pal "
                           "with nothing connected to its outputs) to run on hardware")
class TestPulsePalHardware(DriverContract):
    CAPABILITIES = frozenset()

    def make_driver(self) -> Driver:
        return PulsePalDriver(os.environ["NEUROSTIMD_TEST_PORT"], isolator_ma_per_v=1.0, isolator_max_ma=5.0)
