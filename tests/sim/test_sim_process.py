"""`neurostimd-sim` as a process behind a pty: its first line, robustness to garbage, clean shutdown, hosts that
come and go, a port that vanishes and returns, and recording playback."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
import tty
from pathlib import Path

import numpy as np
import pytest

from neurostimd.commands.simulator import SimulatorError, SimulatorProcess
from neurostimd.drivers.errors import BoardLost
from neurostimd.drivers.neurostim_board.driver import SerialBoardDriver
from neurostimd.drivers.transport import ByteLink, SerialLink
from neurostimd.drivers.types import StimParams
from tests.sim.simproc import ROOT, SimProcess, running_sim, wait_for

SAFE = StimParams(50.0, 2.0, 200.0)


def driver(path: str, **kw: object) -> SerialBoardDriver:
    args = {"ack_timeout_ms": 250.0, "retries": 3, **kw}
    return SerialBoardDriver(port=path, **args)  # type: ignore[arg-type]


def test_console_script_prints_the_pty_path_first(tmp_path: Path) -> None:
    """The installed `neurostimd-sim --pty` prints `PTY <path>` as its first stdout line, and the path is a tty."""
    script = Path(sys.executable).with_name("neurostimd-sim")
    if not script.exists():
        pytest.skip(f"console script not installed at {script}; run `make venv`")
    proc = subprocess.Popen([str(script), "--pty", "--channels", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("PTY /dev/")
        fd = os.open(line.split()[1], os.O_RDWR | os.O_NOCTTY)
        try:
            assert os.isatty(fd)
        finally:
            os.close(fd)
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        proc.stdout.close()  # type: ignore[union-attr]


def test_simulator_survives_garbage_on_its_line(tmp_path: Path) -> None:
    """Half a megabyte of random bytes written to the line leaves the simulator running and answering."""
    with running_sim(tmp_path, "--channels", "4") as sim:
        link = SerialLink(sim.path)
        rng = random.Random(11)
        for _ in range(64):
            link.write(rng.randbytes(8192))
            link.read(1 << 16, 0.0)
        link.close()
        time.sleep(0.2)
        assert sim.alive()
        with driver(sim.path) as d:
            d.set_stimulation(SAFE)
            assert d.status().stimulating
            assert d.read_samples(1.0)
            d.stop()
        assert sim.alive()
    assert "Traceback" not in sim.stderr_path.read_text()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_stop_stimulation_and_exit_cleanly(tmp_path: Path, sig: int) -> None:
    """On SIGTERM or SIGINT the simulator stops stimulating (stim_off reason shutdown) and exits 0."""
    sim = SimProcess(tmp_path, "--channels", "2")
    try:
        d = driver(sim.path)
        d.open()
        d.set_stimulation(SAFE)
        assert sim.stop(sig) == 0
        d.close()
    finally:
        sim.stop()
    offs = [e for e in sim.events() if e["event"] == "stim_off"]
    assert offs and offs[-1]["reason"] == "shutdown"


def test_host_can_close_and_come_back(tmp_path: Path) -> None:
    """A host that closes the port and a new one that opens it later both get served by the same simulator."""
    with running_sim(tmp_path, "--channels", "4") as sim:
        with driver(sim.path) as d1:
            first = d1.read_samples(1.0)
        time.sleep(0.4)  # long enough for the dead-man timer: the board stops streaming to nobody
        with driver(sim.path) as d2:
            blocks = []
            deadline = time.monotonic() + 5
            while len(blocks) < 5 and time.monotonic() < deadline:
                blocks += d2.read_samples(0.2)
        assert first and len(blocks) >= 5
        assert blocks[0].first_index > first[-1].first_index
        assert sim.alive()


def test_port_that_vanishes_and_returns_is_reconnected(tmp_path: Path) -> None:
    """When the simulator behind a stable port name exits the driver raises BoardLost; when a new simulator takes
    the name the driver re-handshakes on its own and streams again."""
    link = tmp_path / "board"
    sim1 = SimProcess(tmp_path, "--channels", "4", log_name="a.jsonl", link=link)
    sim2 = None
    d = driver(str(link), reconnect_interval_ms=100.0)
    try:
        d.open()
        d.set_stimulation(SAFE)
        assert d.read_samples(1.0)
        sim1.stop()
        with pytest.raises(BoardLost):
            for _ in range(50):
                d.read_samples(0.05)
        assert d.lost
        sim2 = SimProcess(tmp_path, "--channels", "4", log_name="b.jsonl", link=link)
        blocks = wait_for(lambda: _try_read(d), timeout_s=10.0)
        assert blocks and not d.lost and d.counters.reconnects == 1
        assert d.status().stimulating is False  # a fresh board: the host must command again
    finally:
        d.close()
        sim1.stop()
        if sim2 is not None:
            sim2.stop()


def _try_read(d: SerialBoardDriver) -> list:  # type: ignore[type-arg]
    try:
        return d.read_samples(0.1)
    except BoardLost:
        return []


def test_recording_playback_streams_the_files_samples(tmp_path: Path) -> None:
    """--signal FILE --loop streams the recording's rows in order under the board's sample counter."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 50, (3000, 3)).astype(np.float32)
    rec = tmp_path / "rec.npz"
    np.savez(rec, data=x, fs=500.0, channel_names=np.array(["a", "b", "c"]))
    with running_sim(tmp_path, "--signal", str(rec), "--loop", "--format", "float32") as sim, \
            driver(sim.path) as d:
        info = d.info()
        assert info.n_channels == 3 and info.sample_rate_hz == 500.0
        blocks = []
        deadline = time.monotonic() + 5
        while len(blocks) < 5 and time.monotonic() < deadline:
            blocks += d.read_samples(0.2)
        for b in blocks:
            idx = (b.first_index + np.arange(len(b.data))) % len(x)
            np.testing.assert_array_equal(b.data, x[idx])


def _csv(path: Path, x: np.ndarray, fs: float) -> Path:
    t = np.arange(len(x)) / fs
    rows = [",".join(["time", "Fz", "Cz", "Pz"])] + [",".join([f"{ti:.6f}", *(f"{v:.3f}" for v in row)])
                                                     for ti, row in zip(t, x, strict=True)]
    path.write_text("\n".join(rows) + "\n")
    return path


def _edf(path: Path, x: np.ndarray, fs: float) -> Path:
    import edfio

    signals = [edfio.EdfSignal(x[:, i].astype(np.float64) / 1000.0, fs, label=name, physical_dimension="mV",
                               physical_range=(-1.0, 1.0)) for i, name in enumerate(["Fz", "Cz", "Pz"])]
    edfio.Edf(signals).write(path)
    return path


@pytest.mark.parametrize("writer", [_csv, _edf], ids=["csv", "edf"])
def test_simulator_plays_a_csv_or_edf_recording(tmp_path: Path, writer) -> None:  # type: ignore[no-untyped-def]
    """neurostimd-sim --signal takes what replay takes: a CSV (rate from its time column) or an EDF in mV streams
    the samples the one reader reads from the file, in µV, at the file's rate and with its channel count."""
    from neurostimd.sources.recordings import read_recording

    fs = 250.0
    x = np.random.default_rng(4).normal(0, 40, (1000, 3))
    path = writer(tmp_path / f"rec.{writer.__name__.lstrip('_')}", x, fs)
    want = read_recording(path).data
    np.testing.assert_allclose(want, x, atol=0.05)  # in µV, whatever unit the file holds
    with running_sim(tmp_path, "--signal", str(path), "--loop", "--format", "float32") as sim, \
            driver(sim.path) as d:
        info = d.info()
        assert info.n_channels == 3 and info.sample_rate_hz == fs
        blocks = []
        deadline = time.monotonic() + 5
        while len(blocks) < 5 and time.monotonic() < deadline:
            blocks += d.read_samples(0.2)
        assert blocks
        for b in blocks:
            idx = (b.first_index + np.arange(len(b.data))) % len(want)
            np.testing.assert_array_equal(b.data, want[idx])


def test_bad_signal_file_exits_2_with_a_message(tmp_path: Path) -> None:
    """A --signal path that is not a recording makes the simulator exit 2 with a one-line reason; the bare board
    module, which reads no files, refuses any --signal path and names the program that reads them."""
    (tmp_path / "bad.npz").write_bytes(b"nope")
    res = subprocess.run([sys.executable, "-m", "neurostimd.commands.simulator", "--pty", "--signal",
                          str(tmp_path / "bad.npz")],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 2
    assert "cannot read" in res.stderr and "Traceback" not in res.stderr
    np.savez(tmp_path / "good.npz", data=np.zeros((10, 2)), fs=100.0)
    res = subprocess.run([sys.executable, "-m", "neurostimd.firmware_sim", "--pty", "--signal",
                          str(tmp_path / "good.npz")],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 2
    assert "neurostimd-sim" in res.stderr and "Traceback" not in res.stderr and len(res.stderr.splitlines()) == 1
    res = subprocess.run([sys.executable, "-m", "neurostimd.firmware_sim", "--pty", "--block", "0"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 2 and "must be positive" in res.stderr


def test_simulator_process_names_a_failed_start_with_the_simulators_stderr() -> None:
    """The launcher raises SimulatorError with the exit code and the simulator's own words when it exits before
    printing its pty, and gives up (killing it) when the line does not come in time."""
    with pytest.raises(SimulatorError, match=r"(?s)exited with code 2.*--block, --channels, --rate"):
        SimulatorProcess(["--block", "0"])
    with pytest.raises(SimulatorError, match=r"no 'PTY <path>' line within 0.001 s and is still running"):
        SimulatorProcess(["--channels", "2"], timeout_s=0.001)


def test_simulator_process_port_reboot_and_stop(tmp_path: Path) -> None:
    """`port` is the --pty-link (resolving to `pty`), reboot() resets the board (board_reset in its event log), and
    leaving the `with` block stops it cleanly (exit 0), its stderr still readable."""
    link = tmp_path / "board"
    with SimulatorProcess(["--channels", "2"], log=tmp_path / "b.jsonl", link=link) as sim:
        assert sim.port == str(link) and os.path.realpath(sim.port) == os.path.realpath(sim.pty)
        assert sim.alive() and sim.pid == sim.proc.pid
        sim.reboot()
        assert wait_for(lambda: [e for e in sim.events() if e["event"] == "board_reset"], timeout_s=5.0)
    assert not sim.alive() and sim.stop() == 0
    assert "sim_started" in sim.stderr_text() and "Traceback" not in sim.stderr_text()


class _FdLink(ByteLink):
    """A ByteLink over a raw file descriptor (the master side of a pty the test owns)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        ready, _, _ = select.select([self.fd], [], [], timeout_s)
        return os.read(self.fd, max_bytes) if ready else b""

    def close(self) -> None:
        pass  # the test closes the descriptor


def test_port_mode_serves_a_serial_device_path(tmp_path: Path) -> None:
    """--port PATH opens an existing serial device with pyserial and serves the protocol on it."""
    master, slave = os.openpty()
    tty.setraw(master)
    proc = subprocess.Popen([sys.executable, "-m", "neurostimd.firmware_sim", "--port", os.ttyname(slave),
                             "--channels", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().decode().startswith("PORT ")
        with SerialBoardDriver(link_factory=lambda: _FdLink(master), ack_timeout_ms=500.0, retries=3) as d:
            assert d.info().n_channels == 3
            d.set_stimulation(SAFE)
            assert d.status().stimulating
            assert d.read_samples(1.0)
            d.stop()
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        if proc.stdout is not None:
            proc.stdout.close()
        os.close(master)
        os.close(slave)
