"""The daemon-side errors, on the one NeurostimError tree rooted in `neurostimd.drivers.errors`."""

from __future__ import annotations

from neurostimd.drivers.errors import BoardLost, DriverError, DriverTimeout, NeurostimError, ProtocolError


class ConfigError(NeurostimError):
    """The configuration file is missing, unreadable or invalid. `errors` holds one line per problem."""

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class SafetyViolation(NeurostimError):
    """A command or a configuration would leave the safety envelope."""


class BundleError(NeurostimError):
    """A model bundle is missing, corrupt, or does not match the data source."""


class SourceError(NeurostimError):
    """A data source cannot be opened or does not match the configuration."""


class DataFormatError(NeurostimError):
    """A recording file cannot be read as any of the supported formats."""


__all__ = [
    "BoardLost",
    "BundleError",
    "ConfigError",
    "DataFormatError",
    "DriverError",
    "DriverTimeout",
    "NeurostimError",
    "ProtocolError",
    "SafetyViolation",
    "SourceError",
]
