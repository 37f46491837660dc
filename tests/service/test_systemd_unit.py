"""The shipped systemd unit verifies clean (bar the install path) and scores <= 2.0 in the offline audit."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "neurostimd.service"

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze not installed (apt-get install systemd)")


def test_verify_is_clean_apart_from_executable_path() -> None:
    """systemd-analyze verify reports nothing but the not-yet-installed ExecStart binary."""
    res = subprocess.run(["systemd-analyze", "verify", UNIT.name], cwd=UNIT.parent, capture_output=True, text=True,
                         timeout=60)
    problems = [ln for ln in (res.stdout + res.stderr).splitlines()
                if ln.strip() and "/opt/neurostimd/.venv/bin/neurostimd" not in ln]
    assert problems == []


def test_security_exposure_at_most_2() -> None:
    """The offline security audit rates the unit's exposure at 2.0 or lower."""
    res = subprocess.run(["systemd-analyze", "security", "--offline=yes", UNIT.name], cwd=UNIT.parent,
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout)
    assert m, res.stdout[-2000:]
    assert float(m.group(1)) <= 2.0


def test_unit_contract() -> None:
    """Type=notify with a watchdog, a dedicated user and no network by default."""
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "User=neurostimd", "ProtectSystem=strict", "StateDirectory=",
                 "LogsDirectory=", "PrivateNetwork=yes", "SupplementaryGroups=dialout"):
        assert line in text


def test_the_unit_gives_the_shipped_config_the_real_time_mode_it_asks_for() -> None:
    """config/serial.toml (what the README installs as /etc/neurostimd/neurostimd.toml) asks for the real-time mode
    at the priority the unit sets, and the unit lets the daemon lock its memory: under the unit's system-call filter
    the daemon cannot set its scheduling itself, so a mismatch would refuse every start."""
    import tomllib

    cfg = tomllib.loads((UNIT.parents[1] / "config" / "serial.toml").read_text())["runtime"]
    unit = dict(ln.split("=", 1) for ln in UNIT.read_text().splitlines() if "=" in ln and not ln.startswith("#"))
    assert cfg["realtime"] is True
    assert unit["CPUSchedulingPolicy"] == "fifo" and int(unit["CPUSchedulingPriority"]) == cfg["rt_priority"]
    assert unit["LimitMEMLOCK"] == "infinity"
    assert "@resources" in unit["SystemCallFilter"]  # the last SystemCallFilter= line: the deny list
