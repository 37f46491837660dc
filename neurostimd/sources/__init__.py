"""Sample sources (LSL inlet, stimulator board, replayed recording) behind one interface, chosen in the config.

Each kind's settings model is in `settings.py` and listed in `neurostimd.registry.SOURCES`; `make_source` builds the
one a config names."""

from __future__ import annotations

from typing import Any

from neurostimd.sources.base import Source
from neurostimd.sources.settings import SourceContext

__all__ = ["Source", "SourceContext", "make_source"]


def make_source(cfg: Any, *, driver: Any = None, clock: Any = None, stale_after_ms: float = 250.0) -> Source:
    """The source a `[source]` settings model asks for (not opened yet). A board source needs the driver; a replay
    at speed "max" runs on `clock` if it is a VirtualClock, else on a new one."""
    return cfg.build(SourceContext(driver=driver, clock=clock, stale_after_ms=stale_after_ms))
