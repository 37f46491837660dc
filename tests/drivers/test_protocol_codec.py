"""The board protocol codec: round trips, the documented byte layout, resynchronisation, and a fuzz run."""

from __future__ import annotations

import random
import struct
import zlib

import numpy as np
import pytest
from cobs import cobs

from neurostimd.drivers.errors import ProtocolError
from neurostimd.drivers.neurostim_board.codec import (
    MAX_ENCODED,
    SESSION_TOKEN_SIZE,
    Ack,
    BadFrame,
    Bye,
    Frame,
    FrameDecoder,
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
    decode,
    encode,
)
from neurostimd.drivers.types import BoardLimits, StimParams

TOKEN = bytes.fromhex("a1b2c3d4e5f60718")
LIMITS = BoardLimits(min_frequency_hz=1.0, max_frequency_hz=250.0, max_amplitude_ma=6.0, min_pulse_width_us=10.0,
                     max_pulse_width_us=1000.0, max_charge_per_phase_uc=3.0, watchdog_ms=250)


def all_messages() -> list[Frame]:
    rng = np.random.default_rng(0)
    return [
        Frame(0, Hello(TOKEN)),
        Frame(1, Info("board-7", "1.2.3", 32, 1000.0, SampleFormat.INT16, 0.25, LIMITS)),
        Frame(2, Samples(123_456_789_012, SampleFormat.INT16,
                         rng.integers(-32768, 32767, (10, 32)).astype(np.int16))),
        Frame(3, Samples(0, SampleFormat.FLOAT32, rng.standard_normal((5, 3)).astype(np.float32))),
        Frame(4, SetStim(TOKEN, StimParams(50.0, 2.0, 200.0, 50.0))),
        Frame(5, Stop(TOKEN)),
        Frame(6, Heartbeat(TOKEN)),
        Frame(7, Ack(MsgType.SET_STIM)),
        Frame(8, Nak(MsgType.SET_STIM, NakReason.OUT_OF_LIMITS)),
        Frame(9, StatusReq(TOKEN)),
        Frame(11, Bye(TOKEN)),
        Frame(12, Nak(MsgType.SET_STIM, NakReason.BAD_SESSION)),
        Frame(10, Status(True, StimParams(130.0, 1.5, 90.0, 20.0), 1200.0, 0b101)),
        Frame(65535, Status(False, None, None, 0)),
    ]


def same(a: Frame, b: Frame) -> bool:
    if isinstance(a.msg, Samples) and isinstance(b.msg, Samples):
        return (a.seq == b.seq and a.msg.first_index == b.msg.first_index
                and a.msg.sample_format == b.msg.sample_format and np.array_equal(a.msg.data, b.msg.data))
    return a == b


@pytest.mark.parametrize("frame", all_messages(), ids=lambda f: f.type.name)
def test_every_message_round_trips(frame: Frame) -> None:
    """encode() then decode() gives back the same frame, consuming exactly the encoded bytes."""
    wire = encode(frame)
    consumed, out = decode(wire[1:])  # the leading delimiter is an empty frame on its own
    assert consumed == len(wire) - 1 and out is not None and same(frame, out)


def test_set_stim_bytes_match_the_documented_layout() -> None:
    """A SET_STIM for 50 Hz / 2 mA / 200 µs / 50 µs, seq 1, is laid out exactly as docs/protocol.md says: version 2,
    the session token first in the payload, then the four float32 parameters."""
    wire = encode(Frame(1, SetStim(TOKEN, StimParams(50.0, 2.0, 200.0, 50.0))))
    assert wire[0] == 0 and wire[-1] == 0 and 0 not in wire[1:-1]
    body = cobs.decode(wire[1:-1])
    head = (bytes([2, 0x04]) + struct.pack("<HH", 1, SESSION_TOKEN_SIZE + 16) + TOKEN
            + struct.pack("<ffff", 50.0, 2.0, 200.0, 50.0))
    assert body == head + struct.pack("<I", zlib.crc32(head))


@pytest.mark.parametrize("token", [b"", b"short", bytes(9)])
def test_a_request_without_an_eight_byte_token_cannot_be_encoded(token: bytes) -> None:
    """Every host request needs an 8-byte session token: encoding one without is a ProtocolError, and a received
    request whose payload lacks it does not decode."""
    with pytest.raises(ProtocolError, match="token"):
        encode(Frame(1, Stop(token)))
    head = bytes([2, MsgType.STOP]) + struct.pack("<HH", 5, len(token)) + token
    with pytest.raises(BadFrame) as exc:
        decode(cobs.encode(head + struct.pack("<I", zlib.crc32(head))) + b"\x00")
    assert exc.value.reason == "bad_payload" and exc.value.seq == 5


def test_the_token_never_appears_in_a_repr() -> None:
    """A request's repr (what a log line or a traceback shows) leaves the session token out."""
    assert TOKEN.hex() not in repr(Frame(1, SetStim(TOKEN, StimParams(50.0, 2.0, 200.0)))) + repr(Stop(TOKEN))
    assert repr(TOKEN) not in repr(Hello(TOKEN))


def test_decode_asks_for_more_bytes_until_the_frame_is_complete() -> None:
    """A frame cut anywhere decodes to (0, None) until its last byte arrives."""
    wire = encode(Frame(3, SetStim(TOKEN, StimParams(20.0, 1.0, 100.0))))[1:]
    for cut in range(1, len(wire)):
        assert decode(wire[:cut]) == (0, None)
    assert decode(wire)[1] is not None


def test_decoder_resynchronises_after_garbage_and_bad_crc() -> None:
    """Garbage and a frame with a flipped bit are counted and skipped; the frames after them decode."""
    good = encode(Frame(1, Stop(TOKEN)))
    bad = bytearray(encode(Frame(2, Stop(TOKEN))))
    bad[3] ^= 0x10
    d = FrameDecoder()
    frames = d.feed(b"\x17\x99garbage" + good + bytes(bad) + good)
    assert [f.seq for f in frames] == [1, 1]
    assert d.bad_frames == 2 and d.bytes_discarded > 0


def test_bad_crc_raises_bad_frame_with_bytes_to_skip() -> None:
    """decode() raises BadFrame (a ProtocolError) whose `consumed` ends at the delimiter of the bad chunk."""
    wire = bytearray(encode(Frame(2, Heartbeat(TOKEN)))[1:])
    wire[2] ^= 0x01
    with pytest.raises(BadFrame) as exc:
        decode(bytes(wire) + b"tail")
    assert isinstance(exc.value, ProtocolError)
    assert exc.value.consumed == len(wire) and exc.value.reason in ("bad_crc", "bad_cobs")


def test_bad_payload_with_good_crc_reports_seq_and_type() -> None:
    """A CRC-valid frame whose payload does not parse names its seq and type (so the board can NAK it)."""
    head = bytes([2, MsgType.SET_STIM]) + struct.pack("<HH", 77, 3) + b"\x01\x02\x03"
    wire = cobs.encode(head + struct.pack("<I", zlib.crc32(head))) + b"\x00"
    with pytest.raises(BadFrame) as exc:
        decode(wire)
    assert exc.value.seq == 77 and exc.value.msg_type == MsgType.SET_STIM and exc.value.reason == "bad_payload"


def test_unknown_type_and_wrong_version_are_rejected() -> None:
    """Frames with an unknown type or another protocol version are refused with their reason."""
    for version, mtype, reason in ((2, 0x7F, "unknown_type"), (1, MsgType.STOP, "bad_version"),
                                   (3, MsgType.STOP, "bad_version")):
        head = bytes([version, mtype]) + struct.pack("<HH", 5, 0)
        wire = cobs.encode(head + struct.pack("<I", zlib.crc32(head))) + b"\x00"
        with pytest.raises(BadFrame) as exc:
            decode(wire)
        assert exc.value.reason == reason


def test_overlong_input_without_delimiter_is_discarded() -> None:
    """More bytes without a delimiter than any frame can have are discarded rather than buffered forever."""
    with pytest.raises(BadFrame) as exc:
        decode(b"\x01" * (MAX_ENCODED + 1))
    assert exc.value.reason == "too_long"
    d = FrameDecoder()
    d.feed(b"\x05" * (MAX_ENCODED + 10))
    assert d.pending == 0 and d.bad_frames == 1
    assert [f.seq for f in d.feed(encode(Frame(9, Stop(TOKEN))))] == [9]


def test_encode_rejects_what_does_not_fit() -> None:
    """encode() raises ProtocolError for a seq outside u16 or a payload over the length limit."""
    with pytest.raises(ProtocolError, match="seq"):
        encode(Frame(70_000, Stop(TOKEN)))
    big = Samples(0, SampleFormat.FLOAT32, np.zeros((1000, 17), dtype=np.float32))
    with pytest.raises(ProtocolError, match="fewer samples"):
        encode(Frame(0, big))


def test_fuzz_random_and_mutated_bytes_only_raise_protocol_error() -> None:
    """100 000+ random and mutated byte strings: decode returns or raises ProtocolError, never anything else."""
    rng = random.Random(20261129)
    valid = [encode(f) for f in all_messages()]
    n = 0
    for i in range(110_000):
        kind = i % 4
        if kind == 0:  # pure noise, with and without delimiters
            data = rng.randbytes(rng.randint(0, 64))
        elif kind == 1:  # a valid frame with bytes flipped
            b = bytearray(rng.choice(valid))
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            data = bytes(b)
        elif kind == 2:  # truncated / spliced frames
            a, b2 = rng.choice(valid), rng.choice(valid)
            data = a[:rng.randint(0, len(a))] + b2[rng.randint(0, len(b2)):]
        else:  # a COBS-valid body with a correct CRC but a random header and payload
            head = bytes([2, rng.randrange(256)]) + rng.randbytes(rng.randint(0, 40))
            data = cobs.encode(head + struct.pack("<I", zlib.crc32(head))) + b"\x00"
        buf = data
        while buf:
            try:
                consumed, _ = decode(buf)
            except ProtocolError as err:
                consumed = err.consumed if isinstance(err, BadFrame) else len(buf)
            if consumed == 0:
                break
            buf = buf[consumed:]
        n += 1
    assert n >= 100_000


def test_stream_decoder_survives_a_long_noisy_stream() -> None:
    """A stream of valid frames with noise between them yields every frame the noise did not touch."""
    rng = random.Random(7)
    frames = [Frame(i % 65536, SetStim(TOKEN, StimParams(float(1 + i % 100), 1.0, 100.0))) for i in range(2000)]
    stream = bytearray()
    for f in frames:
        stream += encode(f)
        if rng.random() < 0.3:
            stream += rng.randbytes(rng.randint(1, 30))
    d = FrameDecoder()
    got: list[Frame] = []
    pos = 0
    while pos < len(stream):
        step = rng.randint(1, 300)
        got += d.feed(bytes(stream[pos:pos + step]))
        pos += step
    assert got == frames  # the leading delimiter of each frame isolates the noise before it
