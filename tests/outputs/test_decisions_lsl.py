"""Decisions published as an LSL stream with labelled channels, read back by a real inlet on loopback."""

from __future__ import annotations

import math
import time
import uuid

import pylsl
import pytest

from neurostimd.config import DecisionsLslConfig
from neurostimd.outputs.decisions_lsl import DecisionsOutlet


def test_decisions_stream_carries_labels_and_values():
    """An inlet sees the decision channels labelled in the XML description and receives pushed decisions."""
    sid = f"decisions-{uuid.uuid4().hex[:10]}"
    cfg = DecisionsLslConfig(enabled=True, name=sid, source_id=sid)
    with DecisionsOutlet(cfg, class_names=["healthy", "interictal", "seizure"]) as out:
        found = pylsl.resolve_byprop("source_id", sid, 1, 5.0)
        assert found, "decisions outlet not visible on loopback"
        inlet = pylsl.StreamInlet(found[0])
        full = inlet.info(5.0)
        assert full.nominal_srate() == pylsl.IRREGULAR_RATE and full.type() == "Decisions"
        labels = []
        ch = full.desc().child("channels").child("channel")
        while not ch.empty():
            labels.append(ch.child_value("label"))
            ch = ch.next_sibling("channel")
        assert labels == ["state", "confidence", "p_healthy", "p_interictal", "p_seizure", "frequency_hz",
                          "amplitude_ma", "pulse_width_us", "stimulating"]
        inlet.open_stream(5.0)
        out.push({"state": 2, "confidence": 0.9, "probs": [0.05, 0.05, 0.9],
                  "applied": {"frequency_hz": 130.0, "amplitude_ma": 1.5, "pulse_width_us": 90.0}})
        out.push({"state": "healthy", "confidence": 0.7})
        got = []
        deadline = time.monotonic() + 5.0
        while len(got) < 2 and time.monotonic() < deadline:
            sample, _ts = inlet.pull_sample(0.5)
            if sample is not None:
                got.append(sample)
        assert len(got) == 2
        assert got[0] == pytest.approx([2.0, 0.9, 0.05, 0.05, 0.9, 130.0, 1.5, 90.0, 1.0], rel=1e-6)
        assert got[1][0] == 0.0 and all(math.isnan(v) for v in got[1][5:8])
        inlet.close_stream()

