"""`neurostimd bench --only devices`: it drives each simulated stimulator the way the daemon does and reports the
time to the device's confirmation and the per-tick service(), from commands the devices really ran."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from neurostimd.commands.bench import devices as bench_devices
from tests.e2e.conftest import read_jsonl


def test_the_devices_section_times_commands_the_devices_ran(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_devices.tempfile, "mkdtemp", lambda prefix="": str(tmp_path))
    out = bench_devices.run(lambda msg: None, quick=True)
    for device in ("pulsepal", "stimjim"):
        assert out[f"devices.{device}.commands"] == 30
        for k in ("confirm_p50_ms", "confirm_p99_ms", "service_p50_ms", "service_p99_ms"):
            v = out[f"devices.{device}.{k}"]
            assert isinstance(v, float) and math.isfinite(v) and v > 0
        assert out[f"devices.{device}.confirm_p50_ms"] <= out[f"devices.{device}.confirm_p99_ms"]
        events = read_jsonl(tmp_path / f"{device}.jsonl")
        assert sum(e["event"] == "stim_applied" for e in events) >= 10  # the amplitude steps reached the device
        assert events[-1]["event"] == "stim_off" and events[-1]["reason"] == "host_stop"
