"""Recovering the day's dose when the log is opened: the crash rule (on until the board's watchdog would have stopped
it after the last record), the summary of rotated segments against the whole log, and clocks that jump."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from neurostimd.outputs.audit import DAY_S, segments, stimulated_s_since
from tests.outputs.audit_clocks import ON, Clocks, command, startup

# startup(): checkpoint 1000 ms + exchange 300 ms + watchdog 250 ms
BOUND_S = 1.55


def _crashed_while_stimulating(clocks: Clocks, path: Path, on_s: float = 2.0) -> None:
    """A run that stimulates from t+10 s with a checkpoint every second and is killed after `on_s` s."""
    with clocks.open(path) as log:
        startup(log)
        clocks.advance(10)
        command(log, ON)
        for _ in range(round(on_s)):
            clocks.advance(1)
            log.write("dose_checkpoint")


def test_a_crash_counts_on_through_the_last_record_plus_checkpoint_exchange_and_watchdog(tmp_path: Path) -> None:
    """Killed while stimulating: the next open counts the run's stimulation through its last record plus one
    checkpoint interval, the longest exchange and the board's watchdog, as the startup and board_ready records set."""
    clocks, path = Clocks(), tmp_path / "audit.jsonl"
    _crashed_while_stimulating(clocks, path)
    clocks.advance(100)
    with clocks.open(path) as log:
        rec = log.dose_recovery()
        assert rec.daily_stim_s == pytest.approx(2 + BOUND_S) and rec.open_s == pytest.approx(BOUND_S)
        startup(log)
        after = log.dose_recovery()
        assert after.daily_stim_s == pytest.approx(2 + BOUND_S) and after.open_s == 0.0


def test_a_restart_within_the_bound_stays_on_until_the_first_confirmed_stop(tmp_path: Path) -> None:
    """Back within the bound in the same boot (the new host's handshake may keep the board's watchdog alive): on
    until the new run's first confirmed stop. After a reboot: the whole bound, no more."""
    clocks, path = Clocks(), tmp_path / "audit.jsonl"
    _crashed_while_stimulating(clocks, path)
    clocks.advance(0.5)
    with clocks.open(path) as log:
        startup(log)
        clocks.advance(1.0)
        command(log, None)
        clocks.advance(60)
        log.write("dose_checkpoint")
        assert log.recovered_daily_stim_s() == pytest.approx(2 + 0.5 + 1.0)
    clocks2, path2 = Clocks(), tmp_path / "b" / "audit.jsonl"
    _crashed_while_stimulating(clocks2, path2)
    clocks2.reboot()
    with clocks2.open(path2, boot_id="boot-B") as log:
        startup(log)
        assert log.recovered_daily_stim_s() == pytest.approx(2 + BOUND_S)


def test_a_command_without_a_recorded_outcome_counts_as_running_after_a_crash(tmp_path: Path) -> None:
    """A command with parameters whose ACK was never recorded (killed between the two) may be running on the board:
    it counts from its record through the bound."""
    clocks, path = Clocks(), tmp_path / "audit.jsonl"
    with clocks.open(path) as log:
        startup(log)
        clocks.advance(10)
        log.write("stim_command", applied=ON)
    clocks.advance(50)
    with clocks.open(path) as log:
        assert log.recovered_daily_stim_s() == pytest.approx(BOUND_S)


@pytest.mark.parametrize(("ack", "reply", "expected_s"), [(True, None, 2.0), (False, "timeout", 5.0 + 0.25),
                                                          (False, "nak", 5.0 + 0.25)])
def test_only_a_confirmed_stop_ends_the_dose(tmp_path: Path, ack: bool, reply: str | None,
                                             expected_s: float) -> None:
    """A STOP the board ACKed ends the stimulation; one it did not answer or refused does not: on until the
    shutdown, plus the board's watchdog."""
    clocks, path = Clocks(), tmp_path / "audit.jsonl"
    with clocks.open(path) as log:
        startup(log)
        command(log, ON)
        clocks.advance(2)
        command(log, None, ack=ack, **({"reply": reply} if reply else {}))
        clocks.advance(3)
        log.write("shutdown", exit_code=69)
        assert log.recovered_daily_stim_s() == pytest.approx(expected_s)


def test_shadow_commands_never_count(tmp_path: Path) -> None:
    """Commands marked shadow (decided, never sent) are no dose, even after a crash."""
    clocks, path = Clocks(), tmp_path / "audit.jsonl"
    with clocks.open(path) as log:
        startup(log)
        for _ in range(10):
            log.write("stim_command", applied=ON, shadow=True)
            clocks.advance(1)
    clocks.advance(10)
    with clocks.open(path) as log:
        assert log.recovered_daily_stim_s() == 0.0


def _simulate(rng: random.Random, clocks: Clocks, path: Path, sessions: int) -> None:
    """Many daemon runs over two days: stimulation on and off, checkpoints every second while on, NAKs, unanswered
    commands, long pauses, crashes, clean shutdowns and a reboot, in small segments."""
    boot = "boot-A"
    for s in range(sessions):
        if s == sessions // 2:
            clocks.reboot()
            boot = "boot-B"
        with clocks.open(path, boot_id=boot, rotate_mb=0.03) as log:
            startup(log)
            on = False
            for _ in range(rng.randint(5, 40)):
                if on:
                    for _ in range(rng.randint(1, 8)):
                        clocks.advance(rng.uniform(0.2, 1.0))
                        log.write("dose_checkpoint")
                else:
                    clocks.advance(rng.choice([0.3, 2.0, 30.0, 600.0]))
                kind = rng.random()
                if kind < 0.08:
                    command(log, None if on else ON, ack=False, reply="nak")
                elif kind < 0.12:
                    command(log, None if on else ON, ack=False, reply="timeout")
                    on = on or True
                else:
                    command(log, None if on else ON)
                    on = not on
            if rng.random() < 0.5:
                clocks.advance(rng.uniform(0.0, 0.9))
                log.write("dose_checkpoint")  # and then killed
            else:
                command(log, None)
                log.write("shutdown", exit_code=0)
        clocks.advance(rng.choice([0.4, 5.0, 900.0, 3 * 3600.0]))


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_the_summary_and_the_active_segment_recover_what_the_whole_log_does(tmp_path: Path, seed: int) -> None:
    """Recovery from the newest summary plus the active segment is never less than reading every record of every
    segment, and more by at most the one-minute bins that straddle the window's start (and ms rounding)."""
    clocks, path = Clocks(), tmp_path / "audit.jsonl"
    _simulate(random.Random(seed), clocks, path, sessions=24)
    assert len(segments(path)) >= 5
    with clocks.open(path, boot_id="boot-B") as log:
        for hours in (0.0, 3.0, 9.0, 17.0, 30.0):
            wall, mono = clocks.wall + hours * 3600, clocks.mono + round(hours * 3600e9)
            got = log.recovered_daily_stim_s(wall, mono)
            full = stimulated_s_since(path, wall - DAY_S)
            assert full - 1e-6 <= got <= full + 60.0 + BOUND_S + 0.5, (hours, got, full)
        assert got == 0.0, "30 h after the last record nothing is left in the window"
        assert log.recovered_daily_stim_s() > 0


def _a_run_stimulating_100_s(clocks: Clocks, path: Path) -> None:
    """A run that stimulates for 100 s, stops (ACKed) and shuts down cleanly."""
    with clocks.open(path) as log:
        startup(log)
        command(log, ON)
        clocks.advance(100)
        command(log, None)
        log.write("shutdown", exit_code=0)


def test_a_wall_clock_step_within_a_boot_does_not_drop_the_days_dose(tmp_path: Path) -> None:
    """In the same boot the window is on the monotonic clock: the wall clock stepping two days forward (an RTC reset
    put right by NTP) or hours back changes nothing; a wall-clock window would have lost it all."""
    clocks, path = Clocks(), tmp_path / "audit.jsonl"
    _a_run_stimulating_100_s(clocks, path)
    clocks.advance(60)
    clocks.step_wall(2 * DAY_S)
    with clocks.open(path) as log:
        assert log.recovered_daily_stim_s() == pytest.approx(100.0)
    assert stimulated_s_since(path, clocks.wall - DAY_S) == 0.0, "what the wall clock alone would say"
    clocks.step_wall(-2 * DAY_S - 3 * 3600)
    with clocks.open(path) as log:
        rec = log.dose_recovery()
    assert rec.daily_stim_s == pytest.approx(100.0) and rec.clock_back_s > 2 * 3600
    clocks.advance(DAY_S)
    with clocks.open(path) as log:
        assert log.recovered_daily_stim_s() == 0.0, "a day later on the monotonic clock it has left the window"


def test_across_boots_the_wall_clock_decides_and_a_log_ahead_of_it_counts_whole(tmp_path: Path) -> None:
    """After a reboot only the wall clock compares: stimulation 25 h ago is out of the window, 12 h ago in; with the
    clock gone back behind the log's last record, everything in the log counts and the step is reported."""
    for advance_h, expected in ((25.0, 0.0), (12.0, 100.0), (-5.0, 100.0)):
        clocks, path = Clocks(), tmp_path / str(advance_h) / "audit.jsonl"
        _a_run_stimulating_100_s(clocks, path)
        clocks.reboot()
        clocks.step_wall(advance_h * 3600)
        with clocks.open(path, boot_id="boot-B") as log:
            rec = log.dose_recovery()
        assert rec.daily_stim_s == pytest.approx(expected), advance_h
        assert (rec.clock_back_s > 4 * 3600) == (advance_h < 0)


def test_a_board_that_stopped_by_itself_ends_the_dose_and_a_foreign_stimulation_starts_it(tmp_path: Path) -> None:
    """`board_stopped` (the board's STATUS says it runs nothing) ends stimulation like an ACKed STOP; a
    `board_mismatch` showing the board running what the host never sent counts from there until a confirmed stop."""
    clocks, path = Clocks(), tmp_path / "audit.jsonl"
    with clocks.open(path) as log:
        startup(log)
        command(log, ON)
        clocks.advance(10)
        log.write("board_stopped", fault_flags=["watchdog_trip"])
        clocks.advance(100)
        log.write("board_mismatch", running=ON, expected=None)
        clocks.advance(5)
        command(log, None)
        clocks.advance(50)
        log.write("shutdown")
        assert log.dose_recovery().daily_stim_s == pytest.approx(15.0)


def test_a_command_whose_ack_the_log_could_not_record_counts_until_the_unaudited_stop(tmp_path: Path) -> None:
    """The log goes down at the very ACK of a command (the record of the ACK is lost, the board runs it): the
    `audit_resumed` record's stopped_at ends it, and the time from the command to that stop is counted (it was
    dropped with the pending command)."""
    clocks, path = Clocks(), tmp_path / "audit.jsonl"
    with clocks.open(path) as log:
        startup(log)
        log.write("stim_command", applied=ON)  # its stim_ack never made it to disk
        clocks.advance(5)
        wall, mono = log.clock_now()
        clocks.advance(10)
        log.write("audit_resumed", stopped_at={"t_wall": wall, "t_mono_ns": mono})
        clocks.advance(100)
        log.write("shutdown")
        assert log.dose_recovery().daily_stim_s == pytest.approx(5.0)
