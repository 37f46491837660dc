"""`neurostimd replay` exits 65 (EX_DATAERR) for a recording it cannot use, naming the file and what to do, and 78
(EX_CONFIG) for a bad config; an XDF with several signal streams replays once --stream-name chooses one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from neurostimd.commands.cli import main
from neurostimd.firmware_sim.generate import generate_recording
from neurostimd.service.exitcodes import EX_CONFIG, EX_DATAERR
from tests.sources.xdf_files import XdfStream, marker_stream, write_xdf_streams

ROOT = Path(__file__).resolve().parents[2]
SIM = str(ROOT / "config" / "sim.toml")
FS = 1000.0


def two_stream_xdf(path: Path) -> None:
    """3 s of the generator's 32 channels as 'amp', a 2-channel 'aux' stream beside it, and a marker stream."""
    rec = generate_recording(3.0, 32, FS, seed=2)
    n = len(rec["data"])
    ts = 20.0 + np.arange(n) / FS
    write_xdf_streams(path, [
        XdfStream("amp", "EEG", FS, rec["data"].astype(np.float32), ts, labels=[str(c) for c in rec["channel_names"]],
                  units=["microvolts"] * 32),
        XdfStream("aux", "AUX", 100.0, np.zeros((300, 2), np.float32), 20.0 + np.arange(300) / 100.0,
                  labels=["x", "y"], units=["microvolts"] * 2),
        marker_stream("Task", [21.0], ["go"]),
    ])


def test_bad_data_exits_65_and_a_chosen_stream_replays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing recording and an XDF whose signal stream is not chosen exit 65 naming the file (and the streams);
    with --stream-name amp the same file replays (exit 0)."""
    assert main(["replay", str(tmp_path / "nope.xdf"), "--config", SIM, "--out", str(tmp_path / "o")]) == EX_DATAERR
    assert "nope.xdf does not exist" in capsys.readouterr().err
    xdf = tmp_path / "two.xdf"
    two_stream_xdf(xdf)
    assert main(["replay", str(xdf), "--config", SIM, "--out", str(tmp_path / "o")]) == EX_DATAERR
    err = capsys.readouterr().err
    assert "two.xdf" in err and "'amp' (type 'EEG', 32 channels, 1000 Hz" in err and "'aux'" in err
    assert main(["replay", str(xdf), "--config", SIM, "--out", str(tmp_path / "o"), "--stream-name", "amp"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{\n"):])  # after any log lines
    assert summary["ticks"] > 0 and summary["recording_s"] == pytest.approx(3.0)


def test_a_bad_config_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config that does not validate exits 78, not 65, naming the config."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[source]\nkind = "nonsense"\n')
    xdf = tmp_path / "two.xdf"
    two_stream_xdf(xdf)
    assert main(["replay", str(xdf), "--config", str(bad), "--out", str(tmp_path / "o")]) == EX_CONFIG
    assert "bad.toml" in capsys.readouterr().err
