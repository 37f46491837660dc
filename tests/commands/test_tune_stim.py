"""neurostimd tune-stim: every proposal inside the gate's envelope by construction, a short search end to end on
the beta plant (history, summary, plot, tuned config that the daemon's config check accepts), and the search
reproducible from its seed."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neurostimd.commands import tune_stim
from neurostimd.commands.cli import main
from neurostimd.commands.evaluation import load_spec
from neurostimd.config import parse_config
from neurostimd.core.safety import SafetyConfig, limit_violations
from neurostimd.drivers.types import BoardLimits, StimParams
from neurostimd.firmware_sim.board import DEFAULT_LIMITS

pytest.importorskip("optuna", reason="tune-stim needs the train extra (optuna)")

ROOT = Path(__file__).resolve().parents[2]
TIGHT = SafetyConfig(max_amplitude_ma=6.0, max_charge_per_phase_uc=0.15, max_pulse_width_us=500.0,
                     max_frequency_hz=200.0, electrode_area_cm2=0.01)


@settings(max_examples=60, deadline=None)
@given(f=st.floats(5.0, 200.0), pw=st.floats(20.0, 400.0), board_max=st.floats(0.5, 6.0))
def test_the_largest_amplitude_passes_the_gate_and_a_little_more_does_not(f: float, pw: float,
                                                                          board_max: float) -> None:
    """The map from the optimiser's unit number to an amplitude ends at the gate's envelope: the amplitude it
    returns breaks no static rule ([safety], charge, density, Shannon k, the board's limits) and 10 µA more breaks
    one (unless it is the configured maximum itself)."""
    board = BoardLimits(**{**DEFAULT_LIMITS.__dict__, "max_amplitude_ma": board_max})
    gap = TIGHT.interphase_gap_us
    if 2 * pw + gap >= 1e6 / f:
        return  # no amplitude fits this period at all
    a = tune_stim.max_amplitude_ma(f, pw, TIGHT, board, gap)
    assert not limit_violations(StimParams(f, a, pw, gap), TIGHT, board_limits=board, check_amplitude_min=False)
    if a < min(TIGHT.max_amplitude_ma, board_max):
        assert limit_violations(StimParams(f, a + 0.01, pw, gap), TIGHT, board_limits=board,
                                check_amplitude_min=False)


def test_a_short_search_writes_its_history_and_a_tuned_config_the_daemon_accepts(tmp_path: Path) -> None:
    """3 trials and a 2 × 2 grid of 20 s episodes: every trial's amplitude is inside [safety] unclamped, no episode
    had a command cut by the gate, the best trial is the best of the history, and tuned-policy.toml merged into
    the base config passes the daemon's config check; tuned-eval.toml is an evaluation file."""
    out = tmp_path / "tune"
    rc = main(["tune-stim", "--plant", "beta", "--law", "dual_threshold", "--trials", "3", "--episode-s", "20",
               "--plant-seeds", "300", "--grid", "2", "--out", str(out)])
    assert rc == 0
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    grid = [json.loads(line) for line in (out / "grid.jsonl").read_text().splitlines()]
    assert len(trials) == 3 and len(grid) == 4
    spec = load_spec(ROOT / "config" / "eval" / "beta.toml", "beta")
    safety = spec.arm_config("dual_threshold").safety
    for r in trials + grid:
        p = r["policy"]
        req = StimParams(p["frequency_hz"], p["amplitude_high_ma"], p["pulse_width_us"], safety.interphase_gap_us)
        assert not limit_violations(req, safety, board_limits=DEFAULT_LIMITS), r
        assert r["gate_cuts"] == []
        assert math.isclose(r["score"], r["time_in_target_pct"] - 0.5 * r["charge_pct"])
    # the grid's corners: no stimulation at u = 0, the gate's largest amplitude at u = 1
    assert sorted({r["policy"]["amplitude_high_ma"] for r in grid}) == [0.0, safety.max_amplitude_ma]
    s = json.loads((out / "summary.json").read_text())
    assert s["best"]["score"] == max(r["score"] for r in trials) and s["gate_cuts"] == 0
    assert s["grid"]["episodes"] == 4
    tuned = tomllib.loads((out / "tuned-policy.toml").read_text())
    assert tuned["policy"] == s["best"]["policy"]
    base = tomllib.loads((ROOT / "config" / "sim-beta.toml").read_text())
    cfg = parse_config({**base, "policy": tuned["policy"]}, base_dir=ROOT / "config")
    assert cfg.policy.kind == "dual_threshold"
    assert load_spec(out / "tuned-eval.toml", "beta").arms["dual_threshold"]["policy"] == tuned["policy"]
    assert (out / "convergence.png").read_bytes()[:4] == b"\x89PNG"


def test_the_search_is_reproducible_from_its_seed_and_honours_the_charge_constraint(tmp_path: Path,
                                                                                    monkeypatch: Any) -> None:
    """The same --seed proposes the same points; with a charge constraint the best reported trial is a feasible
    one even where an infeasible one scored higher. (Episodes replaced by a cheap stand-in: the proposals are the
    sampler's.)"""
    def fake(prob: Any, xs: list[float], slot: int = 0) -> dict[str, Any]:
        charge = 100.0 * xs[0]
        tit = 50.0 + 50.0 * xs[0] - 10.0 * (xs[1] - 0.3) ** 2
        return {"x": list(xs), "policy": {}, "stimulation": None, "per_seed": [], "time_in_target_pct": tit,
                "charge_pct": charge, "score": tit - 0.1 * charge, "gate_cuts": [],
                "feasible": charge <= prob.max_charge_pct}

    monkeypatch.setattr(tune_stim, "run_point", fake)

    class P:
        def __init__(self) -> None:
            self.dims = [tune_stim.Dim("a", 0.0, 1.0, kind="unit"), tune_stim.Dim("b", 0.0, 1.0)]
            self.max_charge_pct = 40.0

    a = tune_stim.search(P(), 12, 7, tmp_path)  # type: ignore[arg-type]
    b = tune_stim.search(P(), 12, 7, tmp_path)  # type: ignore[arg-type]
    assert [r["x"] for r in a] == [r["x"] for r in b]
    best = tune_stim._best(a)
    assert best is not None and best["charge_pct"] <= 40.0
    assert best["score"] == max(r["score"] for r in a if r["feasible"])
    assert a[-1]["best_so_far"] == best["score"]


def test_a_setting_the_law_does_not_have_is_refused(tmp_path: Path, capsys: Any) -> None:
    rc = main(["tune-stim", "--plant", "beta", "--law", "proportional", "--space", "gain=0:1", "--trials", "1",
               "--out", str(tmp_path)])
    assert rc == 78
    assert "has no setting 'gain'" in capsys.readouterr().err


def test_the_table_law_searches_each_stimulating_rows_amplitude(tmp_path: Path) -> None:
    """For the table law the default space is the amplitude of each row that stimulates (models/beta's `dbs` row);
    the tuned table keeps the bundle's classes and rows and stays inside [safety]."""
    out = tmp_path / "tune"
    assert main(["tune-stim", "--plant", "beta", "--law", "table", "--trials", "2", "--episode-s", "10",
                 "--plant-seeds", "300", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert [d["name"] for d in s["dims"]] == ["state1.amplitude_ma"]
    table = tomllib.loads((out / "tuned-policy.toml").read_text())["stimulation"]
    assert table["classes"] == ["beta_low", "beta_high"]
    off, dbs = table["states"]
    assert off["amplitude_ma"] == 0.0 and 0.0 <= dbs["amplitude_ma"] <= 3.5
    assert (dbs["frequency_hz"], dbs["pulse_width_us"]) == (130.0, 60.0)


def _strict(text: str) -> Any:
    def bad(name: str) -> None:
        raise AssertionError(f"{name} in the history: not JSON")
    return json.loads(text, parse_constant=bad)


def test_a_proposal_the_config_check_refuses_is_an_infeasible_trial_not_the_end_of_the_run(tmp_path: Path) -> None:
    """`lower` searched over 0.5–0.9 with the evaluation file's upper at 0.7: the points above 0.7 are refused by the
    daemon's config check. They are recorded as refused, infeasible trials with the check's reason (no episode
    run), the search goes on, and the best is a point the check accepts. (Before, the first refused point ended the
    whole run with exit 78.)"""
    out = tmp_path / "tune"
    rc = main(["tune-stim", "--plant", "beta", "--law", "dual_threshold", "--space", "lower=0.5:0.9",
               "--space", "amplitude_high_ma=unit", "--trials", "5", "--episode-s", "10", "--plant-seeds", "300",
               "--grid", "2", "--out", str(out)])
    assert rc == 0
    trials = [_strict(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    grid = [_strict(line) for line in (out / "grid.jsonl").read_text().splitlines()]
    assert len(trials) == 5 and len(grid) == 4
    for r in trials + grid:
        if r["policy"]["lower"] > 0.7:
            assert r["refused"] and "lower" in r["refused"] and "upper" in r["refused"], r
            assert r["score"] is None and not r["feasible"] and r["per_seed"] == []
        else:
            assert r["refused"] is None and r["score"] is not None
    assert sum(1 for r in grid if r["refused"]) == 2  # the grid's lower = 0.9 column
    s = json.loads((out / "summary.json").read_text())
    assert s["refused"] == sum(1 for r in trials if r["refused"]) >= 1  # the search's path, not only the grid's
    assert s["best"]["refused"] is None and s["best"]["policy"]["lower"] <= 0.7
    assert s["best"]["score"] == max(r["score"] for r in trials if r["score"] is not None)
    assert "refuses" in (out / "summary.md").read_text()
    assert (out / "tuned-policy.toml").exists()


def test_importance_apportions_the_score_to_the_setting_that_moves_it() -> None:
    """fANOVA over the history: a score that moves with `a` 100 times more than with `b` gives `a` most of the
    importance; one dimension or too few scored points give none; refused points are left out."""
    import random

    rnd = random.Random(3)
    dims = [tune_stim.Dim("a", 0.0, 1.0), tune_stim.Dim("b", 0.0, 1.0)]
    hist: list[dict[str, Any]] = []
    for _ in range(30):
        x = [rnd.random(), rnd.random()]
        hist.append({"x": x, "score": 10.0 * x[0] + 0.1 * x[1]})
    hist.append({"x": [0.5, 0.5], "score": None})
    imp = tune_stim.importances(dims, hist, seed=0)
    assert imp is not None and set(imp) == {"a", "b"}
    assert imp["a"] > 0.9 > 0.1 > imp["b"]
    assert tune_stim.importances(dims[:1], hist, seed=0) is None
    assert tune_stim.importances(dims, hist[:3], seed=0) is None


def _history(path: Path) -> list[dict[str, Any]]:
    return [_strict(line) for line in path.read_text().splitlines()]


def test_trials_on_a_local_ray_instance_give_the_history_of_the_same_batches_run_one_by_one(tmp_path: Path) -> None:
    """--jobs 2 runs each batch's two trials as Ray tasks on a local Ray instance (their audit logs in their own
    slot folders); the history equals the one `--no-ray` gives with the same --seed and --jobs, episode for
    episode, grid included."""
    pytest.importorskip("ray", reason="the scale extra (Ray) is not installed")
    common = ["tune-stim", "--plant", "beta", "--law", "dual_threshold", "--trials", "4", "--episode-s", "10",
              "--plant-seeds", "300", "--grid", "2", "--jobs", "2"]
    assert main([*common, "--out", str(tmp_path / "ray")]) == 0
    assert main([*common, "--no-ray", "--out", str(tmp_path / "serial")]) == 0
    for name in ("trials.jsonl", "grid.jsonl"):
        on_ray, serial = _history(tmp_path / "ray" / name), _history(tmp_path / "serial" / name)
        assert len(on_ray) == 4
        assert on_ray == serial
    s = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert "local Ray instance" in s["runner"]["how"] and s["runner"]["jobs"] == 2
    assert "one by one" in json.loads((tmp_path / "serial" / "summary.json").read_text())["runner"]["how"]
    assert (tmp_path / "ray" / "logs" / "slot1" / "dual_threshold-seed300.audit.jsonl").exists()


def test_without_ray_parallel_trials_run_one_by_one_and_a_cluster_is_refused(tmp_path: Path, capsys: Any,
                                                                            monkeypatch: Any) -> None:
    """Ray missing: --jobs 2 says so and runs the batches one by one (exit 0); --address, which needs Ray, is
    refused with exit 69 naming the extra, before any trial runs."""
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    common = ["tune-stim", "--plant", "beta", "--law", "dual_threshold", "--trials", "2", "--episode-s", "5",
              "--plant-seeds", "300"]
    assert main([*common, "--jobs", "2", "--out", str(tmp_path / "a")]) == 0
    assert "Ray is not installed" in capsys.readouterr().err
    assert len(_history(tmp_path / "a" / "trials.jsonl")) == 2
    assert main([*common, "--address", "ray://127.0.0.1:10001", "--out", str(tmp_path / "b")]) == 69
    err = capsys.readouterr().err
    assert "--address needs Ray" in err and "neurostimd[scale]" in err
    assert not (tmp_path / "b" / "trials.jsonl").exists()


def test_jobs_below_one_is_refused(capsys: Any) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["tune-stim", "--law", "table", "--jobs", "0", "--out", "x"])
    assert exc.value.code == 2 and "at least 1" in capsys.readouterr().err


def test_batches_number_trials_in_order_and_the_best_so_far_waits_for_a_feasible_one(tmp_path: Path,
                                                                                     monkeypatch: Any) -> None:
    """--jobs 3 with a stand-in episode that refuses x0 > 0.5: trials are numbered 0..n-1 in the order told, the
    best so far is None until the first feasible trial and then the running maximum of the feasible scores, and a
    refused trial never becomes the best."""
    def fake(prob: Any, xs: list[float], slot: int = 0) -> dict[str, Any]:
        if xs[0] > 0.5:
            return {"x": list(xs), "policy": {}, "stimulation": None, "per_seed": [], "time_in_target_pct": None,
                    "charge_pct": None, "score": None, "gate_cuts": [], "feasible": False, "refused": "no"}
        return {"x": list(xs), "policy": {}, "stimulation": None, "per_seed": [], "time_in_target_pct": 10 * xs[1],
                "charge_pct": 0.0, "score": 10 * xs[1], "gate_cuts": [], "feasible": True, "refused": None}

    monkeypatch.setattr(tune_stim, "run_point", fake)

    class P:
        def __init__(self) -> None:
            self.dims = [tune_stim.Dim("a", 0.0, 1.0), tune_stim.Dim("b", 0.0, 1.0)]
            self.max_charge_pct = None

    hist = tune_stim.search(P(), 10, 4, tmp_path, jobs=3)  # type: ignore[arg-type]
    assert [r["trial"] for r in hist] == list(range(10))
    best = None
    for r in hist:
        if r["feasible"]:
            best = r["score"] if best is None else max(best, r["score"])
        assert r["best_so_far"] == best
    assert any(r["refused"] for r in hist) and any(r["feasible"] for r in hist)
    assert tune_stim._best(hist)["refused"] is None  # type: ignore[index]
    assert _history(tmp_path / "trials.jsonl") == hist


def test_importance_is_left_out_rather_than_crash_the_summary() -> None:
    """Every point scored the same (fANOVA finds no variance), or one setting named twice: no importance, and no
    exception that would lose the run's summary."""
    dims = [tune_stim.Dim("a", 0.0, 1.0), tune_stim.Dim("b", 0.0, 1.0)]
    flat = [{"x": [i / 10, 1 - i / 10], "score": 5.0} for i in range(8)]
    assert tune_stim.importances(dims, flat, seed=0) is None
    assert tune_stim.importances([dims[0], dims[0]], flat, seed=0) is None


def test_a_failed_episode_exits_78_and_a_contradictory_runner_69(tmp_path: Path, monkeypatch: Any,
                                                                  capsys: Any) -> None:
    """An episode that fails during the search (the evaluation's own error) ends tune-stim with its message and
    exit 78, not a traceback; --no-ray with --address is refused (69) before any episode; a setting named twice in
    --space is refused (78)."""
    from neurostimd.commands.evaluation import EvaluationError

    common = ["tune-stim", "--plant", "beta", "--law", "dual_threshold", "--trials", "2", "--episode-s", "5",
              "--plant-seeds", "300"]
    assert main([*common, "--no-ray", "--address", "ray://127.0.0.1:10001", "--out", str(tmp_path / "a")]) == 69
    assert "contradict" in capsys.readouterr().err
    assert main([*common, "--space", "lower=0.1:0.2", "--space", "lower=0.2:0.3", "--out", str(tmp_path / "c")]) == 78
    assert "names a setting twice: lower" in capsys.readouterr().err

    def boom(prob: Any, xs: list[float], slot: int = 0) -> dict[str, Any]:
        raise EvaluationError("the virtual board failed during the evaluation")

    monkeypatch.setattr(tune_stim, "run_point", boom)
    assert main([*common, "--out", str(tmp_path / "b")]) == 78
    assert "the virtual board failed" in capsys.readouterr().err
