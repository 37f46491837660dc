"""The one abstract stimulator driver (the kinds a config can name are listed in neurostimd.registry).

Drivers fill in a few protected methods; the base adds idempotent open/close, the context manager and a warning for
a driver that was never closed (as python-can's BusABC does). The values drivers speak in live in `types`."""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from typing import ClassVar, Literal, Self, get_args

from neurostimd.drivers.errors import DriverError
from neurostimd.drivers.types import BoardInfo, BoardStatus, DriverCounters, SampleBlock, StimParams

Capability = Literal["samples"]
CAPABILITIES: frozenset[str] = frozenset(get_args(Capability))


class Lifecycle(ABC):
    """Idempotent open()/close(), the context manager, and a ResourceWarning for an instance opened and never
    closed (as python-can's BusABC does). Subclasses implement `_open` and `_close`; drivers and sources share it."""

    def __init__(self) -> None:
        self._is_open = False
        self._closed_explicitly = False

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


class Driver(Lifecycle):
    """A stimulator as the daemon sees it.

    open() and close() are idempotent; the driver is a context manager. Subclasses implement `_open`, `_close`,
    info(), set_stimulation(), stop(), status() and counters; every method that talks to the device raises
    DriverError (or DriverTimeout / BoardLost) on failure. The rest has defaults for the simplest device.

    `capabilities` (class-level, a frozenset of `Capability`) names what a driver has beyond that:
    - "samples": the device streams samples and read_samples() returns them (a board source needs it). Without
      it read_samples() raises DriverError, and info()'s stream fields mean nothing (n_channels = 0).

    service(now_ns) is called by the loop once per tick, whatever the source: a driver does there what its device
    needs to go on (heartbeats, re-arming a finite train, draining the link). info().limits.watchdog_ms is how long
    the device stimulates on after the host falls silent: its dead-man timer, or the length of the train it re-arms.
    """

    kind: ClassVar[str] = "abstract"
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    # The version of the device protocol this driver speaks, as info().protocol_version reports it (None: any).
    protocol_version: ClassVar[int | None] = None

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        unknown = set(cls.capabilities) - CAPABILITIES
        if unknown:
            raise TypeError(f"{cls.__name__}.capabilities names {sorted(unknown)}; known: {sorted(CAPABILITIES)}")
        if "samples" in cls.capabilities and cls.read_samples is Driver.read_samples:
            raise TypeError(f"{cls.__name__} declares the \"samples\" capability but does not implement read_samples")

    def _require_open(self) -> None:
        if not self._is_open:
            raise DriverError(f"{type(self).__name__} is not open: call open() first (or use it in a with-block)")

    # --- the board -------------------------------------------------------------------------------------------------
    @abstractmethod
    def info(self) -> BoardInfo:
        """The board's INFO from the handshake (cached; re-read after a reconnect)."""

    @abstractmethod
    def set_stimulation(self, params: StimParams) -> None:
        """Send SET_STIM and return once the board ACKed it; NAK → DriverError with `reason`."""

    @abstractmethod
    def stop(self) -> None:
        """Send STOP and return once the board ACKed it."""

    @abstractmethod
    def status(self) -> BoardStatus:
        """Ask the board for STATUS and return it."""

    @property
    @abstractmethod
    def counters(self) -> DriverCounters: ...

    # --- optional, with the defaults of a device that streams nothing and needs nothing between commands ----------
    def read_samples(self, timeout_s: float = 0.0) -> list[SampleBlock]:
        """Every sample block received since the last call, waiting up to timeout_s for the first one (drivers with
        the "samples" capability; the others raise DriverError). Blocks left unread across two service() calls
        may be dropped: nobody reads them."""
        raise DriverError(f"{type(self).__name__} streams no samples (it lacks the \"samples\" capability): read "
                          f"them from another [source] (lsl, replay), not from the stimulator")

    # --- for drivers that reconnect from service(): one attempt when due, backing off 0.5 s → 5 s ---------------------
    _reconnect_at_ns: int = 0
    _reconnect_backoff_ns: int = 500_000_000

    def _reconnect_when_due(self, now_ns: int, *, first_ms: float = 500.0, max_ms: float = 5000.0) -> bool:
        """For a driver whose link is lost: `reconnect()` once its back-off has passed (doubling from `first_ms` to
        `max_ms` after each failure, back to `first_ms` after a success). True when the link is back. The loop never
        calls reconnect() itself: a driver calls this from service(), so a device that comes back is used again."""
        if now_ns < self._reconnect_at_ns:
            return False
        ok = self.reconnect()
        self._reconnect_backoff_ns = int(first_ms * 1e6) if ok else min(2 * self._reconnect_backoff_ns,
                                                                          int(max_ms * 1e6))
        self._reconnect_at_ns = now_ns + self._reconnect_backoff_ns
        return ok

    def deliverable(self, params: StimParams) -> StimParams:
        """What the device will actually run when told `params`: its own rounding (a 50 µs cycle, whole µA), pure and
        without I/O. The controller checks, sends, audits and commits this, not the request; a rounding that raises
        the amplitude or the pulse width is refused there. Default: the device runs `params` exactly."""
        return params

    @property
    def max_exchange_ms(self) -> float:
        """The longest one exchange with the device may take (a request and its retries), during which frames may
        reach it with no new audit record written: dose recovery adds it to a crashed run's last record. The default
        is deliberately long, so that a driver that does not say over-counts the dose rather than under-counts it."""
        return 1000.0

    def service(self, now_ns: int) -> None:
        """The device's per-tick upkeep (heartbeats, re-arming, draining), at the caller's time now_ns; called once
        per tick. The default has nothing to do."""

    # --- what the caller must know about the link (defaults for a driver that cannot lose or refuse its board) -----
    @property
    def lost(self) -> bool:
        """True while the board is unreachable (or the one that answered was refused) and stimulation is impossible."""
        return False

    def reconnect(self) -> bool:
        """Try to reach a lost device again; True when it is connected. The default, for a driver that cannot
        reconnect, only reports whether it is connected."""
        self._require_open()
        return not self.lost

    @property
    def refusal(self) -> str | None:
        """Why the board that answered the last reconnect was refused (None when it was not)."""
        return None

    @property
    def refusal_kind(self) -> str | None:
        """"board": not the board the caller was built for; "port": another host holds it; None: no refusal."""
        return None

    @property
    def session_epoch(self) -> int:
        """Changes whenever the driver opens a new session with the board: what the board runs is then unknown. The
        default never changes (a driver that reconnects by itself must count its connections here)."""
        return 0

    @property
    def resets(self) -> int:
        """How often the board restarted (or lost the session) under a connected driver: each time it runs nothing.
        A session that expired because the host itself was silent past the dead-man timeout is not counted here
        (the board did what it should, and the samples it did not send show as a gap)."""
        return 0
