"""Stimulator benchmark: per device, the time from a tick's command to the device's confirmation, and the per-tick
`service()` (re-arming the dead-man train), against each simulated device as a separate process over a real pty, the
way the daemon drives it. The commands step the amplitude as a ramp does, so each one changes what the device runs."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from neurostimd.commands.bench._procs import pct
from neurostimd.commands.simulator import SimulatorProcess
from neurostimd.devices import DeviceContext
from neurostimd.drivers.types import StimParams
from neurostimd.registry import DEVICES

# The shipped configs' device tables, but for the simulated device's pty.
SETTINGS: dict[str, dict[str, Any]] = {
    "pulsepal": {"kind": "pulsepal", "isolator_ma_per_v": 1.0, "isolator_max_ma": 5.0},
    "stimjim": {"kind": "stimjim"},
}
CADENCE_S = 0.05


def _one(device: str, ticks: int, workdir: Path, progress: Any) -> dict[str, Any]:
    with SimulatorProcess(device=device, log=workdir / f"{device}.jsonl", stderr=workdir / f"{device}.stderr") as sim:
        settings = DEVICES.model(device).model_validate({**SETTINGS[device], "port": sim.port})
        driver = settings.build(DeviceContext())  # type: ignore[attr-defined]
        confirm_s: list[float] = []
        service_s: list[float] = []
        with driver:
            progress(f"devices: {device} on {sim.port}, {ticks} ticks at {CADENCE_S * 1000:.0f} ms")
            deadline = time.monotonic()
            for i in range(ticks):
                deadline += CADENCE_S
                t0 = time.perf_counter()
                driver.service(time.monotonic_ns())
                service_s.append(time.perf_counter() - t0)
                if i % 2 == 0:  # every other tick a new amplitude, as a ramp sends
                    params = StimParams(20.0, 0.5 + 0.01 * (i % 100), 200.0, 50.0)
                    t0 = time.perf_counter()
                    driver.set_stimulation(driver.deliverable(params))
                    confirm_s.append(time.perf_counter() - t0)
                time.sleep(max(0.0, deadline - time.monotonic()))
            driver.stop()
    ms = [x * 1000 for x in confirm_s]
    sv = [x * 1000 for x in service_s]
    return {f"devices.{device}.commands": len(ms),
            f"devices.{device}.confirm_p50_ms": pct(ms, 50), f"devices.{device}.confirm_p99_ms": pct(ms, 99),
            f"devices.{device}.service_p50_ms": pct(sv, 50), f"devices.{device}.service_p99_ms": pct(sv, 99)}


def run(progress: Any, quick: bool) -> dict[str, Any]:
    ticks = 60 if quick else 400
    workdir = Path(tempfile.mkdtemp(prefix="neurostimd-bench-devices-"))
    out: dict[str, Any] = {}
    for device in SETTINGS:
        out.update(_one(device, ticks, workdir, progress))
    return out
