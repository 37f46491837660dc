"""Training never writes a bundle that the daemon would refuse: the stimulation table needs one row per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neurostimd.firmware_sim.generate import generate_recording

pytestmark = pytest.mark.train


def test_two_class_data_with_the_three_state_default_table_is_refused_before_training(tmp_path: Path) -> None:
    """Two classes and no --table: the notebook's three-state table does not fit; the error says so and what to
    pass, and no bundle is written (the loop refused such a bundle at every start)."""
    from neurostimd.model.train import train_bundle

    rec = generate_recording(30.0, 4, 250.0, seed=1)
    rec["labels"] = np.minimum(rec["labels"], 1)
    rec["class_names"] = np.array(["rest", "active"])
    data = tmp_path / "two.npz"
    np.savez(data, **rec)
    out = tmp_path / "bundle"
    with pytest.raises(ValueError, match=r"does not fit the data's 2 classes \['rest', 'active'\]: .*rows for "
                                         r"state\(s\) \[2\].*--table FILE"):
        train_bundle([data], out, epochs=1)
    assert not out.exists()
