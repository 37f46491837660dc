"""The outputs' listener adapters on their own: the state file, metrics, the recorder and the decisions outlet."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
from structlog.testing import capture_logs

from neurostimd.config import DecisionsLslConfig
from neurostimd.core.controller import ControlInputs, Controller
from neurostimd.core.policy import PolicyConfig
from neurostimd.core.ringbuffer import RingBuffer
from neurostimd.core.safety import SafetyConfig
from neurostimd.core.stimtable import notebook_table
from neurostimd.listeners import DecisionEvent, LoopState, LoopView, TickStats
from neurostimd.outputs.metrics import STAGES, Metrics, MetricsListener
from neurostimd.outputs.status import StateFile


def _view() -> LoopView:
    state, ring = LoopState(), RingBuffer(2, 100, 100.0)
    return LoopView(lambda: state, lambda: ring, lambda: None)


def _stats(i: int = 0) -> TickStats:
    return TickStats(index=i, deadline_ns=0, start_ns=0, jitter_ms=0.0, stages_ms={k: 0.1 for k in STAGES},
                     sample_age_ms=5.0, new_samples=50, command_sent=False, ack_ms=None)


def _decision() -> DecisionEvent:
    ctl = Controller(PolicyConfig().build(notebook_table()), SafetyConfig(), stale_after_ms=250.0)
    probs = np.array([0.1, 0.2, 0.7], dtype=np.float32)
    return DecisionEvent(tick=7, command=ctl.step(0.0, ControlInputs(probs=probs, data_age_ms=10.0)), probs=probs)


def test_state_file_is_rewritten_at_most_every_interval(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    sf = StateFile(path, shadow=True, interval_s=3600.0)
    view = _view()
    view.state.ticks = 1
    sf.on_tick(_stats(), view)
    view.state.ticks = 2
    sf.on_tick(_stats(1), view)
    first = json.loads(path.read_text())
    assert first["ticks"] == 1 and first["shadow"] is True and first["exited"] is False
    sf.write(view, exited=True)
    last = json.loads(path.read_text())
    assert last["ticks"] == 2 and last["exited"] is True and "driver" not in last


def test_state_file_at_a_planted_link_is_refused_and_said_once(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    os.symlink(target, tmp_path / "state.json")
    sf = StateFile(tmp_path / "state.json", shadow=False, interval_s=0.0)
    with capture_logs() as logs:
        for i in range(5):
            sf.on_tick(_stats(i), _view())
    assert [e["event"] for e in logs] == ["state_file_refused"]
    assert target.read_text() == "keep"


def test_metrics_count_ticks_stages_and_each_fault_once() -> None:
    m = Metrics()
    ml = MetricsListener(m)
    view = _view()
    view.state.fault_counts = {"stale_data": 1}
    ml.on_tick(_stats(0), view)
    ml.on_tick(_stats(1), view)
    view.state.fault_counts = {"stale_data": 3, "nak": 1}
    ml.on_tick(_stats(2), view)
    get = m.registry.get_sample_value
    assert get("neurostimd_ticks_total") == 3 and get("neurostimd_samples_total") == 150
    assert get("neurostimd_faults_total", {"kind": "stale_data"}) == 3
    assert get("neurostimd_faults_total", {"kind": "nak"}) == 1
    assert all(get("neurostimd_stage_seconds_count", {"stage": s}) == 3 for s in STAGES)
    assert get("neurostimd_state") == -1 and get("neurostimd_stimulating") == 0


def test_recorder_listener_records_decisions_commands_and_samples(tmp_path: Path) -> None:
    from neurostimd.listeners import CommandEvent
    from neurostimd.outputs.recorder import Recorder, RecorderListener
    from neurostimd.sources.recordings import read_jsonl, read_recording

    ring = RingBuffer(2, 1000, 100.0)
    ring.write(np.ones((30, 2), dtype=np.float32), None, first_index=0)
    dec = _decision()
    ls = RecorderListener(Recorder(tmp_path / "s", 2, 100.0))
    ls.on_samples(ring.since(0, copy=False))
    ls.on_decision(dec)
    ls.on_command(CommandEvent(command=dec.command, record={"seq": 4, "event": "stim_stop"}, reply="timeout",
                               error="no answer", t_ack_mono_ns=123))
    ls.close()
    assert read_recording(tmp_path / "s").data.shape == (30, 2)
    assert read_jsonl(tmp_path / "s" / "decisions.jsonl") == [json.loads(json.dumps(dec.record))]
    assert read_jsonl(tmp_path / "s" / "commands.jsonl") == [{"seq": 4, "event": "stim_stop", "ack": False,
                                                               "t_ack_mono_ns": 123}]
    assert json.loads((tmp_path / "s" / "session.json").read_text())["closed_cleanly"]


def test_decisions_listener_pushes_each_decision() -> None:
    from neurostimd.outputs.decisions_lsl import DecisionsListener, DecisionsOutlet

    sid = f"decisions-{uuid.uuid4().hex[:10]}"
    outlet = DecisionsOutlet(DecisionsLslConfig(enabled=True, name=sid, source_id=sid))
    ls = DecisionsListener(outlet)
    dec = _decision()
    ls.on_decision(dec)
    assert outlet.pushed == 1 and np.allclose(outlet.values(dec.record)[2:5], [0.1, 0.2, 0.7])
    ls.close()
    ls.on_decision(dec)  # a closed outlet takes nothing
    assert outlet.pushed == 1
