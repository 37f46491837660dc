"""The values the stimulator library speaks in: stimulation parameters, a board's limits, INFO and STATUS, sample
blocks and health counters. numpy only; no I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class StimParams:
    """One biphasic, charge-balanced pulse train: what SET_STIM carries."""

    frequency_hz: float
    amplitude_ma: float
    pulse_width_us: float
    interphase_gap_us: float = 50.0

    def as_dict(self) -> dict[str, float]:
        return {
            "frequency_hz": float(self.frequency_hz),
            "amplitude_ma": float(self.amplitude_ma),
            "pulse_width_us": float(self.pulse_width_us),
        }


@dataclass(frozen=True)
class BoardLimits:
    """The board's own hard limits, read back at the handshake. The board enforces them whatever the host sends."""

    min_frequency_hz: float
    max_frequency_hz: float
    max_amplitude_ma: float
    min_pulse_width_us: float
    max_pulse_width_us: float
    max_charge_per_phase_uc: float
    watchdog_ms: int


    def problems(self) -> list[str]:
        """What is wrong with these limits (empty when they are usable): every value finite and positive, each
        minimum at most its maximum, a dead-man timer present. A board reporting anything else is refused: its
        limits would be meaningless (a 0 Hz maximum crashed the gate) or switch the dead-man timer off."""
        out: list[str] = []
        for name in ("min_frequency_hz", "max_frequency_hz", "max_amplitude_ma", "min_pulse_width_us",
                     "max_pulse_width_us", "max_charge_per_phase_uc"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                out.append(f"{name} = {v!r} is not a positive finite number")
        for lo, hi in (("min_frequency_hz", "max_frequency_hz"), ("min_pulse_width_us", "max_pulse_width_us")):
            a, b = getattr(self, lo), getattr(self, hi)
            if isinstance(a, int | float) and isinstance(b, int | float) and a > b:
                out.append(f"{lo} = {a!r} is above {hi} = {b!r}")
        if not (isinstance(self.watchdog_ms, int) and self.watchdog_ms > 0):
            out.append(f"watchdog_ms = {self.watchdog_ms!r}: the board reports no dead-man timer")
        return out


@dataclass(frozen=True)
class BoardInfo:
    """What the board says about itself in INFO."""

    device_id: str
    firmware_version: str
    protocol_version: int
    n_channels: int
    sample_rate_hz: float
    sample_format: str  # "int16" or "float32" on the wire; read_samples always returns float32 µV
    uv_per_lsb: float  # scale from wire units to µV (1.0 for float32)
    limits: BoardLimits

    def problems(self) -> list[str]:
        """What makes this INFO unusable (empty when none): impossible stream settings or limits (see
        BoardLimits.problems)."""
        out: list[str] = []
        if not (isinstance(self.n_channels, int) and self.n_channels > 0):
            out.append(f"n_channels = {self.n_channels!r}")
        if not (math.isfinite(self.sample_rate_hz) and self.sample_rate_hz > 0):
            out.append(f"sample_rate_hz = {self.sample_rate_hz!r} is not a positive finite number")
        if not (math.isfinite(self.uv_per_lsb) and self.uv_per_lsb > 0):
            out.append(f"uv_per_lsb = {self.uv_per_lsb!r} is not a positive finite number")
        elif self.sample_format == "float32" and self.uv_per_lsb != 1.0:
            # float32 samples are µV on the wire (the protocol's rule): another scale means other units
            out.append(f"uv_per_lsb = {self.uv_per_lsb!r} for float32 samples, which are µV (1.0)")
        return out + self.limits.problems()

    def differences(self, other: BoardInfo) -> list[str]:
        """The settings in which `other` differs from this INFO, as "name: ours → theirs" lines: what a loop built
        for this board cannot take from a different one (stream format, scale, limits, dead-man timer). The device
        id and firmware version are not compared (a restarted simulator, or the same board after a firmware update
        with the same settings, is acceptable); the caller logs them."""
        out = []
        for name in ("n_channels", "sample_rate_hz", "sample_format", "uv_per_lsb"):
            a, b = getattr(self, name), getattr(other, name)
            if a != b:
                out.append(f"{name}: {a!r} → {b!r}")
        for name, a in self.limits.__dict__.items():
            b = getattr(other.limits, name)
            if a != b:
                out.append(f"limits.{name}: {a!r} → {b!r}")
        return out


@dataclass(frozen=True)
class BoardStatus:
    """What the board reports in STATUS."""

    stimulating: bool
    params: StimParams | None
    impedance_ohm: float | None  # None when the board has not measured it
    fault_flags: int
    fault_names: tuple[str, ...] = ()


@dataclass
class SampleBlock:
    """A block of consecutive samples as the board sent them.

    `first_index` is the board's sample counter of the first row; a jump between blocks is a gap.
    `t_recv_ns` is time.monotonic_ns() when the host received the block.
    """

    first_index: int
    data: npt.NDArray[np.float32]  # (n_samples, n_channels), µV
    t_recv_ns: int


@dataclass
class DriverCounters:
    """Health counters every driver keeps; the daemon exports them as metrics."""

    frames_ok: int = 0
    bad_frames: int = 0
    bytes_discarded: int = 0
    retries: int = 0
    timeouts: int = 0
    naks: int = 0
    reconnects: int = 0
    sample_gaps: int = 0
    extra: dict[str, int] = field(default_factory=dict)
