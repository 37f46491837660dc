"""The board protocol codec: typed messages, their byte layout, COBS framing and CRC-32. No I/O.

Shared by the host driver and the simulated board; docs/protocol.md documents the same layout byte for byte.

Wire frame: ``00 | COBS(body) | 00``. The body is a 6-byte header (version u8, type u8, seq u16 LE, payload length
u16 LE), the payload, and a CRC-32 (zlib / ISO-HDLC, little-endian) over header + payload. All multi-byte fields are
little-endian. The leading delimiter isolates any line noise that preceded a frame; receivers ignore empty frames.

Version 2 binds commands to a session: every host request starts its payload with the 8-byte session token that the
host chose at random for its HELLO, and the board refuses a request with another token (NAK bad_session). The board
never sends the token back, so a second process on the port cannot learn it from what it reads.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar, Self, cast

import numpy as np
import numpy.typing as npt
from cobs import cobs

from neurostimd.drivers.errors import ProtocolError
from neurostimd.drivers.types import BoardInfo, BoardLimits, BoardStatus, StimParams

PROTOCOL_VERSION = 2
SESSION_TOKEN_SIZE = 8  # bytes of the host's random session token at the start of every request payload
DELIMITER = b"\x00"
HEADER = struct.Struct("<BBHH")  # version, type, seq, payload length
CRC = struct.Struct("<I")
HEADER_SIZE = HEADER.size  # 6
CRC_SIZE = CRC.size  # 4
MAX_PAYLOAD = 65_535  # the length field is u16
MAX_BODY = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE
# COBS adds one byte per 254 bytes of data, plus one: no valid encoded frame is longer than this.
MAX_ENCODED = MAX_BODY + MAX_BODY // 254 + 2
SEQ_MODULO = 1 << 16


class MsgType(IntEnum):
    HELLO = 0x01
    INFO = 0x02
    SAMPLES = 0x03
    SET_STIM = 0x04
    STOP = 0x05
    HEARTBEAT = 0x06
    ACK = 0x07
    NAK = 0x08
    STATUS_REQ = 0x09
    STATUS = 0x0A
    BYE = 0x0B


class NakReason(IntEnum):
    BAD_FRAME = 1  # CRC passed but the payload does not parse for its type
    OUT_OF_LIMITS = 2  # a SET_STIM outside the board's own hard limits
    BUSY = 3  # the board cannot take the command now
    FAULT = 4  # the board is in a fault state and refuses to stimulate
    UNSUPPORTED = 5  # a message type the board does not accept from the host
    BAD_SESSION = 6  # the request's session token is not the live session's (or no session is live: send HELLO)

    @property
    def label(self) -> str:
        """The reason name carried by DriverError.reason: lower-case, e.g. "out_of_limits"."""
        return self.name.lower()


class SampleFormat(IntEnum):
    INT16 = 0
    FLOAT32 = 1

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def dtype(self) -> np.dtype[np.int16] | np.dtype[np.float32]:
        return np.dtype("<i2") if self is SampleFormat.INT16 else np.dtype("<f4")

    @classmethod
    def from_label(cls, label: str) -> SampleFormat:
        try:
            return cls[label.upper()]
        except KeyError as err:
            raise ProtocolError(f"unknown sample format {label!r}; use int16 or float32") from err


class FaultFlag(IntEnum):
    """Bits of STATUS.fault_flags. Latched until the next accepted SET_STIM or STOP."""

    WATCHDOG_TRIP = 1 << 0  # the dead-man timer stopped stimulation
    LIMIT_STOP = 1 << 1  # a running stimulation was stopped because it left the board's limits
    HIGH_IMPEDANCE = 1 << 2  # electrode impedance above the board's open-circuit threshold
    INTERNAL = 1 << 3  # an internal fault stopped stimulation


def fault_names(flags: int) -> tuple[str, ...]:
    return tuple(f.name.lower() for f in FaultFlag if flags & f)


# --- payloads ------------------------------------------------------------------------------------------------------
# Each message class packs to / unpacks from its payload bytes. unpack raises ProtocolError on a malformed payload.


def _expect_len(payload: bytes, n: int, what: str) -> None:
    if len(payload) != n:
        raise ProtocolError(f"{what} payload must be {n} bytes, got {len(payload)}")


def _check_token(token: bytes, what: str) -> bytes:
    if not isinstance(token, bytes | bytearray) or len(token) != SESSION_TOKEN_SIZE:
        raise ProtocolError(f"{what} needs a {SESSION_TOKEN_SIZE}-byte session token")
    return bytes(token)


@dataclass(frozen=True)
class _TokenOnly:
    """A host request whose payload is the session token alone."""

    TYPE: ClassVar[MsgType]
    token: bytes = field(repr=False)  # a secret of the session: never in a log line

    def pack(self) -> bytes:
        return _check_token(self.token, self.TYPE.name)

    @classmethod
    def unpack(cls, payload: bytes) -> Self:
        _expect_len(payload, SESSION_TOKEN_SIZE, cls.TYPE.name)
        return cls(bytes(payload))


@dataclass(frozen=True)
class Hello(_TokenOnly):
    """Host → board: open (or resume) the session `token` and identify yourself (the board answers INFO). A board
    whose session with another token is alive answers NAK busy. Opening a session resets the duplicate filter."""

    TYPE: ClassVar[MsgType] = MsgType.HELLO


@dataclass(frozen=True)
class Heartbeat(_TokenOnly):
    """Host → board: I am alive (re-arms the dead-man timer; the board ACKs it)."""

    TYPE: ClassVar[MsgType] = MsgType.HEARTBEAT


@dataclass(frozen=True)
class Stop(_TokenOnly):
    """Host → board: stop stimulating now (the board ACKs it, stimulating or not)."""

    TYPE: ClassVar[MsgType] = MsgType.STOP


@dataclass(frozen=True)
class StatusReq(_TokenOnly):
    """Host → board: report STATUS."""

    TYPE: ClassVar[MsgType] = MsgType.STATUS_REQ


_STIM = struct.Struct("<ffff")  # frequency_hz, amplitude_ma, pulse_width_us, interphase_gap_us


@dataclass(frozen=True)
class SetStim:
    """Host → board: stimulate with these parameters (biphasic, charge-balanced), in the session `token`."""

    TYPE: ClassVar[MsgType] = MsgType.SET_STIM
    token: bytes = field(repr=False)
    params: StimParams = field(default_factory=lambda: StimParams(0.0, 0.0, 0.0))

    def pack(self) -> bytes:
        p = self.params
        return _check_token(self.token, "SET_STIM") + _STIM.pack(p.frequency_hz, p.amplitude_ma, p.pulse_width_us,
                                                                 p.interphase_gap_us)

    @classmethod
    def unpack(cls, payload: bytes) -> SetStim:
        _expect_len(payload, SESSION_TOKEN_SIZE + _STIM.size, "SET_STIM")
        f, a, pw, ipg = _STIM.unpack_from(payload, SESSION_TOKEN_SIZE)
        return cls(bytes(payload[:SESSION_TOKEN_SIZE]),
                   StimParams(frequency_hz=f, amplitude_ma=a, pulse_width_us=pw, interphase_gap_us=ipg))


@dataclass(frozen=True)
class Bye(_TokenOnly):
    """Host → board: end the session `token` (a host that closes the port): stop stimulating and ACK; the next HELLO
    may open a new session at once instead of waiting for the dead-man timer."""

    TYPE: ClassVar[MsgType] = MsgType.BYE


# Requests a host sends, all of which carry the session token.
HostRequest = Hello | Heartbeat | Stop | StatusReq | SetStim | Bye


_ACK = struct.Struct("<B")  # type of the acknowledged message
_NAK = struct.Struct("<BB")  # type of the refused message, reason


@dataclass(frozen=True)
class Ack:
    """Board → host: the request with the frame's seq was accepted. Carries the type it acknowledges."""

    TYPE: ClassVar[MsgType] = MsgType.ACK
    acked_type: int

    def pack(self) -> bytes:
        return _ACK.pack(self.acked_type)

    @classmethod
    def unpack(cls, payload: bytes) -> Ack:
        _expect_len(payload, _ACK.size, "ACK")
        return cls(_ACK.unpack(payload)[0])


@dataclass(frozen=True)
class Nak:
    """Board → host: the request with the frame's seq was refused, for `reason`."""

    TYPE: ClassVar[MsgType] = MsgType.NAK
    acked_type: int
    reason: NakReason

    def pack(self) -> bytes:
        return _NAK.pack(self.acked_type, int(self.reason))

    @classmethod
    def unpack(cls, payload: bytes) -> Nak:
        _expect_len(payload, _NAK.size, "NAK")
        t, r = _NAK.unpack(payload)
        try:
            reason = NakReason(r)
        except ValueError as err:
            raise ProtocolError(f"NAK with unknown reason code {r}") from err
        return cls(t, reason)


_LIMITS = struct.Struct("<ffffffI")
_INFO_FIXED = struct.Struct("<HfBf")  # n_channels, sample_rate_hz, sample_format, uv_per_lsb


def _pack_str(s: str) -> bytes:
    raw = s.encode("utf-8")
    if len(raw) > 255:
        raise ProtocolError(f"string field {s[:20]!r}… is {len(raw)} bytes; at most 255 fit")
    return bytes([len(raw)]) + raw


def _unpack_str(payload: bytes, pos: int, what: str) -> tuple[str, int]:
    if pos >= len(payload):
        raise ProtocolError(f"INFO payload ends before {what}")
    n = payload[pos]
    end = pos + 1 + n
    if end > len(payload):
        raise ProtocolError(f"INFO {what} runs past the payload")
    try:
        return payload[pos + 1:end].decode("utf-8"), end
    except UnicodeDecodeError as err:
        raise ProtocolError(f"INFO {what} is not UTF-8") from err


@dataclass(frozen=True)
class Info:
    """Board → host, the answer to HELLO: who the board is, how it samples, and its own hard limits."""

    TYPE: ClassVar[MsgType] = MsgType.INFO
    device_id: str
    firmware_version: str
    n_channels: int
    sample_rate_hz: float
    sample_format: SampleFormat
    uv_per_lsb: float
    limits: BoardLimits

    def pack(self) -> bytes:
        lim = self.limits
        return (_pack_str(self.device_id) + _pack_str(self.firmware_version)
                + _INFO_FIXED.pack(self.n_channels, self.sample_rate_hz, int(self.sample_format), self.uv_per_lsb)
                + _LIMITS.pack(lim.min_frequency_hz, lim.max_frequency_hz, lim.max_amplitude_ma,
                               lim.min_pulse_width_us, lim.max_pulse_width_us, lim.max_charge_per_phase_uc,
                               int(lim.watchdog_ms)))

    @classmethod
    def unpack(cls, payload: bytes) -> Info:
        device_id, pos = _unpack_str(payload, 0, "device_id")
        fw, pos = _unpack_str(payload, pos, "firmware_version")
        _expect_len(payload[pos:], _INFO_FIXED.size + _LIMITS.size, "INFO (after the strings)")
        n_ch, rate, fmt, uv = _INFO_FIXED.unpack_from(payload, pos)
        vals = _LIMITS.unpack_from(payload, pos + _INFO_FIXED.size)
        try:
            sample_format = SampleFormat(fmt)
        except ValueError as err:
            raise ProtocolError(f"INFO with unknown sample format code {fmt}") from err
        # The values are not judged here: the driver checks them (neurostimd.drivers.base.info_problems) and refuses the
        # board with a message naming what is wrong, where a BadFrame would only look like a missing answer.
        limits = BoardLimits(min_frequency_hz=vals[0], max_frequency_hz=vals[1], max_amplitude_ma=vals[2],
                             min_pulse_width_us=vals[3], max_pulse_width_us=vals[4],
                             max_charge_per_phase_uc=vals[5], watchdog_ms=vals[6])
        return cls(device_id, fw, n_ch, rate, sample_format, uv, limits)

    def board_info(self) -> BoardInfo:
        return BoardInfo(device_id=self.device_id, firmware_version=self.firmware_version,
                         protocol_version=PROTOCOL_VERSION, n_channels=self.n_channels,
                         sample_rate_hz=float(self.sample_rate_hz), sample_format=self.sample_format.label,
                         uv_per_lsb=float(self.uv_per_lsb), limits=self.limits)


_SAMPLES_HDR = struct.Struct("<QHHB")  # first_index, n_samples, n_channels, sample_format


@dataclass(frozen=True, eq=False)
class Samples:
    """Board → host: `data` (n_samples, n_channels) in wire units, the first row being sample `first_index`."""

    TYPE: ClassVar[MsgType] = MsgType.SAMPLES
    first_index: int
    sample_format: SampleFormat
    data: npt.NDArray[np.int16] | npt.NDArray[np.float32] = field(repr=False)

    def pack(self) -> bytes:
        n, ch = self.data.shape
        body = np.ascontiguousarray(self.data, dtype=self.sample_format.dtype).tobytes()
        return _SAMPLES_HDR.pack(self.first_index, n, ch, int(self.sample_format)) + body

    @classmethod
    def unpack(cls, payload: bytes) -> Samples:
        if len(payload) < _SAMPLES_HDR.size:
            raise ProtocolError(f"SAMPLES payload of {len(payload)} bytes is shorter than its header")
        first, n, ch, fmt = _SAMPLES_HDR.unpack_from(payload)
        try:
            sample_format = SampleFormat(fmt)
        except ValueError as err:
            raise ProtocolError(f"SAMPLES with unknown sample format code {fmt}") from err
        dtype = sample_format.dtype
        _expect_len(payload[_SAMPLES_HDR.size:], n * ch * dtype.itemsize, f"SAMPLES data ({n}x{ch} {dtype})")
        if n == 0 or ch == 0:
            raise ProtocolError("SAMPLES with an empty block")
        data = np.frombuffer(payload, dtype=dtype, offset=_SAMPLES_HDR.size).reshape(n, ch)
        return cls(first, sample_format, cast("npt.NDArray[np.int16] | npt.NDArray[np.float32]", data))


_STATUS = struct.Struct("<BfffffI")  # flags, f, a, pw, ipg, impedance_ohm, fault_flags
STATUS_STIMULATING = 0x01
STATUS_IMPEDANCE_VALID = 0x02


@dataclass(frozen=True)
class Status:
    """Board → host, the answer to STATUS_REQ."""

    TYPE: ClassVar[MsgType] = MsgType.STATUS
    stimulating: bool
    params: StimParams | None
    impedance_ohm: float | None
    fault_flags: int

    def pack(self) -> bytes:
        flags = (STATUS_STIMULATING if self.stimulating else 0) | (
            STATUS_IMPEDANCE_VALID if self.impedance_ohm is not None else 0)
        p = self.params if self.stimulating and self.params is not None else StimParams(0.0, 0.0, 0.0, 0.0)
        return _STATUS.pack(flags, p.frequency_hz, p.amplitude_ma, p.pulse_width_us, p.interphase_gap_us,
                            self.impedance_ohm if self.impedance_ohm is not None else 0.0, self.fault_flags)

    @classmethod
    def unpack(cls, payload: bytes) -> Status:
        _expect_len(payload, _STATUS.size, "STATUS")
        flags, f, a, pw, ipg, z, faults = _STATUS.unpack(payload)
        stimulating = bool(flags & STATUS_STIMULATING)
        params = StimParams(f, a, pw, ipg) if stimulating else None
        return cls(stimulating, params, z if flags & STATUS_IMPEDANCE_VALID else None, faults)

    def board_status(self) -> BoardStatus:
        return BoardStatus(stimulating=self.stimulating, params=self.params, impedance_ohm=self.impedance_ohm,
                           fault_flags=self.fault_flags, fault_names=fault_names(self.fault_flags))


Message = Hello | Info | Samples | SetStim | Stop | Heartbeat | Ack | Nak | StatusReq | Status | Bye

_CLASSES: dict[MsgType, type[Message]] = {
    c.TYPE: c for c in (Hello, Info, Samples, SetStim, Stop, Heartbeat, Ack, Nak, StatusReq, Status, Bye)
}


@dataclass(frozen=True)
class Frame:
    """One protocol frame: a sequence number and a typed message.

    Host requests carry the host's own sequence number; the board's replies (INFO, ACK, NAK, STATUS) carry the seq of
    the request they answer; SAMPLES carry the board's own frame counter.
    """

    seq: int
    msg: Message

    @property
    def type(self) -> MsgType:
        return self.msg.TYPE


class BadFrame(ProtocolError):
    """A delimited chunk of bytes that is not a valid frame. Drop `consumed` bytes from the buffer and go on.

    When the header and CRC were valid but the payload did not parse, `seq` and `msg_type` say which request it was
    (the board answers such a request with NAK bad_frame)."""

    def __init__(self, message: str, *, consumed: int, reason: str,
                 seq: int | None = None, msg_type: int | None = None) -> None:
        super().__init__(message)
        self.consumed = consumed
        self.reason = reason
        self.seq = seq
        self.msg_type = msg_type


def encode(frame: Frame) -> bytes:
    """The bytes of `frame` on the wire: 00, COBS(header + payload + CRC-32), 00."""
    if not 0 <= frame.seq < SEQ_MODULO:
        raise ProtocolError(f"seq {frame.seq} does not fit in u16; wrap it modulo {SEQ_MODULO}")
    try:
        payload = frame.msg.pack()
    except struct.error as err:
        raise ProtocolError(f"cannot pack {frame.type.name}: {err}") from err
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"{frame.type.name} payload of {len(payload)} bytes is over the {MAX_PAYLOAD}-byte "
                            "limit; send fewer samples per frame")
    head = HEADER.pack(PROTOCOL_VERSION, int(frame.type), frame.seq, len(payload)) + payload
    body = head + CRC.pack(zlib.crc32(head))
    return DELIMITER + cobs.encode(body) + DELIMITER


def decode(buffer: bytes | bytearray | memoryview) -> tuple[int, Frame | None]:
    """Decode the first frame in `buffer`.

    Returns (consumed, frame): (0, None) when more bytes are needed; (n, None) when n bytes of empty frames (bare
    delimiters) were skipped; (n, frame) for a frame. Raises BadFrame (a ProtocolError) carrying `consumed` when the
    next delimited chunk is not a valid frame — dropping those bytes resynchronises at the next delimiter. Raises
    nothing else, whatever the bytes."""
    buf = bytes(buffer) if isinstance(buffer, memoryview) else buffer
    return _decode_at(buf, 0)


def _decode_at(buf: bytes | bytearray, start: int) -> tuple[int, Frame | None]:
    end = buf.find(DELIMITER, start)
    if end < 0:
        if len(buf) - start > MAX_ENCODED:
            raise BadFrame(f"{len(buf) - start} bytes without a delimiter: longer than any frame, discarded",
                           consumed=len(buf) - start, reason="too_long")
        return 0, None
    if end == start:
        pos = start
        while pos < len(buf) and buf[pos] == 0:
            pos += 1
        return pos - start, None
    consumed = end + 1 - start
    if end - start > MAX_ENCODED:
        raise BadFrame(f"{end - start}-byte chunk is longer than any frame", consumed=consumed, reason="too_long")
    try:
        body = cobs.decode(bytes(buf[start:end]))
    except cobs.DecodeError as err:
        raise BadFrame(f"bad COBS encoding: {err}", consumed=consumed, reason="bad_cobs") from err
    if len(body) < HEADER_SIZE + CRC_SIZE:
        raise BadFrame(f"{len(body)}-byte frame is shorter than header + CRC", consumed=consumed, reason="short")
    (crc,) = CRC.unpack_from(body, len(body) - CRC_SIZE)
    if zlib.crc32(body[:-CRC_SIZE]) != crc:
        raise BadFrame("CRC mismatch", consumed=consumed, reason="bad_crc")
    version, mtype, seq, length = HEADER.unpack_from(body)
    if version != PROTOCOL_VERSION:
        raise BadFrame(f"protocol version {version}, this codec speaks {PROTOCOL_VERSION}", consumed=consumed,
                       reason="bad_version", seq=seq, msg_type=mtype)
    if length != len(body) - HEADER_SIZE - CRC_SIZE:
        raise BadFrame(f"length field {length} disagrees with the frame ({len(body) - HEADER_SIZE - CRC_SIZE})",
                       consumed=consumed, reason="bad_length", seq=seq, msg_type=mtype)
    try:
        cls = _CLASSES[MsgType(mtype)]
    except ValueError as err:
        raise BadFrame(f"unknown message type 0x{mtype:02x}", consumed=consumed, reason="unknown_type",
                       seq=seq, msg_type=mtype) from err
    try:
        msg = cls.unpack(body[HEADER_SIZE:-CRC_SIZE])
    except ProtocolError as err:
        raise BadFrame(str(err), consumed=consumed, reason="bad_payload", seq=seq, msg_type=mtype) from err
    return consumed, Frame(seq, msg)


@dataclass
class FrameDecoder:
    """Incremental stream decoding: feed bytes as they arrive, get whole frames back; counts what it throws away."""

    frames_ok: int = 0
    bad_frames: int = 0
    bytes_discarded: int = 0
    last_error: BadFrame | None = None
    errors: list[BadFrame] = field(default_factory=list, repr=False)  # the bad frames of the last feed() call
    _buf: bytearray = field(default_factory=bytearray, repr=False)

    def feed(self, data: bytes) -> list[Frame]:
        """Append `data` and return every whole frame now in the buffer (bad ones are counted and dropped)."""
        self._buf += data
        frames: list[Frame] = []
        self.errors = []
        pos = 0
        while pos < len(self._buf):
            try:
                consumed, frame = _decode_at(self._buf, pos)
            except BadFrame as err:
                self.bad_frames += 1
                self.bytes_discarded += err.consumed
                self.last_error = err
                self.errors.append(err)
                pos += err.consumed
                continue
            if consumed == 0:
                break
            pos += consumed
            if frame is not None:
                self.frames_ok += 1
                frames.append(frame)
        del self._buf[:pos]  # once per feed: the buffer is compacted in O(n), not once per frame
        return frames

    def reset(self) -> None:
        """Forget a partial frame (after a reconnect the old bytes belong to nobody)."""
        self._buf.clear()

    @property
    def pending(self) -> int:
        return len(self._buf)
