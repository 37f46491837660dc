"""The simulated board's logic without a process: device limits, de-duplication, dead-man timer, pacing, faults."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
from cobs import cobs

from neurostimd.drivers.neurostim_board.codec import (
    Ack,
    Bye,
    FaultFlag,
    Frame,
    FrameDecoder,
    Heartbeat,
    Hello,
    Info,
    MsgType,
    Nak,
    NakReason,
    Samples,
    SetStim,
    Status,
    StatusReq,
    Stop,
    encode,
)
from neurostimd.drivers.types import BoardLimits, StimParams
from neurostimd.firmware_sim.board import DEFAULT_LIMITS, Board, EventLog, check_limits
from neurostimd.firmware_sim.generator import SyntheticSource

MS = 1_000_000
T0 = 5_000 * MS


TOKEN = bytes.fromhex("0011223344556677")
OTHER = bytes.fromhex("8899aabbccddeeff")


def make_board(*, session: bool = True, **kw: object) -> Board:
    """A board; with `session`, the host (TOKEN) has opened its session at T0 (the HELLO's INFO is discarded)."""
    kw.setdefault("source", SyntheticSource(4, 1000.0, 0))
    b = Board(start_ns=T0, **kw)  # type: ignore[arg-type]
    if session:
        b.feed(encode(Frame(60_000, Hello(TOKEN))), T0)
    return b


def ask(board: Board, frame: Frame, now_ns: int) -> list[Frame]:
    return FrameDecoder().feed(board.feed(encode(frame), now_ns))


def events(board: Board, name: str) -> list[dict[str, object]]:
    return [e for e in board.log.events if e["event"] == name]


def test_hello_answers_info_with_the_boards_limits() -> None:
    """HELLO gets INFO echoing the request's seq, with the board's stream settings and hard limits."""
    b = make_board(watchdog_ms=300)
    [reply] = ask(b, Frame(42, Hello(TOKEN)), T0)
    assert reply.seq == 42 and isinstance(reply.msg, Info)
    assert reply.msg.n_channels == 4 and reply.msg.limits.watchdog_ms == 300
    assert reply.msg.limits.max_amplitude_ma == DEFAULT_LIMITS.max_amplitude_ma


@pytest.mark.parametrize(("params", "rule"), [
    (StimParams(0.5, 1.0, 100.0), "frequency"),
    (StimParams(300.0, 1.0, 100.0), "frequency"),
    (StimParams(50.0, 7.0, 100.0), "amplitude"),
    (StimParams(50.0, -1.0, 100.0), "amplitude"),
    (StimParams(50.0, 1.0, 5.0), "pulse_width"),
    (StimParams(50.0, 1.0, 1200.0), "pulse_width"),
    (StimParams(50.0, 1.0, 100.0, -1.0), "interphase_gap"),
    (StimParams(50.0, 5.0, 800.0), "charge_per_phase"),
    (StimParams(float("nan"), 1.0, 100.0), "not_finite"),
    (StimParams(50.0, float("inf"), 100.0), "not_finite"),
])
def test_out_of_limit_commands_are_nakd_and_logged(params: StimParams, rule: str) -> None:
    """Each device-side limit refuses a SET_STIM with NAK out_of_limits, naming the rule in the event log."""
    b = make_board()
    [reply] = ask(b, Frame(1, SetStim(TOKEN, params)), T0)
    assert isinstance(reply.msg, Nak) and reply.msg.reason is NakReason.OUT_OF_LIMITS and reply.seq == 1
    assert not b.stimulating
    assert events(b, "command_refused")[0]["rule"] == rule


def test_pulse_must_fit_its_period_and_compliance_voltage() -> None:
    """2·PW + gap must be shorter than 1/f, and I·Z must stay under the compliance voltage when Z is known."""
    wide = BoardLimits(1.0, 1000.0, 6.0, 10.0, 1000.0, 10.0, 250)
    assert check_limits(StimParams(800.0, 1.0, 600.0, 50.0), wide, None, 15.0) == "pulse_fits_period"
    assert check_limits(StimParams(800.0, 1.0, 550.0, 50.0), wide, None, 15.0) is None  # 1150 µs < 1250 µs
    assert check_limits(StimParams(100.0, 2.0, 100.0), wide, 10_000.0, 15.0) == "compliance"
    assert check_limits(StimParams(100.0, 1.0, 100.0), wide, 10_000.0, 15.0) is None


def test_set_stim_within_limits_is_applied_acked_and_logged() -> None:
    """An in-limit SET_STIM is ACKed, reported by STATUS, and logged as stim_applied with its parameters."""
    b = make_board(impedance_ohm=1500.0)
    [ack] = ask(b, Frame(7, SetStim(TOKEN, StimParams(50.0, 2.0, 200.0))), T0)
    assert isinstance(ack.msg, Ack) and ack.msg.acked_type == MsgType.SET_STIM and ack.seq == 7
    [st] = ask(b, Frame(8, StatusReq(TOKEN)), T0 + MS)
    assert isinstance(st.msg, Status) and st.msg.stimulating and st.msg.impedance_ohm == pytest.approx(1500.0)
    [ev] = events(b, "stim_applied")
    assert (ev["frequency_hz"], ev["amplitude_ma"], ev["pulse_width_us"]) == (50.0, 2.0, 200.0)
    assert ev["t_mono_ns"] == T0


def test_a_repeated_seq_is_answered_but_not_applied_twice() -> None:
    """A retried SET_STIM or STOP (same seq) gets the same answer without a second effect, also after the host
    resumed its session (HELLO with its own token); a new session starts the filter afresh."""
    b = make_board()
    stim = Frame(3, SetStim(TOKEN, StimParams(50.0, 2.0, 200.0)))
    first = b.feed(encode(stim), T0)
    assert b.feed(encode(stim), T0 + MS) == first
    assert len(events(b, "stim_applied")) == 1 and b.counters.duplicates == 1
    ask(b, Frame(4, Hello(TOKEN)), T0 + 2 * MS)  # resume
    assert b.feed(encode(stim), T0 + 3 * MS) == first and len(events(b, "stim_applied")) == 1
    ask(b, Frame(5, Bye(TOKEN)), T0 + 4 * MS)
    ask(b, Frame(6, Hello(OTHER)), T0 + 5 * MS)  # a new session
    ask(b, Frame(3, SetStim(OTHER, StimParams(50.0, 2.0, 200.0))), T0 + 6 * MS)
    assert len(events(b, "stim_applied")) == 2


def test_stop_is_logged_as_host_stop() -> None:
    """STOP while stimulating ends it with stim_off reason host_stop; STOP while idle is ACKed and logs nothing."""
    b = make_board()
    ask(b, Frame(1, SetStim(TOKEN, StimParams(50.0, 2.0, 200.0))), T0)
    [ack] = ask(b, Frame(2, Stop(TOKEN)), T0 + MS)
    assert isinstance(ack.msg, Ack)
    [off] = events(b, "stim_off")
    assert off["reason"] == "host_stop"
    ask(b, Frame(3, Stop(TOKEN)), T0 + 2 * MS)
    assert len(events(b, "stim_off")) == 1


def test_dead_man_timer_stops_stimulation_after_watchdog_ms_of_silence() -> None:
    """No valid frame for watchdog_ms: watchdog_trip and stim_off reason watchdog, and the STATUS fault flag."""
    b = make_board(watchdog_ms=250)
    ask(b, Frame(1, SetStim(TOKEN, StimParams(50.0, 2.0, 200.0))), T0)
    b.feed(encode(Frame(2, Heartbeat(TOKEN))), T0 + 200 * MS)  # re-arms the timer
    b.advance(T0 + 449 * MS)
    assert b.stimulating
    assert b.next_wakeup_ns() is not None and b.next_wakeup_ns() <= T0 + 450 * MS  # type: ignore[operator]
    b.advance(T0 + 450 * MS)
    assert not b.stimulating
    [trip] = events(b, "watchdog_trip")
    [off] = events(b, "stim_off")
    assert off["reason"] == "watchdog" and off["t_mono_ns"] == T0 + 450 * MS
    assert trip["silent_ms"] == pytest.approx(250.0)
    # the session ended with the trip: the host must open it again, and then sees the latched flag
    [nak] = ask(b, Frame(3, StatusReq(TOKEN)), T0 + 460 * MS)
    assert isinstance(nak.msg, Nak) and nak.msg.reason is NakReason.BAD_SESSION
    ask(b, Frame(4, Hello(TOKEN)), T0 + 461 * MS)
    [st] = ask(b, Frame(5, StatusReq(TOKEN)), T0 + 462 * MS)
    assert isinstance(st.msg, Status) and st.msg.fault_flags & FaultFlag.WATCHDOG_TRIP


def test_garbage_does_not_rearm_the_dead_man_timer() -> None:
    """Only valid frames count as the host being alive: a stream of noise does not keep stimulation running."""
    b = make_board(watchdog_ms=100)
    ask(b, Frame(1, SetStim(TOKEN, StimParams(50.0, 2.0, 200.0))), T0)
    for i in range(1, 20):
        b.feed(bytes([0x55, 0x00, 0x13, 0x37]) * 10, T0 + i * 10 * MS)
    assert not b.stimulating and events(b, "stim_off")[0]["reason"] == "watchdog"
    assert b.counters.bad_frames > 0


def test_crc_valid_frame_with_bad_payload_or_host_unknown_type_is_nakd() -> None:
    """A frame with a good CRC but a malformed payload gets NAK bad_frame; a board-only type gets NAK
    unsupported."""
    b = make_board()
    head = bytes([2, MsgType.SET_STIM]) + struct.pack("<HH", 9, 2) + b"\x01\x02"
    wire = b"\x00" + cobs.encode(head + struct.pack("<I", zlib.crc32(head))) + b"\x00"
    [nak] = FrameDecoder().feed(b.feed(wire, T0))
    assert isinstance(nak.msg, Nak) and nak.msg.reason is NakReason.BAD_FRAME and nak.seq == 9
    [nak2] = ask(b, Frame(10, Ack(MsgType.STOP)), T0)
    assert isinstance(nak2.msg, Nak) and nak2.msg.reason is NakReason.UNSUPPORTED


def test_samples_are_paced_on_absolute_deadlines_and_only_sent_to_a_live_host() -> None:
    """Blocks come due at t0 + k·block/fs whatever the call spacing; none are sent before the host speaks, and
    the counter reflects every sample the ADC took."""
    b = make_board(block_size=10, session=False)
    assert b.advance(T0 + 55 * MS) == b""  # no host yet: sampled, not sent
    assert b.sample_counter == 50
    ask(b, Frame(1, Hello(TOKEN)), T0 + 55 * MS)
    got: list[Samples] = []
    dec = FrameDecoder()
    for t_ms in (57, 61, 63, 99, 100, 150):  # irregular calls
        got += [f.msg for f in dec.feed(b.advance(T0 + t_ms * MS)) if isinstance(f.msg, Samples)]
    assert [s.first_index for s in got] == list(range(50, 150, 10))
    assert all(s.data.shape == (10, 4) for s in got)


def test_a_long_stall_drops_samples_instead_of_flooding() -> None:
    """After a stall longer than the FIFO holds, the board skips ahead (the counter jumps) instead of sending
    seconds of backlog at once."""
    b = make_board(block_size=10)
    b.feed(encode(Frame(2, Hello(TOKEN))), T0 + 3000 * MS)  # back after 3 s: the session had expired
    frames = FrameDecoder().feed(b.advance(T0 + 3000 * MS))
    samples = [f.msg for f in frames if isinstance(f.msg, Samples)]
    assert len(samples) <= 101
    assert b.counters.samples_dropped >= 1900
    assert samples[-1].first_index + 10 == b.sample_counter == 3000


def test_impedance_rise_and_internal_fault_stop_stimulation_with_their_reasons() -> None:
    """A running stimulation that breaks compliance after an impedance change stops with reason limit; an internal
    fault stops it with reason fault and refuses new SET_STIM with NAK fault until cleared."""
    b = make_board(impedance_ohm=1000.0)
    ask(b, Frame(1, SetStim(TOKEN, StimParams(50.0, 2.0, 200.0))), T0)
    b.set_impedance(20_000.0, T0 + MS)
    assert not b.stimulating and events(b, "stim_off")[-1]["reason"] == "limit"
    assert b.status().fault_flags & FaultFlag.LIMIT_STOP
    b.set_impedance(1000.0, T0 + 2 * MS)
    ask(b, Frame(2, SetStim(TOKEN, StimParams(50.0, 2.0, 200.0))), T0 + 3 * MS)
    b.inject_fault(T0 + 4 * MS)
    assert events(b, "stim_off")[-1]["reason"] == "fault"
    [nak] = ask(b, Frame(3, SetStim(TOKEN, StimParams(50.0, 1.0, 200.0))), T0 + 5 * MS)
    assert isinstance(nak.msg, Nak) and nak.msg.reason is NakReason.FAULT
    b.clear_fault()
    [ack] = ask(b, Frame(4, SetStim(TOKEN, StimParams(50.0, 1.0, 200.0))), T0 + 6 * MS)
    assert isinstance(ack.msg, Ack)


def test_shutdown_stops_stimulation_with_reason_shutdown() -> None:
    """Switching the board off while stimulating logs stim_off with reason shutdown."""
    b = make_board()
    ask(b, Frame(1, SetStim(TOKEN, StimParams(50.0, 2.0, 200.0))), T0)
    b.shutdown(T0 + MS)
    assert not b.stimulating and events(b, "stim_off")[-1]["reason"] == "shutdown"


def test_event_log_file_has_one_json_object_per_line(tmp_path: Path) -> None:
    """The event log file holds JSON lines with event and t_mono_ns, written as they happen."""
    log = EventLog(tmp_path / "ev.jsonl")
    b = make_board(event_log=log)
    ask(b, Frame(1, SetStim(TOKEN, StimParams(50.0, 2.0, 200.0))), T0)
    lines = (tmp_path / "ev.jsonl").read_text().splitlines()  # before close(): flushed per line
    first, rec = (json.loads(line) for line in lines[:2])
    assert first["event"] == "session_open"
    assert rec["event"] == "stim_applied" and rec["t_mono_ns"] == T0 and rec["amplitude_ma"] == 2.0
    log.close()


# --- sessions (protocol version 2) -----------------------------------------------------------------------------------
def test_a_command_with_another_sessions_token_is_refused_and_does_not_rearm_the_dead_man_timer() -> None:
    """A second process's SET_STIM or STOP (any other token) gets NAK bad_session and changes nothing, and its
    heartbeats do not keep the first host's stimulation alive after that host went silent."""
    b = make_board(watchdog_ms=250)
    ask(b, Frame(1, SetStim(TOKEN, StimParams(50.0, 2.0, 200.0))), T0)
    [nak] = ask(b, Frame(900, SetStim(OTHER, StimParams(100.0, 6.0, 500.0))), T0 + MS)
    assert isinstance(nak.msg, Nak) and nak.msg.reason is NakReason.BAD_SESSION
    [nak] = ask(b, Frame(901, Stop(OTHER)), T0 + 2 * MS)
    assert isinstance(nak.msg, Nak) and nak.msg.reason is NakReason.BAD_SESSION
    assert b.stimulating and b.params == StimParams(50.0, 2.0, 200.0)
    assert [e["reason"] for e in events(b, "command_refused")] == ["bad_session", "bad_session"]
    for i in range(1, 40):  # the foreign process heartbeats every 10 ms; the real host is gone
        b.feed(encode(Frame(1000 + i, Heartbeat(OTHER))), T0 + i * 10 * MS)
        b.advance(T0 + i * 10 * MS)
    assert not b.stimulating and events(b, "stim_off")[0]["reason"] == "watchdog"
    assert b.counters.foreign_requests >= 40


def test_hello_of_another_host_is_busy_while_the_session_lives_and_accepted_once_it_expired() -> None:
    """While the host's session is alive another token's HELLO gets NAK busy (no INFO); after the dead-man timer
    ended the session the same HELLO opens a new one, on a board that runs nothing."""
    b = make_board(watchdog_ms=250)
    ask(b, Frame(1, SetStim(TOKEN, StimParams(50.0, 2.0, 200.0))), T0)
    [busy] = ask(b, Frame(7, Hello(OTHER)), T0 + 100 * MS)
    assert isinstance(busy.msg, Nak) and busy.msg.reason is NakReason.BUSY
    b.advance(T0 + 260 * MS)  # the host went silent at T0
    [info] = ask(b, Frame(8, Hello(OTHER)), T0 + 270 * MS)
    assert isinstance(info.msg, Info) and not b.stimulating
    [nak] = ask(b, Frame(2, StatusReq(TOKEN)), T0 + 271 * MS)  # the old host's token is no longer obeyed
    assert isinstance(nak.msg, Nak) and nak.msg.reason is NakReason.BAD_SESSION


def test_bye_ends_the_session_and_stops_stimulation() -> None:
    """BYE with the session's token stops stimulation (host_stop) and frees the board for the next host at once."""
    b = make_board()
    ask(b, Frame(1, SetStim(TOKEN, StimParams(50.0, 2.0, 200.0))), T0)
    [nak] = ask(b, Frame(2, Bye(OTHER)), T0 + MS)
    assert isinstance(nak.msg, Nak) and b.stimulating
    [ack] = ask(b, Frame(3, Bye(TOKEN)), T0 + 2 * MS)
    assert isinstance(ack.msg, Ack) and ack.msg.acked_type == MsgType.BYE
    assert not b.stimulating and events(b, "stim_off")[-1]["reason"] == "host_stop"
    [info] = ask(b, Frame(4, Hello(OTHER)), T0 + 3 * MS)
    assert isinstance(info.msg, Info)


def test_no_reply_carries_the_token() -> None:
    """Nothing the board sends contains the session token: a reader of the port cannot learn it."""
    b = make_board()
    out = b.feed(encode(Frame(1, SetStim(TOKEN, StimParams(50.0, 2.0, 200.0)))), T0)
    out += b.feed(encode(Frame(2, StatusReq(TOKEN))) + encode(Frame(3, Heartbeat(TOKEN))), T0 + MS)
    out += b.feed(encode(Frame(4, Hello(TOKEN))) + encode(Frame(5, Stop(OTHER))), T0 + 2 * MS)
    out += b.advance(T0 + 100 * MS)
    frames = FrameDecoder().feed(out)
    assert len(frames) >= 10
    for f in frames:
        assert TOKEN not in cobs.decode(encode(f)[1:-1])


def test_reboot_forgets_the_session_and_restarts_the_counter() -> None:
    """A reboot stops stimulation, ends the session (the old token is refused) and restarts the sample counter."""
    b = make_board()
    ask(b, Frame(1, SetStim(TOKEN, StimParams(50.0, 2.0, 200.0))), T0)
    b.advance(T0 + 200 * MS)
    assert b.sample_counter >= 190
    b.reboot(T0 + 201 * MS)
    assert not b.stimulating and b.sample_counter == 0 and events(b, "board_reset")
    [nak] = ask(b, Frame(2, Heartbeat(TOKEN)), T0 + 202 * MS)
    assert isinstance(nak.msg, Nak) and nak.msg.reason is NakReason.BAD_SESSION
    ask(b, Frame(3, Hello(TOKEN)), T0 + 203 * MS)
    samples = [f.msg for f in FrameDecoder().feed(b.advance(T0 + 230 * MS)) if isinstance(f.msg, Samples)]
    assert samples and samples[0].first_index < 100


def test_firmware_without_the_session_check_obeys_anyone() -> None:
    """The --no-session-check emulation (firmware that ignores tokens) applies a foreign command: the host's STATUS
    cross-check is then the only defence, which is what this emulation exists to test."""
    b = make_board(check_session=False)
    ask(b, Frame(1, SetStim(TOKEN, StimParams(50.0, 2.0, 200.0))), T0)
    [ack] = ask(b, Frame(900, SetStim(OTHER, StimParams(100.0, 2.0, 200.0))), T0 + MS)
    assert isinstance(ack.msg, Ack) and b.params == StimParams(100.0, 2.0, 200.0)
