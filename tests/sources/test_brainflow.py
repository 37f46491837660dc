"""The BrainFlow source on BrainFlow's own boards: the synthetic board in this process, PLAYBACK_FILE_BOARD over files
written by BrainFlow's DataFilter.write_file, and a synthetic board in another process streamed over multicast to a
STREAMING_BOARD; plus the refusals at open and the daemon started from config/brainflow.toml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("brainflow")

from brainflow.board_shim import BoardIds, BoardShim, BrainFlowInputParams
from brainflow.data_filter import DataFilter

from neurostimd.config import parse_config
from neurostimd.core.ringbuffer import FLAG_GAP, RingBuffer
from neurostimd.errors import SourceError
from neurostimd.sources import make_source
from neurostimd.sources.brainflow import BrainFlowSource
from neurostimd.sources.settings import BrainFlowSourceConfig

ROOT = Path(__file__).resolve().parents[2]
SYN = BoardIds.SYNTHETIC_BOARD.value
SYN_NAMES = BoardShim.get_eeg_names(SYN)
SYN_EEG = BoardShim.get_eeg_channels(SYN)
RATE = float(BoardShim.get_sampling_rate(SYN))
PKG = BoardShim.get_package_num_channel(SYN)
TS = BoardShim.get_timestamp_channel(SYN)


def config(**kw: Any) -> BrainFlowSourceConfig:
    base: dict[str, Any] = {"kind": "brainflow", "board_id": "SYNTHETIC_BOARD", "n_channels": len(SYN_EEG),
                            "sample_rate_hz": RATE}
    base.update(kw)
    return BrainFlowSourceConfig(**base)


def playback(path: Path, **kw: Any) -> BrainFlowSourceConfig:
    """A playback of `path` recorded by the synthetic board; no reconnect when the file ends."""
    return config(board_id="PLAYBACK_FILE_BOARD", params={"file": str(path), "master_board": "SYNTHETIC_BOARD"},
                  reconnect_after_ms=60_000.0, **kw)


def board_file(path: Path, packages: np.ndarray, *, t0: float = 1.7e9) -> np.ndarray:
    """A synthetic-board layout file with the given package numbers (time follows them at the board's rate): EEG row
    r holds 100·r µV plus a slow ramp, so that each delivered column shows which row it came from."""
    n = packages.shape[0]
    data = np.zeros((BoardShim.get_num_rows(SYN), n), dtype=np.float64)
    data[PKG] = packages % 256
    data[TS] = t0 + packages / RATE
    for r in SYN_EEG:
        data[r] = 100.0 * r + np.linspace(0.0, 1.0, n)
    DataFilter.write_file(np.ascontiguousarray(data), str(path), "w")
    return data


def run_for(src: BrainFlowSource, ring: RingBuffer, seconds: float, until: Any = None) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        src.pump(ring, 0.02)
        if until is not None and until():
            return


def ring_for(src: BrainFlowSource, seconds: float = 30.0) -> RingBuffer:
    return RingBuffer(src.n_channels, int(src.sample_rate_hz * seconds), src.sample_rate_hz,
                      jitter_tolerance_s=src.timestamp_tolerance_s)


@pytest.fixture
def opened() -> Iterator[Any]:
    """Open sources, closed after the test."""
    srcs: list[BrainFlowSource] = []

    def make(cfg: BrainFlowSourceConfig) -> BrainFlowSource:
        src = make_source(cfg)
        assert isinstance(src, BrainFlowSource)
        src.open()
        srcs.append(src)
        return src

    yield make
    for s in srcs:
        s.close()


# --- the synthetic board in this process --------------------------------------------------------------------------
def test_synthetic_board_streams_its_eeg_channels_by_name_at_its_rate(opened: Any) -> None:
    """The synthetic board's 16 EEG channels arrive with BrainFlow's names at 250 Hz, on the monotonic clock, at the
    board's rate, without gaps, and the source is fresh."""
    src = opened(config())
    assert src.declared_channel_names == SYN_NAMES and src.n_channels == 16 and src.sample_rate_hz == RATE
    ring = ring_for(src)
    run_for(src, ring, 1.5)
    assert not src.stale, src.stale_reason
    n = ring.total_written
    assert 0.8 * 1.5 * RATE < n < 1.2 * 1.5 * RATE
    w = ring.latest(n)
    steps = np.diff(w.timestamps)
    assert abs(float(np.median(steps)) - 1 / RATE) < 1e-4 and steps.min() > 0
    assert abs(time.monotonic() - float(w.timestamps[-1])) < 0.2  # on time.monotonic(), not Unix time
    assert ring.counters.gaps == 0 and ring.counters.clock_jumps == 0 and not w.flags.any()
    assert src.t_data_s is not None and 1.0 < src.t_data_s < 1.6


def test_channels_are_picked_by_brainflow_name_in_the_configured_order(opened: Any) -> None:
    """`channels = ["Pz", "C3"]` delivers exactly those two EEG rows, in that order (the synthetic board's EEG
    amplitude grows with the row: Pz, row 5, is larger than C3, row 2)."""
    src = opened(config(channels=["Pz", "C3"]))
    assert src.channel_names == ["Pz", "C3"] and src.n_channels == 2
    ring = ring_for(src)
    run_for(src, ring, 1.0)
    x = ring.latest(ring.total_written).data
    rms = np.sqrt((x.astype(np.float64) ** 2).mean(axis=0))
    assert rms[0] > 1.5 * rms[1]


def test_stale_when_the_board_stops_then_reconnected(opened: Any) -> None:
    """When the board stops delivering, the source is stale within stale_after_ms (+ a pump); after
    reconnect_after_ms it prepares the session again, samples flow, and the ring flags the outage as a gap."""
    src = opened(config(stale_after_ms=200.0, reconnect_after_ms=600.0))
    ring = ring_for(src)
    run_for(src, ring, 0.8)
    assert not src.stale
    src._shim.stop_stream()  # the board goes quiet (as a board whose link dies does)
    t_stop = time.monotonic()
    run_for(src, ring, 2.0, until=lambda: src.stale)
    assert src.stale and "no samples" in (src.stale_reason or "")
    assert time.monotonic() - t_stop < 0.5
    run_for(src, ring, 4.0, until=lambda: src.reconnects >= 1 and not src.stale)
    assert src.reconnects >= 1 and not src.stale, src.stale_reason
    assert ring.counters.gaps >= 1 and ring.counters.missing_samples >= 0.5 * RATE


def test_a_session_that_cannot_be_prepared_again_is_retried_with_back_off(opened: Any, tmp_path: Path) -> None:
    """A playback whose file is gone when its session is prepared again (a board unplugged): the source stays stale
    with BrainFlow's reason, retries at growing intervals rather than on every tick, never raises, and comes back
    when the file does."""
    board_file(tmp_path / "short.csv", np.arange(40))
    src = opened(playback(tmp_path / "short.csv").model_copy(update={
        "stale_after_ms": 100.0, "reconnect_after_ms": 200.0, "reconnect_interval_ms": 100.0,
        "reconnect_max_interval_ms": 800.0}))
    ring = ring_for(src)
    run_for(src, ring, 1.0, until=lambda: ring.total_written >= 40)
    assert ring.total_written == 40
    (tmp_path / "short.csv").rename(tmp_path / "away.csv")
    t0 = time.monotonic()
    reasons: list[tuple[float, str]] = []
    while time.monotonic() - t0 < 2.5:
        src.pump(ring, 0.02)
        r = src.stale_reason or ""
        if "unable to prepare" in r and (not reasons or reasons[-1][1] != r):
            reasons.append((time.monotonic() - t0, r))
    assert src.stale and "unable to prepare streaming session" in (src.stale_reason or "")
    assert src.reconnects == 0
    (tmp_path / "away.csv").rename(tmp_path / "short.csv")
    run_for(src, ring, 3.0, until=lambda: ring.total_written > 40)
    assert ring.total_written > 40 and src.reconnects == 1
    assert ring.counters.gaps == 1  # the time away is a gap, not continuous signal


def test_back_off_doubles_up_to_its_maximum(opened: Any, tmp_path: Path) -> None:
    """Failed attempts are spaced reconnect_interval_ms, then twice that, ..., up to reconnect_max_interval_ms."""
    board_file(tmp_path / "short.csv", np.arange(20))
    src = opened(playback(tmp_path / "short.csv").model_copy(update={
        "stale_after_ms": 50.0, "reconnect_after_ms": 100.0, "reconnect_interval_ms": 100.0,
        "reconnect_max_interval_ms": 400.0}))
    ring = ring_for(src)
    run_for(src, ring, 1.0, until=lambda: ring.total_written >= 20)
    (tmp_path / "short.csv").unlink()
    attempts: list[float] = []
    real = src._start_session

    def counted(shim: Any) -> None:  # the real start, timed
        attempts.append(time.monotonic())
        real(shim)

    src._start_session = counted
    run_for(src, ring, 2.6)
    gaps = np.diff(attempts)
    assert len(attempts) >= 4, attempts
    assert gaps[0] == pytest.approx(0.1, abs=0.06) and gaps[1] == pytest.approx(0.2, abs=0.06)
    assert gaps[-1] == pytest.approx(0.4, abs=0.08)


# --- files played by BrainFlow's PLAYBACK_FILE_BOARD ---------------------------------------------------------------
def test_playback_delivers_the_file_in_uv_row_for_row(opened: Any, tmp_path: Path) -> None:
    """Every sample of a BrainFlow file arrives, unscaled (BrainFlow's µV), each column from its own EEG row, with no
    gap."""
    data = board_file(tmp_path / "rec.csv", np.arange(150))
    src = opened(playback(tmp_path / "rec.csv"))
    ring = ring_for(src)
    run_for(src, ring, 3.0, until=lambda: ring.total_written >= 150)
    assert ring.total_written == 150 and ring.counters.gaps == 0
    got = ring.latest(150).data
    np.testing.assert_allclose(got, data[SYN_EEG].T.astype(np.float32), rtol=0, atol=1e-3)


def test_dropped_packages_are_a_gap_in_the_ring(opened: Any, tmp_path: Path) -> None:
    """A file whose package numbers skip 20 packages makes the ring count one gap of 20 missing samples and flag the
    first sample after it."""
    pk = np.r_[0:100, 120:220]
    board_file(tmp_path / "gap.csv", pk)
    src = opened(playback(tmp_path / "gap.csv"))
    ring = ring_for(src)
    run_for(src, ring, 3.0, until=lambda: ring.total_written >= 200)
    assert ring.total_written == 200
    assert ring.counters.gaps == 1 and ring.counters.missing_samples == 20
    w = ring.latest(200)
    assert w.flags[100] & FLAG_GAP and not np.delete(w.flags, 100).any()
    assert src.missing_packages == 20


def test_a_whole_lost_wrap_of_the_counter_is_sized_from_the_timestamps(opened: Any, tmp_path: Path) -> None:
    """300 lost packages (more than the one-byte counter can show) count as 300 missing samples, not 44."""
    pk = np.r_[0:60, 360:420]
    board_file(tmp_path / "wrap.csv", pk)
    src = opened(playback(tmp_path / "wrap.csv"))
    ring = ring_for(src)
    run_for(src, ring, 4.0, until=lambda: ring.total_written >= 120)
    assert ring.total_written == 120
    assert ring.counters.gaps == 1 and ring.counters.missing_samples == 300


def test_a_counter_wrapping_at_256_is_not_a_gap(opened: Any, tmp_path: Path) -> None:
    """Package numbers running 250..255, 0..5 (the counter's wrap) are contiguous."""
    board_file(tmp_path / "wrapok.csv", np.arange(200, 330))
    src = opened(playback(tmp_path / "wrapok.csv"))
    ring = ring_for(src)
    run_for(src, ring, 3.0, until=lambda: ring.total_written >= 130)
    assert ring.total_written == 130 and ring.counters.gaps == 0


def test_gaps_from_the_timestamps_for_a_board_whose_counter_counts_packets(opened: Any, tmp_path: Path) -> None:
    """With gap_detection = "timestamps", a file whose package number stays 0 (a board that does not write it) but
    whose timestamps skip 25 samples gives one gap of about 25 missing samples (the playback board stamps on
    arrival: timestamp_jitter_ms covers its jitter, and the count is the step's length), and keeps every sample."""
    data = board_file(tmp_path / "ts.csv", np.r_[0:80, 105:185])
    data[PKG] = 0.0
    DataFilter.write_file(np.ascontiguousarray(data), str(tmp_path / "ts.csv"), "w")
    src = opened(playback(tmp_path / "ts.csv", gap_detection="timestamps", timestamp_jitter_ms=20.0))
    ring = ring_for(src)
    run_for(src, ring, 3.0, until=lambda: ring.total_written >= 160)
    assert ring.total_written == 160
    assert ring.counters.gaps == 1 and abs(ring.counters.missing_samples - 25) <= 3
    assert ring.latest(160).flags[80] & FLAG_GAP


def test_repeated_packages_are_dropped_in_package_mode(opened: Any, tmp_path: Path) -> None:
    """The same package number twice at once (a board that writes a sample twice) keeps one copy, no gap."""
    data = board_file(tmp_path / "dup.csv", np.r_[0:50, 49:100])
    data[TS, 51:] -= 1 / RATE  # the copy has its original's time; the rest follow on time
    DataFilter.write_file(np.ascontiguousarray(data), str(tmp_path / "dup.csv"), "w")
    src = opened(playback(tmp_path / "dup.csv"))
    ring = ring_for(src)
    run_for(src, ring, 2.0, until=lambda: ring.total_written >= 100)
    assert ring.total_written == 100 and ring.counters.gaps == 0 and src.bad_chunks == 1


def test_non_numbers_in_the_counter_are_dropped_not_raised(opened: Any, tmp_path: Path) -> None:
    """A file with NaN package numbers: those chunks are refused and counted; pump() does not raise and the good
    samples still arrive."""
    data = board_file(tmp_path / "nan.csv", np.arange(100))
    data[PKG, 40:60] = np.nan
    DataFilter.write_file(np.ascontiguousarray(data), str(tmp_path / "nan.csv"), "w")
    src = opened(playback(tmp_path / "nan.csv"))
    ring = ring_for(src)
    run_for(src, ring, 2.0)
    assert src.bad_chunks >= 1
    assert 0 < ring.total_written < 100


# --- a board in another process ------------------------------------------------------------------------------------
STREAMER = """
import sys, time
from brainflow.board_shim import BoardShim, BoardIds, BrainFlowInputParams, LogLevels
BoardShim.set_log_level(LogLevels.LEVEL_WARN.value)
b = BoardShim(BoardIds.SYNTHETIC_BOARD, BrainFlowInputParams())
b.prepare_session()
b.add_streamer(sys.argv[1])
b.start_stream()
print("streaming", flush=True)
time.sleep(float(sys.argv[2]))
b.release_session()
"""


def start_streamer(url: str, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", STREAMER, url, str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "streaming"
    return proc


def test_a_board_in_another_process_over_a_streaming_board(opened: Any) -> None:
    """A synthetic board in another process streams to BrainFlow's STREAMING_BOARD (multicast on this host): its
    samples arrive with the synthetic board's names; when that process ends the source goes stale; a new streamer
    process brings samples back, after a gap in the ring."""
    port = 20000 + os.getpid() % 20000
    url = f"streaming_board://225.1.1.1:{port}"
    first = start_streamer(url, 60)
    try:
        src = opened(config(board_id="STREAMING_BOARD", stale_after_ms=200.0, reconnect_after_ms=800.0,
                            params={"ip_address": "225.1.1.1", "ip_port": port, "master_board": "SYNTHETIC_BOARD"}))
        assert src.declared_channel_names == SYN_NAMES
        ring = ring_for(src)
        run_for(src, ring, 3.0, until=lambda: ring.total_written > RATE)
        assert ring.total_written > RATE and not src.stale
    finally:
        first.kill()
        first.wait()
    run_for(src, ring, 2.0, until=lambda: src.stale)
    assert src.stale
    before = ring.total_written
    second = start_streamer(url, 60)
    try:
        run_for(src, ring, 6.0, until=lambda: ring.total_written > before + RATE / 2 and not src.stale)
        assert ring.total_written > before and not src.stale, src.stale_reason
        assert ring.counters.gaps >= 1
    finally:
        second.kill()
        second.wait()


# --- refusals at open ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kw", "words"), [
    ({"board_id": "NO_SUCH_BOARD"}, ["board_id", "'NO_SUCH_BOARD'", "not a BrainFlow board name"]),
    ({"board_id": 9999}, ["board_id = 9999", "not a board id"]),
    ({"channel_kind": "optical"}, ["no optical channels", "channel_kind"]),
    ({"channel_kind": "ppg"}, ["states no unit", "ppg", "channel_kind"]),
    ({"sample_rate_hz": 500.0}, ["250 Hz", "sample_rate_hz = 500"]),
    ({"n_channels": 8}, ["16 eeg channels", "n_channels = 8"]),
    ({"channels": ["C3", "T7"]}, ["channels", "missing: 'T7'", "Fz"]),
    ({"channel_kind": "emg", "channels": ["C3"]}, ["names no emg channels", "remove channels"]),
    ({"board_id": "PLAYBACK_FILE_BOARD", "params": {"file": "/nonexistent.csv", "master_board": "SYNTHETIC_BOARD"}},
     ["file", "/nonexistent.csv", "exists"]),
    ({"board_id": "PLAYBACK_FILE_BOARD", "params": {"file": __file__}}, ["master_board"]),
    ({"board_id": "STREAMING_BOARD", "params": {"master_board": "NOT_A_BOARD"}}, ["master_board", "NOT_A_BOARD"]),
])
def test_refusals_at_open_say_what_to_fix(kw: dict[str, Any], words: list[str]) -> None:
    """Each mismatch between the config and the board is a SourceError at open naming the field and the fix."""
    src = make_source(config(**kw))
    with pytest.raises(SourceError) as exc:
        src.open()
    msg = str(exc.value)
    for w in words:
        assert w in msg, msg
    assert not src.is_open


def test_an_unreachable_board_is_a_source_error_with_a_hint() -> None:
    """A Cyton on a serial port that does not exist is refused at open with BrainFlow's reason and what to check."""
    src = make_source(config(board_id="CYTON_BOARD", n_channels=8, params={"serial_port": "/dev/nonexistent-tty"}))
    with pytest.raises(SourceError) as exc:
        src.open()
    assert "CYTON_BOARD" in str(exc.value) and "serial_port" in str(exc.value)


# --- config ----------------------------------------------------------------------------------------------------------
def test_config_parses_and_resolves_the_playback_file(tmp_path: Path) -> None:
    """`[source] kind = "brainflow"` parses with its params sub-table, the playback file is resolved against the
    config's folder, and a misspelt param is refused by name."""
    from neurostimd.config import resolve_paths
    from neurostimd.errors import ConfigError

    cfg = parse_config({"source": {"kind": "brainflow", "board_id": "PLAYBACK_FILE_BOARD", "n_channels": 16,
                                   "sample_rate_hz": 250.0,
                                   "params": {"file": "rec.csv", "master_board": "SYNTHETIC_BOARD"}}})
    fixed = resolve_paths(cfg, tmp_path).source
    assert isinstance(fixed, BrainFlowSourceConfig) and fixed.params.file == tmp_path / "rec.csv"
    with pytest.raises(ConfigError) as exc:
        parse_config({"source": {"kind": "brainflow", "board_id": 0, "n_channels": 8, "sample_rate_hz": 250.0,
                                 "params": {"serialport": "/dev/ttyUSB0"}}})
    assert any("serialport" in line for line in exc.value.errors)
    with pytest.raises(ConfigError) as exc:
        parse_config({"source": {"kind": "brainflow", "board_id": "CYTON BOARD!", "n_channels": 8,
                                 "sample_rate_hz": 250.0}})
    assert any("board_id" in line for line in exc.value.errors)


def _shipped_config_in(tmp_path: Path, edit: Any = None) -> Path:
    """config/brainflow.toml with its outputs under tmp_path (and `edit` applied to its text)."""
    cfg = (ROOT / "config" / "brainflow.toml").read_text()
    cfg = cfg.replace('"runs/brainflow/audit.jsonl"', json.dumps(str(tmp_path / "audit.jsonl")))
    cfg = cfg.replace('"runs/brainflow/state.json"', json.dumps(str(tmp_path / "state.json")))
    bundle = json.dumps(str(ROOT / "models" / "brainflow-synthetic"))
    cfg = cfg.replace('bundle = "models/brainflow-synthetic"', f"bundle = {bundle}")
    if edit is not None:
        cfg = edit(cfg)
    path = tmp_path / "brainflow.toml"
    path.write_text(cfg)
    return path


def test_the_daemon_refuses_a_board_montage_the_bundle_was_not_trained_on(tmp_path: Path) -> None:
    """config/brainflow.toml without its `channels` pick (all 16 EEG channels) does not fit the 4-channel bundle:
    the daemon refuses to start with exit 78, naming the channels to pick."""
    path = _shipped_config_in(tmp_path, lambda t: t.replace('channels = ["C3", "Cz", "C4", "Pz"]', ""))
    res = subprocess.run([sys.executable, "-m", "neurostimd", "run", "--config", str(path), "--duration", "2"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 78, res.stdout[-2000:] + res.stderr[-2000:]
    refused = [json.loads(line) for line in res.stdout.splitlines() if '"startup_refused"' in line]
    assert refused and "[source] channels" in refused[0]["error"] and "'C3'" in refused[0]["error"]


def test_the_daemon_runs_from_config_brainflow_toml(tmp_path: Path) -> None:
    """`neurostimd run --config config/brainflow.toml --duration 4` (the synthetic board, the virtual stimulator, the
    demonstration bundle) starts, decides on the board's samples and exits 0."""
    path = _shipped_config_in(tmp_path)
    res = subprocess.run([sys.executable, "-m", "neurostimd", "run", "--config", str(path), "--duration", "4"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:] + res.stdout[-2000:]
    events = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    names = [e.get("event") for e in events]
    opened_ = next(e for e in events if e.get("event") == "brainflow_source_open")
    assert opened_["channels"] == ["C3", "Cz", "C4", "Pz"] and opened_["rate_hz"] == RATE
    assert "ready" in names and "montage_reordered" not in names
    assert not any(e.get("event") == "fault" and "stale_data" in (e.get("raised") or []) for e in events)


def test_the_daemon_faults_on_a_dropped_package_gap_and_on_a_board_that_stops(tmp_path: Path) -> None:
    """The daemon on a playback of the synthetic board's own signal with 25 packages cut out: the fault monitor raises
    quality_gap when the gap reaches the decision window, and stale_data when the file ends (the board stops)."""
    b = BoardShim(SYN, BrainFlowInputParams())
    b.prepare_session()
    b.start_stream()
    time.sleep(3.4)
    d = b.get_board_data()
    b.release_session()
    assert d.shape[1] > 800
    rec = tmp_path / "gap.csv"
    DataFilter.write_file(np.ascontiguousarray(d[:, np.r_[0:500, 525:d.shape[1]]]), str(rec), "w")
    path = _shipped_config_in(tmp_path, lambda t: t.replace('board_id = "SYNTHETIC_BOARD"', 'board_id = '
                                                            '"PLAYBACK_FILE_BOARD"\nreconnect_after_ms = 60000')
                              + f'\n[source.params]\nfile = {json.dumps(str(rec))}\nmaster_board = "SYNTHETIC_BOARD"\n')
    res = subprocess.run([sys.executable, "-m", "neurostimd", "run", "--config", str(path), "--duration", "4"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    events = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    raised = [f for e in events if e.get("event") == "fault" for f in e.get("raised") or []]
    assert "ready" in [e.get("event") for e in events]
    assert "quality_gap" in raised and "stale_data" in raised
    assert raised.index("quality_gap") < raised.index("stale_data")
