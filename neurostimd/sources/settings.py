"""The settings model of each source kind (`[source] kind = ...`), each with the `build()` that makes the source.

These modules import no source library: `build` imports the implementation when called (pylsl only for "lsl").
The kinds are listed in `neurostimd.registry.SOURCES`."""

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
