"""The daemon and the simulated board as real subprocesses over a pty: the behaviours a lab relies on."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import ROOT, read_jsonl, wait_for, write_config

pytestmark = pytest.mark.usefixtures("need_bundle")

# Generous bounds: these machines are shared, and start-up includes importing numpy and LiteRT.
START_S = 60.0


def _stimulating_now(sim) -> bool:  # type: ignore[no-untyped-def]
    """The board's latest stimulation event is a stim_applied (not an off)."""
    ev = [e for e in sim.events() if e["event"] in ("stim_applied", "stim_off")]
    return bool(ev) and ev[-1]["event"] == "stim_applied"


def test_sigterm_stops_stimulation_with_host_stop_and_exits_0(tmp_path: Path, start_sim, start_daemon) -> None:
    """SIGTERM while stimulating: the board logs stim_off reason host_stop and the daemon exits 0."""
    sim = start_sim()
    d = start_daemon(write_config(tmp_path), "--port", sim.pty)
    wait_for(lambda: _stimulating_now(sim), START_S, "the board to stimulate")
    t_sig = time.monotonic_ns()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=20) == 0
    offs = [e for e in sim.events() if e["event"] == "stim_off" and e["t_mono_ns"] >= t_sig]
    assert offs and offs[0]["reason"] == "host_stop"
    audit = d.audit()
    stops = [r for r in audit if r["event"] == "stim_stop" and r.get("reason") == "shutdown"]
    assert stops, "the shutdown STOP is audited"
    assert any(r["event"] == "stim_ack" and r["command_seq"] == stops[-1]["seq"] and r["ack"] for r in audit)
    assert audit[-1]["event"] == "shutdown" and audit[-1]["exit_code"] == 0
    state = d.state()
    assert state is not None and state["applied"] is None and state["tensorflow_loaded"] is False


def test_sigkill_leaves_the_board_to_its_watchdog(tmp_path: Path, start_sim, start_daemon) -> None:
    """SIGKILL of the daemon while stimulating: the board stops by its dead-man timer within its timeout."""
    sim = start_sim("--watchdog-ms", "250")
    d = start_daemon(write_config(tmp_path), "--port", sim.pty)
    wait_for(lambda: _stimulating_now(sim), START_S, "the board to stimulate")
    t_kill = time.monotonic_ns()
    os.killpg(d.proc.pid, signal.SIGKILL)
    d.proc.wait(timeout=10)
    off = wait_for(lambda: [e for e in sim.events() if e["event"] == "stim_off" and e["t_mono_ns"] >= t_kill], 5.0,
                   "the board's stim_off")
    assert off[0]["reason"] == "watchdog"
    # 250 ms dead-man timeout; the margin covers the board's pacing and a loaded machine.
    assert (off[0]["t_mono_ns"] - t_kill) / 1e6 < 250 + 150


def _state_agreement(audit: list[dict], labels: np.ndarray, settle_s: float = 1.5) -> tuple[float, set[int]]:
    """Fraction of time (100 ms grid, data time) the policy's state in effect equals the recording's true state,
    leaving out `settle_s` after each true change (the window and onset time it takes to follow); no state counts
    as a miss. Also the states stimulation was commanded for."""
    changes = [(r["t_data_s"], r["state"]) for r in audit if r["event"] == "state_change"]
    assert changes, "the daemon established a state"
    t_end = min(max(r["t_data_s"] for r in audit if r.get("t_data_s") is not None), (len(labels) - 1) / 1000)
    true_changes = np.flatnonzero(np.diff(labels)) / 1000.0
    hits = []
    for t in np.arange(changes[0][0], t_end, 0.1):
        if any(c <= t < c + settle_s for c in true_changes):
            continue
        in_effect = [s for tc, s in changes if tc <= t]
        hits.append(bool(in_effect) and in_effect[-1] == labels[int(t * 1000)])
    commanded = {r["state"] for r in audit if r["event"] == "stim_command" and r.get("state") is not None}
    return float(np.mean(hits)), commanded


def test_stimulation_follows_the_simulated_state(tmp_path: Path, start_sim, start_daemon) -> None:
    """A recording played by the board drives what the daemon stimulates for as well as the same model does offline.

    The yardstick is the same bundle replayed over the same file on a virtual clock: the live loop over the pty must
    follow the true states about as well (what the model itself gets wrong is measured by `evaluate`, not here)."""
    rec = tmp_path / "rec.npz"
    subprocess.run([sys.executable, "-m", "neurostimd.firmware_sim.generate", "--out", str(rec), "--duration", "40",
                    "--channels", "32", "--rate", "1000", "--seed", "21"], check=True, capture_output=True)
    labels = np.load(rec)["labels"]
    sim = start_sim("--signal", str(rec))
    d = start_daemon(write_config(tmp_path), "--port", sim.pty, "--duration", "38")
    assert d.proc.wait(timeout=120) == 0
    live, states = _state_agreement(d.audit(), labels)
    res = subprocess.run([sys.executable, "-m", "neurostimd", "replay", str(rec), "--config",
                          str(ROOT / "config" / "replay.toml"), "--out", str(tmp_path / "offline")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    offline, _ = _state_agreement(read_jsonl(tmp_path / "offline" / "audit.jsonl"), labels)
    assert live >= offline - 0.1, f"live loop followed the true state {live:.0%} of the time, offline {offline:.0%}"
    assert live >= 0.5, f"live loop followed the true state only {live:.0%} of the time (chance: 33 %)"
    assert len(states) >= 2, f"only states {states} were stimulated for; the recording visits {set(labels)}"
    applied = [e for e in sim.events() if e["event"] == "stim_applied"]
    assert applied and all(e["amplitude_ma"] <= 5.0 + 1e-6 for e in applied)


def test_board_killed_safe_state_then_reconnect(tmp_path: Path, start_sim, start_daemon) -> None:
    """Board gone: the daemon goes to the safe state; board back on the same path: it reconnects and resumes."""
    link = tmp_path / "ttyNEURO"
    sim = start_sim("--pty-link", str(link), log_name="board1.jsonl")
    d = start_daemon(write_config(tmp_path), "--port", str(link))
    wait_for(lambda: any(e["event"] == "stim_applied" for e in sim.events()), START_S, "the board to stimulate")
    os.killpg(sim.proc.pid, signal.SIGKILL)
    sim.proc.wait(timeout=5)
    wait_for(lambda: any(r["event"] == "fault" and "board_lost" in r.get("faults", []) for r in d.audit()), 10.0,
             "a board_lost fault in the audit log")
    wait_for(lambda: (d.state() or {}).get("applied") is None, 5.0, "the daemon to record no stimulation")
    sim2 = start_sim("--pty-link", str(link), log_name="board2.jsonl")
    wait_for(lambda: any(e.get("event") == "board_reconnected" for e in d.logs()), 20.0, "a reconnect")
    applied = wait_for(lambda: [e for e in sim2.events() if e["event"] == "stim_applied"], 30.0,
                       "stimulation to resume on the new board after clean data")
    # it resumes from the bottom of the ramp, not at the amplitude the lost board had
    assert applied[0]["amplitude_ma"] <= 0.5
    assert d.proc.poll() is None, "the daemon kept running"


def test_invalid_config_exits_78(tmp_path: Path) -> None:
    """An invalid config is refused at start with EX_CONFIG and a line naming the field."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[safety]\nk_max = 2.2\n")
    res = subprocess.run([sys.executable, "-m", "neurostimd", "run", "--config", str(bad)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 78
    assert "safety.k_max" in res.stderr


def test_mismatched_bundle_refuses_to_start(tmp_path: Path, start_sim, start_daemon) -> None:
    """A board whose channel count differs from the model's: no stimulation, exit 78, reason in the log."""
    sim = start_sim("--channels", "8")
    d = start_daemon(write_config(tmp_path), "--port", sim.pty)
    assert d.proc.wait(timeout=START_S) == 78
    assert not any(e["event"] == "stim_applied" for e in sim.events())
    refused = [e for e in d.logs() if e.get("event") == "startup_refused"]
    assert refused and "8 channels" in refused[0]["error"]


def test_sighup_with_broken_config_keeps_the_old_one(tmp_path: Path, start_sim, start_daemon) -> None:
    """SIGHUP with an invalid file: the daemon logs why, keeps running on the old config."""
    sim = start_sim()
    cfg = write_config(tmp_path)
    d = start_daemon(cfg, "--port", sim.pty)
    wait_for(lambda: (d.state() or {}).get("ticks", 0) > 5, START_S, "the loop to tick")
    good = cfg.read_text()
    cfg.write_text(good + "\n[safety.bogus]\n")
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: any(e.get("event") == "config_reload_rejected" for e in d.logs()), 10.0, "the rejection")
    ticks = d.state()["ticks"]
    wait_for(lambda: d.state()["ticks"] > ticks + 5, 10.0, "the loop to keep ticking")
    assert any(r["event"] == "config_reload" and r["ok"] is False for r in d.audit())
    # and a valid change is taken
    cfg.write_text(good.replace("confidence_threshold = 0.6", "confidence_threshold = 0.7"))
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: any(e.get("event") == "config_reloaded" for e in d.logs()), 10.0, "the reload")
    assert any(r["event"] == "config_reload" and r["ok"] is True and r["needs_restart"] == [] for r in d.audit())
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=20) == 0


def test_shadow_mode_never_commands_the_board(tmp_path: Path, start_sim, start_daemon) -> None:
    """--shadow decides and audits commands, but the board never stimulates."""
    sim = start_sim()
    d = start_daemon(write_config(tmp_path), "--port", sim.pty, "--shadow", "--duration", "6")
    assert d.proc.wait(timeout=START_S) == 0
    assert any(r["event"] == "stim_command" and r.get("shadow") is True for r in d.audit())
    assert not any(e["event"] == "stim_applied" for e in sim.events())


def test_systemd_notify_ready_watchdog_stopping(tmp_path: Path, start_sim, start_daemon) -> None:
    """Under a (socket-level) service manager: READY=1 after the first clean window, WATCHDOG=1, STOPPING=1."""
    sock_path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(sock_path)
    s.settimeout(1.0)
    sim = start_sim()
    try:
        d = start_daemon(write_config(tmp_path), "--port", sim.pty, "--duration", "6",
                         env={"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "1000000"})
        msgs: list[str] = []
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline and d.proc.poll() is None:
            try:
                msgs.append(s.recv(4096).decode())
            except TimeoutError:
                continue
        assert d.proc.wait(timeout=20) == 0
    finally:
        s.close()
    joined = "\n".join(msgs).splitlines()
    assert "READY=1" in joined and "WATCHDOG=1" in joined and "STOPPING=1" in joined
    assert joined.index("READY=1") < joined.index("STOPPING=1")
    ready_i = next(i for i, m in enumerate(msgs) if "READY=1" in m)
    assert "STATUS=state=" in msgs[ready_i]
    # READY comes only after the board handshake and a clean window
    logs = [e.get("event") for e in read_jsonl(tmp_path / "daemon.stdout")]
    assert logs.index("board_ready") < logs.index("ready")


def test_status_command_reads_the_running_daemon(tmp_path: Path, start_sim, start_daemon) -> None:
    """`neurostimd status` shows the running daemon's state and phase."""
    sim = start_sim()
    cfg = write_config(tmp_path)
    d = start_daemon(cfg, "--port", sim.pty)
    wait_for(lambda: (d.state() or {}).get("phase") == "running", START_S, "the daemon to be running")
    res = subprocess.run([sys.executable, "-m", "neurostimd", "status", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "running" in res.stdout and "stimulation:" in res.stdout
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=20) == 0
    res = subprocess.run([sys.executable, "-m", "neurostimd", "status", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert res.returncode == 3 and "not running" in res.stdout


def test_reported_impedance_engages_the_compliance_rule(tmp_path: Path, start_sim, start_daemon) -> None:
    """With 6 kΩ reported by the board and 12 V compliance, no command exceeds 2 mA and `compliance` is named."""
    sim = start_sim("--impedance-ohm", "6000")
    d = start_daemon(write_config(tmp_path), "--port", sim.pty)
    cmds = wait_for(lambda: [r for r in d.audit() if r["event"] == "stim_command" and r.get("applied")
                             and "compliance" in r.get("limited_by", [])], START_S, "a compliance-limited command")
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=20) == 0
    assert cmds
    sent = [r["applied"]["amplitude_ma"] for r in d.audit() if r["event"] == "stim_command" and r.get("applied")]
    assert max(sent) <= 12.0 / 6000.0 * 1000.0 + 1e-9
    assert all(e["amplitude_ma"] <= 2.0 + 1e-6 for e in sim.events() if e["event"] == "stim_applied")


def test_recorded_session_reads_back_and_replays(tmp_path: Path, start_sim, start_daemon) -> None:
    """[recorder] writes the session's samples, decisions and commands; the session replays like any recording."""
    from neurostimd.sources.recordings import read_recording

    sim = start_sim()
    cfg = write_config(tmp_path, extra="")
    cfg.write_text(cfg.read_text().replace("[recorder]\nenabled = false", "[recorder]\nenabled = true"))
    d = start_daemon(cfg, "--port", sim.pty, "--duration", "6")
    assert d.proc.wait(timeout=START_S) == 0
    sessions = [p for p in (tmp_path / "recordings").iterdir() if p.is_dir()]
    assert len(sessions) == 1
    rec = read_recording(sessions[0])
    assert rec.data.shape[1] == 32 and rec.fs == 1000.0
    assert rec.data.shape[0] >= 4000, "about 6 s of 1 kHz samples were recorded"
    decisions = read_jsonl(sessions[0] / "decisions.jsonl")
    commands = read_jsonl(sessions[0] / "commands.jsonl")
    assert len(decisions) >= 60 and commands and all("ack" in c for c in commands)
    out = tmp_path / "replayed"
    res = subprocess.run([sys.executable, "-m", "neurostimd", "replay", str(sessions[0]), "--config",
                          str(ROOT / "config" / "replay.toml"), "--out", str(out)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "decisions.jsonl").exists() and (out / "timeline.png").exists()
