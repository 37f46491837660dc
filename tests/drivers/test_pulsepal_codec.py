"""The Pulse Pal codec against the protocol's worked byte sequences and its own round trips."""

from __future__ import annotations

import pytest

from neurostimd.drivers.errors import ProtocolError
from neurostimd.drivers.pulsepal import codec as c


def test_handshake_vectors() -> None:
    """sanworks/PulsePal Python/PulsePal/tests/test_protocol.py (via stimulators.md §1.10): D5 48 -> 4B + uint32."""
    assert c.encode_handshake() == bytes.fromhex("D5 48")
    assert c.decode_handshake(bytes.fromhex("4B 15 00 00 00")) == 21
    assert c.decode_handshake(bytes.fromhex("4B 16 00 00 00")) == 22


def test_set_param_vectors() -> None:
    """stimulators.md §1.10 (official test_protocol.py): ch2 phase-1 +5 V, ch3 phase-1 1 ms, ch1 biphasic, trigger
    channel 2 gated."""
    assert c.volts_to_code(5.0) == 49151  # round(15/20 * 65535) = 49151.25 -> 49151 (the old API's ceil gave 49152)
    assert c.encode_set_param(c.Param.PHASE1_VOLTAGE, 2, c.volts_to_code(5.0)) == bytes.fromhex("D5 4A 02 02 FF BF")
    assert c.encode_set_param(c.Param.PHASE1_DURATION, 3, c.us_to_cycles(1000)) == \
        bytes.fromhex("D5 4A 04 03 14 00 00 00")
    assert c.encode_set_param(c.Param.BIPHASIC, 1, 1) == bytes.fromhex("D5 4A 01 01 01")
    assert c.encode_set_param(c.Param.TRIGGER_MODE, 2, 2) == bytes.fromhex("D5 4A 80 02 02")
    assert c.decode_confirm(b"\x01") is True and c.decode_confirm(b"\x00") is False


def test_trigger_and_stop_vectors() -> None:
    """stimulators.md §1.10: trigger ch1+ch3 D5 4D 05; stop all D5 62 0F (fw 22) and D5 50 (fw 21)."""
    assert c.encode_trigger(0b0101) == bytes.fromhex("D5 4D 05")
    assert c.encode_stop_channels(0x0F) == bytes.fromhex("D5 62 0F")
    assert c.encode_stop_all() == bytes.fromhex("D5 50")


def test_cycle_rounding_is_explicit() -> None:
    """300 µs is 6 cycles (sanworks/PulsePal#2: the old float truncation made it 5); ties go to even."""
    assert c.us_to_cycles(300) == 6
    assert c.us_to_cycles(25) == 0 and c.us_to_cycles(75) == 2 and c.us_to_cycles(125) == 2
    assert c.us_to_cycles(7692.3) == 154  # 130 Hz is not reachable: 7700 µs -> 129.87 Hz
    with pytest.raises(ProtocolError, match="negative"):
        c.us_to_cycles(-1)


def test_voltage_round_trip_and_range() -> None:
    for code in (0, 1, 32767, 32768, 49151, 65535):
        assert c.volts_to_code(c.code_to_volts(code)) == code
    assert c.volts_to_code(-10.0) == 0 and c.volts_to_code(10.0) == 65535
    with pytest.raises(ProtocolError, match="±10 V"):
        c.volts_to_code(10.01)


def test_hardware_info_round_trip() -> None:
    hw = c.HardwareInfo(hardware_version=3, cycle_us=50, n_custom_trains=4, max_pulses=10_000)
    assert len(hw.encode()) == c.HARDWARE_INFO_LEN
    assert c.decode_hardware_info(hw.encode()) == hw


@pytest.mark.parametrize("reply", [b"", b"K", b"\x4b\x16\x00\x00", b"\x4b\x16\x00\x00\x00\x00", b"X\x16\x00\x00\x00"])
def test_bad_handshake_replies_are_refused(reply: bytes) -> None:
    with pytest.raises(ProtocolError, match="handshake reply"):
        c.decode_handshake(reply)


@pytest.mark.parametrize("reply", [b"", b"\x02", b"\x01\x01", b"K"])
def test_bad_confirm_bytes_are_refused(reply: bytes) -> None:
    with pytest.raises(ProtocolError, match="confirm byte"):
        c.decode_confirm(reply)


def test_bad_messages_are_refused_before_encoding() -> None:
    with pytest.raises(ProtocolError, match="not a Pulse Pal parameter"):
        c.encode_set_param(99, 1, 0)
    with pytest.raises(ProtocolError, match="channel 5"):
        c.encode_set_param(c.Param.BIPHASIC, 5, 1)
    with pytest.raises(ProtocolError, match="channel 3 is not 1-2"):
        c.encode_set_param(c.Param.TRIGGER_MODE, 3, 0)
    with pytest.raises(ProtocolError, match="does not fit"):
        c.encode_set_param(c.Param.BIPHASIC, 1, 256)
    with pytest.raises(ProtocolError, match="mask"):
        c.encode_trigger(0x10)
    with pytest.raises(ProtocolError, match="hardware info"):
        c.decode_hardware_info(b"\x00" * 9)
