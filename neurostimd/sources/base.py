"""The one interface every sample source fills in (LSL inlet, stimulator board, replayed recording): open/close,
`pump()`, which moves every available sample into the ring buffer in µV and reports staleness instead of raising,
and what the source declares about its channels (names, range) for the loop's checks."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from neurostimd.core.ringbuffer import RingBuffer
from neurostimd.drivers.base import Lifecycle

# The ring's historical timestamp tolerance: for sources whose stamps are arrival estimates, not sample clocks.
DEFAULT_TIMESTAMP_TOLERANCE_S = 0.1


class Source(Lifecycle):
    """A stream of multichannel samples.

    open() and close() are idempotent and the source is a context manager. `pump()` never raises on bad data:
    trouble shows as `stale` / `stale_reason` and as flags in the ring buffer.

    Channels: a source *offers* channels (after its own `[source] channels` pick); `select_channels(order)` (called
    once, before the ring exists) makes it deliver offered channel `order[i]` as ring column i — the loop uses it to
    put a stream's channels into the model's order. `n_channels`, `channel_names`, `declared_channel_names` and
    `range_uv` describe what is delivered.
    """

    kind: str = "abstract"

    def __init__(self) -> None:
        super().__init__()
        self._stale_reason: str | None = "not open"
        self._order: npt.NDArray[np.intp] | None = None

    def close(self) -> None:
        was_open = self._is_open
        try:
            super().close()
        finally:
            if was_open:
                self._stale_reason = "closed"

    # --- stream description ----------------------------------------------------------------------------------------
    @abstractmethod
    def _offered_channels(self) -> int:
        """How many channels the source offers (before select_channels)."""

    def _offered_names(self) -> list[str] | None:
        """The offered channels' declared names, or None when the source does not name them."""
        return None

    def _offered_range_uv(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None:
        """Per offered channel (lo, hi) µV at or beyond which its converter is saturated, when the source says."""
        return None

    @property
    def n_channels(self) -> int:
        return int(self._order.shape[0]) if self._order is not None else self._offered_channels()

    @property
    @abstractmethod
    def sample_rate_hz(self) -> float: ...

    @property
    def declared_channel_names(self) -> list[str] | None:
        """Names of the delivered channels as the stream or file declares them; None when it names none (a board,
        an LSL stream without labels, an .npz without channel_names)."""
        names = self._offered_names()
        if names is None:
            return None
        return [names[i] for i in self._order] if self._order is not None else list(names)

    @property
    def channel_names(self) -> list[str]:
        """Column names for the delivered channels: the declared ones, else generated ch0, ch1, ..."""
        return self.declared_channel_names or [f"ch{i}" for i in range(self.n_channels)]

    @property
    def range_uv(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None:
        """Per delivered channel (lo, hi) µV: the converter's rails, when the source declares them."""
        r = self._offered_range_uv()
        if r is None or self._order is None:
            return r
        return r[0][self._order], r[1][self._order]

    @property
    def timestamp_tolerance_s(self) -> float:
        """How far the ring may find consecutive timestamps off the sample period before it flags a clock event."""
        return DEFAULT_TIMESTAMP_TOLERANCE_S

    def select_channels(self, order: Sequence[int] | npt.NDArray[np.integer]) -> None:
        """Deliver offered channel order[i] as ring column i from now on (a reorder or a subset)."""
        idx = np.asarray(order, dtype=np.intp).reshape(-1)
        n = self._offered_channels()
        if idx.size == 0 or idx.min() < 0 or idx.max() >= n or np.unique(idx).size != idx.size:
            raise ValueError(f"channel order {idx.tolist()} is not a selection of {n} channels")
        self._order = None if np.array_equal(idx, np.arange(n)) else idx
        self._order_changed()

    def _order_changed(self) -> None:
        """Hook: the delivered channels changed (rebuild index arrays, buffers)."""
        return None

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
