"""What the daemon trusts of the board, tried as an attacker or a faulty board would, with the daemon and the simulated
board as real processes over a pty and a real second opener of the port (issue 10, items 1–6)."""

from __future__ import annotations

import errno
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neurostimd.drivers.errors import PortBusy
from neurostimd.drivers.neurostim_board.codec import Frame, Heartbeat, SetStim, encode
from neurostimd.drivers.transport import SerialLink
from neurostimd.drivers.types import StimParams
from tests.e2e.conftest import ROOT, wait_for, write_config

pytestmark = pytest.mark.usefixtures("need_bundle")

START_S = 60.0
FOREIGN = StimParams(100.0, 6.0, 500.0, 50.0)  # k = 2.18 on 0.06 cm², above Shannon's 1.85


def _stimulating_now(sim) -> bool:  # type: ignore[no-untyped-def]
    ev = [e for e in sim.events() if e["event"] in ("stim_applied", "stim_off")]
    return bool(ev) and ev[-1]["event"] == "stim_applied"


def _raw_open(path: str) -> int | None:
    """The port opened as a careless or hostile program would: no lock, no exclusivity of its own. None when the
    kernel refuses it (TIOCEXCL holds for a process without CAP_SYS_ADMIN: the first line of defence worked)."""
    try:
        return os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as err:
        assert err.errno == errno.EBUSY and os.geteuid() != 0, err
        return None


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            data = data[os.write(fd, data):]
        except BlockingIOError:
            time.sleep(0.001)


def _attack(fd: int, n: int, spread_s: float) -> None:
    """n SET_STIMs at 100 Hz / 6 mA / 500 µs under a token of the attacker's own, with heartbeats between them."""
    token = secrets.token_bytes(8)
    for i in range(n):
        _write_all(fd, encode(Frame(40_000 + 2 * i, SetStim(token, FOREIGN)))
                   + encode(Frame(40_001 + 2 * i, Heartbeat(token))))
        time.sleep(spread_s / n)


def test_a_second_opener_can_neither_open_nor_command_the_board(tmp_path: Path, start_sim, start_daemon) -> None:
    """While the daemon holds the port: a second SerialLink and a second daemon are refused (PortBusy, exit 75, the
    holder named); a program that opens the port anyway and sends 101 SET_STIMs with its own token gets every one
    refused by the board (NAK bad_session, logged), and the daemon's stimulation goes on untouched."""
    sim = start_sim()
    d = start_daemon(write_config(tmp_path), "--port", sim.pty)
    wait_for(lambda: _stimulating_now(sim), START_S, "the board to stimulate")
    with pytest.raises(PortBusy, match=f"pid {d.proc.pid}"):
        SerialLink(sim.pty)
    other = tmp_path / "other"
    other.mkdir()
    res = subprocess.run([sys.executable, "-m", "neurostimd", "run", "--config", str(write_config(other)),
                          "--port", sim.pty], capture_output=True, text=True, timeout=START_S, cwd=ROOT)
    assert res.returncode == 75, res.stdout[-2000:]
    assert "held by another process" in res.stdout
    fd = _raw_open(sim.pty)
    if fd is not None:
        try:
            t0 = time.monotonic_ns()
            _attack(fd, 101, 1.0)
            refused = wait_for(lambda: [e for e in sim.events() if e["event"] == "command_refused"
                                        and e["reason"] == "bad_session" and e["t_mono_ns"] >= t0], 5.0,
                               "the board's refusals")
            wait_for(lambda: len([e for e in sim.events() if e["event"] == "command_refused"
                                  and e["t_mono_ns"] >= t0]) >= 101, 5.0, "all 101 refusals")
        finally:
            os.close(fd)
        assert len(refused) >= 1
    assert not [e for e in sim.events() if e["event"] == "stim_applied" and e["amplitude_ma"] > 5.0]
    assert not [r for r in d.audit() if r.get("applied") and r["applied"]["amplitude_ma"] > 5.0]
    assert d.proc.poll() is None and _stimulating_now(sim)
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=20) == 0


def test_a_board_that_obeys_another_process_is_stopped_by_the_status_check(tmp_path: Path, start_sim,
                                                                           start_daemon) -> None:
    """Against firmware without the session check (--no-session-check), a second process's SET_STIMs (one every
    50 ms for 2.5 s, as the 101 foreign commands in 5.3 s did) do run; the daemon's STATUS poll sees parameters it
    never acknowledged: board_params_mismatch (audited, logged at error), STOP, within the poll interval (1 s) plus a
    margin; and once the other process stops, nothing of its command is left running."""
    sim = start_sim("--no-session-check")
    d = start_daemon(write_config(tmp_path), "--port", sim.pty)
    wait_for(lambda: _stimulating_now(sim), START_S, "the board to stimulate")
    fd = _raw_open(sim.pty)
    if fd is None:
        pytest.skip("the kernel refused the second opener (not root): the exclusive port already stops this attack")
    try:
        t0 = time.monotonic_ns()
        _attack(fd, 50, 2.5)
    finally:
        os.close(fd)
    t_end = time.monotonic_ns()
    foreign = [e for e in sim.events() if e["event"] == "stim_applied" and e["t_mono_ns"] >= t0
               and e["amplitude_ma"] == 6.0]
    assert foreign, "the emulated firmware ran the foreign command"
    mism = wait_for(lambda: [r for r in d.audit() if r["event"] == "board_mismatch"], 5.0, "the audit record")
    assert mism[0]["running"]["amplitude_ma"] == pytest.approx(6.0)
    stop = wait_for(lambda: [e for e in sim.events() if e["event"] == "stim_off" and e["t_mono_ns"] > t0], 5.0,
                    "the daemon's STOP")
    assert stop[0]["reason"] == "host_stop"
    assert (stop[0]["t_mono_ns"] - foreign[0]["t_mono_ns"]) / 1e6 <= 1000 + 500
    logged = [e for e in d.logs() if e.get("event") == "board_params_mismatch"]
    assert logged and logged[0]["level"] == "error"
    assert any(r["event"] == "fault" and "board_params_mismatch" in r.get("faults", []) for r in d.audit())
    time.sleep(1.5)  # one more poll after the last foreign command

    def running_foreign() -> bool:
        ev = [e for e in sim.events() if e["event"] in ("stim_applied", "stim_off")]
        return bool(ev) and ev[-1]["event"] == "stim_applied" and ev[-1]["amplitude_ma"] == 6.0

    assert not running_foreign(), f"the foreign command still runs {(time.monotonic_ns() - t_end) / 1e9:.1f} s on"
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=20) == 0


@pytest.mark.slow
@pytest.mark.parametrize("other_board", [("--channels", "16"), ("--uv-per-lsb", "19.5")],
                         ids=["16_channels", "100x_uv_per_lsb"])
def test_a_reconnected_board_that_differs_is_refused_until_the_original_returns(
        tmp_path: Path, start_sim, start_daemon, other_board: tuple[str, ...]) -> None:
    """The board on the port is swapped for one with 16 channels (it flooded 4 960 warnings) or 100x the µV per count
    (it was classified and stimulated): board_info_mismatch, one error line, no command to it, reconnects keep
    trying; when a board like the original is back, stimulation resumes."""
    link = tmp_path / "ttyNEURO"
    sim1 = start_sim("--pty-link", str(link), log_name="board1.jsonl")
    d = start_daemon(write_config(tmp_path), "--port", str(link))
    wait_for(lambda: _stimulating_now(sim1), START_S, "the board to stimulate")
    os.killpg(sim1.proc.pid, signal.SIGKILL)
    sim1.proc.wait(timeout=5)
    sim2 = start_sim("--pty-link", str(link), *other_board, log_name="board2.jsonl")
    wait_for(lambda: [e for e in d.logs() if e.get("event") == "board_refused"], 30.0, "the refusal")
    wait_for(lambda: any(r["event"] == "fault" and "board_info_mismatch" in r.get("faults", []) for r in d.audit()),
             10.0, "a board_info_mismatch fault")
    time.sleep(4.0)  # reconnect attempts go on meanwhile
    logs = d.logs()
    assert len([e for e in logs if e.get("event") == "board_refused"]) == 1
    assert not [e for e in logs if e.get("event") == "board_samples_mismatch"]
    ev2 = sim2.events()
    assert not [e for e in ev2 if e["event"] in ("stim_applied", "command_refused")], "nothing was commanded"
    assert [e["event"] for e in ev2 if e["event"].startswith("session_")][:2] == ["session_open", "session_closed"]
    os.killpg(sim2.proc.pid, signal.SIGKILL)
    sim2.proc.wait(timeout=5)
    sim3 = start_sim("--pty-link", str(link), log_name="board3.jsonl")
    wait_for(lambda: [e for e in sim3.events() if e["event"] == "stim_applied"], 40.0,
             "stimulation to resume on a board like the original")
    assert d.proc.poll() is None


@pytest.mark.parametrize(("sim_args", "named"), [
    (("--limit", "max_frequency_hz=0"), "max_frequency_hz"),
    (("--watchdog-ms", "0"), "no dead-man timer"),
    (("--watchdog-ms", "4294967295"), "longer than"),
], ids=["max_frequency_0", "no_watchdog", "watchdog_2^32-1"])
def test_a_board_with_unusable_info_is_refused_at_start(tmp_path: Path, start_sim, start_daemon,
                                                        sim_args: tuple[str, ...], named: str) -> None:
    """INFO with a 0 Hz maximum (ZeroDivisionError at every start, a restart loop), no dead-man timer, or one of
    2^32 − 1 ms (the board kept stimulating after a SIGKILL): the daemon exits 78 naming why, sending nothing."""
    sim = start_sim(*sim_args)
    d = start_daemon(write_config(tmp_path), "--port", sim.pty)
    assert d.proc.wait(timeout=START_S) == 78
    refused = [e for e in d.logs() if e.get("event") == "startup_refused"]
    assert refused and named in refused[0]["error"], refused
    assert not [e for e in sim.events() if e["event"] == "stim_applied"]


def test_a_cadence_that_cannot_feed_this_boards_watchdog_is_refused_at_the_handshake(tmp_path: Path, start_sim,
                                                                                    start_daemon) -> None:
    """cadence_ms = 200 passes check-config (it feeds a 500 ms timer: 200 ms + a late tick) but not this board's
    250 ms one: exit 78 with the bound (it tripped the board 20 times in 20 s with no explanation)."""
    sim = start_sim("--watchdog-ms", "250")
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace("cadence_ms = 50", "cadence_ms = 200"))
    d = start_daemon(cfg, "--port", sim.pty)
    assert d.proc.wait(timeout=START_S) == 78
    refused = [e for e in d.logs() if e.get("event") == "startup_refused"]
    assert refused and "at most 50 ms" in refused[0]["error"], refused
    assert not [e for e in sim.events() if e["event"] == "stim_applied"]


def test_a_board_reboot_is_a_fault_and_stimulation_ramps_up_from_zero(tmp_path: Path, start_sim,
                                                                      start_daemon) -> None:
    """The board reboots (SIGHUP to the simulator) while stimulating: the daemon raises board_reset, and the first
    amplitude the rebooted board runs is one ramp step from zero."""
    sim = start_sim()
    d = start_daemon(write_config(tmp_path), "--port", sim.pty)
    wait_for(lambda: [e for e in sim.events() if e["event"] == "stim_applied" and e["amplitude_ma"] >= 1.2],
             START_S, "stimulation at 1.2 mA or more")
    sim.proc.send_signal(signal.SIGHUP)
    reset = wait_for(lambda: [e for e in sim.events() if e["event"] == "board_reset"], 5.0, "the reboot")
    after = wait_for(lambda: [e for e in sim.events() if e["event"] == "stim_applied"
                              and e["t_mono_ns"] > reset[0]["t_mono_ns"]], 30.0, "stimulation after the reboot")
    # ramp_ma_per_s x one 50 ms tick, with room for a late tick (the old code jumped to the old amplitude + a step)
    assert after[0]["amplitude_ma"] <= 1.2 * 2.0 * 0.05, after[0]
    raised = [r for r in d.audit() if r["event"] == "fault" and "board_reset" in r.get("raised", [])]
    # one board_reset, raised after the reboot (both processes stamp CLOCK_MONOTONIC), none at start-up
    assert len(raised) == 1 and raised[0]["t_mono_ns"] > reset[0]["t_mono_ns"], raised
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=20) == 0


def test_a_float32_board_at_32_channels_1_khz_stays_fresh(tmp_path: Path, start_sim, start_daemon) -> None:
    """128 KB/s from a float32 board is read in full every tick: once stimulating, no stale_data fault for 6 s (it
    flickered between stale and stimulating)."""
    sim = start_sim("--format", "float32")
    d = start_daemon(write_config(tmp_path), "--port", sim.pty)
    wait_for(lambda: _stimulating_now(sim), START_S, "the board to stimulate")
    n = len(d.audit())
    time.sleep(6.0)
    later = d.audit()[n:]
    assert not [r for r in later if r["event"] == "fault" and "stale_data" in r.get("faults", [])]
    assert _stimulating_now(sim)
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=20) == 0
