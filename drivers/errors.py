"""The project's exception tree. It lives in `drivers` because `drivers` imports nothing else of ours;
`neurostimd.errors` re-exports it and adds the daemon-side errors."""

from __future__ import annotations


class NeurostimError(Exception):
    """Root of every error this project raises on purpose."""


class ProtocolError(NeurostimError):
    """A byte sequence that is not a valid frame of the board protocol."""


class DriverError(NeurostimError):
    """The stimulator board refused a command or the link to it failed.

    `reason` carries the board's NAK reason name when the board said no, else None.
    """

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class DriverTimeout(DriverError, TimeoutError):
    """The board did not answer within the configured timeout and retries."""


class BoardLost(DriverError):
    """The port vanished or the board stopped answering; the driver is trying to reconnect."""


class PortBusy(DriverError):
    """Another process holds the board's serial port (its exclusive lock): two hosts must never share a board."""


class BoardRefused(DriverError):
    """The board answered, but the host will not use it: its INFO is impossible or unsafe (no dead-man timer, limits
    that are not positive and ordered), or a reconnected board is not the one the loop was built for."""


class BadReply(DriverError):
    """The board answered a request with a reply of the wrong type: whether it ran the request is unknown."""


class PortInvalid(DriverError):
    """The configured port is not a serial port (a FIFO, a regular file, a tty that refuses exclusivity)."""
