"""Real LSL inlets on loopback for the output tests: open one by source_id, drain it, read its description."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from typing import Any

import pylsl


def open_inlet(source_id: str, timeout_s: float = 10.0) -> Any:
    """An inlet on the stream with this source_id, opened, without any timestamp post-processing."""
    found = pylsl.resolve_byprop("source_id", source_id, 1, timeout_s)
    assert found, f"no LSL stream with source_id {source_id!r} on loopback"
    inlet = pylsl.StreamInlet(found[0], max_buflen=360, processing_flags=0)
    inlet.open_stream(timeout_s)
    return inlet


def drain(inlet: Any, *, quiet_s: float = 1.0, limit_s: float = 20.0) -> tuple[list[Any], list[float]]:
    """Every sample that arrives until none has for `quiet_s`: (samples, timestamps)."""
    samples: list[Any] = []
    stamps: list[float] = []
    last = time.monotonic()
    end = last + limit_s
    while time.monotonic() < end and time.monotonic() - last < quiet_s:
        chunk, ts = inlet.pull_chunk(timeout=0.1, max_samples=100_000)
        if ts:
            samples += chunk
            stamps += ts
            last = time.monotonic()
    return samples, stamps


def description(inlet: Any) -> ET.Element:
    """The stream's full info (what LabRecorder writes as the XDF StreamHeader), parsed."""
    return ET.fromstring(inlet.info(10.0).as_xml())
