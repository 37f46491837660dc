"""Board source against the simulated board process behind a pty, through the real serial driver."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import numpy as np
import pytest

from neurostimd.commands.simulator import SimulatorProcess
from neurostimd.core.ringbuffer import RingBuffer
from neurostimd.drivers.neurostim_board.driver import SerialBoardDriver
from neurostimd.sources.board import BoardSource
from neurostimd.sources.recordings import Recording, read_recording, to_npz


@pytest.fixture
def sim_factory() -> Iterator:
    """Start simulators with the given options, stopped after the test; each call returns its port."""
    sims: list[SimulatorProcess] = []

    def make(*args: str) -> str:
        sims.append(SimulatorProcess(args))
        return sims[-1].port

    yield make
    for sim in sims:
        sim.stop()


def stream(port: str, seconds: float) -> tuple[RingBuffer, BoardSource]:
    src = BoardSource(SerialBoardDriver(port=port))
    with src:
        ring = RingBuffer(src.n_channels, int(src.sample_rate_hz * (seconds + 5)), src.sample_rate_hz)
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            src.pump(ring, 0.05)
        assert not src.stale, src.stale_reason
    return ring, src


def check_sample_for_sample(ring: RingBuffer, src: BoardSource, rec: Recording) -> None:
    n = ring.total_written
    assert n > 0 and ring.gaps == 0
    first = src.first_counter
    assert first is not None
    np.testing.assert_array_equal(ring.latest(n).data, rec.data[first:first + n])


def test_board_samples_reach_the_ring_without_gaps_on_the_board_clock(sim_factory, tmp_path):
    """Samples from neurostimd-sim arrive complete, in counter order, stamped on the local clock at the board rate."""
    rng = np.random.default_rng(5)
    rec = Recording(rng.normal(0, 50, (4000, 6)).astype(np.float32), 1000.0, [f"c{i}" for i in range(6)])
    port = sim_factory("--signal", str(to_npz(rec, tmp_path / "noise.npz")), "--format", "float32")
    ring, src = stream(port, 1.5)
    check_sample_for_sample(ring, src, rec)
    ts = ring.latest(ring.total_written).timestamps
    # Counter-derived stamps: strictly increasing, about 1 ms apart, newest in the recent past.
    assert np.all(np.diff(ts) > 0) and np.median(np.diff(ts)) == pytest.approx(1e-3, rel=0.05)
    assert time.monotonic() - ts[-1] < 5.0
    assert src.t_data_s is not None and src.t_data_s > 0.5


@pytest.mark.needs_data
def test_eye_state_streams_through_the_simulator_sample_for_sample(sim_factory, shared_data, tmp_path):
    """The Eye State recording played by neurostimd-sim --signal reaches the ring sample for sample at x1."""
    rec = read_recording(shared_data / "eeg_eye_state" / "EEG_Eye_State.arff", fs=128.0)
    port = sim_factory("--signal", str(to_npz(rec, tmp_path / "eyestate.npz")), "--format", "float32",
                       "--block", "4")
    ring, src = stream(port, 2.0)
    assert ring.total_written >= 128
    check_sample_for_sample(ring, src, rec)


def test_board_source_reports_stale_when_the_board_goes_away(sim_factory):
    """When the board process dies, pump() does not raise; the source turns stale with a reason."""
    with SimulatorProcess(["--channels", "4", "--rate", "500"]) as sim:
        src = BoardSource(SerialBoardDriver(port=sim.port, reconnect_interval_ms=100.0), stale_after_ms=100.0)
        with src:
            ring = RingBuffer(4, 10_000, 500.0)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 0.5:
                src.pump(ring, 0.05)
            assert ring.total_written > 0 and not src.stale
            sim.stop(signal.SIGKILL)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 2.0 and not src.stale:
                src.pump(ring, 0.05)
            assert src.stale and src.stale_reason


@pytest.mark.needs_data
def test_eye_state_streams_through_the_simulated_board_as_fast_as_possible(shared_data, tmp_path):
    """The simulator's board logic playing Eye State on a virtual clock delivers the whole file sample for sample."""
    from neurostimd.clock import VirtualClock
    from neurostimd.firmware_sim.inprocess import VirtualBoardDriver

    rec = read_recording(shared_data / "eeg_eye_state" / "EEG_Eye_State.arff", fs=128.0)
    clock = VirtualClock()
    driver = VirtualBoardDriver(clock=clock, signal=rec,
                                sample_format="float32", block_size=16)
    ring = RingBuffer(14, 20_000, 128.0)
    src = BoardSource(driver)
    with src:
        t_start = time.monotonic()
        while ring.total_written < rec.n_samples and time.monotonic() - t_start < 120:
            src.pump(ring, 0.1)  # waits on the virtual clock: jumps, never sleeps
        assert not src.stale
    assert clock.now_ns() >= int(rec.duration_s * 0.99 * 1e9)  # ~117 s of board time went by
    check_sample_for_sample(ring, src, rec)
    assert ring.total_written == rec.n_samples and src.first_counter == 0


def test_clock_map_follows_a_counter_that_jumps_or_restarts() -> None:
    """Sample times stay on the host's clock through a counter jump 10^12 ahead, the counter's return, and a restart
    at 0: each rebases the map instead of stamping every later sample centuries away (stale for ever), and no stamp
    goes backwards."""
    from neurostimd.sources.board import CounterClockMap

    m = CounterClockMap(1000.0)
    t = 100.0
    stamps = []
    counters = [*range(0, 5000, 10), 10**12, *range(5010, 8000, 10), *range(0, 2000, 10)]
    for c in counters:
        t += 0.01
        ts = m.stamp(c, 10, t)
        stamps.append(ts)
        assert abs(ts[-1] - t) < 0.05, f"counter {c}: stamped {ts[-1] - t:+.3f} s from its arrival"
    flat = np.concatenate(stamps)
    assert np.all(np.diff(flat) > 0)
    assert m.rebases == 3
