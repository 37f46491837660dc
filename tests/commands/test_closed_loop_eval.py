"""`neurostimd closed-loop-eval --plant NAME`: the five arms on a simulated plant — the results.json schema, the
metrics on constructed traces (switches, ramp steps, undone switches, charge and energy), the interval and the
paired comparison, determinism, and that every arm runs the same plant seeds."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from neurostimd.commands.cli import main
from neurostimd.commands.evaluation import (
    ARMS,
    AppliedCommand,
    EvaluationError,
    default_spec_path,
    delivery_metrics,
    evaluate,
    load_spec,
    paired,
    run_arm,
    switch_metrics,
    t_interval,
)
from neurostimd.model.runtime import load_bundle

ROOT = Path(__file__).resolve().parents[2]
BETA_SPEC = ROOT / "config" / "eval" / "beta.toml"
QUICK_S = 30.0
PER_ARM_KEYS = ("time_in_target_pct", "charge_uc", "energy_uj", "stim_on_pct", "switches_per_hour",
                "biomarker_error_reduction_pct", "power_reduction_pct")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("eval")
    assert main(["closed-loop-eval", "--plant", "beta", "--quick", "--seed", "200", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_quick_run_writes_the_schema_the_issue_asks_for(quick_run: tuple[Path, dict[str, Any]]) -> None:
    """--quick runs 2 seeds × 30 s of all five arms and writes, per arm, each metric as mean, ci95 and per-seed values,
    the paired comparison against continuous, the arms' settings, seeds, versions, the table and the figure."""
    out, res = quick_run
    assert list(res["arms"]) == list(ARMS)
    assert res["seeds"] == [200, 201] and res["duration_s"] == QUICK_S and res["plant"] == "beta"
    for arm in ARMS:
        for key in PER_ARM_KEYS:
            entry = res["arms"][arm][key]
            assert set(entry) == {"mean", "ci95", "per_seed"}, (arm, key)
            assert len(entry["per_seed"]) == 2 and len(entry["ci95"]) == 2
            if entry["ci95"][0] is not None:
                assert entry["ci95"][0] <= entry["mean"] <= entry["ci95"][1]
        for m in res["arms"][arm]["per_seed_metrics"]:
            assert m["simulated_s"] == pytest.approx(QUICK_S)
    assert set(res["paired_vs_continuous"]) == set(ARMS) - {"continuous"}
    assert set(res["arm_settings"]) == {"table", "dual_threshold", "proportional"}
    assert res["arm_settings"]["dual_threshold"]["kind"] == "dual_threshold"
    assert res["continuous"]["applied"]["amplitude_ma"] == pytest.approx(2.5)
    assert "neurostimd" in res["versions"] and res["command"].startswith("neurostimd closed-loop-eval")
    assert res["arms"]["none"]["charge_uc"]["mean"] == 0.0
    assert res["arms"]["continuous"]["power_reduction_pct"]["per_seed"] == [0.0, 0.0]
    assert res["arms"]["none"]["plant_regime_changes_per_hour"]["mean"] >= 0.0
    table = (out / "results.md").read_text()
    assert all(f"| {arm} |" in table for arm in ARMS) and "Targets" in table
    assert (out / "closed_loop.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_same_seeds_give_the_same_results_and_every_arm_sees_the_same_plant(tmp_path: Path) -> None:
    """Two runs with the same seeds, the second with its arms as Ray tasks (--jobs 2; one by one where Ray is not
    installed), give identical per-seed metrics; and the none and table arms of one seed see the same plant: its
    biomarker is identical until the table arm first stimulates."""
    spec = load_spec(BETA_SPEC, "beta")
    kw: dict[str, Any] = dict(duration_s=10.0, seeds=[7], arms=("none", "continuous", "table"), plot=False,
                              progress=False)
    a = evaluate(spec, tmp_path / "a", **kw)
    b = evaluate(spec, tmp_path / "b", jobs=2, **kw)
    if importlib.util.find_spec("ray") is not None:
        assert "local Ray instance" in b["timing"]["runner"]
    for arm in ("none", "continuous", "table"):
        ma, mb = a["arms"][arm]["per_seed_metrics"], b["arms"][arm]["per_seed_metrics"]
        assert [m["seed"] for m in ma] == [7]
        for x, y in zip(ma, mb, strict=True):
            assert {k: v for k, v in x.items() if k != "commands_sent"} == \
                {k: v for k, v in y.items() if k != "commands_sent"}
    cfg_none, cfg_table = spec.arm_config("none"), spec.arm_config("table")
    bundle = load_bundle(cfg_table.model.bundle)
    none = run_arm("none", cfg_none, "beta", bundle, 7, 10.0, tmp_path / "logs", keep_trace=True)
    table = run_arm("table", cfg_table, "beta", bundle, 7, 10.0, tmp_path / "logs", keep_trace=True)
    assert none.trace is not None and table.trace is not None
    on = np.flatnonzero(table.trace["amplitude_ma"] > 0)
    first = int(on[0]) if len(on) else len(table.trace["t_s"])
    assert first > 10
    np.testing.assert_array_equal(none.trace["biomarker"][:first], table.trace["biomarker"][:first])
    other = run_arm("none", cfg_none, "beta", bundle, 8, 10.0, tmp_path / "logs", keep_trace=True)
    assert other.trace is not None
    assert not np.array_equal(none.trace["biomarker"], other.trace["biomarker"])


def _cmd(t: float, amp: float | None, *rules: str, faults: tuple[str, ...] = ()) -> AppliedCommand:
    return AppliedCommand(t, None if amp is None else (130.0, amp, 60.0), tuple(rules), faults)


def test_switches_exclude_ramp_steps_and_count_a_ramped_change_once() -> None:
    """A ramp from off to 2 mA (three ramp-limited steps and the step that completes it) is one switch, a stop is
    another; ramp steps are counted apart, and switches in the warm-up are left out of the hourly rate."""
    cmds = [_cmd(100.0, 0.5, "ramp"), _cmd(100.05, 1.0, "ramp"), _cmd(100.1, 1.5, "ramp"), _cmd(100.15, 2.0),
            _cmd(400.0, None), _cmd(10.0 + 990.0, 2.0)]
    cmds_sorted = sorted(cmds, key=lambda c: c.t_s)
    m = switch_metrics(cmds_sorted, 3600.0, warmup_s=60.0, undo_window_s=1.0)
    assert m["switches"] == 3 and m["ramp_steps"] == 3 and m["parameter_changes"] == 6
    assert m["switches_per_hour"] == pytest.approx(3 / ((3600.0 - 60.0) / 3600.0))
    assert m["onoff_switches_per_hour"] == pytest.approx(m["switches_per_hour"])
    level = switch_metrics([_cmd(100.0, 2.0), _cmd(200.0, 1.5), _cmd(300.0, None)], 3600.0, warmup_s=60.0,
                           undo_window_s=1.0)
    assert level["switches"] == 3 and level["onoff_switches_per_hour"] == pytest.approx(2 / (3540.0 / 3600.0))
    early = switch_metrics([_cmd(10.0, 2.0), _cmd(500.0, None)], 3600.0, warmup_s=60.0, undo_window_s=1.0)
    assert early["switches"] == 2 and early["switches_steady"] == 1


def test_a_switch_brought_back_within_the_onset_time_is_undone() -> None:
    """A change reverted within the window is undone (the setting before its ramp began comes back); one reverted
    later is not; a change to a third setting is not a reversal."""
    back_soon = [_cmd(100.0, 1.0, "ramp"), _cmd(100.05, 2.0), _cmd(100.9, None)]
    assert switch_metrics(back_soon, 3600.0, warmup_s=0.0, undo_window_s=1.2)["undone_switches"] == 1
    back_late = [_cmd(100.0, 2.0), _cmd(105.0, None)]
    assert switch_metrics(back_late, 3600.0, warmup_s=0.0, undo_window_s=1.2)["undone_switches"] == 0
    onward = [_cmd(100.0, 2.0), _cmd(100.5, 1.0)]
    assert switch_metrics(onward, 3600.0, warmup_s=0.0, undo_window_s=1.2)["undone_switches"] == 0


def test_a_switch_with_low_confidence_as_its_only_fault_is_counted() -> None:
    """A switch whose decision had only low confidence is counted; one with another fault as well is not."""
    cmds = [_cmd(10.0, 2.0), _cmd(20.0, None, faults=("low_confidence",)),
            _cmd(30.0, 2.0), _cmd(40.0, None, faults=("low_confidence", "stale_data"))]
    assert switch_metrics(cmds, 600.0, warmup_s=0.0, undo_window_s=1.0)["low_confidence_switches"] == 1


def test_a_command_that_changes_nothing_is_not_a_switch() -> None:
    """A repeated setting (or a stop while off) is no parameter change: neither a switch nor a ramp step."""
    cmds = [_cmd(1.0, None), _cmd(10.0, 2.0), _cmd(10.05, 2.0), _cmd(20.0, None), _cmd(20.05, None)]
    m = switch_metrics(cmds, 600.0, warmup_s=0.0, undo_window_s=1.0)
    assert m["switches"] == 2 and m["ramp_steps"] == 0


def test_charge_energy_and_time_in_target_on_a_constructed_trace() -> None:
    """10 s at 2.5 mA, 60 µs, 130 Hz then 10 s off: charge I·pw·f·t = 195 µC, TEED I²·R·pw·f·t at 1 kΩ = 487.5 µJ,
    stimulation on 50 %, in target where the trace says so, the biomarker error only above the setpoint."""
    n = 400
    dt = np.full(n, 0.05)
    on = np.arange(n) < 200
    trace = {"t_s": np.cumsum(dt) - dt, "dt_s": dt, "state": np.zeros(n, dtype=np.int64),
             "in_target": np.arange(n) >= 100, "biomarker": np.where(on, 4.0, 16.0),
             "amplitude_ma": np.where(on, 2.5, 0.0), "pulse_width_us": np.where(on, 60.0, 0.0),
             "frequency_hz": np.where(on, 130.0, 0.0)}
    m = delivery_metrics(trace, setpoint=10.0)
    assert m["charge_uc"] == pytest.approx(2.5 * 60e-3 * 130 * 10.0)
    assert m["energy_uj"] == pytest.approx((2.5e-3) ** 2 * 1000.0 * 60e-6 * 130 * 10.0 * 1e6)
    assert m["stim_on_pct"] == pytest.approx(50.0)
    assert m["time_in_target_pct"] == pytest.approx(75.0)
    assert m["biomarker_error"] == pytest.approx(3.0)


def test_interval_and_paired_comparison() -> None:
    """The 95 % t-interval of (1, 2, 3) is 2 ± 4.303·1/√3; the paired comparison is the interval of per-seed
    differences, which is narrow when the arms move together even if each varies a lot across seeds."""
    s = t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)
    assert s["mean"] == pytest.approx(2.0) and s["ci95"] == pytest.approx([2.0 - half, 2.0 + half])
    p = paired([10.0, 50.0, 90.0], [9.0, 49.1, 88.9])
    assert p["mean"] == pytest.approx(1.0) and p["per_seed"] == pytest.approx([1.0, 0.9, 1.1])
    assert p["ci95"][0] > 0.0
    assert t_interval([None, None])["mean"] is None


def test_evaluation_files_are_checked(tmp_path: Path) -> None:
    """An evaluation file for another plant, a law arm of the wrong kind, or a missing base config is refused,
    naming the file; the shipped files load and their arms are valid configs."""
    for plant in ("beta", "markov"):
        spec = load_spec(default_spec_path(plant), plant)
        for arm in ARMS:
            spec.arm_config(arm)
        assert spec.arm_config("proportional").policy.kind == "proportional"
    with pytest.raises(EvaluationError, match="is for plant 'beta'"):
        load_spec(BETA_SPEC, "markov")
    bad = tmp_path / "bad.toml"
    text = BETA_SPEC.read_text().replace('"../sim-beta.toml"', f'"{ROOT / "config" / "sim-beta.toml"}"')
    bad.write_text(text.replace('kind = "proportional"', 'kind = "table"'))
    with pytest.raises(EvaluationError, match=r"bad.toml: \[arms.proportional.policy\] kind"):
        load_spec(bad, "beta")
    nobase = tmp_path / "nobase.toml"
    nobase.write_text(BETA_SPEC.read_text().replace('"../sim-beta.toml"', '"missing.toml"'))
    with pytest.raises(EvaluationError, match="base_config"):
        load_spec(nobase, "beta")


def test_bad_arguments_exit_with_usage_or_config(tmp_path: Path) -> None:
    """Zero seeds or a non-positive duration are usage errors (2); an unreadable evaluation file is a configuration
    error (78)."""
    assert main(["closed-loop-eval", "--seeds", "0", "--out", str(tmp_path)]) == 2
    assert main(["closed-loop-eval", "--duration", "0", "--out", str(tmp_path)]) == 2
    assert main(["closed-loop-eval", "--arms", str(tmp_path / "missing.toml"), "--out", str(tmp_path)]) == 78


def test_markov_plant_runs_the_law_arms(tmp_path: Path) -> None:
    """The default plant still runs: a short markov evaluation of none and the table law, with the Markov
    plant's states as the truth."""
    spec = load_spec(default_spec_path("markov"), "markov")
    res = evaluate(spec, tmp_path, duration_s=5.0, seeds=[1], arms=("none", "table"), plot=False, progress=False)
    assert list(res["arms"]) == ["none", "table"] and res["plant"] == "markov"
    m = res["arms"]["none"]["per_seed_metrics"][0]
    assert m["simulated_s"] == pytest.approx(5.0) and 0.0 <= m["time_in_target_pct"] <= 100.0


@pytest.mark.parametrize(("arm", "config"), [("dual_threshold", "sim-dual-threshold.toml"),
                                            ("proportional", "sim-proportional.toml")])
def test_the_markov_evaluation_runs_the_shipped_law_configs(arm: str, config: str) -> None:
    """config/eval/markov.toml says its law arms take the policies, ramps and fault actions of the shipped
    configs: they must stay the same (its confidence thresholds had drifted to 0.6 from the configs' 0)."""
    from neurostimd.config import load_config

    spec = load_spec(BETA_SPEC.parent / "markov.toml", "markov")
    shipped = load_config(BETA_SPEC.parents[1] / config)
    ran = spec.arm_config(arm)
    assert ran.policy == shipped.policy
    for key in ("ramp_up_ma_per_s", "ramp_down_ma_per_s", "on_fault"):
        assert getattr(ran.safety, key) == getattr(shipped.safety, key), key
