"""The simulated Pulse Pal's firmware model (pure logic, time passed in): what a client of the published protocol
observes."""

from __future__ import annotations

import itertools
import random
import struct

import pytest

from neurostimd.drivers.pulsepal import codec as c
from neurostimd.drivers.pulsepal.codec import Param
from neurostimd.firmware_sim.pulsepal.device import CYCLE_NS, ChannelParams, PulsePal

MS = 1_000_000


def _set(dev: PulsePal, code: int, ch: int, value: int, t: int = 0) -> bytes:
    return dev.feed(c.encode_set_param(code, ch, value), t)


def _events(dev: PulsePal, name: str) -> list[dict]:
    return [e for e in dev.events.events if e["event"] == name]


@pytest.mark.parametrize("fw", [21, 22])
def test_handshake_reports_the_firmware(fw: int) -> None:
    """stimulators.md §1.10: D5 48 -> 4B 15 00 00 00 (fw 21) / 4B 16 00 00 00 (fw 22)."""
    dev = PulsePal(fw)
    assert dev.feed(bytes.fromhex("D5 48"), 0) == bytes.fromhex("4B") + fw.to_bytes(4, "little")


def test_hardware_info_is_fw22_only() -> None:
    assert c.decode_hardware_info(PulsePal(22).feed(c.encode_hardware_info(), 0)) == \
        c.HardwareInfo(3, 50, 4, 10_000)
    assert c.decode_hardware_info(PulsePal(22, hardware_version=2).feed(c.encode_hardware_info(), 0)).max_pulses == 5000
    dev = PulsePal(21)
    assert dev.feed(c.encode_hardware_info() + c.encode_handshake(), 0) == bytes.fromhex("4B 15 00 00 00")


@pytest.mark.parametrize("fw", [21, 22])
def test_protocol_vectors_are_confirmed(fw: int) -> None:
    """The worked op-74 sequences of stimulators.md §1.10 each get a confirm byte 1 and set what they name."""
    dev = PulsePal(fw)
    assert dev.feed(bytes.fromhex("D5 4A 02 02 FF BF"), 0) == b"\x01"
    assert dev.feed(bytes.fromhex("D5 4A 04 03 14 00 00 00"), 0) == b"\x01"
    assert dev.feed(bytes.fromhex("D5 4A 01 01 01"), 0) == b"\x01"
    assert dev.feed(bytes.fromhex("D5 4A 80 02 02"), 0) == b"\x01"
    assert dev.channels[1].params.phase1_v == 49151 and dev.channels[2].params.phase1 == 20
    assert dev.channels[0].params.biphasic == 1 and dev.trigger_modes[1] == 2
    assert dev.feed(bytes.fromhex("D5 4D 05"), 0) == b""  # trigger: no reply
    assert dev.channels[0].playing and dev.channels[2].playing and not dev.channels[1].playing


def test_a_byte_other_than_213_where_an_op_is_expected_is_dropped() -> None:
    dev = PulsePal(22)
    assert dev.feed(b"\x00\x48\xffK" + c.encode_handshake(), 0) == bytes.fromhex("4B 16 00 00 00")
    assert dev.counters.bytes_dropped == 4


def _program(dev: PulsePal, ch: int = 1, *, p1: int = 4, gap: int = 2, p2: int = 4, ipi: int = 190,
             train: int = 2000, biphasic: int = 1) -> None:
    for code, v in ((Param.PHASE1_DURATION, p1), (Param.INTERPHASE, gap), (Param.PHASE2_DURATION, p2),
                    (Param.INTERPULSE, ipi), (Param.TRAIN_DURATION, train), (Param.BIPHASIC, biphasic),
                    (Param.PHASE1_VOLTAGE, c.volts_to_code(-2.0)), (Param.PHASE2_VOLTAGE, c.volts_to_code(2.0))):
        assert _set(dev, code, ch, v) == b"\x01"


def test_a_finite_train_plays_whole_pulses_at_the_cycle_rate_and_ends() -> None:
    """A trigger starts the train in the next 50 µs cycle; pulses follow every period (p1 + gap + p2 + ipi cycles)
    exactly; the train ends at its duration with stim_off train_end, and the event log names what was applied."""
    dev = PulsePal(22)
    _program(dev)  # period 200 cycles = 10 ms (100 Hz), train 2000 cycles = 100 ms
    dev.feed(c.encode_trigger(1), 5 * CYCLE_NS + 10)
    dev.advance(300 * MS)
    starts = list(dev.pulses[0])
    assert starts[0] == 6 * CYCLE_NS
    assert len(starts) == 10 and {b - a for a, b in itertools.pairwise(starts)} == {10 * MS}
    applied = _events(dev, "stim_applied")[0]
    assert applied == {"event": "stim_applied", "t_mono_ns": 6 * CYCLE_NS, "channel": 1, "frequency_hz": 100.0,
                       "pulse_width_us": 200, "interphase_us": 100, "biphasic": True, "amplitude_v": -2.0,
                       "phase2_v": 2.0, "continuous": False, "train_ms": 100.0}
    off = _events(dev, "stim_off")[0]
    assert off["reason"] == "train_end" and off["t_mono_ns"] == (6 + 2000) * CYCLE_NS and not off["cut_pulse"]
    assert not dev.channels[0].playing


def test_a_trigger_while_playing_is_ignored_and_stop_cuts() -> None:
    """Normal trigger mode: a second trigger does not restart a playing train; op 98 stops it in that cycle, and a
    stop during a pulse is logged as cutting it."""
    dev = PulsePal(22)
    _program(dev)
    dev.feed(c.encode_trigger(1), 0)
    dev.feed(c.encode_trigger(1), 5 * MS)
    assert dev.counters.triggers_ignored == 1
    dev.feed(c.encode_stop_channels(1), 10 * MS + 2 * CYCLE_NS)  # phase 1 of the second pulse
    off = _events(dev, "stim_off")[-1]
    assert off["reason"] == "host_stop" and off["cut_pulse"] is True
    dev.feed(c.encode_trigger(1) + c.encode_stop_all(), 20 * MS)
    assert _events(dev, "stim_off")[-1]["reason"] == "host_stop" and not dev.channels[0].playing


def test_a_stop_and_trigger_in_one_cycle_is_logged_as_a_restart() -> None:
    """The re-arm's stop + trigger restarts the train (after its delay) and is logged as train_restarted, not as
    an off and a new setting; a restart with other parameters also logs what is now applied."""
    dev = PulsePal(22)
    _program(dev)
    dev.feed(c.encode_trigger(1), 0)
    dev.feed(c.encode_set_param(Param.TRAIN_DELAY, 1, 40) + c.encode_stop_channels(1) + c.encode_trigger(1), 15 * MS)
    assert dev.channels[0].playing and dev.channels[0].next_pulse == 15 * MS // CYCLE_NS + 1 + 40
    restart = _events(dev, "train_restarted")[0]
    assert restart == {"event": "train_restarted", "t_mono_ns": 15 * MS, "channel": 1, "cut_pulse": False,
                       "delay_us": 2000}
    assert not _events(dev, "stim_off") and len(_events(dev, "stim_applied")) == 1
    dev.feed(c.encode_set_param(Param.PHASE1_VOLTAGE, 1, c.volts_to_code(-3.0)), 16 * MS)
    dev.feed(c.encode_stop_channels(1) + c.encode_trigger(1), 30 * MS)
    assert _events(dev, "stim_applied")[-1]["amplitude_v"] == pytest.approx(-3.0, abs=2e-4)
    assert not _events(dev, "stim_off")
    dev.feed(c.encode_stop_channels(1), 40 * MS)
    assert _events(dev, "stim_off")[-1]["reason"] == "host_stop"


def test_a_parameter_written_while_playing_applies_from_the_next_pulse() -> None:
    dev = PulsePal(22)
    _program(dev)
    dev.feed(c.encode_trigger(1), 0)
    _set(dev, Param.INTERPULSE, 1, 90, 15 * MS)  # period 10 ms -> 5 ms
    dev.advance(40 * MS)
    starts = list(dev.pulses[0])
    assert starts[:4] == [CYCLE_NS + k * 10 * MS for k in range(3)] + [CYCLE_NS + 25 * MS]
    assert _events(dev, "stim_applied")[-1]["frequency_hz"] == 200.0


@pytest.mark.parametrize("fw,timeout_ms", [(22, 100), (21, 500)])
def test_a_stalled_message_ends_in_comm_failure_until_a_click(fw: int, timeout_ms: int) -> None:
    """A message whose bytes stop for longer than the inter-byte timeout: COMM. FAILURE, the running train stops
    (its DAC value is logged), no reply is sent and every byte is ignored until the joystick is clicked, which loads
    the default parameters."""
    dev = PulsePal(fw)
    _program(dev, train=40_000)
    dev.feed(c.encode_trigger(1), 0)
    msg = c.encode_set_param(Param.PHASE1_DURATION, 1, 8)
    assert dev.feed(msg[:4], 50 * MS) == b""
    dev.advance(50 * MS + (timeout_ms - 1) * MS)
    assert not dev.comm_failure
    dev.advance(50 * MS + (timeout_ms + 1) * MS)
    assert dev.comm_failure
    off = _events(dev, "stim_off")[-1]
    assert off["reason"] == "comm_failure" and "dac_held_v" in off
    assert dev.feed(msg[4:] + c.encode_handshake(), 2000 * MS) == b""
    dev.click(3000 * MS)
    assert not dev.comm_failure and dev.channels[0].params == ChannelParams()
    assert dev.feed(c.encode_handshake(), 3001 * MS)[:1] == b"K"


def test_fw22_refuses_bad_input_with_0_and_keeps_framing() -> None:
    """fw 22: a bad channel or value gets 0 and its data is discarded (the next command works); an unknown parameter
    code gets 0 and input is dropped until the port has been quiet for 100 ms."""
    dev = PulsePal(22)
    assert dev.feed(bytes((213, 74, Param.BIPHASIC, 5, 1)) + c.encode_handshake(), 0) == b"\x00K\x16\x00\x00\x00"
    assert dev.feed(bytes((213, 74, Param.BIPHASIC, 1, 7)), 0) == b"\x00"
    assert dev.feed(bytes((213, 74, 99, 1, 1, 2, 3)), 0) == b"\x00"
    assert dev.feed(c.encode_handshake(), 50 * MS) == b""  # still inside the quiet window
    assert dev.feed(c.encode_handshake(), 200 * MS)[:1] == b"K"
    assert dev.counters.rejected == 3


def test_fw21_confirms_what_it_cannot_do() -> None:
    """fw 21 validates nothing: a channel 5 write is confirmed with 1 (in the real firmware an out-of-bounds
    write), and enabling continuous mode also triggers (sanworks/PulsePal#5); fw 22 does not."""
    dev = PulsePal(21)
    assert dev.feed(bytes((213, 74, Param.BIPHASIC, 5, 1)), 0) == b"\x01"
    assert _events(dev, "fw21_out_of_bounds")
    assert dev.feed(c.encode_continuous(2, True), 0) == b"\x01" and dev.channels[1].playing
    dev22 = PulsePal(22)
    assert dev22.feed(c.encode_continuous(2, True), 0) == b"\x01" and not dev22.channels[1].playing


def test_a_zero_cycle_phase_leaves_the_output_stuck_until_the_train_ends() -> None:
    dev = PulsePal(22)
    _program(dev, p1=0, train=400)
    dev.feed(c.encode_trigger(1), 0)
    dev.advance(100 * MS)
    assert len(dev.pulses[0]) == 1 and _events(dev, "output_stuck")[0]["held_v"] == -2.0
    assert _events(dev, "stim_off")[0]["reason"] == "train_end"


def test_continuous_mode_ignores_the_train_duration() -> None:
    dev = PulsePal(22)
    _program(dev, train=20)
    _set(dev, Param.CONTINUOUS, 1, 1)
    dev.feed(c.encode_trigger(1), 0)
    dev.advance(1000 * MS)
    assert dev.channels[0].playing and len(dev.pulses[0]) == 100
    _set(dev, Param.CONTINUOUS, 1, 0, 1000 * MS)
    assert not dev.channels[0].playing and _events(dev, "stim_off")[-1]["reason"] == "continuous_off"


def test_program_all_and_read_back() -> None:
    """Op 92 (parameter-major, 182 bytes) programs every channel; op 93 reads back the 178 bytes in that order."""
    dev = PulsePal(22)
    times = [[10 + k * 4 + ch for ch in range(4)] for k in range(8)]
    volts = [[30000 + k * 4 + ch for ch in range(4)] for k in range(3)]
    body = b"".join(struct.pack("<4I", *t) for t in times) + b"".join(struct.pack("<4H", *v) for v in volts)
    body += bytes([1, 0, 1, 0]) + bytes(4) + bytes(4) + bytes(4) + bytes(4) + bytes([1, 1, 0, 0, 0, 0, 1, 1, 0, 1])
    assert len(body) == 182
    assert dev.feed(bytes((213, 92)) + body, 0) == b"\x01"
    assert dev.channels[2].params.interpulse == 10 + 3 * 4 + 2
    back = dev.feed(c.encode_read_all(), 0)
    assert len(back) == c.ALL_PARAMS_LEN and back == body[:168] + body[172:]


@pytest.mark.parametrize("fw", [21, 22])
def test_garbage_never_crashes_the_firmware(fw: int) -> None:
    rng = random.Random(fw)
    dev = PulsePal(fw)
    t = 0
    for _ in range(3000):
        t += rng.randrange(0, 30 * MS)
        n = rng.randrange(1, 12)
        data = bytes(rng.choice([213, rng.randrange(256), rng.randrange(72, 99)]) for _ in range(n))
        dev.feed(data, t)
        dev.advance(t)
        if dev.comm_failure and rng.random() < 0.5:
            dev.click(t)
    dev.advance(t + 1000 * MS)  # a message left half-sent ends in COMM. FAILURE, cleared by a click
    if dev.comm_failure:
        dev.click(t + 1000 * MS)
    assert dev.feed(c.encode_handshake(), t + 1200 * MS)[:1] == b"K"
