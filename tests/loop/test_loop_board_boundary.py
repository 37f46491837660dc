"""The loop's reactions to what the board reports (issue 10, items 1, 5, 7): a STATUS that shows parameters the host
did not command, a board that restarts, a reply of the wrong type. In process, on a virtual clock, with the virtual
board (the real driver, protocol and board logic)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from neurostimd.config import Config
from neurostimd.drivers.errors import BoardLost
from neurostimd.drivers.neurostim_board.codec import (
    Ack,
    Frame,
    FrameDecoder,
    Info,
    MsgType,
    SampleFormat,
    SetStim,
    encode,
)
from neurostimd.drivers.transport import ManipulatedLink
from neurostimd.drivers.types import StimParams
from neurostimd.firmware_sim.board import DEFAULT_LIMITS
from neurostimd.firmware_sim.inprocess import BoardLink, VirtualBoardDriver
from neurostimd.loop import ClosedLoop
from neurostimd.outputs.audit import read_audit
from tests.loop.collect import OnTick
from tests.loops import board_loop

# What a second process sent: close to what runs (the simulated tissue shows no stronger artefact, so only the
# STATUS check can see it; a 6 mA command is caught a tick earlier by the plausibility check of the signal).
FOREIGN = StimParams(45.0, 2.0, 220.0)
OTHER_TOKEN = bytes(range(8))


def _stimulate(loop: ClosedLoop, drv: VirtualBoardDriver, min_ma: float = 0.0, steady_ticks: int = 0) -> None:
    """Run until the board stimulates at min_ma or more and the loop has sent nothing for steady_ticks ticks."""
    quiet = {"n": 0}

    def count(stats: Any) -> None:
        quiet["n"] = 0 if stats.command_sent else quiet["n"] + 1

    counter = OnTick(count)
    loop.listeners.add(counter)
    loop.run(should_stop=lambda: drv.board.stimulating and drv.board.params is not None
             and drv.board.params.amplitude_ma >= min_ma and quiet["n"] >= steady_ticks, duration_s=30.0)
    loop.listeners.remove(counter)
    assert drv.board.stimulating, "the loop started stimulating on clean data"


def test_status_with_parameters_the_host_did_not_command_stops_the_board(cfg: Config, bundle: Any,
                                                                         tmp_path: Path) -> None:
    """A board that obeyed another process (firmware without the session check) is caught by the next STATUS poll:
    a board_params_mismatch fault, audited with what ran and what was expected, logged at error level once, and a
    STOP; the fault holds until a STATUS agrees again."""
    loop, drv, audit, clock = board_loop(cfg, bundle, tmp_path, check_session=False)
    try:
        _stimulate(loop, drv, steady_ticks=5)
        t_attack = clock.now_ns()
        drv.board.feed(encode(Frame(900, SetStim(OTHER_TOKEN, FOREIGN))), t_attack)
        assert drv.board.params == FOREIGN
        with capture_logs() as logs:
            loop.run(should_stop=lambda: not drv.board.stimulating, duration_s=3.0)
            assert not drv.board.stimulating, "the loop stopped the board"
            t_stop = clock.now_ns()
            loop.run(should_stop=lambda: False, duration_s=0.5)
    finally:
        audit.close()
        drv.close()
    assert (t_stop - t_attack) / 1e6 <= cfg.device.status_poll_ms + 2 * cfg.loop.cadence_ms  # type: ignore[union-attr]
    errors = [e for e in logs if e["event"] == "board_params_mismatch"]
    assert len(errors) == 1 and errors[0]["log_level"] == "error"
    assert errors[0]["running"]["frequency_hz"] == pytest.approx(45.0)
    ev = read_audit(tmp_path / "audit.jsonl").records
    mism = next(i for i, r in enumerate(ev) if r["event"] == "board_mismatch")
    assert ev[mism]["running"]["pulse_width_us"] == pytest.approx(220.0) and ev[mism]["expected"] is not None
    after = ev[mism:]
    assert any(r["event"] == "fault" and "board_params_mismatch" in r["raised"] for r in after)
    stop = next(r for r in after if r["event"] == "stim_stop")
    assert "board_params_mismatch" in stop["faults"]
    assert any(r["event"] == "stim_ack" and r["command_seq"] == stop["seq"] and r["ack"] for r in after)
    offs = [e for e in drv.board.log.events if e["event"] == "stim_off" and e["t_mono_ns"] >= t_attack]
    assert offs and offs[0]["reason"] == "host_stop"
    assert any(e["event"] == "board_params_agree_again" for e in logs)


def test_status_check_does_not_fire_on_a_board_that_runs_what_it_was_told(cfg: Config, bundle: Any,
                                                                          tmp_path: Path) -> None:
    """Ten seconds of ordinary closed-loop stimulation (ramps, state changes, STATUS every second) raise no
    board_params_mismatch: the float32 rounding of STATUS is not a difference."""
    loop, drv, audit, _ = board_loop(cfg, bundle, tmp_path)
    try:
        loop.run(should_stop=lambda: False, duration_s=10.0)
    finally:
        audit.close()
        drv.close()
    ev = read_audit(tmp_path / "audit.jsonl").records
    assert any(r["event"] == "stim_command" for r in ev)
    assert not [r for r in ev if r["event"] in ("board_mismatch",) or "board_params_mismatch" in r.get("faults", [])]


def test_a_board_reset_is_a_fault_and_stimulation_ramps_again_from_zero(cfg: Config, bundle: Any,
                                                                        tmp_path: Path) -> None:
    """A board that reboots while stimulating (counter back near 0, session gone) is a board_reset fault, and
    stimulation afterwards ramps up from zero: the first amplitude the rebooted board runs is one ramp step, not
    the old amplitude plus one (the ramp went from 0 to 1.3 mA in one step because the host still believed 1.2)."""
    loop, drv, audit, clock = board_loop(cfg, bundle, tmp_path)
    try:
        _stimulate(loop, drv, min_ma=1.2)
        t_reset = clock.now_ns()
        drv.board.reboot(t_reset)
        loop.run(should_stop=lambda: False, duration_s=5.0)
    finally:
        audit.close()
        drv.close()
    ev = read_audit(tmp_path / "audit.jsonl").records
    assert any(r["event"] == "fault" and "board_reset" in r["raised"] for r in ev)
    applied = [e for e in drv.board.log.events if e["event"] == "stim_applied" and e["t_mono_ns"] > t_reset]
    assert applied, "stimulation resumed after the reset"
    step = cfg.safety.ramp_ma_per_s * cfg.loop.cadence_ms / 1000.0
    assert applied[0]["amplitude_ma"] <= step + 1e-6, applied[0]


def test_a_reply_of_the_wrong_type_leaves_the_board_state_unknown(cfg: Config, bundle: Any, tmp_path: Path) -> None:
    """A SET_STIM answered with an INFO (right seq, wrong type) is audited ack false with reply timeout — outcome
    unknown, a missing_ack fault, the next decision sent whatever it is — never as ack true."""
    loop, drv, audit, clock = board_loop(cfg, bundle, tmp_path)
    forged = {"n": 0}
    info = Info("x", "y", 32, 1000.0, SampleFormat.INT16, 0.195, DEFAULT_LIMITS)

    def wrap_link() -> ManipulatedLink:
        dec = FrameDecoder()

        def on_read(data: bytes) -> list[bytes]:
            out = []
            for f in dec.feed(data):
                if isinstance(f.msg, Ack) and f.msg.acked_type == MsgType.SET_STIM and forged["n"] < 3:
                    forged["n"] += 1
                    f = Frame(f.seq, info)
                out.append(encode(f))
            return out

        return ManipulatedLink(BoardLink(drv.board, clock), on_read=on_read)

    try:
        drv._factory = wrap_link
        drv._mark_lost(BoardLost("replug"))  # the next pump reconnects through the wrapper
        loop.run(should_stop=lambda: forged["n"] >= 3, duration_s=20.0)
        loop.run(should_stop=lambda: False, duration_s=1.0)
    finally:
        audit.close()
        drv.close()
    ev = read_audit(tmp_path / "audit.jsonl").records
    bad = [r for r in ev if r["event"] == "stim_ack" and "INFO" in str(r.get("error", ""))]
    assert len(bad) == 3 and all(r["ack"] is False and r["reply"] == "timeout" for r in bad)
    assert any(r["event"] == "fault" and "missing_ack" in r["raised"] for r in ev)


def test_a_reload_cannot_set_a_cadence_this_boards_watchdog_cannot_take(cfg: Config, bundle: Any,
                                                                       tmp_path: Path) -> None:
    """cadence_ms = 250 passes the config's own check (against the longest timer a board may have) but not this
    board's 250 ms one: a SIGHUP reload with it is refused (ConfigError) and the running cadence kept — at start
    the same config exits 78."""
    from neurostimd.config import parse_config
    from neurostimd.errors import ConfigError

    loop, drv, audit, _ = board_loop(cfg, bundle, tmp_path)
    try:
        slow = parse_config({**cfg.model_dump(mode="json", exclude_none=True), "loop": {"cadence_ms": 250}})
        with pytest.raises(ConfigError, match="dead-man timer is 250 ms"):
            loop.reload(slow)
        assert loop.cfg.loop.cadence_ms == cfg.loop.cadence_ms
        ok = parse_config({**cfg.model_dump(mode="json", exclude_none=True), "loop": {"cadence_ms": 40}})
        loop.reload(ok)
        assert loop.cfg.loop.cadence_ms == 40.0
    finally:
        audit.close()
        drv.close()


def test_a_latched_high_impedance_flag_does_not_explain_a_silent_stop(cfg: Config, bundle: Any,
                                                                      tmp_path: Path) -> None:
    """A board that stops without saying why is a board_params_mismatch even while a high_impedance flag is
    latched (that flag stops nothing); a stop with watchdog_trip, limit_stop or internal is the board's own."""
    from neurostimd.drivers.neurostim_board.codec import FaultFlag

    loop, drv, audit, _ = board_loop(cfg, bundle, tmp_path)
    try:
        _stimulate(loop, drv, steady_ticks=5)
        drv.board.fault_flags |= FaultFlag.HIGH_IMPEDANCE
        drv.board.stimulating, drv.board.params = False, None  # firmware that stops silently
        loop.run(should_stop=lambda: loop._board_mismatch is not None, duration_s=2.0)
        assert loop._board_mismatch is not None and "without a fault flag" in loop._board_mismatch
    finally:
        audit.close()
        drv.close()


def test_status_is_polled_after_the_tick_never_inside_it_and_keeps_its_schedule_through_a_ramp(
        cfg: Config, bundle: Any, tmp_path: Path) -> None:
    """No STATUS round trip happens inside a tick — above all not in one that sent a command — yet a poll is due
    every status_poll_ms whatever the ticks send: during a ramp (a command every tick) each one runs right after its
    tick, before the next deadline, and its time is in that tick's statistics."""
    slow_ramp = cfg.model_copy(update={"safety": cfg.safety.model_copy(update={"ramp_ma_per_s": 0.5,
                                                                               "ramp_up_ma_per_s": 0.5})})
    loop, drv, audit, _ = board_loop(slow_ramp, bundle, tmp_path)
    in_tick = {"now": False}
    polls: list[tuple[int, bool]] = []  # (tick index the poll followed, whether that tick sent a command)
    last: dict[str, Any] = {"index": -1, "sent": False}
    real_tick, real_status = loop.tick, drv.status

    def tick(deadline_ns: int | None = None) -> Any:
        in_tick["now"] = True
        try:
            stats = real_tick(deadline_ns)
        finally:
            in_tick["now"] = False
        last.update(index=stats.index, sent=stats.command_sent)
        return stats

    def status() -> Any:
        assert not in_tick["now"], "a STATUS round trip inside a tick"
        polls.append((last["index"], last["sent"]))
        return real_status()

    loop.tick = tick  # type: ignore[method-assign]
    drv.status = status  # type: ignore[method-assign]
    stats_seen: list[Any] = []
    loop.listeners.add(OnTick(stats_seen.append))
    try:
        loop.run(should_stop=lambda: False, duration_s=8.0)
    finally:
        audit.close()
        drv.close()
    every = loop._status_every
    assert every > 1
    sent_ticks = [s for s in stats_seen if s.command_sent]
    assert len(sent_ticks) >= 2 * every, "the slow ramp commands on many consecutive ticks"
    followed_a_command = [i for i, sent in polls if sent]
    assert followed_a_command, "polls fell after commanding ticks (the ramp) and still happened"
    polled = {s.index for s in stats_seen if s.status_poll_ms is not None}
    assert polled == {i for i, _ in polls}, "each poll's time is in the statistics of the tick it followed"
    scheduled = [s.index for s in stats_seen if s.index % every == 0 and s.index > 0]
    assert set(scheduled) <= polled, "a poll on every scheduled tick, commanding or not"
    assert all(s.status_poll_ms >= 0 for s in stats_seen if s.status_poll_ms is not None)
