"""Sample sources (LSL inlet, stimulator board, replayed recording) behind one interface, chosen in the config."""

from __future__ import annotations

from neurostimd.clock import Clock, VirtualClock
from neurostimd.config import BoardSourceConfig, LslSourceConfig, ReplaySourceConfig
from neurostimd.drivers.base import Driver
from neurostimd.errors import SourceError
from neurostimd.sources.base import Source

__all__ = ["Source", "make_source"]


def make_source(
    cfg: BoardSourceConfig | LslSourceConfig | ReplaySourceConfig,
    *,
    driver: Driver | None = None,
    clock: Clock | None = None,
    stale_after_ms: float = 250.0,
) -> Source:
    """The source a config asks for (not opened yet). A board source needs the driver; a replay at speed "max"
    runs on `clock` if it is a VirtualClock, else on a new one."""
    if isinstance(cfg, BoardSourceConfig):
        if driver is None:
            raise SourceError("source.kind = \"board\" reads samples through the stimulator driver, but no driver "
                              "was given; configure [device]")
        from neurostimd.sources.board import BoardSource

        return BoardSource(driver, stale_after_ms=stale_after_ms)
    if isinstance(cfg, LslSourceConfig):
        from neurostimd.sources.lsl import LslSource

        return LslSource(cfg)
    if isinstance(cfg, ReplaySourceConfig):
        from neurostimd.sources.replay import ReplaySource

        speed, on = (1.0, clock if isinstance(clock, VirtualClock) else VirtualClock()) if cfg.speed == "max" else \
            (float(cfg.speed), clock)
        return ReplaySource(cfg.path, speed, on, loop=cfg.loop, fs=cfg.sample_rate_hz, units=cfg.units,
                            channels=cfg.channels, timestamp_jitter_ms=cfg.timestamp_jitter_ms)
    raise SourceError(f"unknown source kind {getattr(cfg, 'kind', cfg)!r}; use board, lsl or replay")
