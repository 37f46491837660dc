"""The simulated StimJim as a process behind a pty: a client speaking the published protocol (not our driver)
programs, triggers and stops a train; garbage does not stop it; SIGTERM ends the output and the process cleanly."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import serial

from tests.contract.test_stimjim import StimJimProcess


def read_for(port: serial.Serial, seconds: float) -> str:
    out = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out += port.read(4096)
    return out.decode(errors="replace")


@pytest.mark.parametrize("firmware", ["teensy", "rp2354b"])
def test_a_plain_serial_client_programs_triggers_and_stops_a_train(firmware: str, tmp_path: Path) -> None:
    sim = StimJimProcess(tmp_path / "sim.jsonl", "--firmware", firmware)
    try:
        with serial.Serial(sim.path, 115200, timeout=0.05) as port:
            port.write(b"\x00\xffgarbage;;,\nS0,1,3,10000,5000000;-100,0,200;0,0,50;100,0,200\n")
            text = read_for(port, 0.3)
            assert ("Parameters for PulseTrain[0]" if firmware == "teensy" else "PulseTrain[0]: mode[2,8]") in text
            port.write(b"T0\n")
            text = read_for(port, 0.3)
            assert "Started" in text
            port.write(b"T-1\n" if firmware == "teensy" else b"X\n")
            text = read_for(port, 0.3)
            assert ("Forcing T train to stop" if firmware == "teensy" else "Stimulus cancelled.") in text
            port.write(b"T0\n")
            read_for(port, 0.2)
        sim.proc.send_signal(signal.SIGTERM)
        assert sim.proc.wait(5.0) == 0
    finally:
        sim.stop()
    events = sim.events()
    applied = [e for e in events if e["event"] == "stim_applied"]
    offs = [e["reason"] for e in events if e["event"] == "stim_off"]
    assert applied[0]["channel"] == 1 and applied[0]["biphasic"] and applied[0]["pulse_width_us"] == 200
    assert offs == ["host_stop", "shutdown"]
