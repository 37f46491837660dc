"""The audit log, the state file and the recorder write only regular files: a symlink, FIFO or device planted at
their paths is refused with a message, never followed and never blocked on."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neurostimd.outputs.audit import AuditError, AuditLog, read_audit
from neurostimd.outputs.recorder import Recorder
from neurostimd.outputs.status import write_state
from neurostimd.safe_io import UnsafePath

ROOT = Path(__file__).resolve().parents[2]


def test_audit_log_on_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO at the audit path is refused at once (it hung the start: reading it blocked for ever)."""
    fifo = tmp_path / "audit.jsonl"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(AuditError, match="FIFO"):
        AuditLog(fifo)
    assert time.monotonic() - t0 < 2.0


def test_audit_log_on_a_character_device_is_refused(tmp_path: Path) -> None:
    """A character device (here /dev/null through a path of our own) is not a log."""
    with pytest.raises(AuditError, match="character device"):
        AuditLog("/dev/null")


def test_audit_log_symlink_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    """A pre-created symlink at the audit path is not followed: the file it points to stays as it was."""
    target = tmp_path / "elsewhere.txt"
    target.write_text("precious\n")
    link = tmp_path / "audit.jsonl"
    link.symlink_to(target)
    with pytest.raises(AuditError, match="symbolic link"):
        AuditLog(link)
    with pytest.raises(UnsafePath):
        read_audit(link)
    assert target.read_text() == "precious\n"


def test_state_file_symlink_or_fifo_is_refused(tmp_path: Path) -> None:
    """write_state replaces only a regular file: a symlink or FIFO planted at the path is left and refused."""
    target = tmp_path / "target"
    target.write_text("x")
    link = tmp_path / "state.json"
    link.symlink_to(target)
    with pytest.raises(UnsafePath, match="symbolic link"):
        write_state(link, {"pid": 1})
    assert link.is_symlink() and target.read_text() == "x"
    fifo = tmp_path / "state2.json"
    os.mkfifo(fifo)
    with pytest.raises(UnsafePath, match="FIFO"):
        write_state(fifo, {"pid": 1})
    write_state(tmp_path / "ok.json", {"pid": 1})
    write_state(tmp_path / "ok.json", {"pid": 2})
    assert '"pid": 2' in (tmp_path / "ok.json").read_text()


def test_recorder_refuses_planted_files_and_a_symlinked_session_folder(tmp_path: Path) -> None:
    """A session folder that is a symlink, or one holding a planted link where a recording file goes, is refused."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "linked").symlink_to(real)
    with pytest.raises(UnsafePath, match="symbolic link"):
        Recorder(tmp_path / "linked", 2, 100.0)
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "samples.f32").symlink_to(tmp_path / "victim")
    with pytest.raises(FileExistsError):
        Recorder(planted, 2, 100.0)
    assert not (tmp_path / "victim").exists()
    tmp_link = tmp_path / "tmplink"
    tmp_link.mkdir()
    (tmp_link / "session.json.tmp").symlink_to(tmp_path / "victim2")
    with pytest.raises(UnsafePath):
        Recorder(tmp_link, 2, 100.0)
    assert not (tmp_path / "victim2").exists()


def test_daemon_with_audit_path_on_a_fifo_exits_78_promptly(tmp_path: Path) -> None:
    """`neurostimd run` with its audit log path on a FIFO refuses to start (exit 78, the reason in its log) instead
    of hanging."""
    fifo = tmp_path / "audit.jsonl"
    os.mkfifo(fifo)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[source]\nkind = "board"\n[device]\nkind = "virtual"\n[audit]\npath = "{fifo}"\n'
                   f'[runtime]\nstate_file = "{tmp_path / "state.json"}"\n[logging]\nformat = "json"\n')
    res = subprocess.run([sys.executable, "-m", "neurostimd", "run", "--config", str(cfg), "--duration", "5"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 78, res.stdout[-2000:] + res.stderr[-2000:]
    assert "FIFO" in res.stdout + res.stderr


def _daemon(cfg_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "c.toml"
    cfg.write_text(cfg_text + f'[model]\nbundle = "{ROOT / "models" / "default"}"\n'
                   f'[audit]\npath = "{tmp_path / "audit.jsonl"}"\n[runtime]\nstate_file = '
                   f'"{tmp_path / "state.json"}"\n[logging]\nformat = "json"\n')
    return subprocess.run([sys.executable, "-m", "neurostimd", "run", "--config", str(cfg), "--duration", "5"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.mark.parametrize("kind", ["fifo", "file"])
def test_a_port_that_is_not_a_serial_port_refuses_the_start(tmp_path: Path, kind: str) -> None:
    """[device] port naming a FIFO or a regular file exits 78 with "not a serial port" (it retried for ever as
    "waiting for the board")."""
    port = tmp_path / "ttyFAKE"
    if kind == "fifo":
        os.mkfifo(port)
    else:
        port.write_text("")
    res = _daemon(f'[source]\nkind = "board"\n[device]\nkind = "serial"\nport = "{port}"\n', tmp_path)
    assert res.returncode == 78, res.stdout[-2000:]
    assert "not a serial port" in res.stdout


def test_a_replay_source_with_a_bad_file_refuses_the_start(tmp_path: Path) -> None:
    """A replay source whose file cannot be read (here a CSV without a header) exits 78 naming the problem (it
    crashed with exit 70, and systemd restarted it into the same file)."""
    bad = tmp_path / "rec.csv"
    bad.write_text("1,2,3\n4,5,6\n")
    res = _daemon(f'[source]\nkind = "replay"\npath = "{bad}"\nsample_rate_hz = 1000.0\n[device]\nkind = "none"\n',
                  tmp_path)
    assert res.returncode == 78, res.stdout[-2000:]
    assert "header" in res.stdout


def test_replay_will_not_replace_a_daemons_audit_log(tmp_path: Path) -> None:
    """`neurostimd replay --out` pointed at the daemon's folder refuses instead of deleting its audit log (the
    dose history and the hash chain)."""
    import numpy as np

    from neurostimd.firmware_sim.generate import generate_recording

    with AuditLog(tmp_path / "audit.jsonl") as log:
        log.write("startup", pid=1)
    before = (tmp_path / "audit.jsonl").read_bytes()
    rec = tmp_path / "rec.npz"
    np.savez(rec, **generate_recording(2.0, 32, 1000.0, seed=1))
    res = subprocess.run([sys.executable, "-m", "neurostimd", "replay", str(rec), "--config",
                          str(ROOT / "config" / "replay.toml"), "--out", str(tmp_path)], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 78 and "daemon's audit log" in res.stderr
    assert (tmp_path / "audit.jsonl").read_bytes() == before
