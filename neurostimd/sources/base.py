"""The one interface every sample source fills in (LSL inlet, stimulator board, replayed recording): open/close,
and `pump()`, which moves every available sample into the ring buffer and reports staleness instead of raising."""

from __future__ import annotations

from abc import abstractmethod

from drivers.base import Lifecycle
from neurostimd.ringbuffer import RingBuffer


class Source(Lifecycle):
    """A stream of multichannel samples.

    open() and close() are idempotent and the source is a context manager. `pump()` never raises on bad data:
    trouble shows as `stale` / `stale_reason` and as flags in the ring buffer.
    """

    kind: str = "abstract"

    def __init__(self) -> None:
        super().__init__()
        self._stale_reason: str | None = "not open"

    def close(self) -> None:
        was_open = self._is_open
        try:
            super().close()
        finally:
            if was_open:
                self._stale_reason = "closed"

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
