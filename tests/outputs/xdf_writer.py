"""A minimal multi-stream XDF 1.0 writer for tests, written from the format's specification (pyxdf only reads):
what LabRecorder would write from the streams a test received — each stream's full info as its StreamHeader, its
samples with their timestamps, a StreamFooter. Numeric (float32) and string streams."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def _varlen(n: int) -> bytes:
    if n < 256:
        return struct.pack("<BB", 1, n)
    if n < 2**32:
        return struct.pack("<BI", 4, n)
    return struct.pack("<BQ", 8, n)


def _chunk(tag: int, content: bytes) -> bytes:
    body = struct.pack("<H", tag) + content
    return _varlen(len(body)) + body


@dataclass
class XdfStream:
    header_xml: str  # the stream's info as received (inlet.info().as_xml())
    samples: Sequence[Any]
    stamps: Sequence[float]
    string: bool = False


def write_xdf(path: Path, streams: Sequence[XdfStream]) -> None:
    out = b"XDF:" + _chunk(1, b'<?xml version="1.0"?><info><version>1.0</version></info>')
    for sid, s in enumerate(streams, start=1):
        out += _chunk(2, struct.pack("<I", sid) + s.header_xml.encode())
    for sid, s in enumerate(streams, start=1):
        body = bytearray(struct.pack("<I", sid) + _varlen(len(s.stamps)))
        for sample, ts in zip(s.samples, s.stamps, strict=True):
            body += struct.pack("<Bd", 8, float(ts))
            if s.string:
                for v in sample:
                    raw = str(v).encode()
                    body += _varlen(len(raw)) + raw
            else:
                body += np.asarray(sample, dtype="<f4").tobytes()
        out += _chunk(3, bytes(body))
        footer = (f'<?xml version="1.0"?><info><first_timestamp>{s.stamps[0]!r}</first_timestamp>'
                  f'<last_timestamp>{s.stamps[-1]!r}</last_timestamp><sample_count>{len(s.stamps)}</sample_count>'
                  f"</info>")
        out += _chunk(6, struct.pack("<I", sid) + footer.encode())
    path.write_bytes(out)
