"""docs/protocol.md stays true: its worked examples are the codec's output, and every wire dump in it decodes with
the codec and re-encodes to the same bytes."""

from __future__ import annotations

import re
from pathlib import Path

from neurostimd.drivers.neurostim_board.codec import PROTOCOL_VERSION, Frame, SetStim, decode, encode
from neurostimd.drivers.neurostim_board.examples import TOKEN, worked_examples
from neurostimd.drivers.types import StimParams

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def dumps(kind: str) -> list[bytes]:
    """The hex dumps labelled `kind` ("wire" or "body") in the doc, continuation lines joined."""
    out = []
    lines = DOC.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith(kind + " "):
            hexes = line[len(kind) + 1:]
            j = i + 1
            while j < len(lines) and re.fullmatch(r"\s+([0-9a-f]{2} ?)+", lines[j]):
                hexes += " " + lines[j].strip()
                j += 1
            out.append(bytes.fromhex(hexes))
    return out


def test_the_worked_examples_are_what_the_codec_generates() -> None:
    """The section between the doc's GENERATED markers is exactly what
    `python -m neurostimd.drivers.neurostim_board.examples` prints."""
    text = DOC.read_text()
    m = re.search(r"<!-- BEGIN GENERATED EXAMPLES[^>]*-->\n(.*?)<!-- END GENERATED EXAMPLES -->", text, re.S)
    assert m, "docs/protocol.md lost its generated-examples markers"
    assert m.group(1) == worked_examples(), "regenerate §8 with `python -m neurostimd.drivers.neurostim_board.examples`"
    assert f"version {PROTOCOL_VERSION}" in text.splitlines()[0]


def test_every_wire_dump_in_the_doc_round_trips() -> None:
    """Each `wire` dump in docs/protocol.md is one valid frame whose re-encoding is byte-identical."""
    wires = dumps("wire")
    assert len(wires) >= 14
    for wire in wires:
        consumed, frame = decode(wire[1:])
        assert frame is not None and consumed == len(wire) - 1
        assert encode(frame) == wire


def test_the_documented_set_stim_example_is_what_the_codec_sends() -> None:
    """The doc's SET_STIM example is the codec's encoding of 50 Hz / 2 mA / 200 µs / 50 µs with seq 1."""
    assert encode(Frame(1, SetStim(TOKEN, StimParams(50.0, 2.0, 200.0, 50.0)))) in dumps("wire")
