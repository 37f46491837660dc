"""Session recorder: round trip, survival of SIGKILL (loss at most one flush interval), and replay of a session."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from neurostimd.clock import VirtualClock
from neurostimd.core.ringbuffer import RingBuffer
from neurostimd.outputs.recorder import Recorder
from neurostimd.sources.recordings import read_jsonl, read_recording, to_npz
from neurostimd.sources.replay import ReplaySource

CHILD = Path(__file__).with_name("recorder_child.py")
ROOT = Path(__file__).resolve().parents[2]


def test_session_round_trips_samples_decisions_and_commands(tmp_path):
    """Samples, decisions and commands recorded in a session read back identically, without this project too."""
    ring = RingBuffer(3, 1000, 250.0)
    folder = tmp_path / "s1"
    rng = np.random.default_rng(3)
    data = rng.normal(0, 30, (700, 3)).astype(np.float32)
    with Recorder(folder, 3, 250.0, ["a", "b", "c"], flush_interval_ms=50) as rec:
        nxt = 0
        for k in range(0, 700, 70):
            ring.write(data[k:k + 70], None, first_index=k)
            w = ring.since(nxt)
            rec.record_samples(w)
            nxt = w.end_index
            rec.record_decision({"state": np.int64(k % 3), "probs": np.array([0.1, 0.2, 0.7])})
        rec.record_command({"event": "stim_command", "applied": {"amplitude_ma": 1.0}})
    got = read_recording(folder)
    np.testing.assert_array_equal(got.data, data)
    assert got.fs == 250.0 and got.channel_names == ["a", "b", "c"]
    meta = json.loads((folder / "session.json").read_text())
    assert meta["closed_cleanly"] and meta["n_samples"] == 700
    # Readable with numpy alone, as docs/recording-format.md says.
    raw = np.fromfile(folder / meta["files"]["samples"], dtype="<f4").reshape(-1, meta["n_channels"])
    np.testing.assert_array_equal(raw, data)
    decisions = read_jsonl(folder / "decisions.jsonl")
    assert len(decisions) == 10 and decisions[3]["probs"] == [0.1, 0.2, 0.7]
    assert read_jsonl(folder / "commands.jsonl")[0]["applied"]["amplitude_ma"] == 1.0
    out = to_npz(got, tmp_path / "s1.npz")
    z = np.load(out)
    np.testing.assert_array_equal(z["data"], data)


def test_recorder_refuses_to_overwrite_a_session(tmp_path):
    """A folder that already holds a session is refused rather than mixed with a new one."""
    Recorder(tmp_path / "s", 1, 100.0).close()
    with pytest.raises(FileExistsError, match="already holds a session"):
        Recorder(tmp_path / "s", 1, 100.0)


def test_sigkilled_session_loses_at_most_one_flush_interval_and_replays(tmp_path):
    """A recording process killed with SIGKILL leaves a session holding all but the last flush interval, which
    reads back sample for sample and replays through the replay source."""
    fs, flush_ms = 1000.0, 200.0
    folder = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(CHILD), str(folder), str(fs), str(flush_ms)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    recorded = 0
    try:
        t_end = time.monotonic() + 60.0
        while time.monotonic() < t_end:
            line = proc.stdout.readline()
            if not line:
                break
            if not line.startswith("N "):
                continue  # the child's own log lines
            recorded = int(line.split()[1])
            if recorded >= 1500:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    assert recorded >= 1500, "the recording child did not get going"
    got = read_recording(folder)
    meta = json.loads((folder / "session.json").read_text())
    assert not meta["closed_cleanly"]
    n = got.n_samples
    # Everything but at most one flush interval (plus one paced block) of what the child had recorded is there.
    assert n >= recorded - fs * flush_ms / 1e3 - 50, (n, recorded)
    expected = np.arange(n, dtype=np.float32)[:, None] + np.arange(4, dtype=np.float32) * 0.5
    np.testing.assert_array_equal(got.data, expected)
    decisions = read_jsonl(folder / "decisions.jsonl")
    assert decisions and decisions[-1]["t_data_s"] <= recorded / fs
    # ... and the session replays, sample for sample.
    clock = VirtualClock()
    ring = RingBuffer(4, n + 10, fs)
    with ReplaySource(folder, 1.0, clock) as src:
        while not src.exhausted:
            clock.advance(50_000_000)
            src.pump(ring)
    np.testing.assert_array_equal(ring.latest(n).data, expected)
