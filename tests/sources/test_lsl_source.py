"""LSL source against real pylsl outlets on loopback (a separate outlet process where the test kills it)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pylsl
import pytest

from neurostimd.core.ringbuffer import RingBuffer
from neurostimd.errors import SourceError
from neurostimd.sources.lsl import LslSource
from neurostimd.sources.settings import LslSourceConfig

OUTLET = Path(__file__).with_name("lsl_counter_outlet.py")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class OutletProcess:
    """The counter outlet as a child process; always killed and reaped."""

    def __init__(self, **kw: object) -> None:
        args = [sys.executable, str(OUTLET)]
        for k, v in kw.items():
            args += [f"--{k.replace('_', '-')}", str(v)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "READY", f"outlet did not start: {line!r}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def pump_until(src: LslSource, ring: RingBuffer, cond, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        src.pump(ring, 0.05)
        if cond():
            return True
    return False


def test_counter_values_land_in_the_ring_exactly_and_in_order(outlets):
    """Every counter value pushed by a real outlet process arrives in the ring once, in order, with no gap."""
    name = unique("counter")
    n_total, rate = 1500, 1000.0
    outlets.append(OutletProcess(name=name, source_id=name, channels=5, rate=rate, samples=n_total,
                                 wait_consumer=20, chunk=8))
    cfg = LslSourceConfig(kind="lsl", name=name, n_channels=5, sample_rate_hz=rate, resolve_timeout_s=10)
    ring = RingBuffer(5, 4000, rate)
    with LslSource(cfg) as src:
        assert pump_until(src, ring, lambda: ring.total_written >= n_total, 30.0), ring.total_written
        src.pump(ring, 0.2)
        assert not src.stale
        assert src.t_data_s == pytest.approx((n_total - 1) / rate, abs=0.05)
    w = ring.latest(ring.total_written)
    assert ring.total_written == n_total
    expected = (np.arange(n_total, dtype=np.float64)[:, None] + np.arange(5) * 0.001).astype(np.float32)
    np.testing.assert_array_equal(w.data, expected)
    assert ring.gaps == 0 and ring.counters.out_of_order == 0
    # Timestamps are on the local monotonic clock: the newest is in the recent past; they advance at the rate,
    # and LSL's back-dating of chunks only jitters them within the ring's tolerance (so no flag was raised).
    assert 0 <= time.monotonic() - w.timestamps[-1] < 5.0
    steps = np.diff(w.timestamps)
    assert np.median(steps) == pytest.approx(1.0 / rate, rel=0.01) and steps.min() > -ring.jitter_tolerance_s


@pytest.mark.parametrize("with_source_id", [True, False])
def test_outlet_killed_and_restarted_goes_stale_then_recovers(outlets, with_source_id):
    """Killing the outlet makes the source stale; a restarted outlet is found again without reopening the source."""
    name = unique("restart")
    sid = name if with_source_id else ""
    rate = 500.0
    outlets.append(OutletProcess(name=name, source_id=sid, channels=2, rate=rate, wait_consumer=20))
    # Without a source_id, nothing tells a restarted outlet from another process's: it is accepted only when the
    # config allows other outlets (test_lsl_identity.py shows the refusal).
    cfg = LslSourceConfig(kind="lsl", name=name, n_channels=2, sample_rate_hz=rate, stale_after_ms=150,
                          resolve_timeout_s=10, allow_other_outlets=not with_source_id)
    ring = RingBuffer(2, 20000, rate)
    with LslSource(cfg) as src:
        assert pump_until(src, ring, lambda: ring.total_written > 100 and not src.stale, 20.0)
        outlets[0].kill()
        assert pump_until(src, ring, lambda: src.stale, 10.0)
        assert src.stale_reason and "no samples" in src.stale_reason
        before = ring.total_written
        outlets.append(OutletProcess(name=name, source_id=sid, channels=2, rate=rate, start=1_000_000,
                                     wait_consumer=20))
        assert pump_until(src, ring, lambda: not src.stale and ring.total_written > before + 50, 30.0), \
            src.stale_reason
        w = ring.since(before)
        assert w.data[0, 0] >= 1_000_000  # the new outlet's counter
        np.testing.assert_array_equal(np.diff(w.data[:, 0]), 1.0)  # ... and contiguous from there
        assert ring.quality(ring.total_written - before + 1).gap  # the restart shows as a gap


def test_wrong_channel_count_is_refused_with_a_clear_error():
    """A stream whose channel count differs from the config is refused, naming both counts and the fix."""
    name = unique("wrongch")
    outlet = pylsl.StreamOutlet(pylsl.StreamInfo(name, "EEG", 8, 250.0, "float32", name))
    cfg = LslSourceConfig(kind="lsl", name=name, n_channels=4, sample_rate_hz=250.0, resolve_timeout_s=5)
    src = LslSource(cfg)
    with pytest.raises(SourceError, match=r"8 channels but source.n_channels = 4"):
        src.open()
    assert not src.is_open
    del outlet


def test_wrong_rate_is_refused_with_a_clear_error():
    """A stream whose nominal rate differs from the config is refused, naming both rates."""
    name = unique("wrongrate")
    outlet = pylsl.StreamOutlet(pylsl.StreamInfo(name, "EEG", 2, 500.0, "float32", name))
    cfg = LslSourceConfig(kind="lsl", name=name, n_channels=2, sample_rate_hz=250.0, resolve_timeout_s=5)
    with pytest.raises(SourceError, match=r"500 Hz but source.sample_rate_hz = 250"):
        LslSource(cfg).open()
    del outlet


def test_missing_stream_error_lists_the_streams_it_saw():
    """When no stream matches within the timeout, the error names the selector and lists the streams seen."""
    other = unique("visible")
    outlet = pylsl.StreamOutlet(pylsl.StreamInfo(other, "Markers", 1, 0.0, "string", other))
    cfg = LslSourceConfig(kind="lsl", name=unique("absent"), n_channels=1, sample_rate_hz=100.0,
                          resolve_timeout_s=1.5)
    with pytest.raises(SourceError) as exc:
        LslSource(cfg).open()
    msg = str(exc.value)
    assert "found within 1.5 s" in msg and other in msg
    del outlet


def test_source_reads_channel_labels_from_the_stream_description():
    """Channel labels in the outlet's XML description become the source's channel names."""
    name = unique("labels")
    info = pylsl.StreamInfo(name, "EEG", 3, 100.0, "float32", name)
    chans = info.desc().append_child("channels")
    for label in ("Fz", "Cz", "Pz"):
        chans.append_child("channel").append_child_value("label", label).append_child_value("unit", "microvolts")
    outlet = pylsl.StreamOutlet(info)
    cfg = LslSourceConfig(kind="lsl", source_id=name, n_channels=3, sample_rate_hz=100.0, resolve_timeout_s=5)
    with LslSource(cfg) as src:
        assert src.channel_names == ["Fz", "Cz", "Pz"]
        assert src.stale and src.stale_reason == "no samples received yet"
    del outlet
