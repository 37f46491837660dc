"""XDF 1.0 files for tests, written from the format's specification (pyxdf reads but has no writer): numeric streams
with channel labels, units and types as LabRecorder files carry them, and string marker streams."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class XdfStream:
    """One stream: `data` (n, ch) numbers, or a list of string rows for a marker stream (`fs` 0)."""

    name: str
    type: str
    fs: float
    data: np.ndarray | list[list[str]]
    timestamps: np.ndarray
    labels: list[str] | None = None
    units: list[str] | None = None
    types: list[str] | None = None
    channel_format: str = "float32"


def _chunk(tag: int, content: bytes) -> bytes:
    body = struct.pack("<H", tag) + content
    return struct.pack("<BI", 4, len(body)) + body


def _header(s: XdfStream, n_ch: int) -> bytes:
    def chan(i: int) -> str:
        label = f"<label>{s.labels[i]}</label>" if s.labels is not None else ""
        unit = f"<unit>{s.units[i]}</unit>" if s.units is not None else ""
        kind = f"<type>{s.types[i]}</type>" if s.types is not None else ""
        return f"<channel>{label}{unit}{kind}</channel>"

    chans = "".join(chan(i) for i in range(n_ch)) if (s.labels or s.units or s.types) else ""
    desc = f"<desc><channels>{chans}</channels></desc>" if chans else "<desc/>"
    return (f"<?xml version=\"1.0\"?><info><name>{s.name}</name><type>{s.type}</type>"
            f"<channel_count>{n_ch}</channel_count><nominal_srate>{s.fs}</nominal_srate>"
            f"<channel_format>{s.channel_format}</channel_format>{desc}</info>").encode()


def _samples(s: XdfStream) -> bytes:
    n = len(s.timestamps)
    parts = [struct.pack("<BI", 4, n)]
    if s.channel_format != "string":  # fixed-size rows: [1-byte stamp length 8][float64 stamp][values]
        values = np.asarray(s.data).astype(np.dtype(s.channel_format).newbyteorder("<"))
        rows = np.zeros(n, dtype=[("len", "u1"), ("ts", "<f8"), ("v", values.dtype, (values.shape[1],))])
        rows["len"], rows["ts"], rows["v"] = 8, s.timestamps, values
        return parts[0] + rows.tobytes()
    for i in range(n):
        parts.append(struct.pack("<Bd", 8, float(s.timestamps[i])))
        for v in s.data[i]:
            b = str(v).encode()
            parts.append(struct.pack("<BI", 4, len(b)) + b)
    return b"".join(parts)


def write_xdf_streams(path: Path, streams: list[XdfStream]) -> None:
    """An XDF file holding `streams` (ids 1, 2, ... in order), each with a header, one samples chunk, two clock
    offsets and a footer."""
    out = b"XDF:" + _chunk(1, b"<?xml version=\"1.0\"?><info><version>1.0</version></info>")
    for k, s in enumerate(streams, start=1):
        n_ch = len(s.data[0]) if len(s.data) else (len(s.labels) if s.labels else 1)
        out += _chunk(2, struct.pack("<I", k) + _header(s, n_ch))
    for k, s in enumerate(streams, start=1):
        out += _chunk(3, struct.pack("<I", k) + _samples(s))
    for k, s in enumerate(streams, start=1):  # clock offsets (0: one clock) at both ends, as LabRecorder measures
        for t in (s.timestamps[:1], s.timestamps[-1:]):
            if len(t):
                out += _chunk(4, struct.pack("<Idd", k, float(t[0]), 0.0))
    for k, s in enumerate(streams, start=1):
        ts = s.timestamps
        footer = (f"<?xml version=\"1.0\"?><info><first_timestamp>{ts[0] if len(ts) else 0}</first_timestamp>"
                  f"<last_timestamp>{ts[-1] if len(ts) else 0}</last_timestamp><sample_count>{len(ts)}"
                  f"</sample_count></info>").encode()
        out += _chunk(6, struct.pack("<I", k) + footer)
    path.write_bytes(out)


def write_xdf(path: Path, data: np.ndarray, fs: float, names: list[str], units: list[str] | None = None,
              types: list[str] | None = None, timestamps: np.ndarray | None = None, *, name: str = "test",
              stream_type: str = "EEG", markers: list[XdfStream] | None = None) -> None:
    """One float32 signal stream (`name`, of `stream_type`), stamped from 10 s unless `timestamps`, plus any
    `markers` streams after it."""
    ts = 10.0 + np.arange(data.shape[0]) / fs if timestamps is None else timestamps
    sig = XdfStream(name, stream_type, fs, data, ts, labels=names, units=units, types=types)
    write_xdf_streams(path, [sig, *(markers or [])])


def marker_stream(name: str, stamps: list[float], values: list[str] | list[list[str]],
                  stream_type: str = "Markers") -> XdfStream:
    """A string marker stream at irregular rate: one row per stamp (a plain string is a one-channel row)."""
    rows = [v if isinstance(v, list) else [v] for v in values]
    return XdfStream(name, stream_type, 0.0, rows, np.asarray(stamps, dtype=np.float64), channel_format="string")
