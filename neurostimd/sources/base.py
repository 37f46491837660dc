"""The one interface every sample source fills in (LSL inlet, stimulator board, replayed recording): open/close,
and `pump()`, which moves every available sample into the ring buffer and reports staleness instead of raising."""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from typing import Self

from neurostimd.ringbuffer import RingBuffer


class Source(ABC):
    """A stream of multichannel samples.

    open() and close() are idempotent and the source is a context manager. `pump()` never raises on bad data:
    trouble shows as `stale` / `stale_reason` and as flags in the ring buffer.
    """

    kind: str = "abstract"

    def __init__(self) -> None:
        self._is_open = False
        self._closed_explicitly = False
        self._stale_reason: str | None = "not open"

    # --- lifecycle -------------------------------------------------------------------------------------------------
    def open(self) -> None:
        if self._is_open:
            return
        self._open()
        self._is_open = True
        self._closed_explicitly = False

    def close(self) -> None:
        if not self._is_open:
            self._closed_explicitly = True
            return
        try:
            self._close()
        finally:
            self._is_open = False
            self._closed_explicitly = True
            self._stale_reason = "closed"

    @property
    def is_open(self) -> bool:
        return self._is_open

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_is_open", False) and not getattr(self, "_closed_explicitly", True):
            warnings.warn(f"{type(self).__name__} was not closed; call close() or use it as a context manager",
                          ResourceWarning, stacklevel=1)

    @abstractmethod
    def _open(self) -> None: ...

    @abstractmethod
    def _close(self) -> None: ...

    # --- stream description ----------------------------------------------------------------------------------------
    @property
    @abstractmethod
    def n_channels(self) -> int: ...

    @property
    @abstractmethod
    def sample_rate_hz(self) -> float: ...

    @property
    def channel_names(self) -> list[str]:
        return [f"ch{i}" for i in range(self.n_channels)]

    # --- data ------------------------------------------------------------------------------------------------------
    @abstractmethod
    def pump(self, ring: RingBuffer, timeout_s: float = 0.0) -> int:
        """Move every available sample into `ring`, waiting up to timeout_s for the first; return how many moved."""

    @property
    def stale(self) -> bool:
        """True while no fresh data is flowing (the loop must then hold its safe state)."""
        return self._stale_reason is not None

    @property
    def stale_reason(self) -> str | None:
        return self._stale_reason

    @property
    @abstractmethod
    def t_data_s(self) -> float | None:
        """Source time of the newest sample, in seconds from the first sample (replay: recording time)."""

    @property
    def exhausted(self) -> bool:
        """True when no more samples will ever come (a replay at the end of its file)."""
        return False
