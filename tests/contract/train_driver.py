"""A stimulator that streams no samples and has no dead-man timer, and its driver. It exists to exercise the
capability seam of the Driver ABC: a driver without "samples" (read_samples refused, the defaults of lost, reconnect
and the session counters), run through the same contract suite as the board drivers.

The device runs finite pulse trains, as a Pulse Pal or a StimJim does: a train that is not re-armed ends by itself
`train_ms` after it was last armed. The driver re-arms it from service(), so stimulation goes on while the host's loop
runs and stops one train length after the host falls silent (that length is its limits' watchdog_ms). Pure Python,
in memory, on an injectable clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import ClassVar

from neurostimd.drivers.base import Capability, Driver
from neurostimd.drivers.errors import DriverError
from neurostimd.drivers.types import BoardInfo, BoardLimits, BoardStatus, DriverCounters, StimParams

TRAIN_LIMITS = BoardLimits(min_frequency_hz=1.0, max_frequency_hz=250.0, max_amplitude_ma=6.0,
                           min_pulse_width_us=10.0, max_pulse_width_us=1000.0, max_charge_per_phase_uc=3.0,
                           watchdog_ms=400)


class TrainDevice:
    """The device: one finite train at a time, within its own limits whatever it is told. Persists across the
    driver's close()/open(), as hardware does."""

    def __init__(self, limits: BoardLimits = TRAIN_LIMITS, *, now_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.limits = limits
        self.train_ns = limits.watchdog_ms * 1_000_000
        self.now_ns = now_ns
        self.connected = False
        self.params: StimParams | None = None
        self.ends_ns = 0
        self.trains_ran_out = 0  # trains that ended because nobody re-armed them

    def connect(self) -> BoardInfo:
        if self.connected:
            raise DriverError("the train device is already connected to another driver; close that one first")
        self.connected = True
        return BoardInfo(device_id="train-device", firmware_version="train-1", protocol_version=1, n_channels=0,
                         sample_rate_hz=0.0, sample_format="none", uv_per_lsb=1.0, limits=self.limits)

    def disconnect(self) -> None:
        self.halt()
        self.connected = False

    def violation(self, p: StimParams) -> str | None:
        """The first of its limits `p` breaks, or None."""
        lim = self.limits
        if not all(math.isfinite(v) for v in (p.frequency_hz, p.amplitude_ma, p.pulse_width_us, p.interphase_gap_us)):
            return "not_finite"
        if not lim.min_frequency_hz <= p.frequency_hz <= lim.max_frequency_hz:
            return "frequency"
        if not 0.0 <= p.amplitude_ma <= lim.max_amplitude_ma:
            return "amplitude"
        if not lim.min_pulse_width_us <= p.pulse_width_us <= lim.max_pulse_width_us:
            return "pulse_width"
        if p.amplitude_ma * p.pulse_width_us / 1000.0 > lim.max_charge_per_phase_uc:
            return "charge_per_phase"
        if p.interphase_gap_us < 0 or 2 * p.pulse_width_us + p.interphase_gap_us >= 1e6 / p.frequency_hz:
            return "pulse_fits_period"
        return None

    def start(self, p: StimParams) -> str | None:
        """Arm a train of `p` (replacing the one running); the refusal's name instead when `p` breaks a limit."""
        self._expire()
        why = self.violation(p)
        if why is None:
            self.params = p
            self.ends_ns = self.now_ns() + self.train_ns
        return why

    def rearm(self) -> bool:
        """Extend the running train by one train length; False when none runs (a train that ran out stays off)."""
        self._expire()
        if self.params is None:
            return False
        self.ends_ns = self.now_ns() + self.train_ns
        return True

    def halt(self) -> None:
        self.params = None

    def running(self) -> StimParams | None:
        self._expire()
        return self.params

    def _expire(self) -> None:
        if self.params is not None and self.now_ns() >= self.ends_ns:
            self.params = None
            self.trains_ran_out += 1


class TrainDriver(Driver):
    """The driver of a TrainDevice: no sample stream, no session; re-arms the train from service() every half
    train length of the caller's time."""

    kind: ClassVar[str] = "train-test"
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    protocol_version: ClassVar[int | None] = 1

    def __init__(self, device: TrainDevice) -> None:
        super().__init__()
        self.device = device
        self._info: BoardInfo | None = None
        self._counters = DriverCounters()
        self._rearm_at_ns: int | None = None  # caller time of the next re-arm; None while nothing should run

    def _open(self) -> None:
        self._info = self.device.connect()
        self._rearm_at_ns = None

    def _close(self) -> None:
        self.device.disconnect()
        self._rearm_at_ns = None

    def info(self) -> BoardInfo:
        self._require_open()
        assert self._info is not None  # set by _open
        return self._info

    def set_stimulation(self, params: StimParams) -> None:
        self._require_open()
        why = self.device.start(params)
        if why is not None:
            self._counters.naks += 1
            raise DriverError(f"the train device refused {params} ({why} is outside its limits)",
                              reason="out_of_limits")
        self._rearm_at_ns = 0  # at the next service()

    def stop(self) -> None:
        self._require_open()
        self.device.halt()
        self._rearm_at_ns = None

    def status(self) -> BoardStatus:
        self._require_open()
        p = self.device.running()
        return BoardStatus(stimulating=p is not None, params=p, impedance_ohm=None, fault_flags=0)

    def service(self, now_ns: int) -> None:
        self._require_open()
        if self._rearm_at_ns is None or now_ns < self._rearm_at_ns:
            return
        if self.device.rearm():
            self._counters.extra["rearms"] = self._counters.extra.get("rearms", 0) + 1
            self._rearm_at_ns = now_ns + self.device.train_ns // 2
        else:
            self._rearm_at_ns = None  # it ran out: only a new set_stimulation starts it again

    @property
    def counters(self) -> DriverCounters:
        return self._counters
