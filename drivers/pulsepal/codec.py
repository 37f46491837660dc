"""The Pulse Pal's USB serial protocol (firmware 21 and 22), I/O-free: encoding host messages and decoding replies.

Written from sanworks/PulsePal Firmware/PROTOCOL.md (fw 22) and the reference in shared/reference/stimulators.md §1.
Every message is 213 (OpMenuByte), an op code and its data; multi-byte values are little-endian; times are cycles of
the 50 µs hardware timer; voltages are 16-bit DAC codes (0 = -10 V, 32768 = 0 V, 65535 = +10 V).
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

from neurostimd.drivers.errors import ProtocolError

OP_MENU = 213
CYCLE_US = 50  # the hardware timer period of Pulse Pal 2 and 3 (op 94 reports it on fw 22)
N_OUTPUTS = 4
MIN_CYCLES = 2  # the shortest phase / interval the official client allows; 0 cycles leaves the output stuck
MAX_VOLTS = 10.0
SUPPORTED_FIRMWARE = (21, 22)
HANDSHAKE_OK = 75  # 'K'
HANDSHAKE_REPLY_LEN = 5
HARDWARE_INFO_LEN = 10
ALL_PARAMS_LEN = 178


class Op(enum.IntEnum):
    HANDSHAKE = 72
    PROGRAM_ALL_LEGACY = 73
    SET_PARAM = 74
    CUSTOM_TRAIN_1 = 75
    CUSTOM_TRAIN_2 = 76
    TRIGGER = 77
    MESSAGE = 78
    FIXED_VOLTAGE = 79
    STOP_ALL = 80
    DISCONNECT = 81
    CONTINUOUS = 82
    CLIENT_NAME = 89
    SET_PARAM_ALL = 91
    PROGRAM_ALL = 92
    READ_ALL = 93
    HARDWARE_INFO = 94
    CUSTOM_TRAIN = 95
    STOP_CHANNELS = 98


class Param(enum.IntEnum):
    BIPHASIC = 1
    PHASE1_VOLTAGE = 2
    PHASE2_VOLTAGE = 3
    PHASE1_DURATION = 4
    INTERPHASE = 5
    PHASE2_DURATION = 6
    INTERPULSE = 7
    BURST_DURATION = 8
    BURST_INTERVAL = 9
    TRAIN_DURATION = 10
    TRAIN_DELAY = 11
    LINK_TRIGGER1 = 12
    LINK_TRIGGER2 = 13
    CUSTOM_TRAIN_ID = 14
    CUSTOM_TARGET = 15
    CUSTOM_LOOP = 16
    RESTING_VOLTAGE = 17
    CONTINUOUS = 18  # fw 22 only
    TRIGGER_MODE = 128


_U16_PARAMS = frozenset({Param.PHASE1_VOLTAGE, Param.PHASE2_VOLTAGE, Param.RESTING_VOLTAGE})
_U32_PARAMS = frozenset({Param.PHASE1_DURATION, Param.INTERPHASE, Param.PHASE2_DURATION, Param.INTERPULSE,
                         Param.BURST_DURATION, Param.BURST_INTERVAL, Param.TRAIN_DURATION, Param.TRAIN_DELAY})


def param_size(code: int) -> int:
    """Bytes of a parameter's value (1, 2 or 4); ProtocolError for a code the protocol does not define."""
    try:
        p = Param(code)
    except ValueError as err:
        raise ProtocolError(f"parameter code {code} is not a Pulse Pal parameter (known: "
                            f"{', '.join(str(int(x)) for x in Param)})") from err
    return 2 if p in _U16_PARAMS else 4 if p in _U32_PARAMS else 1


def us_to_cycles(us: float) -> int:
    """Microseconds to 50 µs timer cycles, rounded to the nearest cycle, ties to even (as the official client does
    with seconds); exact for integer µs (no float truncation: 300 µs is 6 cycles, not 5)."""
    if us < 0:
        raise ProtocolError(f"a duration of {us} µs is negative")
    return int((Decimal(str(us)) / CYCLE_US).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def us_to_cycles_down(us: float) -> int:
    """Microseconds to whole 50 µs cycles, rounded down (a phase: never longer, so never more charge, than asked);
    exact for decimal µs (300 µs is 6 cycles)."""
    if us < 0:
        raise ProtocolError(f"a duration of {us} µs is negative")
    return int((Decimal(str(us)) / CYCLE_US).quantize(Decimal(1), rounding=ROUND_FLOOR))


def biphasic_codes(volts: float) -> tuple[int, int, float]:
    """The DAC codes (phase 1 at -V, phase 2 at +V) of a biphasic pulse of at most `volts`, and the volts they give.
    0 V is half-way between two codes (32767.5), so the codes 32767 - j and 32768 + j give exactly +-(j + 1/2) steps
    of 20/65535 V: the largest such j within `volts` (never more current than asked; a pulse smaller than half a
    step gives j = 0, the smallest one). The volts returned map back to the same codes."""
    if not 0 <= volts <= MAX_VOLTS:
        raise ProtocolError(f"{volts} V is outside the Pulse Pal's 0-{MAX_VOLTS:g} V amplitude range")
    j = max(0, math.floor(volts * 65535 / 20 - 0.5 + 1e-9))
    j = min(j, 32767)
    return 32767 - j, 32768 + j, (j + 0.5) * 20 / 65535


def cycles_to_us(cycles: int) -> int:
    return cycles * CYCLE_US


def volts_to_code(volts: float) -> int:
    """Volts to the 16-bit DAC code, round((V + 10) / 20 * 65535) ties to even; ProtocolError outside ±10 V."""
    if not -MAX_VOLTS <= volts <= MAX_VOLTS:
        raise ProtocolError(f"{volts} V is outside the Pulse Pal's ±{MAX_VOLTS:g} V range")
    return int(((Decimal(str(volts)) + 10) / 20 * 65535).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def code_to_volts(code: int) -> float:
    return code / 65535 * 20.0 - 10.0


def _frame(op: Op, data: bytes = b"") -> bytes:
    return bytes((OP_MENU, op)) + data


def _channel(channel: int, top: int = N_OUTPUTS) -> int:
    if not 1 <= channel <= top:
        raise ProtocolError(f"channel {channel} is not 1-{top}")
    return channel


def _mask(mask: int) -> int:
    if not 0 <= mask <= 0x0F:
        raise ProtocolError(f"channel mask {mask:#x} has bits beyond channels 1-4")
    return mask


def encode_handshake() -> bytes:
    return _frame(Op.HANDSHAKE)


def encode_set_param(code: int, channel: int, value: int) -> bytes:
    """Op 74: one parameter of one output channel (1-4), or of a trigger channel (1-2) for the trigger mode."""
    size = param_size(code)
    _channel(channel, 2 if code == Param.TRIGGER_MODE else N_OUTPUTS)
    if not 0 <= value < 1 << (8 * size):
        raise ProtocolError(f"value {value} of parameter {code} does not fit in {size} byte(s)")
    return _frame(Op.SET_PARAM, bytes((code, channel)) + value.to_bytes(size, "little"))


def encode_trigger(mask: int) -> bytes:
    """Op 77: soft-trigger the channels in `mask` (bit 0 = channel 1); no reply."""
    return _frame(Op.TRIGGER, bytes((_mask(mask),)))


def encode_stop_channels(mask: int) -> bytes:
    """Op 98 (fw 22): stop the channels in `mask`; no reply."""
    return _frame(Op.STOP_CHANNELS, bytes((_mask(mask),)))


def encode_stop_all() -> bytes:
    """Op 80: stop every channel (fw 21 and 22); no reply."""
    return _frame(Op.STOP_ALL)


def encode_disconnect() -> bytes:
    return _frame(Op.DISCONNECT)


def encode_hardware_info() -> bytes:
    return _frame(Op.HARDWARE_INFO)


def encode_read_all() -> bytes:
    return _frame(Op.READ_ALL)


def encode_client_name(name: str) -> bytes:
    """Op 89: six ASCII characters shown as "NAME Connected"; no reply."""
    raw = name.encode("ascii", errors="replace")[:6].ljust(6, b" ")
    return _frame(Op.CLIENT_NAME, raw)


def encode_fixed_voltage(channel: int, code: int) -> bytes:
    if not 0 <= code <= 0xFFFF:
        raise ProtocolError(f"DAC code {code} is not 0-65535")
    return _frame(Op.FIXED_VOLTAGE, bytes((_channel(channel),)) + code.to_bytes(2, "little"))


def encode_continuous(channel: int, on: bool) -> bytes:
    return _frame(Op.CONTINUOUS, bytes((_channel(channel), int(on))))


def decode_handshake(reply: bytes) -> int:
    """The firmware version from the 5-byte handshake reply ('K' + uint32 LE); ProtocolError for anything else."""
    if len(reply) != HANDSHAKE_REPLY_LEN:
        raise ProtocolError(f"handshake reply is {len(reply)} bytes ({reply.hex(' ')}); a Pulse Pal sends 5 "
                            f"('K' and a uint32 firmware version)")
    if reply[0] != HANDSHAKE_OK:
        raise ProtocolError(f"handshake reply starts with {reply[0]} ({reply.hex(' ')}), not 75 ('K'): "
                            f"not a Pulse Pal")
    return int.from_bytes(reply[1:], "little")


def decode_confirm(reply: bytes) -> bool:
    """One confirm byte: True for 1 (executed), False for 0 (rejected); ProtocolError for anything else."""
    if len(reply) != 1 or reply[0] not in (0, 1):
        raise ProtocolError(f"expected one confirm byte (1 or 0), got {reply.hex(' ') or 'nothing'}")
    return reply[0] == 1


@dataclass(frozen=True)
class HardwareInfo:
    """Op 94's reply (fw 22)."""

    hardware_version: int
    cycle_us: int
    n_custom_trains: int
    max_pulses: int

    def encode(self) -> bytes:
        return struct.pack("<BIBI", self.hardware_version, self.cycle_us, self.n_custom_trains, self.max_pulses)


def decode_hardware_info(reply: bytes) -> HardwareInfo:
    if len(reply) != HARDWARE_INFO_LEN:
        raise ProtocolError(f"hardware info reply is {len(reply)} bytes ({reply.hex(' ')}); op 94 answers 10")
    hw, cycle, n_custom, max_pulses = struct.unpack("<BIBI", reply)
    return HardwareInfo(hw, cycle, n_custom, max_pulses)
