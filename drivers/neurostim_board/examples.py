"""The worked examples of docs/protocol.md, produced by the codec itself:
`python -m neurostimd.drivers.neurostim_board.examples`
prints the section, and tests/drivers/test_protocol_doc.py fails when the doc and this output disagree."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
from cobs import cobs

from neurostimd.drivers.neurostim_board.codec import (
    Ack,
    Bye,
    Frame,
    Heartbeat,
    Hello,
    Info,
    MsgType,
    Nak,
    NakReason,
    SampleFormat,
    Samples,
    SetStim,
    Status,
    StatusReq,
    Stop,
    encode,
)
from neurostimd.drivers.types import BoardLimits, StimParams

# The session token of every example (a host draws its own at random).
TOKEN = bytes.fromhex("a1b2c3d4e5f60718")
OTHER_TOKEN = bytes.fromhex("0badc0ffee0ddf00")
LIMITS = BoardLimits(min_frequency_hz=1.0, max_frequency_hz=250.0, max_amplitude_ma=6.0, min_pulse_width_us=10.0,
                     max_pulse_width_us=1000.0, max_charge_per_phase_uc=3.0, watchdog_ms=250)
_WIDTH = 116  # bytes per line, wrapped like the rest of the doc


def _hex_lines(label: str, data: bytes) -> list[str]:
    words = data.hex(" ").split(" ")
    lines, line = [], label
    for w in words:
        if len(line) + 1 + len(w) > _WIDTH:
            lines.append(line)
            line = " " * len(label)
        line += " " + w
    lines.append(line)
    return lines


def _dump(frame: Frame, *, body: bool = True) -> list[str]:
    wire = encode(frame)
    out = _hex_lines("body", cobs.decode(wire[1:-1])) if body else []
    return out + _hex_lines("wire", wire)


def _block(*dumps: list[str]) -> list[str]:
    return ["```", *[line for d in dumps for line in d], "```", ""]


def _para(text: str) -> str:
    return textwrap.fill(text, 118, break_on_hyphens=False)


def worked_examples() -> str:
    """The markdown of the worked-examples section (between the doc's BEGIN/END markers)."""
    stim = StimParams(50.0, 2.0, 200.0, 50.0)
    info = Info("sim-1", "sim-0.2.0", 2, 1000.0, SampleFormat.INT16, 0.195, LIMITS)
    samples = Samples(1000, SampleFormat.INT16, np.array([[1, -1], [256, 0]], dtype=np.int16))
    lines = [
        _para(f"Session token of these examples: `{TOKEN.hex(' ')}` (a host draws its own with a cryptographic random "
              "generator). Each line is the exact byte sequence on the wire, leading and trailing delimiter included; "
              "\"body\" is the same frame before COBS."),
        "",
        _para("**HELLO**, seq 0:"),
        "",
        *_block(_dump(Frame(0, Hello(TOKEN)))),
        _para("Header `02` version, `01` HELLO, `00 00` seq 0, `08 00` an 8-byte payload: the token; then the "
              "CRC-32 of those 14 bytes, little-endian."),
        "",
        _para("**INFO** answering it (device `sim-1`, firmware `sim-0.2.0`, 2 channels, 1000 Hz, int16, 0.195 "
              "µV/LSB, the simulator's default limits: 1–250 Hz, 6 mA, 10–1000 µs, 3 µC, watchdog 250 ms). It does "
              "not carry the token:"),
        "",
        *_block(_dump(Frame(0, info))),
        _para("**SET_STIM** 50 Hz, 2 mA, 200 µs, 50 µs gap, seq 1 (the token, then `50.0f` = `00 00 48 42`, `2.0f` = "
              "`00 00 00 40`, `200.0f` = `00 00 48 43`, `50.0f`):"),
        "",
        *_block(_dump(Frame(1, SetStim(TOKEN, stim)))),
        _para("**ACK** of it (seq 1, acknowledged type `04`):"),
        "",
        *_block(_dump(Frame(1, Ack(MsgType.SET_STIM)))),
        _para("**NAK** `out_of_limits` (code 2) of a SET_STIM with seq 2:"),
        "",
        *_block(_dump(Frame(2, Nak(MsgType.SET_STIM, NakReason.OUT_OF_LIMITS)))),
        _para(f"A **SET_STIM from another process** (token `{OTHER_TOKEN.hex(' ')}`, seq 700, 100 Hz / 6 mA / "
              "500 µs) and the board's **NAK `bad_session`** (code 6); the board runs what it ran before:"),
        "",
        *_block(_dump(Frame(700, SetStim(OTHER_TOKEN, StimParams(100.0, 6.0, 500.0, 50.0))), body=False),
                _dump(Frame(700, Nak(MsgType.SET_STIM, NakReason.BAD_SESSION)), body=False)),
        _para("Its **HELLO** while our session is alive, and the **NAK `busy`** (code 3) it gets instead of INFO:"),
        "",
        *_block(_dump(Frame(701, Hello(OTHER_TOKEN)), body=False),
                _dump(Frame(701, Nak(MsgType.HELLO, NakReason.BUSY)), body=False)),
        _para("**HEARTBEAT** seq 3, **STOP** seq 4, **STATUS_REQ** seq 5, **BYE** seq 6:"),
        "",
        *_block(_dump(Frame(3, Heartbeat(TOKEN)), body=False), _dump(Frame(4, Stop(TOKEN)), body=False),
                _dump(Frame(5, StatusReq(TOKEN)), body=False), _dump(Frame(6, Bye(TOKEN)), body=False)),
        _para("**STATUS** answering seq 5: stimulating at 50 Hz / 2 mA / 200 µs / 50 µs, impedance 1500 Ω measured, no "
              "faults (flags `03`):"),
        "",
        *_block(_dump(Frame(5, Status(True, stim, 1500.0, 0)))),
        _para("**SAMPLES**, board frame 7: 2 samples × 2 channels int16 starting at sample 1000; rows `[1, -1]` and "
              "`[256, 0]`:"),
        "",
        *_block(_dump(Frame(7, samples))),
    ]
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> int:
    sys.stdout.write(worked_examples())
    return 0


if __name__ == "__main__":
    sys.exit(main())
