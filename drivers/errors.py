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
