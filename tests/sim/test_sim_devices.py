"""`neurostimd-sim --device KIND`: one launcher (`SimulatorProcess`) starts each simulated device as a process
behind a pty; a client that knows only the device's published protocol talks to it."""

from __future__ import annotations

import struct
import subprocess
import sys
import time

import pytest
import serial

from neurostimd.commands.simulator import SimulatorProcess


def _read(port: serial.Serial, n: int, timeout_s: float = 5.0) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        out += port.read(n - len(out))
    return out


def test_pulsepal_answers_its_handshake(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Pulse Pal's handshake (PROTOCOL.md): 0xD5 0x48 → 'K' and the firmware version, uint32 little-endian."""
    with SimulatorProcess(device="pulsepal", log=tmp_path / "pp.jsonl") as sim:
        with serial.Serial(sim.port, 115200, timeout=0.2) as port:
            port.write(bytes([0xD5, 0x48]))
            reply = _read(port, 5)
        assert reply[:1] == b"K" and struct.unpack("<I", reply[1:5])[0] in (21, 22)
        assert sim.stop() == 0


def test_an_unknown_device_is_refused() -> None:
    res = subprocess.run([sys.executable, "-m", "neurostimd.commands.simulator", "--device", "master8", "--pty"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--device must be one of board, pulsepal, stimjim" in res.stderr
    with pytest.raises(ValueError, match="choose one of board, pulsepal, stimjim"):
        SimulatorProcess(device="master8")
