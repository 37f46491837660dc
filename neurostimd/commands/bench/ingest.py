"""Ingest benchmark: the largest channels x rate that reaches the ring buffer with zero lost samples, over LSL on
loopback (a separate outlet process → LslSource → RingBuffer) and over the serial link from `neurostimd-sim --pty`
(SerialBoardDriver → BoardSource → RingBuffer); push-to-visible latency and CPU of the ingest side at 256 ch x 2 kHz,
side by side with a bare pylsl inlet loop, so that the overhead is a measured ratio, and with a peer reader
(mne-lsl's StreamLSL) on the same outlet process when mne-lsl is installed (the `dev` extra).

Run as `python -m neurostimd.commands.bench.ingest push ...` it is the outlet process of the LSL trials.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Progress = Callable[[str], None]

# Counter values ride in channel 0 as float32, exact below 2**24; trials stay far below that.
LSL_STEPS = [(8, 250.0), (32, 1000.0), (64, 2000.0), (128, 2000.0), (256, 2000.0), (512, 2000.0)]
LSL_STEPS_QUICK = [(32, 1000.0), (256, 2000.0)]
SERIAL_STEPS = [(8, 1000.0), (32, 1000.0), (64, 1000.0), (64, 2000.0), (128, 2000.0)]
SERIAL_STEPS_QUICK = [(8, 1000.0), (64, 2000.0)]
PUSH_INTERVAL_S = 0.001  # the outlet pushes a chunk every millisecond (2 samples at 2 kHz)
# The peer's buffer is a window that it shifts (copies) whole on every acquisition, so its cost grows with the window;
# 1 s is the shortest whole-second window holding the classifier's 0.55 s of signal, the peer's most favourable
# setting that a consumer of ours could use (our ring is 5 s here, 30 s in the daemon, at a cost independent of size).
PEER_BUFSIZE_S = 1.0
# How often the peer reader looks for new samples: often enough that the window never slides past unseen samples,
# rarely enough that the reader's own polling does not dominate the CPU figure. It adds up to this much to latency.
PEER_POLL_S = 0.001


# --- the outlet process -----------------------------------------------------------------------------------------------
def push_main(argv: list[str]) -> int:
    """Push counter samples at the nominal rate on absolute deadlines for `--seconds`, then print `DONE <n>`."""
    import pylsl

    ap = argparse.ArgumentParser(prog="neurostimd.commands.bench.ingest push")
    ap.add_argument("--name", required=True)
    ap.add_argument("--channels", type=int, required=True)
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    a = ap.parse_args(argv)
    info = pylsl.StreamInfo(a.name, "EEG", a.channels, a.rate, "float32", a.name)
    chans = info.desc().append_child("channels")
    for i in range(a.channels):  # declared units: an LslSource refuses a stream without them
        ch = chans.append_child("channel")
        ch.append_child_value("label", f"ch{i}")
        ch.append_child_value("unit", "microvolts")
    outlet = pylsl.StreamOutlet(info)
    print("READY", flush=True)
    if not outlet.wait_for_consumers(30.0):
        print("DONE 0", flush=True)
        return 1
    time.sleep(0.2)  # let the inlet finish subscribing before the first sample
    total = round(a.seconds * a.rate)
    block = np.empty((int(a.rate * 0.1) + 2, a.channels), dtype=np.float32)
    pushed = 0
    t0 = time.monotonic()
    while pushed < total:
        due = min(total, int((time.monotonic() - t0) * a.rate) + 1)
        n = due - pushed
        if n > 0:
            n = min(n, block.shape[0])
            blk = block[:n]
            blk[:] = np.arange(pushed, pushed + n, dtype=np.float32)[:, None]
            outlet.push_chunk(blk)  # LSL stamps the newest sample with local_clock(): the push time
            pushed += n
        # next push on the absolute millisecond grid
        next_t = t0 + (int((time.monotonic() - t0) / PUSH_INTERVAL_S) + 1) * PUSH_INTERVAL_S
        delay = next_t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    time.sleep(1.0)  # keep the outlet up while the inlet drains
    print(f"DONE {pushed}", flush=True)
    return 0


# --- measurements -----------------------------------------------------------------------------------------------------
@dataclass
class Trial:
    n_channels: int
    rate_hz: float
    seconds: float
    expected: int = 0
    received: int = 0
    gaps: int = 0
    order_errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    cpu_percent: float = float("nan")
    rate_ok: bool = True  # the producer kept its nominal rate (a late board is slow, not lossy, but not "2 kHz")
    note: str = ""

    @property
    def no_drop(self) -> bool:
        return (self.expected > 0 and self.received == self.expected and self.gaps == 0 and self.order_errors == 0
                and self.rate_ok)

    @property
    def product(self) -> float:
        return self.n_channels * self.rate_hz

    def describe(self) -> str:
        lat = (f" latency p50 {np.percentile(self.latencies_ms, 50):.3f} ms p99 "
               f"{np.percentile(self.latencies_ms, 99):.3f} ms" if self.latencies_ms else "")
        return (f"{self.n_channels} ch x {self.rate_hz:g} Hz for {self.seconds:g} s: received {self.received}/"
                f"{self.expected}, gaps {self.gaps}, order errors {self.order_errors}, CPU {self.cpu_percent:.1f} %"
                f"{lat}{' (' + self.note + ')' if self.note else ''}")


class _Checker:
    """Verifies the counter in channel 0 runs on without a hole and records the newest sample's age per pull."""

    def __init__(self) -> None:
        self.next_value = 0
        self.order_errors = 0

    def check(self, col0: np.ndarray) -> None:
        if col0.size == 0:
            return
        expect = np.arange(self.next_value, self.next_value + col0.size, dtype=np.float32)
        if not np.array_equal(col0, expect):
            self.order_errors += 1
            self.next_value = int(col0[-1]) + 1
        else:
            self.next_value += col0.size


def _start_pusher(name: str, ch: int, rate: float, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "neurostimd.commands.bench.ingest", "push", "--name", name,
                             "--channels", str(ch), "--rate", str(rate), "--seconds", str(seconds)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "READY":
        proc.kill()
        proc.wait(10)
        raise RuntimeError("the LSL outlet process did not start")
    return proc


def _finish(proc: subprocess.Popen[str]) -> int:
    assert proc.stdout is not None
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    for line in out.splitlines():
        if line.startswith("DONE "):
            return int(line.split()[1])
    return 0


def lsl_trial(ch: int, rate: float, seconds: float, *, bare: bool) -> Trial:
    """One LSL run: the outlet process pushes `seconds` of counter samples; we pull them (through LslSource →
    RingBuffer, or with a bare pylsl inlet loop) until the outlet reports how many it pushed."""
    import pylsl

    from neurostimd.core.ringbuffer import RingBuffer
    from neurostimd.sources.lsl import LslSource, _mono_minus_lsl_s
    from neurostimd.sources.settings import LslSourceConfig

    name = f"bench-ingest-{uuid.uuid4().hex[:10]}"
    trial = Trial(ch, rate, seconds)
    proc = _start_pusher(name, ch, rate, seconds)
    checker = _Checker()
    lat: list[float] = []
    try:
        if bare:
            found = pylsl.resolve_byprop("source_id", name, 1, 10.0)
            if not found:
                raise RuntimeError("bench outlet not found")
            inlet = pylsl.StreamInlet(found[0], max_buflen=30, processing_flags=0)
            inlet.open_stream(10.0)
            corr = inlet.time_correction(5.0) + _mono_minus_lsl_s()
            buf = np.empty((4096, ch), dtype=np.float32)
            received = 0
            cpu0, wall0 = time.process_time(), time.monotonic()
            while proc.poll() is None:
                data, ts = inlet.pull_chunk(timeout=0.1, max_samples=4096, dest_obj=buf, min_samples=1,
                                            as_numpy=True)
                if len(ts):
                    lat.append((time.monotonic() - (ts[-1] + corr)) * 1e3)
                    checker.check(data[:, 0])
                    received += len(ts)
            cpu1, wall1 = time.process_time(), time.monotonic()
            while True:  # drain what is still in flight
                data, ts = inlet.pull_chunk(timeout=0.2, max_samples=4096, dest_obj=buf, min_samples=1,
                                            as_numpy=True)
                if not len(ts):
                    break
                checker.check(data[:, 0])
                received += len(ts)
            inlet.close_stream()
            trial.received = received
        else:
            # the outlet stamps each chunk at push time (every ~1 ms): allow its jitter before a step is a gap
            cfg = LslSourceConfig(kind="lsl", source_id=name, n_channels=ch, sample_rate_hz=rate,
                                  resolve_timeout_s=10.0, stale_after_ms=1000.0, timestamp_jitter_ms=5.0)
            ring = RingBuffer(ch, int(rate * 5), rate)
            with LslSource(cfg) as src:
                nxt = 0
                cpu0, wall0 = time.process_time(), time.monotonic()
                while proc.poll() is None:
                    if src.pump(ring, 0.1):
                        newest = ring.newest_timestamp
                        assert newest is not None
                        lat.append((time.monotonic() - newest) * 1e3)
                        if ring.total_written - nxt > rate:  # verify in ~1 s batches, like a consumer would
                            w = ring.since(nxt, copy=False)
                            checker.check(w.data[:, 0])
                            nxt = w.end_index
                            trial.order_errors += int(w.overrun > 0)
                cpu1, wall1 = time.process_time(), time.monotonic()
                while src.pump(ring, 0.2):
                    pass
                w = ring.since(nxt, copy=False)
                checker.check(w.data[:, 0])
                trial.order_errors += int(w.overrun > 0)
            trial.received = ring.total_written
            trial.gaps = ring.gaps
        trial.expected = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    trial.order_errors += checker.order_errors
    trial.latencies_ms = lat
    trial.cpu_percent = 100.0 * (cpu1 - cpu0) / max(1e-9, wall1 - wall0)
    return trial


def _mono_minus_mnelsl_s(local_clock: Callable[[], float]) -> float:
    """Offset from the peer's own liblsl local_clock() to time.monotonic() (it ships its own liblsl build)."""
    best: tuple[float, float] | None = None
    for _ in range(5):
        a = time.monotonic()
        b = local_clock()
        c = time.monotonic()
        if best is None or c - a < best[0]:
            best = (c - a, (a + c) / 2 - b)
    assert best is not None
    return best[1]


def mnelsl_trial(ch: int, rate: float, seconds: float) -> Trial:
    """One peer run on the same outlet process: mne-lsl's StreamLSL acquires in its own thread into its window buffer;
    the reader polls it every PEER_POLL_S and follows the counter in channel 0 to count every sample once."""
    from mne_lsl.lsl import local_clock
    from mne_lsl.stream import StreamLSL

    name = f"bench-ingest-{uuid.uuid4().hex[:10]}"
    trial = Trial(ch, rate, seconds)
    proc = _start_pusher(name, ch, rate, seconds)
    lat: list[float] = []
    seen = 0  # samples seen once each, by counter
    last = -1  # newest counter value seen
    holes = 0  # times the window had slid past samples the reader had not seen yet
    stream = StreamLSL(PEER_BUFSIZE_S, source_id=name)
    try:
        # 'clocksync' is the peer's way of applying the inlet's time correction (ours and the bare inlet add it).
        with warnings.catch_warnings():
            # The bench outlet describes no channels; the peer warns and names them by index, which is what we want.
            warnings.filterwarnings("ignore", message=".*channel description.*", category=RuntimeWarning)
            stream.connect(acquisition_delay=0.001, processing_flags=["clocksync"], timeout=10.0)
        offset_s = _mono_minus_mnelsl_s(local_clock)

        def poll() -> bool:
            nonlocal seen, last, holes
            n_new = stream.n_new_samples
            if not n_new:
                return False
            # A window a little wider than what is new, in case more landed between the two calls; the counter
            # decides what the reader has not seen yet.
            data, ts = stream.get_data(winsize=min(PEER_BUFSIZE_S, (n_new + 64) / rate), picks=[0])
            now = time.monotonic()
            col0 = data[0]
            # Slots the peer has not filled yet hold zeros with a zero timestamp; they are not samples.
            fresh = (ts != 0.0) & (col0 > last)
            if not fresh.any():
                return False
            new_vals = col0[fresh]
            if new_vals[0] != last + 1 or not np.array_equal(
                    new_vals, np.arange(new_vals[0], new_vals[0] + new_vals.size, dtype=new_vals.dtype)):
                holes += 1
            seen += new_vals.size
            last = int(new_vals[-1])
            lat.append((now - (float(ts[-1]) + offset_s)) * 1e3)
            return True

        cpu0, wall0 = time.process_time(), time.monotonic()
        while proc.poll() is None:
            if not poll():
                time.sleep(PEER_POLL_S)
        cpu1, wall1 = time.process_time(), time.monotonic()
        drain_until = time.monotonic() + 0.5  # what is still in flight
        while time.monotonic() < drain_until:
            if not poll():
                time.sleep(PEER_POLL_S)
        trial.expected = _finish(proc)
    finally:
        if stream.connected:
            stream.disconnect()  # shuts its acquisition executor down and waits for the thread
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    # The counter starts at 0, so a run that lost nothing saw every value 0..expected-1 exactly once.
    trial.received = seen
    trial.order_errors = holes + int(last + 1 != seen)
    trial.latencies_ms = lat
    trial.cpu_percent = 100.0 * (cpu1 - cpu0) / max(1e-9, wall1 - wall0)
    trial.note = f"StreamLSL bufsize {PEER_BUFSIZE_S:g} s, reader polls every {PEER_POLL_S * 1e3:g} ms"
    return trial


def serial_trial(ch: int, rate: float, seconds: float) -> Trial:
    """One serial run: neurostimd-sim --pty streams int16 samples; SerialBoardDriver → BoardSource → RingBuffer."""
    from neurostimd.commands.simulator import SimulatorProcess
    from neurostimd.core.ringbuffer import RingBuffer
    from neurostimd.drivers.neurostim_board.driver import SerialBoardDriver
    from neurostimd.sources.board import BoardSource

    trial = Trial(ch, rate, seconds)
    block = max(10, int(rate / 200))  # a frame every 5 ms or so
    with SimulatorProcess(["--channels", str(ch), "--rate", str(rate), "--block", str(block), "--format", "int16"],
                          new_session=False) as sim:
        driver = SerialBoardDriver(port=sim.port)
        ring = RingBuffer(ch, int(rate * 5), rate)
        lat: list[float] = []
        with BoardSource(driver, stale_after_ms=1000.0) as src:
            while src.pump(ring, 0.5) == 0 and ring.total_written == 0:
                pass
            first = src.first_counter or 0
            n0 = ring.total_written
            cpu0, wall0 = time.process_time(), time.monotonic()
            while time.monotonic() - wall0 < seconds:
                if src.pump(ring, 0.1):
                    newest = ring.newest_timestamp
                    assert newest is not None
                    lat.append((time.monotonic() - newest) * 1e3)
            cpu1, wall1 = time.process_time(), time.monotonic()
            last = first + ring.total_written - 1 + ring.counters.missing_samples
            trial.gaps = ring.gaps + driver.counters.sample_gaps
            trial.note = f"bad frames {driver.counters.bad_frames}"
            trial.order_errors = driver.counters.bad_frames
        # Zero loss: every counter from the first to the last received arrived, and the board kept its rate.
        trial.received = ring.total_written
        trial.expected = last - first + 1
        kept_rate = (ring.total_written - n0) / max(1e-9, wall1 - wall0)
        trial.rate_ok = kept_rate >= 0.95 * rate
        trial.note += f"; {kept_rate:.0f} samples/s arrived"
        trial.latencies_ms = lat
        trial.cpu_percent = 100.0 * (cpu1 - cpu0) / max(1e-9, wall1 - wall0)
    return trial


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 4) if values else float("nan")


def _peer_mnelsl(progress: Progress, seconds: float) -> dict[str, Any]:
    """The peer at 256 ch x 2 kHz for as long as our top-configuration run; a missing peer is reported, not fatal."""
    try:
        import mne_lsl
    except ImportError:
        progress("ingest: peer mne-lsl not installed (pip install mne-lsl, in the dev extra); skipped")
        return {"ingest.peer_mnelsl": "not installed"}
    peer = mnelsl_trial(256, 2000.0, seconds)
    progress(f"ingest: peer mne-lsl {mne_lsl.__version__} {peer.describe()}")
    return {
        "ingest.peer_mnelsl_version": str(mne_lsl.__version__),
        "ingest.peer_mnelsl_bufsize_s": PEER_BUFSIZE_S,
        "ingest.peer_mnelsl_poll_ms": PEER_POLL_S * 1e3,
        "ingest.peer_mnelsl_latency_p50_ms": _pct(peer.latencies_ms, 50),
        "ingest.peer_mnelsl_latency_p99_ms": _pct(peer.latencies_ms, 99),
        "ingest.peer_mnelsl_cpu_percent": round(peer.cpu_percent, 2),
        "ingest.peer_mnelsl_no_drop": peer.no_drop,
    }


def run(progress: Progress, quick: bool) -> dict[str, Any]:
    """Step through channel x rate configurations for LSL and for the serial link; report the largest with zero
    loss, and latency/CPU at 256 ch x 2 kHz next to a bare pylsl inlet and the mne-lsl peer."""
    out: dict[str, Any] = {}
    lsl_steps = LSL_STEPS_QUICK if quick else LSL_STEPS
    best = 0.0
    top: Trial | None = None
    for ch, rate in lsl_steps:
        seconds = 3.0 if quick else (60.0 if (ch, rate) == (256, 2000.0) else 10.0)
        t = lsl_trial(ch, rate, seconds, bare=False)
        progress(f"ingest: LSL {t.describe()}")
        if t.no_drop:
            best = max(best, t.product)
        if (ch, rate) == (256, 2000.0):
            top = t
    out["ingest.lsl_max_channels_x_hz_no_drop"] = best
    bare = lsl_trial(256, 2000.0, 3.0 if quick else 20.0, bare=True)
    progress(f"ingest: bare pylsl inlet {bare.describe()}")
    if top is not None:
        out["ingest.lsl_latency_p50_ms"] = _pct(top.latencies_ms, 50)
        out["ingest.lsl_latency_p99_ms"] = _pct(top.latencies_ms, 99)
        out["ingest.lsl_cpu_percent"] = round(top.cpu_percent, 2)
        out["ingest.lsl_256x2k_no_drop"] = top.no_drop
    out["ingest.bare_lsl_latency_p50_ms"] = _pct(bare.latencies_ms, 50)
    out["ingest.bare_lsl_latency_p99_ms"] = _pct(bare.latencies_ms, 99)
    out["ingest.bare_lsl_cpu_percent"] = round(bare.cpu_percent, 2)
    out["ingest.bare_lsl_no_drop"] = bare.no_drop
    if top is not None and bare.latencies_ms:
        out["ingest.lsl_latency_overhead_p50_ms"] = round(out["ingest.lsl_latency_p50_ms"]
                                                         - out["ingest.bare_lsl_latency_p50_ms"], 4)
        out["ingest.lsl_cpu_ratio_vs_bare"] = round(top.cpu_percent / max(1e-6, bare.cpu_percent), 2)
    out.update(_peer_mnelsl(progress, 3.0 if quick else 60.0))

    best = 0.0
    for ch, rate in SERIAL_STEPS_QUICK if quick else SERIAL_STEPS:
        t = serial_trial(ch, rate, 3.0 if quick else 10.0)
        progress(f"ingest: serial {t.describe()}")
        if t.no_drop:
            best = max(best, t.product)
        if (ch, rate) == (64, 2000.0):
            out["ingest.serial_sample_age_p50_ms"] = _pct(t.latencies_ms, 50)
            out["ingest.serial_sample_age_p99_ms"] = _pct(t.latencies_ms, 99)
            out["ingest.serial_cpu_percent"] = round(t.cpu_percent, 2)
    out["ingest.serial_max_channels_x_hz_no_drop"] = best
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "push":
        sys.exit(push_main(sys.argv[2:]))
    print("usage: python -m neurostimd.commands.bench.ingest push --name N --channels C --rate R --seconds S",
          file=sys.stderr)
    sys.exit(2)
