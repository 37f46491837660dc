"""`neurostimd replay`: the daemon's loop over a recording on a virtual clock, through the virtual board."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import ROOT, read_jsonl

pytestmark = pytest.mark.usefixtures("need_bundle")


def _generate(path: Path, seconds: int, seed: int, channels: int = 32) -> None:
    subprocess.run([sys.executable, "-m", "neurostimd.firmware_sim.generate", "--out", str(path),
                    "--duration", str(seconds), "--channels", str(channels), "--rate", "1000", "--seed", str(seed)],
                   check=True, capture_output=True)


def _replay(rec: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "neurostimd", "replay", str(rec), "--config",
                           str(ROOT / "config" / "replay.toml"), "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=300)


def test_replay_writes_outputs_and_is_byte_identical(tmp_path: Path) -> None:
    """Two replays of one file give byte-identical decisions.jsonl, plus an audit log and a timeline PNG."""
    rec = tmp_path / "rec.npz"
    _generate(rec, 30, seed=4)
    a, b = _replay(rec, tmp_path / "a"), _replay(rec, tmp_path / "b")
    assert a.returncode == 0, a.stderr[-2000:]
    assert b.returncode == 0, b.stderr[-2000:]
    da, db = (tmp_path / "a" / "decisions.jsonl").read_bytes(), (tmp_path / "b" / "decisions.jsonl").read_bytes()
    assert da == db and len(da.splitlines()) >= 30 * 20 - 1
    png = tmp_path / "a" / "timeline.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    audit = read_jsonl(tmp_path / "a" / "audit.jsonl")
    cmds = [r for r in audit if r["event"] == "stim_command"]
    assert cmds, "the replay commanded the virtual board"
    for r in cmds:
        assert {"state", "confidence", "requested", "applied", "limited_by", "t_data_s", "seq", "t_wall",
                "t_mono_ns"} <= r.keys()
        assert 0.0 <= r["t_data_s"] <= 30.0
    acks = {r["command_seq"]: r["ack"] for r in audit if r["event"] == "stim_ack"}
    assert all(acks.get(r["seq"]) is True for r in cmds), "the virtual board acknowledged every command"
    board = read_jsonl(tmp_path / "a" / "board.jsonl")
    assert any(e["event"] == "stim_applied" for e in board)
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["ticks"] == len(da.splitlines())


def test_replay_decisions_track_the_labels(tmp_path: Path) -> None:
    """On a labelled generator recording the replayed decisions agree with the true state most of the time."""
    rec = tmp_path / "rec.npz"
    _generate(rec, 60, seed=8)
    res = _replay(rec, tmp_path / "o")
    assert res.returncode == 0, res.stderr[-2000:]
    labels = np.load(rec)["labels"]
    decs = [d for d in read_jsonl(tmp_path / "o" / "decisions.jsonl") if d["probs"] is not None]
    pred = np.array([int(np.argmax(d["probs"])) for d in decs])
    true = np.array([labels[min(round(d["t_data_s"] * 1000), len(labels) - 1)] for d in decs])
    assert (pred == true).mean() >= 0.8


def test_replay_of_a_mismatched_recording_is_refused(tmp_path: Path) -> None:
    """A recording whose channel count differs from the model's is refused with a message, not replayed."""
    rec = tmp_path / "rec8.npz"
    _generate(rec, 5, seed=1, channels=8)
    res = _replay(rec, tmp_path / "o")
    assert res.returncode == 78
    assert "8 channels" in res.stderr and "expects 32" in res.stderr
