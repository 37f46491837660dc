"""The audit log, the state file and the recorder write only regular files: a symlink, FIFO or device planted at
their paths is refused with a message, never followed and never blocked on."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neurostimd.audit import AuditError, AuditLog, read_audit
from neurostimd.recorder import Recorder
from neurostimd.safe_io import UnsafePath
from neurostimd.status import write_state

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
