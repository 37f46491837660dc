"""Stimulator drivers: the board protocol codec, the Driver ABC, the serial board driver and its byte links.

Imports nothing else of this project (see DESIGN.md, "Layers")."""

from drivers.base import (
    BoardInfo,
    BoardLimits,
    BoardStatus,
    Driver,
    DriverCounters,
    SampleBlock,
    StimParams,
    driver_class,
    make_driver,
    register_driver,
    registered_drivers,
)
from drivers.errors import BoardLost, DriverError, DriverTimeout, NeurostimError, ProtocolError
from drivers.links import ByteLink, ManipulatedLink, Manipulator, PipeLink, SerialLink
from drivers.serial_board import SerialBoardDriver

__all__ = [
    "BoardInfo",
    "BoardLimits",
    "BoardLost",
    "BoardStatus",
    "ByteLink",
    "Driver",
    "DriverCounters",
    "DriverError",
    "DriverTimeout",
    "ManipulatedLink",
    "Manipulator",
    "NeurostimError",
    "PipeLink",
    "ProtocolError",
    "SampleBlock",
    "SerialBoardDriver",
    "SerialLink",
    "StimParams",
    "driver_class",
    "make_driver",
    "register_driver",
    "registered_drivers",
]
