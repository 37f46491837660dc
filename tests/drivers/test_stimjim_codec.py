"""The StimJim codec: the published command lines and reply strings as test vectors, round trips, and what is
refused. Sources: open-ephys/stimjim `stimjimPulser/stimjimPulser.ino` (Teensy; its command comment and its print
statements), `firmware/main.c@ce510f68` (RP2354B), and ../shared/reference/stimulators.md §2.3."""

from __future__ import annotations

import pytest

from neurostimd.drivers.errors import ProtocolError
from neurostimd.drivers.stimjim.codec import (
    CANCEL,
    PRINT_OFFSETS,
    Banner,
    Blank,
    Cancelled,
    ChannelTerminated,
    DumpHeader,
    DumpMode,
    DumpPeriod,
    DumpStage,
    Invalid,
    LineDecoder,
    Mode,
    Rejected,
    RpDefined,
    RpOffsets,
    Stage,
    Started,
    Stopped,
    Summary,
    TeensyOffsets,
    TrainComplete,
    TrainDef,
    Unknown,
    dac_code,
    encode_start,
    encode_stop,
    encode_train,
    parse_line,
    wrap_int16,
)

# reference §2.3: "Biphasic with inter-phase gap = 3 stages, e.g. S0,1,3,10000,100000;-100,0,200;0,0,50;100,0,200"
BIPHASIC = TrainDef(0, Mode.CURRENT, Mode.GROUNDED, 10000, 100000,
                    (Stage(-100, 0, 200), Stage(0, 0, 50), Stage(100, 0, 200)))


def test_the_reference_biphasic_train_encodes_to_its_published_line() -> None:
    assert encode_train(BIPHASIC) == b"S0,1,3,10000,100000;-100,0,200;0,0,50;100,0,200\n"


def test_start_stop_cancel_and_probe_lines() -> None:
    # stimjimPulser.ino comment: "T0 means start PulseTrain[0]"; reference §2.3: T-1 / U-1 stop (ea7d0de); X cancel
    assert encode_start("T", 0) == b"T0\n" and encode_start("U", 99) == b"U99\n"
    assert encode_stop("T") == b"T-1\n" and encode_stop("U") == b"U-1\n"
    assert CANCEL == b"X\n" and PRINT_OFFSETS == b"D\n"
    with pytest.raises(ProtocolError, match=r"slots 0\.\.99"):
        encode_start("T", 100)
    with pytest.raises(ProtocolError, match="engine"):
        encode_stop("V")  # type: ignore[arg-type]


@pytest.mark.parametrize(("train", "why"), [
    (TrainDef(100, Mode.CURRENT, Mode.GROUNDED, 1000, 1000, (Stage(1, 0, 10),)), "slot 100"),
    (TrainDef(0, Mode.CURRENT, Mode.GROUNDED, 1000, 1000, ()), "0 stages"),
    (TrainDef(0, Mode.CURRENT, Mode.GROUNDED, 1000, 1000, (Stage(1, 0, 10),) * 11), "11 stages"),
    (TrainDef(0, Mode.CURRENT, Mode.GROUNDED, 100, 1000, (Stage(1, 0, 60), Stage(-1, 0, 60))), "longer than"),
    (TrainDef(0, Mode.CURRENT, Mode.GROUNDED, 100000, 1000, (Stage(1, 0, 70000),)), "1..65535"),
])
def test_a_train_no_firmware_would_store_as_sent_is_refused(train: TrainDef, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        encode_train(train)


def test_decoder_splits_crlf_lines_across_chunks_and_cuts_overlong_garbage() -> None:
    dec = LineDecoder(max_line=64)
    assert dec.feed(b"Started T train with par") == []
    assert dec.feed(b"ameters of PulseTrain 3\r\n\r\nStimulus") == \
        ["Started T train with parameters of PulseTrain 3", ""]
    assert dec.feed(b" cancelled.\n") == ["Stimulus cancelled."]
    assert dec.feed(b"x" * 100) == [] and dec.overlong == 1 and dec.pending == 0


@pytest.mark.parametrize(("line", "expected"), [
    # Teensy startIT0: Serial.print("\nStarted T train with parameters of PulseTrain "); Serial.println(ptIndex)
    ("Started T train with parameters of PulseTrain 3", Started("", "T", 3)),
    ("Started U train with parameters of PulseTrain 12", Started("", "U", 12)),
    # RP2354B cmd_TU: printf("Started PulseTrain[%d].\n\n", idx)
    ("Started PulseTrain[7].", Started("", None, 7)),
    ("Forcing T train to stop", Stopped("", "T")),  # reference §2.3 (commit ea7d0de)
    ("Stimulus cancelled.", Cancelled("")),  # RP2354B cmd_X
    ("Stimulus rejected: channel(s) busy.", Rejected("")),  # RP2354B process_core1_input
    ("Train complete. Delivered 10 pulses.", TrainComplete("", 10)),  # Teensy printTrainResultSummary
    ("Channel 1 pulse train terminated. Delivered:", ChannelTerminated("", 1)),
    ("Booting StimJim on Teensy 3.5!", Banner("", "teensy", None)),
    ("StimJim v0.0.0", Banner("", "rp2354b", "v0.0.0")),  # RP2354B main: printf("StimJim %s\n\n", FIRMWARE_VERSION)
    ("ADC offsets (+-2.5V): 0.123000, -1.500000", TeensyOffsets("", "adc25", (0.123, -1.5))),
    ("current offsets: 12, -7", TeensyOffsets("", "current", (12.0, -7.0))),
    ("Channel 0 offsets: adc=1.2500 voltage=3 current=-4", RpOffsets("", 0, 1.25, 3, -4)),
    ("Parameters for PulseTrain[4]", DumpHeader("", 4)),
    ("  mode[ch0]: 1 (Current output)", DumpMode("", 0, 1)),
    ("  period:    10000 usec (0.010 sec, 100.000 Hz)", DumpPeriod("", 10000)),
    # Teensy printPulseTrainParameters: "   %2d  %7d usec %8d%s %8d%s\n"
    ("    0      200 usec     -100uA        0uA", DumpStage("", 0, Stage(-100, 0, 200))),
    # RP2354B cmd_S: "PulseTrain[%d]: mode[%d,%d], period=%u us, pulses=%u, %d stages" and its stage lines
    ("PulseTrain[2]: mode[2,8], period=20000 us, pulses=12, 3 stages", RpDefined("", 2, (2, 8), 20000, 12, 3)),
    ("  Stage 1: amp[0,0], dur=50 us", DumpStage("", 1, Stage(0, 0, 50))),
    ("Stage 0  -101uA,               0uA,          ", Summary("")),
    ("  25x Inter-pulse gap:      0 uA", Summary("")),
    ("Invalid PulseTrain index.", Invalid("")),
    ("Invalid pulse train index: '-1' (must be 0..99)", Invalid("")),
    ("T/U usage: T<idx> or U<idx>", Invalid("")),
    ("Unknown command: 'Q'", Invalid("")),
    ("", Blank("")),
])
def test_published_reply_strings_are_classified(line: str, expected: object) -> None:
    got = parse_line(line)
    assert type(got) is type(expected)
    assert got == type(expected)(**{**expected.__dict__, "text": line})  # type: ignore[attr-defined]


@pytest.mark.parametrize("line", ["Started T train", "Started PulseTrain[x].", "\x00\xff garbage", "OK", "T3"])
def test_garbage_and_short_replies_are_unknown_never_an_exception(line: str) -> None:
    assert isinstance(parse_line(line), Unknown)


def test_dac_code_truncates_and_the_int16_store_wraps_past_full_scale() -> None:
    # lib/stimjim Stimjim.h: MICROAMPS_PER_DAC 0.1017; C truncation of amp / LSB + offset, stored as int16
    assert dac_code(100, Mode.CURRENT, 0) == 983  # 983.28 truncated
    assert dac_code(-100, Mode.CURRENT, 0) == -983
    assert dac_code(3332, Mode.CURRENT, 0) == 32763
    code = dac_code(3400, Mode.CURRENT, 0)
    assert code > 32767 and wrap_int16(code) < 0  # 3.4 mA becomes a negative current: the firmware's hazard
    assert wrap_int16(32767) == 32767 and wrap_int16(-32768) == -32768
