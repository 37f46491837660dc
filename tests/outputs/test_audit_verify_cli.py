"""`neurostimd audit verify`: exit codes, the first break named, JSON for machines, and a help with examples."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from neurostimd.commands.cli import main
from neurostimd.outputs.audit import AuditLog
from tests.outputs.test_audit_chain import _edit, _lines, _rotated_log

ROOT = Path(__file__).resolve().parents[2]


def test_audit_verify_exit_codes_and_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`neurostimd audit verify`: 0 and `intact` for a good log (file or folder), 1 and the first break's file, line
    and seq for a bad one, JSON with --json, 66 without a log, 2 for a malformed --expect."""
    path = _rotated_log(tmp_path)
    assert main(["audit", "verify", str(path)]) == 0
    assert "intact:" in capsys.readouterr().out
    assert main(["audit", "verify", str(tmp_path)]) == 0
    capsys.readouterr()
    file, line = _edit(path)
    assert main(["audit", "verify", str(path)]) == 1
    out = capsys.readouterr().out
    seq = json.loads(_lines(tmp_path / file)[line - 1])["seq"]
    assert f"BROKEN at {file} line {line} (seq {seq}): `prev` does not match" in out
    assert main(["audit", "verify", str(path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["broken"]["problem"] == "prev_mismatch"
    assert report["broken"]["seq"] == seq and report["files"][-1]["file"] == file, "walked up to the break"
    assert main(["audit", "verify", str(tmp_path / "nothing.jsonl")]) == 66
    assert "nothing.jsonl" in capsys.readouterr().err
    assert main(["audit", "verify", str(path), "--expect", "12:abc"]) == 2
    assert "SEQ:SHA256" in capsys.readouterr().err


def test_audit_verify_runs_as_a_command_with_an_example_in_its_help(tmp_path: Path) -> None:
    """`python -m neurostimd audit verify PATH` exits 0 on an intact log, and its --help shows an example."""
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, durable=False) as log:
        log.write("startup")
    res = subprocess.run([sys.executable, "-m", "neurostimd", "audit", "verify", str(path)], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 0 and "intact: 1 records" in res.stdout, res.stdout + res.stderr
    res = subprocess.run([sys.executable, "-m", "neurostimd", "audit", "verify", "--help"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 0 and "examples:" in res.stdout and "--expect" in res.stdout
