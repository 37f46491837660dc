"""Replay honours a recording's own time: a recorder session whose ring index jumps, and an XDF whose stamps skip
samples, replay through the whole pipeline (`neurostimd replay`'s run_replay) with the gap where it was — the ring's
gap flag, the quality_gap fault and no stimulation in the windows over it — and with the same decisions as the .npz
that marks the same gap in its timestamps."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from neurostimd.commands.replay import run_replay
from neurostimd.config import Config
from neurostimd.core.ringbuffer import RingBuffer
from neurostimd.firmware_sim.generate import generate_recording
from neurostimd.outputs.recorder import Recorder
from neurostimd.sources.recordings import read_recording
from tests.sources.xdf_files import write_xdf

FS = 1000.0
CUT, MISSING = 6_000, 40  # the index jumps by MISSING samples after sample CUT
CAPACITY = 1000  # the ring's


@pytest.fixture(scope="module")
def sim() -> dict[str, np.ndarray]:
    """8 s of generator signal (32 channels at 1 kHz) that the default bundle classifies and stimulates on."""
    return generate_recording(8.0, 32, FS, seed=5)


def record_session(folder: Path, sim: dict[str, Any]) -> None:
    """Record `sim` from a ring with the real Recorder as the loop does, except that at CUT the recorder falls
    behind: CAPACITY + MISSING samples are written between two of its reads, so MISSING of them are overwritten
    unrecorded and the session's ring index jumps (its stamps, from a continuous stream, jump too)."""
    data = sim["data"].astype(np.float32)
    ring = RingBuffer(data.shape[1], CAPACITY, FS)
    names = [str(c) for c in sim["channel_names"]]
    bounds = [*range(0, CUT, 500), CUT, *range(CUT + CAPACITY + MISSING, len(data), 500), len(data)]
    with Recorder(folder, data.shape[1], FS, names, flush_interval_ms=50) as rec:
        nxt = 0
        for a, b in itertools.pairwise(bounds):
            ring.write(data[a:b], 50.0 + np.arange(a, b) / FS, first_index=a)
            w = ring.since(nxt)
            assert w.overrun == (MISSING if a == CUT else 0)
            rec.record_samples(w)
            nxt = w.end_index


def same_as_npz(path: Path, sim: dict[str, Any], keep: np.ndarray) -> Path:
    """The .npz of the samples `keep` with their true stamps: the gap marked in timestamps only."""
    np.savez(path, **{**sim, "data": sim["data"][keep], "labels": sim["labels"][keep],
                      "timestamps": 50.0 + np.flatnonzero(keep) / FS})
    return path


def decisions(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (path / "decisions.jsonl").read_text().splitlines()]


def test_a_session_whose_index_jumps_replays_the_gap(cfg: Config, tmp_path: Path, sim: dict[str, Any]) -> None:
    """The session reads with its ring indices; its replay faults quality_gap exactly in the windows over the
    jump, stimulates in none of them, and decides as the .npz with the same gap in its timestamps does."""
    assert CUT % 500 == 0
    session = tmp_path / "session"
    record_session(session, sim)
    rec = read_recording(session)
    assert rec.sample_index is not None and int(rec.sample_index[CUT] - rec.sample_index[CUT - 1]) == MISSING + 1
    run_replay(cfg, session, tmp_path / "out-session", progress=False, plot=False)
    got = decisions(tmp_path / "out-session")
    hit = [d for d in got if "quality_gap" in d["faults"]]
    gap_t = (CUT + MISSING) / FS
    assert hit and all(gap_t <= d["t_data_s"] < gap_t + 0.55 for d in hit)
    assert all(d["applied"] is None for d in hit)
    assert any(d["applied"] is not None for d in got)  # the control: the rest of the session is stimulated on
    keep = np.ones(len(sim["data"]), dtype=bool)
    keep[CUT:CUT + MISSING] = False
    run_replay(cfg, same_as_npz(tmp_path / "same.npz", sim, keep), tmp_path / "out-npz", progress=False, plot=False)
    assert got == decisions(tmp_path / "out-npz")


def test_the_session_index_is_followed_over_its_timestamps(tmp_path: Path, sim: dict[str, Any]) -> None:
    """A session whose stamps look continuous but whose index jumps replays the jump: the index is what the live
    ring flagged."""
    from neurostimd.clock import VirtualClock
    from neurostimd.core.ringbuffer import FLAG_GAP
    from neurostimd.sources.replay import ReplaySource

    session = tmp_path / "session"
    record_session(session, sim)
    rec = read_recording(session)
    rec.timestamps = 50.0 + np.arange(rec.n_samples) / FS  # stamps without the hole
    clock = VirtualClock()
    ring = RingBuffer(rec.n_channels, 16384, FS)
    with ReplaySource(rec, 1.0, clock) as src:
        clock.advance(20_000_000_000)
        src.pump(ring)
    w = ring.latest(ring.samples_written)
    assert np.flatnonzero(w.flags & FLAG_GAP).tolist() == [CUT] and ring.counters.missing_samples == MISSING
    assert rec.times_s()[CUT] - rec.times_s()[CUT - 1] == pytest.approx(1 / FS)  # times follow the stamps


def test_a_gap_in_the_live_stream_is_in_the_session_stamps(tmp_path: Path, sim: dict[str, Any]) -> None:
    """A gap of the live stream (the ring's index stays consecutive, its stamps jump) and a recorder overrun (the
    index jumps) in one session both replay as gaps of the right length."""
    from neurostimd.clock import VirtualClock
    from neurostimd.core.ringbuffer import FLAG_GAP
    from neurostimd.sources.replay import ReplaySource

    session = tmp_path / "session"
    record_session(session, sim)
    rec = read_recording(session)
    assert rec.timestamps is not None
    rec.timestamps = rec.timestamps.copy()
    rec.timestamps[2000:] += 0.025  # 25 samples the live stream lost at 2 s
    clock = VirtualClock()
    ring = RingBuffer(rec.n_channels, 16384, FS)
    with ReplaySource(rec, 1.0, clock) as src:
        clock.advance(20_000_000_000)
        src.pump(ring)
    w = ring.latest(ring.samples_written)
    assert np.flatnonzero(w.flags & FLAG_GAP).tolist() == [2000, CUT]
    assert ring.counters.missing_samples == 25 + MISSING


def test_an_xdf_gap_replays_through_the_pipeline_like_the_npz(cfg: Config, tmp_path: Path,
                                                              sim: dict[str, Any]) -> None:
    """An XDF stream whose stamps skip MISSING samples replays with the quality_gap fault over the hole and the
    same decisions as the .npz with the same stamps."""
    keep = np.ones(len(sim["data"]), dtype=bool)
    keep[CUT:CUT + MISSING] = False
    xdf = tmp_path / "gap.xdf"
    write_xdf(xdf, sim["data"][keep].astype(np.float32), FS, [str(c) for c in sim["channel_names"]],
              units=["microvolts"] * sim["data"].shape[1], timestamps=50.0 + np.flatnonzero(keep) / FS)
    run_replay(cfg, xdf, tmp_path / "out-xdf", progress=False, plot=False)
    got = decisions(tmp_path / "out-xdf")
    hit = [d for d in got if "quality_gap" in d["faults"]]
    assert hit and all(d["applied"] is None for d in hit)
    run_replay(cfg, same_as_npz(tmp_path / "same.npz", sim, keep), tmp_path / "out-npz", progress=False, plot=False)
    assert got == decisions(tmp_path / "out-npz")
