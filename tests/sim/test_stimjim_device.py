"""The simulated StimJim firmware (pure logic, time passed in): what a client observes of each personality."""

from __future__ import annotations

import random

import pytest

from neurostimd.drivers.stimjim.codec import (
    Banner,
    Cancelled,
    ChannelTerminated,
    DumpStage,
    Invalid,
    LineDecoder,
    Rejected,
    RpDefined,
    Started,
    Stopped,
    TeensyOffsets,
    TrainComplete,
    Unknown,
    parse_line,
)
from neurostimd.firmware_sim.stimjim.device import StimJimDevice

MS = 1_000_000
BIPHASIC = b"S5,1,3,20000,100000;-200,0,200;0,0,50;200,0,200\n"  # 50 Hz, 200 µA, 200 µs, 50 µs gap


def lines(data: bytes) -> list[str]:
    return LineDecoder().feed(data)


def kinds(data: bytes) -> list[type]:
    return [type(parse_line(x)) for x in lines(data) if x.strip()]


def test_teensy_d_reply_is_the_four_offset_lines() -> None:
    dev = StimJimDevice("teensy", current_offsets=(12, -7))
    out = dev.feed(b"D\n", 0)
    replies = [parse_line(x) for x in lines(out) if x.strip()]
    assert [r.which for r in replies if isinstance(r, TeensyOffsets)] == ["adc25", "adc10", "current", "voltage"]
    assert replies[2].values == (12.0, -7.0)  # type: ignore[attr-defined]
    assert out.endswith(b"\n\r\n")  # Serial.println of a string that ends in \n


def test_teensy_train_runs_on_the_microsecond_grid_and_ends_with_a_summary() -> None:
    dev = StimJimDevice("teensy")
    dump = dev.feed(BIPHASIC, 0)
    stages = [parse_line(x) for x in lines(dump)]
    assert next(s.stage for s in stages if isinstance(s, DumpStage)).amp0 == -200  # type: ignore[attr-defined]
    out = dev.feed(b"T5\n", 1 * MS)
    assert parse_line(lines(out)[-1]) == Started(lines(out)[-1], "T", 5)
    assert dev.pulse_times_us == [1000]  # the first pulse at once
    out = dev.advance(1 * MS + 100 * MS)
    # pulses while t - start < duration: ceil(100000 / 20000) = 5, then the train-end summary
    assert dev.pulse_times_us == [1000, 21000, 41000, 61000, 81000]
    assert any(isinstance(parse_line(x), TrainComplete) and parse_line(x).n_pulses == 5  # type: ignore[attr-defined]
               for x in lines(out))
    ev = [e for e in dev.events.events if e["event"] in ("stim_applied", "stim_off")]  # 199.9: 1966 DAC codes
    assert ev[0] == {"event": "stim_applied", "t_mono_ns": 1 * MS, "slot": 5, "channel": 1, "frequency_hz": 50.0,
                     "pulse_width_us": 200, "interphase_us": 50, "biphasic": True, "amplitude_ua": 199.9}
    assert ev[1]["event"] == "stim_off" and ev[1]["reason"] == "train_end" and ev[1]["t_mono_ns"] == 101 * MS


def test_teensy_restart_waits_for_the_pulse_in_progress_and_pulses_at_once() -> None:
    dev = StimJimDevice("teensy")
    dev.feed(BIPHASIC + b"T5\n", 0)
    dev.feed(b"T5\n", 20_100_000)  # 100 µs into the second pulse (450 µs long)
    assert dev.pulse_times_us == [0, 20000, 20450]
    assert [e["event"] for e in dev.events.events][-1] == "rearm"


def test_teensy_stop_and_the_legacy_firmware_that_has_none() -> None:
    dev = StimJimDevice("teensy")
    dev.feed(BIPHASIC + b"T5\n", 0)
    out = dev.feed(b"T-1\n", 5 * MS)
    assert kinds(out) == [Stopped] and not dev.runs
    assert dev.events.events[-1]["event"] == "stim_off" and dev.events.events[-1]["reason"] == "host_stop"
    old = StimJimDevice("teensy", legacy_stop=True)
    assert kinds(old.feed(b"T-1\n", 0)) == [Invalid]


def test_teensy_does_not_clamp_and_the_dac_wraps_to_the_other_polarity() -> None:
    dev = StimJimDevice("teensy")
    dev.feed(b"S0,1,3,20000,100000;-3400,0,100;3400,0,100\nT0\n", 0)
    wrap = [e for e in dev.events.events if e["event"] == "dac_wrap"]
    # -3400 / 0.1017 = -33431 does not fit int16: stored as +32105, a cathodic phase delivered as anodic
    assert wrap and wrap[0]["commanded"] == -3400 and wrap[0]["delivered"] == pytest.approx(3265.1)


def test_teensy_partial_s_changes_only_what_it_matched_and_a_live_edit_is_logged() -> None:
    dev = StimJimDevice("teensy")
    dev.feed(BIPHASIC, 0)
    dev.feed(b"S5,1,3,10000\n", 0)  # 3 header fields: modes and period change, stages and duration stay
    s = dev.slots[5]
    assert s.period_us == 10000 and s.duration_us == 100000 and len(s.stages) == 3
    dev.feed(b"T5\n", 0)
    dev.feed(BIPHASIC, 1 * MS)
    assert any(e["event"] == "running_train_edited" for e in dev.events.events)


def test_rp2354b_banner_strict_parsing_and_pulse_count() -> None:
    dev = StimJimDevice("rp2354b")
    out = dev.feed(b"D\n", 0)
    first = parse_line(lines(out)[0])
    assert isinstance(first, Banner) and first.version == "v0.0.0"
    out = dev.feed(b"S5,1,3,20000,100000;-4000,0,200\n", 0)
    assert lines(out)[0] == "Invalid amp0 stage[0]: '-4000' (must be -3333..3333)"
    out = dev.feed(BIPHASIC, 0)
    assert isinstance(parse_line(lines(out)[0]), RpDefined)
    out = dev.feed(b"T5\n", 0)
    assert kinds(out) == [Started]
    out = dev.advance(200 * MS)
    assert len(dev.pulse_times_us) == 5 and kinds(out)[0] is ChannelTerminated  # 100000 // 20000


def test_rp2354b_rejects_a_start_while_busy_and_cancels_after_the_pulse() -> None:
    dev = StimJimDevice("rp2354b")
    dev.feed(BIPHASIC + b"T5\n", 0)
    assert kinds(dev.feed(b"T5\n", 1 * MS)) == [Started, Rejected]
    out = dev.feed(b"X\n", 20_100_000)
    assert kinds(out)[:2] == [Cancelled, ChannelTerminated]
    off = dev.events.events[-1]
    assert off["event"] == "stim_off" and off["reason"] == "host_stop" and off["t_mono_ns"] == 20_450_000


@pytest.mark.parametrize("personality", ["teensy", "rp2354b"])
def test_garbage_never_crashes_and_the_device_still_answers(personality: str) -> None:
    rng = random.Random(7)
    dev = StimJimDevice(personality)  # type: ignore[arg-type]
    t = 0
    for _ in range(300):
        t += rng.randrange(1, 5 * MS)
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        dev.feed(rng.choice([junk, junk + b"\n", b"S" + junk + b"\n", b"T" + junk + b"\n"]), t)
        dev.advance(t)
    dev.feed(b"x" * 5000, t)
    assert dev.counters["overruns"] >= 1
    dev.feed(b"\n", t)
    out = dev.feed(b"D\n", t + 1)
    assert all(not isinstance(parse_line(x), Unknown) for x in lines(out))
