"""Bonn EEG (3 classes, whole segments held out): a short train + evaluate run clears a clear-margin accuracy bar.

The README figures come from the full run in docs/classifier.md; this test uses 3 epochs to stay within minutes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from neurostimd.commands.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.needs_data, pytest.mark.train]


def test_bonn_three_class_on_held_out_segments(shared_data: Path, tmp_path: Path) -> None:
    """Trained 3 epochs on 70 % of Bonn segments, the bundle scores >= 0.9 per decision and per epoch on the rest."""
    data = tmp_path / "bonn3.npz"
    subprocess.run([sys.executable, str(shared_data / "to_npz.py"), "bonn", str(data), "--classes", "3"], check=True)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "b"), "--epochs", "3", "--seed", "0",
                 "--test-fraction", "0.3", "--hop-ms", "250", "--frame-hops", "4", "--frames", "10",
                 "--stride", "4"]) == 0
    report = tmp_path / "r"
    assert main(["evaluate", "--bundle", str(tmp_path / "b"), "--data", str(data), "--report", str(report)]) == 0
    m = json.loads((report / "metrics.json").read_text())
    split = json.loads((tmp_path / "b" / "split.json").read_text())["sources"][0]
    assert m["n_segments"] == len(split["test"]) == 150
    assert not set(split["test"]) & (set(split["train"]) | set(split["val"]))
    assert m["accuracy"] >= 0.9, m["accuracy"]
    assert m["epoch_accuracy"] >= 0.9, m["epoch_accuracy"]
    assert 0.0 < m["baseline_accuracy"] <= 1.0 and 0.0 < m["baseline_epoch_accuracy"] <= 1.0
