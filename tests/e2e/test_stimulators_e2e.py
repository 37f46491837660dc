"""The daemon on the stimulators labs own, all real processes: the signal from `neurostimd-sim --lsl`, the device
from `neurostimd-sim --device KIND --pty`, the daemon on the shipped config/KIND.toml. It stimulates; SIGTERM
stops the output with the device's own stop (its log says host_stop); SIGKILL leaves the device to the finite train
the driver last armed, which ends within deadman_ms (+ one device cycle) of the kill, every time."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from neurostimd.commands.simulator import LslSimulatorProcess, SimulatorProcess
from tests.e2e.conftest import BUNDLE, ROOT, read_jsonl, wait_for

pytestmark = pytest.mark.usefixtures("need_bundle")

DEVICES = ["pulsepal", "stimjim"]
CYCLE_MS = {"pulsepal": 0.05, "stimjim": 0.001}  # one device cycle: Pulse Pal's 50 µs timer, StimJim's µs
KILL_TRIALS = 20


def device_config(workdir: Path, device: str, stream: str) -> Path:
    """config/<device>.toml as shipped, but for this test's stream and with its outputs in workdir."""
    text = (ROOT / "config" / f"{device}.toml").read_text()
    for old, new in (('name = "neurostimd-sim"', f'name = "{stream}"'),
                     ('bundle = "models/default"', f'bundle = "{BUNDLE}"'),
                     (f'path = "runs/{device}/audit.jsonl"', f'path = "{workdir / "audit.jsonl"}"'),
                     (f'state_file = "runs/{device}/state.json"', f'state_file = "{workdir / "state.json"}"'),
                     ('[decisions_lsl]\nenabled = true', '[decisions_lsl]\nenabled = false')):
        assert old in text, f"config/{device}.toml changed: {old!r} not found"
        text = text.replace(old, new)
    path = workdir / f"{device}.toml"
    path.write_text(text + '\n[logging]\nformat = "json"\n')
    return path


def _stimulating(log: Path) -> bool:
    events = read_jsonl(log)
    last = next((e for e in reversed(events) if e["event"] in ("stim_applied", "stim_off")), None)
    return last is not None and last["event"] == "stim_applied"


def _offs_after(log: Path, t_ns: int) -> list[dict[str, Any]]:
    return [e for e in read_jsonl(log) if e["event"] == "stim_off" and e["t_mono_ns"] >= t_ns]


@pytest.mark.parametrize("device", DEVICES)
def test_the_daemon_stimulates_and_sigterm_stops_the_device(tmp_path: Path, start_daemon, device: str) -> None:
    stream = f"e2e-{device}-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "device.jsonl"
    with LslSimulatorProcess(stream, stderr=tmp_path / "lsl.stderr"), \
            SimulatorProcess(device=device, log=log, stderr=tmp_path / "dev.stderr") as dev:
        d = start_daemon(device_config(tmp_path, device, stream), "--port", dev.port)
        wait_for(lambda: _stimulating(log), 60.0, f"the {device} to stimulate")
        acked = [r for r in d.audit() if r["event"] == "stim_ack" and r["ack"]]
        assert acked, "the daemon's commands were acknowledged"
        t_term = time.monotonic_ns()
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=20) == 0
        offs = _offs_after(log, t_term)
        assert offs and offs[0]["reason"] == "host_stop", read_jsonl(log)[-5:]
        assert not _stimulating(log)
    audit = d.audit()
    assert audit[-1]["event"] == "shutdown" and audit[-1]["exit_code"] == 0
    sent = [r for r in audit if r["event"] == "stim_command"]
    assert sent and all(r["applied"] is None or r["applied"]["amplitude_ma"] <= 3.0 for r in sent)
    # what the device runs is what was audited (the driver's delivered values): STATUS never disagreed
    assert not any("board_params_mismatch" in (r.get("faults") or ()) for r in audit)
    assert any("device_rounding" in r["limited_by"] for r in sent), "the device's rounding shows in the record"


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_sigkill_stops_the_device_within_deadman_ms_every_time(tmp_path: Path, start_daemon, device: str) -> None:
    """20 SIGKILLs of a stimulating daemon: after each, the device's output ends by itself (train_end) within
    deadman_ms plus one device cycle of the kill; the next daemon starts from that."""
    stream = f"e2e-{device}-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "device.jsonl"
    delays_ms: list[float] = []
    trials_on = 0
    with LslSimulatorProcess(stream, stderr=tmp_path / "lsl.stderr"), \
            SimulatorProcess(device=device, log=log, stderr=tmp_path / "dev.stderr") as dev:
        cfg = device_config(tmp_path, device, stream)
        deadman_ms = 250.0
        for trial in range(KILL_TRIALS):
            d = start_daemon(cfg, "--port", dev.port)
            wait_for(lambda: _stimulating(log), 60.0, f"trial {trial}: the {device} to stimulate")
            time.sleep(0.01 * (trial % 5))  # kill at different moments of the re-arm cycle
            t_kill = time.monotonic_ns()
            os.killpg(d.proc.pid, signal.SIGKILL)
            d.proc.wait(timeout=10)
            time.sleep(deadman_ms / 1000.0 + 0.5)
            events = [e for e in read_jsonl(log) if e["event"] in ("stim_applied", "stim_off")]
            before = [e for e in events if e["t_mono_ns"] < t_kill]
            after = [e for e in events if e["t_mono_ns"] >= t_kill]
            on_at_kill = bool(before) and before[-1]["event"] == "stim_applied"
            # a train armed before the kill may still start (its delay puts it on the pulse grid); it too ends
            assert not after or after[-1]["event"] == "stim_off", (trial, after)
            ended_ns = after[-1]["t_mono_ns"] if after else t_kill
            if on_at_kill or after:
                assert after[-1]["reason"] == "train_end", (trial, after)
            delays_ms.append((ended_ns - t_kill) / 1e6)
            trials_on += on_at_kill
    assert len(delays_ms) == KILL_TRIALS and trials_on >= KILL_TRIALS // 2, "most kills hit a stimulating device"
    assert max(delays_ms) <= deadman_ms + CYCLE_MS[device], sorted(delays_ms)
    print(f"{device}: output ended {min(delays_ms):.1f}-{max(delays_ms):.1f} ms after SIGKILL "
          f"(median {sorted(delays_ms)[len(delays_ms) // 2]:.1f} ms, deadman_ms {deadman_ms:g}) over {KILL_TRIALS}; "
          f"{trials_on} killed it while it stimulated")
