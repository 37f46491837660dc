"""The driver contract against `neurostimd-sim --pty` in its own process, and against real hardware when
NEUROSTIMD_TEST_PORT names a serial port."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from neurostimd.drivers.base import Driver
from neurostimd.drivers.neurostim_board.driver import SerialBoardDriver
from tests.contract.suite import DriverContract
from tests.sim.simproc import SimProcess


@pytest.fixture(scope="class")
def sim_for_class(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    """One simulator process per test class, started with the class's SIM_ARGS; its pty path goes to cls.port."""
    sim = SimProcess(tmp_path_factory.mktemp("sim"), *request.cls.SIM_ARGS)
    request.cls.port = sim.path
    try:
        yield sim
    finally:
        sim.stop()


@pytest.mark.usefixtures("sim_for_class")
class TestSimulatorOverPty(DriverContract):
    SIM_ARGS: tuple[str, ...] = ("--channels", "16", "--seed", "3")
    CAPABILITIES = frozenset({"samples"})
    port = ""

    def make_driver(self) -> Driver:
        # generous timeouts: the pty path crosses two processes on a loaded machine
        return SerialBoardDriver(port=self.port, ack_timeout_ms=250.0, retries=3)


class TestSimulatorOverPtyFloat32(TestSimulatorOverPty):
    SIM_ARGS = ("--channels", "4", "--rate", "2000", "--format", "float32", "--block", "25")


@pytest.mark.skipif(not os.environ.get("NEUROSTIMD_TEST_PORT"),
                    reason="set NEUROSTIMD_TEST_PORT=/dev/ttyACM0 (a board on that port) to run on hardware")
class TestHardwarePort(DriverContract):
    CAPABILITIES = frozenset({"samples"})

    def make_driver(self) -> Driver:
        return SerialBoardDriver(port=str(Path(os.environ["NEUROSTIMD_TEST_PORT"])))
