"""Each control law end to end on the in-process virtual board (the real driver, protocol and board logic, the bundled
model): it stimulates, what it asks for is its own settings, the gate's output stays in the envelope, and no
stimulation stops because of low confidence alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from neurostimd.config import Config, parse_config
from neurostimd.core.safety import limit_violations
from neurostimd.drivers.types import StimParams
from neurostimd.errors import ConfigError
from neurostimd.outputs.audit import read_audit
from tests.loops import ROOT, board_loop

POLICIES: dict[str, dict[str, Any]] = {
    "table": {"kind": "table", "onset_ms": 300, "termination_ms": 300, "blanking_ms": 1000},
    "dual_threshold": {"kind": "dual_threshold", "biomarker": "p:pathological", "averaging_ms": 500, "lower": 0.3,
                       "upper": 0.5, "amplitude_low_ma": 0.0, "amplitude_high_ma": 2.5, "frequency_hz": 100.0,
                       "pulse_width_us": 200.0, "onset_ms": 500, "termination_ms": 1000, "blanking_ms": 1000},
    "proportional": {"kind": "proportional", "biomarker": "p:pathological", "averaging_ms": 300, "setpoint": 0.1,
                     "kp": 4.0, "ti_s": 2.0, "output_max": 2.5, "frequency_hz": 100.0, "pulse_width_us": 200.0},
}


def law_config(tmp_path: Path, policy: dict[str, Any]) -> Config:
    return parse_config({
        "source": {"kind": "board"},
        "device": {"kind": "virtual", "n_channels": 32, "sample_rate_hz": 1000.0},
        "model": {"bundle": str(ROOT / "models" / "default")},
        "policy": policy,
        "safety": {"recovery_clean_ms": 200, "ramp_up_ma_per_s": 5.0, "ramp_down_ma_per_s": 2.0},
        "audit": {"path": str(tmp_path / "audit.jsonl")},
        "runtime": {"state_file": str(tmp_path / "state.json")},
    })


@pytest.mark.parametrize("kind", sorted(POLICIES))
def test_each_law_runs_the_closed_loop_on_the_virtual_board(kind: str, bundle: Any, tmp_path: Path) -> None:
    """30 simulated seconds per law: it stimulates, each command passes the gate's rules, the biomarker laws ask for
    their own frequency and pulse width inside their amplitude bounds, and every STOP after stimulation has a cause
    other than low confidence alone (low confidence holds)."""
    cfg = law_config(tmp_path, POLICIES[kind])
    loop, drv, audit, _ = board_loop(cfg, bundle, tmp_path, initial_state=2)  # the plant starts pathological
    try:
        loop.run(should_stop=lambda: False, duration_s=30.0)
    finally:
        audit.close()
        drv.close()
    recs = read_audit(tmp_path / "audit.jsonl").records
    cmds = [r for r in recs if r["event"] in ("stim_command", "stim_stop")]
    on = [r for r in cmds if r["event"] == "stim_command" and r["applied"]["amplitude_ma"] > 0]
    assert on, f"{kind} never stimulated"
    for r in on:
        p = StimParams(**r["applied"])
        assert not limit_violations(p, cfg.safety, check_amplitude_min=False), r
        if kind != "table":
            assert r["requested"]["frequency_hz"] == 100.0 and r["requested"]["pulse_width_us"] == 200.0
            assert 0.0 < r["requested"]["amplitude_ma"] <= 2.5
    stimulating = False
    for r in cmds:
        if r["event"] == "stim_stop" and stimulating:
            assert set(r["faults"]) != {"low_confidence"}, f"a stop caused by low confidence alone: {r}"
        stimulating = r["event"] == "stim_command" and r["applied"]["amplitude_ma"] > 0
    [loaded] = [r for r in recs if r["event"] == "model_loaded"]
    assert loaded["policy"] == kind


def test_a_biomarker_naming_no_class_of_the_model_stops_the_start(bundle: Any, tmp_path: Path) -> None:
    """A dual_threshold on "p:seizure" with a model that has no such class is a ConfigError when the loop is built
    (the daemon exits 78), naming the term and the classes."""
    cfg = law_config(tmp_path, {**POLICIES["dual_threshold"], "biomarker": "p:seizure"})
    with pytest.raises(ConfigError, match=r"p:seizure.*quiet, activated, pathological"):
        board_loop(cfg, bundle, tmp_path)


def test_a_feature_biomarker_reads_the_models_band_power(bundle: Any, tmp_path: Path) -> None:
    """A PI on "feature:ch00:logpow_13-30Hz" (a band power of the model's input frame) runs and moves the amplitude."""
    pol = {**POLICIES["proportional"], "biomarker": "feature:ch00:logpow_13-30Hz", "setpoint": -5.0, "kp": 0.5}
    cfg = law_config(tmp_path, pol)
    loop, drv, audit, _ = board_loop(cfg, bundle, tmp_path, initial_state=2)
    try:
        loop.run(should_stop=lambda: False, duration_s=10.0)
    finally:
        audit.close()
        drv.close()
    amps = {r["requested"]["amplitude_ma"] for r in read_audit(tmp_path / "audit.jsonl").records
            if r["event"] == "stim_command" and r["requested"] is not None}
    assert len(amps) > 3


@pytest.mark.parametrize("kind", ["dual_threshold", "proportional"])
def test_a_law_target_the_board_would_cut_stops_the_start_and_a_reload(kind: str, bundle: Any, tmp_path: Path) -> None:
    """The config check knows only [safety]; a board whose own limits (its INFO) are below a law's target would clamp
    the clinician's setting on every command. The loop refuses to start (the daemon exits 78), naming the target, the
    rule and the board's limits; a SIGHUP reload to such a target is refused and the running config kept."""
    import dataclasses

    from neurostimd.firmware_sim.board import DEFAULT_LIMITS

    cfg = law_config(tmp_path, POLICIES[kind])  # 2.5 mA at most, inside [safety]
    with pytest.raises(ConfigError, match=r"can ask for 100 Hz, 2\.5 mA, 200 µs, which this board cuts \(board_limit"):
        board_loop(cfg, bundle, tmp_path / "a", limits=dataclasses.replace(DEFAULT_LIMITS, max_amplitude_ma=2.0))
    loop, drv, audit, _ = board_loop(cfg, bundle, tmp_path / "b",
                                     limits=dataclasses.replace(DEFAULT_LIMITS, max_amplitude_ma=2.5))
    try:
        high = {"amplitude_high_ma": 3.0} if kind == "dual_threshold" else {"output_max": 3.0}
        with pytest.raises(ConfigError, match=r"3 mA.*this board cuts.*the reload is refused"):
            loop.reload(law_config(tmp_path, {**POLICIES[kind], **high}))
        assert loop.cfg.policy == cfg.policy
    finally:
        audit.close()
        drv.close()
