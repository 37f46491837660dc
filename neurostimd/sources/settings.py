"""The settings model of each source kind (`[source] kind = ...`), each with the `build()` that makes the source.

These modules import no source library: `build` imports the implementation when called (pylsl only for "lsl",
BrainFlow only for "brainflow"). The kinds are listed in `neurostimd.registry.SOURCES`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from neurostimd.core.settings import FilePath, Strict
from neurostimd.errors import SourceError

if TYPE_CHECKING:
    from neurostimd.sources.base import Source


@dataclass(frozen=True)
class SourceContext:
    """What a source may need besides its settings: the stimulator driver (a board source reads through it), the
    loop's clock, and the loop's staleness bound."""

    driver: Any = None
    clock: Any = None
    stale_after_ms: float = 250.0


class BoardSourceConfig(Strict):
    """Samples come from the stimulator board itself, through the driver (SAMPLES frames)."""

    kind: Literal["board"] = "board"

    def build(self, ctx: SourceContext) -> Source:
        if ctx.driver is None:
            raise SourceError("source.kind = \"board\" reads samples through the stimulator driver, but no driver "
                              "was given; configure [device]")
        from neurostimd.sources.board import BoardSource

        return BoardSource(ctx.driver, stale_after_ms=ctx.stale_after_ms)

    def resolve_paths(self, fix: Callable[[Path], Path]) -> BoardSourceConfig:
        return self


def _check_units(v: str | None) -> str | None:
    if v is not None:
        from neurostimd.core.units import config_uv

        config_uv(v)  # ValueError naming the accepted spellings
    return v


def _check_channels(v: list[str] | None) -> list[str] | None:
    if v is None:
        return v
    if not v or any(not c.strip() for c in v):
        raise ValueError("channels must list at least one non-empty channel name")
    seen: set[str] = set()
    for c in v:
        key = c.strip().casefold()
        if key in seen:
            raise ValueError(f"channels lists {c!r} twice (names compare without case and surrounding spaces)")
        seen.add(key)
    return v


class LslSourceConfig(Strict):
    """Samples come from a Lab Streaming Layer stream.

    `n_channels` and `sample_rate_hz` are what the stream must declare. `units` states the samples' unit for a stream
    that declares none (or an unknown one); `channels` picks, by name, the channels the model needs from a wider
    stream, in any order. `timestamp_jitter_ms` is how far an outlet's stamps may stray from its sample clock (0 for
    an outlet that stamps each sample at its rate; a few ms for one that stamps chunks at push time) before a step is
    a gap. `source_id` and `hostname` narrow the choice of stream; after a stream is chosen, only that stream (same
    source_id and host, or the same uid without a source_id) is reconnected to, unless `allow_other_outlets`."""

    kind: Literal["lsl"]
    name: str | None = None
    type: str | None = None
    source_id: str | None = None
    hostname: str | None = None
    resolve_timeout_s: float = Field(5.0, gt=0)
    n_channels: int = Field(gt=0)
    sample_rate_hz: float = Field(gt=0)
    stale_after_ms: float = Field(250.0, gt=0)
    units: str | None = None
    channels: list[str] | None = None
    timestamp_jitter_ms: float = Field(0.0, ge=0, le=1000)
    allow_other_outlets: bool = False

    _units = field_validator("units")(_check_units)
    _channels = field_validator("channels")(_check_channels)

    def build(self, ctx: SourceContext) -> Source:
        from neurostimd.sources.lsl import LslSource

        return LslSource(self)

    def resolve_paths(self, fix: Callable[[Path], Path]) -> LslSourceConfig:
        return self

    @model_validator(mode="after")
    def _one_selector(self) -> LslSourceConfig:
        if not (self.name or self.type or self.source_id or self.hostname):
            raise ValueError("set at least one of name, type, source_id or hostname to choose the LSL stream")
        if self.channels is not None and len(self.channels) > self.n_channels:
            raise ValueError(f"channels lists {len(self.channels)} names but n_channels (the stream's channel "
                             f"count) is {self.n_channels}")
        return self


class ReplaySourceConfig(Strict):
    """Samples come from a recording (a file read by neurostimd.sources.recordings, or a recorder session) played on
    a clock. `stream_name` / `stream_type` choose an XDF file's signal stream (required when it holds several)."""

    kind: Literal["replay"]
    path: FilePath
    speed: float | Literal["max"] = 1.0
    loop: bool = False
    sample_rate_hz: float | None = Field(None, gt=0)  # for files that carry no rate (CSV without time, ARFF)
    units: str | None = None  # for files that declare no unit (an EDF with an empty physical dimension, ...)
    channels: list[str] | None = None  # pick these channels, by name, from a wider recording
    timestamp_jitter_ms: float = Field(0.0, ge=0, le=1000)  # a timestamp step beyond 1.5 periods + this is a gap
    stream_name: str | None = Field(None, min_length=1)  # XDF: the signal stream's name
    stream_type: str | None = Field(None, min_length=1)  # XDF: the signal stream's type (EEG, ...)

    _units = field_validator("units")(_check_units)
    _channels = field_validator("channels")(_check_channels)

    def build(self, ctx: SourceContext) -> Source:
        """A replay at speed "max" runs on the context's clock if it is a VirtualClock, else on a new one."""
        from neurostimd.clock import VirtualClock
        from neurostimd.sources.replay import ReplaySource

        clock = ctx.clock
        speed, on = (1.0, clock if isinstance(clock, VirtualClock) else VirtualClock()) if self.speed == "max" else \
            (float(self.speed), clock)
        return ReplaySource(self.path, speed, on, loop=self.loop, fs=self.sample_rate_hz, units=self.units,
                            channels=self.channels, timestamp_jitter_ms=self.timestamp_jitter_ms,
                            stream_name=self.stream_name, stream_type=self.stream_type)

    def resolve_paths(self, fix: Callable[[Path], Path]) -> ReplaySourceConfig:
        return self.model_copy(update={"path": fix(self.path)})

    @field_validator("speed")
    @classmethod
    def _positive_speed(cls, v: float | str) -> float | str:
        if v != "max" and not (isinstance(v, float | int) and v > 0):
            raise ValueError("speed must be a positive number (x real time) or \"max\"")
        return v


# BrainFlow's channel lists (BoardShim.get_<kind>_channels). BrainFlow states a unit, µV, for its EXG kinds only
# (https://brainflow.readthedocs.io/en/stable/DataFormatDesc.html, "Units of Measure"); the other kinds are listed
# so that choosing one is refused at open with that reason rather than as an unknown word.
BRAINFLOW_CHANNEL_KINDS = ("eeg", "emg", "ecg", "eog", "exg", "eda", "ppg", "accel", "gyro", "temperature",
                           "resistance", "optical", "magnetometer", "rotation", "analog", "other")
BrainFlowChannelKind = Literal["eeg", "emg", "ecg", "eog", "exg", "eda", "ppg", "accel", "gyro", "temperature",
                               "resistance", "optical", "magnetometer", "rotation", "analog", "other"]


def _check_board_name(v: int | str | None) -> int | str | None:
    """A board is a BrainFlow board id (an integer) or a BoardIds name; the name is checked against BrainFlow's list
    at open (reading a config imports no BrainFlow)."""
    if isinstance(v, str) and not v.strip().replace("_", "").isalnum():
        raise ValueError(f"{v!r} is neither a BrainFlow board id (an integer) nor a BoardIds name such as "
                         f"\"SYNTHETIC_BOARD\" or \"CYTON_BOARD\"")
    return v


class BrainFlowParams(Strict):
    """BrainFlow's BrainFlowInputParams: what the board needs to be found (its BrainFlow page says which). `file` is
    the recording a PLAYBACK_FILE_BOARD plays; `master_board` the board a playback file or a streaming board carries
    (its channel layout and rate are that board's)."""

    serial_port: str = ""
    mac_address: str = ""
    ip_address: str = ""
    ip_address_aux: str = ""
    ip_address_anc: str = ""
    ip_port: int = Field(0, ge=0, le=65535)
    ip_port_aux: int = Field(0, ge=0, le=65535)
    ip_port_anc: int = Field(0, ge=0, le=65535)
    ip_protocol: int = Field(0, ge=0)  # BrainFlow's IpProtocolTypes: 0 none, 1 udp, 2 tcp
    other_info: str = ""
    timeout: int = Field(0, ge=0)  # seconds, for boards that search (BLE); 0: BrainFlow's default
    serial_number: str = ""
    file: FilePath | None = None
    file_aux: FilePath | None = None
    file_anc: FilePath | None = None
    master_board: int | str | None = None

    _master = field_validator("master_board")(_check_board_name)


class BrainFlowSourceConfig(Strict):
    """Samples come from an amplifier through BrainFlow (any board it supports, its synthetic board, a playback file
    or a streaming board).

    `board_id` is a BrainFlow board id or BoardIds name; `[source.params]` is BrainFlow's input params. The channels
    are BrainFlow's list of `channel_kind` for the board (in µV, as BrainFlow documents for EXG channels);
    `channels` picks some of them by BrainFlow's names (EEG channels of boards that name them). `n_channels` (the
    size of that list) and `sample_rate_hz` are what the board must have, checked at open. The board's package
    counter becomes the ring's sample counter, so dropped packages are gaps (`gap_detection = "timestamps"` for a
    board whose counter counts packets rather than samples). No samples for `stale_after_ms`: stale;
    for `reconnect_after_ms`: the session is released and prepared again, with back-off from
    `reconnect_interval_ms` to `reconnect_max_interval_ms`."""

    kind: Literal["brainflow"]
    board_id: int | str
    params: BrainFlowParams = BrainFlowParams()
    channel_kind: BrainFlowChannelKind = "eeg"
    channels: list[str] | None = None
    n_channels: int = Field(gt=0)
    sample_rate_hz: float = Field(gt=0)
    stale_after_ms: float = Field(250.0, gt=0)
    reconnect_after_ms: float = Field(1000.0, gt=0)
    reconnect_interval_ms: float = Field(500.0, gt=0)
    reconnect_max_interval_ms: float = Field(8000.0, gt=0)
    buffer_samples: int = Field(450_000, ge=1000)  # BrainFlow's ring buffer (start_stream), its default size
    # How dropped samples are found: "package_num" (the board's package number counts samples, wrapping at
    # package_modulus) or "timestamps" (for a board whose package number counts packets of several samples, or is
    # not written: a timestamp step above 1.5 periods + timestamp_jitter_ms is a gap)
    gap_detection: Literal["package_num", "timestamps"] = "package_num"
    package_modulus: int = Field(256, ge=2)
    timestamp_jitter_ms: float = Field(0.0, ge=0, le=1000)

    _board = field_validator("board_id")(_check_board_name)
    _channels = field_validator("channels")(_check_channels)

    def build(self, ctx: SourceContext) -> Source:
        from neurostimd.sources.brainflow import BrainFlowSource

        return BrainFlowSource(self)

    def resolve_paths(self, fix: Callable[[Path], Path]) -> BrainFlowSourceConfig:
        p = self.params
        update = {k: fix(getattr(p, k)) for k in ("file", "file_aux", "file_anc") if getattr(p, k) is not None}
        return self.model_copy(update={"params": p.model_copy(update=update)}) if update else self

    @model_validator(mode="after")
    def _consistent(self) -> BrainFlowSourceConfig:
        if self.channels is not None and len(self.channels) > self.n_channels:
            raise ValueError(f"channels lists {len(self.channels)} names but n_channels (the board's count of "
                             f"{self.channel_kind} channels) is {self.n_channels}")
        if self.reconnect_max_interval_ms < self.reconnect_interval_ms:
            raise ValueError(f"reconnect_max_interval_ms ({self.reconnect_max_interval_ms:g}) is below "
                             f"reconnect_interval_ms ({self.reconnect_interval_ms:g})")
        if self.reconnect_after_ms < self.stale_after_ms:
            raise ValueError(f"reconnect_after_ms ({self.reconnect_after_ms:g}) is below stale_after_ms "
                             f"({self.stale_after_ms:g}): a board is stale before it is reconnected")
        return self
