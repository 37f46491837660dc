"""What every neurostimd LSL outlet (decisions, markers, signal) says about itself, and the one clock they stamp
with. docs/lsl-outputs.md lists the fields.

Metadata (`desc`, in the XDF meta-data conventions that LabRecorder writes into the file's StreamHeader):
`manufacturer` ("neurostimd", where MNE-LSL looks for it in an XDF header), `acquisition` (manufacturer, model,
serial_number: the device's identity when there is one, software_version), `channels/channel` (label, unit, type)
and a `neurostimd` block: version, bundle path, `bundle_sha256` (the sha256 of the bundle's manifest.json, which
itself holds the sha256 of every other file of the bundle, model.tflite included, and is verified at load: one hash
names the whole bundle), config file, source kind, shadow.

Time: `LslTime` maps the loop's clock (monotonic nanoseconds) to pylsl.local_clock() seconds. On Linux both are
CLOCK_MONOTONIC (Python's time.monotonic and liblsl's std::chrono::steady_clock), so the measured offset is only
the measurement's noise and is taken as zero: a decision's timestamp is its tick time exactly. Every outlet of a
session stamps through the same LslTime, so a marker and its decision carry the same float.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

# An offset below this between the loop's clock and LSL's can only be measurement noise of one clock read twice.
SAME_CLOCK_S = 1e-3
MANIFEST = "manifest.json"


def software_version() -> str:
    """neurostimd's installed version (importlib.metadata), or "unknown" when it is not installed."""
    try:
        return importlib.metadata.version("neurostimd")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def bundle_sha256(bundle_dir: Path | str) -> str | None:
    """The sha256 of a bundle's manifest.json (None when it cannot be read)."""
    try:
        return hashlib.sha256((Path(bundle_dir) / MANIFEST).read_bytes()).hexdigest()
    except OSError as err:
        log.warning("bundle_hash_unavailable", bundle=str(bundle_dir), error=str(err))
        return None


@dataclass(frozen=True)
class StreamMeta:
    """The session's identity, written into each outlet's description."""

    version: str
    bundle: str | None = None
    bundle_sha256: str | None = None
    config: str | None = None
    source: str | None = None
    device_id: str | None = None  # the stimulator's identity (BoardInfo.device_id), when there is one
    shadow: bool = False

    def write(self, desc: Any, *, model: str, serial_number: str | None = None) -> None:
        """Append manufacturer, acquisition and the neurostimd block to an LSL `desc` element."""
        desc.append_child_value("manufacturer", "neurostimd")
        acq = desc.append_child("acquisition")
        acq.append_child_value("manufacturer", "neurostimd")
        acq.append_child_value("model", model)
        sn = serial_number if serial_number is not None else self.device_id
        if sn:
            acq.append_child_value("serial_number", sn)
        acq.append_child_value("software_version", self.version)
        ns = desc.append_child("neurostimd")
        ns.append_child_value("version", self.version)
        for key, value in (("bundle", self.bundle), ("bundle_sha256", self.bundle_sha256),
                           ("config", self.config), ("source", self.source), ("device_id", self.device_id)):
            if value is not None:
                ns.append_child_value(key, value)
        if self.bundle_sha256 is not None:
            ns.append_child_value("bundle_hash_of", MANIFEST)
        ns.append_child_value("shadow", "true" if self.shadow else "false")


def write_channels(desc: Any, channels: Sequence[tuple[str, str, str]]) -> None:
    """`desc/channels/channel` with label, unit and type for each (label, unit, type)."""
    xml = desc.append_child("channels")
    for label, unit, kind in channels:
        ch = xml.append_child("channel")
        ch.append_child_value("label", label)
        ch.append_child_value("unit", unit)
        ch.append_child_value("type", kind)


def _mono_minus_lsl_s(mono: Callable[[], float]) -> float:
    import pylsl

    best: tuple[float, float] | None = None
    for _ in range(5):
        a = mono()
        b = pylsl.local_clock()
        c = mono()
        cand = (c - a, (a + c) / 2 - b)
        if best is None or cand[0] < best[0]:
            best = cand
    assert best is not None
    return best[1]


class LslTime:
    """The loop's clock (ns) → pylsl.local_clock() seconds, for every outlet of one session. `offset_s` is the loop
    clock minus LSL's, measured once: 0.0 exactly when they are one clock (the daemon's MonotonicClock on Linux);
    otherwise (a replay's virtual clock, another platform) the measured value, so that the stamps still land on
    LSL's clock as of the measurement."""

    def __init__(self, now_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self._now_ns = now_ns
        offset = _mono_minus_lsl_s(lambda: now_ns() / 1e9)
        self.same_clock = abs(offset) < SAME_CLOCK_S
        self.offset_s = 0.0 if self.same_clock else offset
        if not self.same_clock:
            log.info("lsl_clock_offset", offset_s=round(offset, 6),
                     detail="the loop's clock is not LSL's: outlet stamps are shifted by the measured offset")

    def from_ns(self, t_ns: int) -> float:
        """LSL seconds of a loop-clock time in ns."""
        return t_ns / 1e9 - self.offset_s

    def at(self, t_ns: int | None) -> float:
        """LSL seconds of a loop-clock time, or of now when there is none (what every outlet stamps with)."""
        return self.from_ns(self._now_ns() if t_ns is None else t_ns)

    def from_s(self, t_s: float) -> float:
        """LSL seconds of a loop-clock time in seconds (the ring's timestamps)."""
        return t_s - self.offset_s

    def now(self) -> float:
        """LSL seconds of the loop clock's now."""
        return self.at(None)
