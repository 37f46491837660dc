"""`neurostimd-sim --lsl NAME` as a real process, read by our LslSource over loopback: accepted (units, labels,
rate), samples without gaps, stamps at the rate with no drift, and a clean exit on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from neurostimd.commands.simulator import MODULE, LslSimulatorProcess, SimulatorError
from neurostimd.core.ringbuffer import RingBuffer
from neurostimd.sources.lsl import LslSource
from neurostimd.sources.settings import LslSourceConfig


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def lsl_sims(tmp_path: Path) -> Iterator[list[LslSimulatorProcess]]:
    sims: list[LslSimulatorProcess] = []
    yield sims
    for sim in sims:
        sim.stop(timeout_s=5)


def pump_for(src: LslSource, ring: RingBuffer, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        src.pump(ring, 0.05)


def test_lsl_source_accepts_the_stream_with_its_labels_units_and_rate(lsl_sims, tmp_path: Path) -> None:
    """The stream declares its rate, µV units and channel labels: LslSource opens it (names ch00.., the synthetic
    training data's) and pins the announced source_id. (That µV arrive unscaled: the recording test.)"""
    name = unique("simlsl")
    sim = LslSimulatorProcess(name, ["--channels", "4", "--rate", "500"], stderr=tmp_path / "sim.stderr")
    lsl_sims.append(sim)
    assert sim.source_id == f"neurostimd-sim:{name}"
    cfg = LslSourceConfig(kind="lsl", name=name, type="EEG", n_channels=4, sample_rate_hz=500.0,
                          resolve_timeout_s=10)
    with LslSource(cfg) as src:
        assert src.channel_names == ["ch00", "ch01", "ch02", "ch03"]
        assert src.declared_channel_names == ["ch00", "ch01", "ch02", "ch03"]
        assert src.identity is not None and src.identity.source_id == sim.source_id
        assert src.identity.rate_hz == 500.0 and src.identity.format == "float32"


def test_samples_flow_without_gaps_at_the_rate_without_drift_and_sigterm_exits_0(lsl_sims, tmp_path: Path) -> None:
    """About 3 s of the synthetic signal: every sample arrives (no gap), stamps step by one period within the
    source's tolerance and do not drift from the rate, the newest is recent (real time), and SIGTERM exits 0."""
    name = unique("simlsl")
    rate = 1000.0
    sim = LslSimulatorProcess(name, ["--channels", "8", "--rate", str(rate)], stderr=tmp_path / "sim.stderr")
    lsl_sims.append(sim)
    cfg = LslSourceConfig(kind="lsl", name=name, source_id=sim.source_id, n_channels=8, sample_rate_hz=rate,
                          resolve_timeout_s=10)
    ring = RingBuffer(8, 20000, rate)
    with LslSource(cfg) as src:
        pump_for(src, ring, 0.5)  # the inlet's first chunk may be a backlog; measure from here
        start_n, t_start = ring.total_written, time.monotonic()
        pump_for(src, ring, 3.0)
        elapsed = time.monotonic() - t_start
        assert not src.stale, src.stale_reason
        tol = src.timestamp_tolerance_s
        assert src.gaps_seen == 0 and ring.gaps == 0 and ring.counters.out_of_order == 0
    got = ring.total_written - start_n
    # real time: what arrived in `elapsed` seconds is elapsed × rate, within a few chunks of scheduling
    assert got == pytest.approx(elapsed * rate, abs=0.1 * rate), (got, elapsed)
    w = ring.latest(ring.total_written)
    assert np.all(np.isfinite(w.data)) and float(np.std(w.data)) > 1.0  # a signal in µV, not zeros
    steps = np.diff(w.timestamps)
    assert np.all(np.abs(steps - 1.0 / rate) <= tol), (steps.min(), steps.max())
    # no drift: the stamp of sample k is first + k / rate (the time correction is slewed in, within tolerance)
    k = np.arange(len(w.timestamps))
    assert np.max(np.abs(w.timestamps - (w.timestamps[0] + k / rate))) <= tol
    assert 0 <= time.monotonic() - w.timestamps[-1] < 1.0
    assert sim.stop(signal.SIGTERM) == 0
    assert "sim_lsl_stopped" in sim.stderr_text()


def test_a_recording_is_published_with_its_own_labels_and_values(lsl_sims, tmp_path: Path) -> None:
    """--signal REC --loop: the recording's channel names label the stream and its samples arrive unchanged, in
    order (channel 0 counts samples)."""
    n, rate = 2000, 250.0
    data = np.stack([np.arange(n, dtype=np.float64), np.full(n, -3.5), np.linspace(0, 1, n)], axis=1)
    rec = tmp_path / "rec.npz"
    np.savez(rec, data=data, fs=np.float64(rate), channel_names=np.array(["Fz", "Cz", "Pz"]))
    name = unique("simrec")
    sim = LslSimulatorProcess(name, ["--signal", str(rec), "--loop"], stderr=tmp_path / "sim.stderr")
    lsl_sims.append(sim)
    cfg = LslSourceConfig(kind="lsl", name=name, n_channels=3, sample_rate_hz=rate, resolve_timeout_s=10)
    ring = RingBuffer(3, 5000, rate)
    with LslSource(cfg) as src:
        assert src.channel_names == ["Fz", "Cz", "Pz"]
        pump_for(src, ring, 1.5)
    w = ring.latest(ring.total_written)
    assert len(w.data) > 100
    first = int(w.data[0, 0])
    idx = (first + np.arange(len(w.data))) % n
    np.testing.assert_array_equal(w.data, data[idx].astype(np.float32))


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", MODULE, *args], capture_output=True, text=True, timeout=60)


def test_board_options_and_a_second_mode_are_refused_with_lsl(tmp_path: Path) -> None:
    """Options that configure the board mean nothing to a stream: refused (exit 2) rather than ignored."""
    r = _run("--lsl", unique("x"), "--log", str(tmp_path / "ev.jsonl"), "--watchdog-ms", "100")
    assert r.returncode == 2 and "--watchdog-ms, --log: options of the board" in r.stderr
    r = _run("--lsl", unique("x"), "--pty")
    assert r.returncode == 2 and "not allowed with argument" in r.stderr
    r = _run("--pty", "--lsl-type", "ECoG")
    assert r.returncode == 2 and "add --lsl NAME or drop them" in r.stderr


def test_lsl_simulator_process_names_a_failed_start(tmp_path: Path) -> None:
    """A refused start raises SimulatorError with the exit code and the simulator's own words."""
    with pytest.raises(SimulatorError, match=r"(?s)printed nothing and exited with code 2.*options of the board"):
        LslSimulatorProcess(unique("x"), ["--format", "float32"])


def test_help_says_the_lsl_signal_is_open_loop() -> None:
    r = _run("--help")
    assert r.returncode == 0 and "--lsl NAME" in r.stdout and "open loop" in r.stdout


def test_the_pty_board_path_does_not_import_pylsl() -> None:
    """pylsl is imported only for --lsl: the launcher module (and so the pty board) loads without it."""
    code = ("import sys; import neurostimd.commands.simulator as s; s.parser(); "
            "assert 'pylsl' not in sys.modules, 'pylsl imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_lsl_without_pylsl_says_what_to_install() -> None:
    """On a machine whose pylsl does not load, --lsl exits 2 naming pylsl (not a traceback)."""
    code = ("import sys; sys.modules['pylsl'] = None; from neurostimd.commands.simulator import main; "
            "sys.exit(main(['--lsl', 'x']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--lsl needs pylsl" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_the_lsl_outlet_names_channels_as_a_generated_recording_does_at_any_count() -> None:
    """A bundle trained on `firmware_sim.generate` output must find its channels, by name, in the synthetic LSL
    stream: the two agreed to 100 channels and differed above (ch00… against ch000…), so a 256-channel bundle was
    refused by the montage check."""
    from neurostimd.commands.simulator import channel_labels
    from neurostimd.firmware_sim.generate import generate_recording
    from neurostimd.firmware_sim.generator import SyntheticSource

    for n in (4, 100, 101, 256):
        rec = generate_recording(0.2, n, 250.0, seed=0)
        src = SyntheticSource(n, 250.0, seed=0)
        assert channel_labels(src) == [str(x) for x in rec["channel_names"]], n
    assert channel_labels(SyntheticSource(256, 250.0, seed=0))[:2] == ["ch000", "ch001"]
