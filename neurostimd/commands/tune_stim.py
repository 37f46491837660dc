"""`neurostimd tune-stim`: learn a law's stimulation by feedback on a simulated plant (the notebook's last next step).

Each trial is one closed-loop episode per plant seed through the evaluation's own runner (the daemon's loop, gate,
LiteRT bundle and virtual board; neurostimd.commands.evaluation.run_arm), scored by

    score = time in target (%) − charge_weight × charge (% of the continuous arm's on the same seed)

averaged over the plant seeds, and proposed by Optuna's TPE sampler (multivariate, seeded) with an optional charge
constraint (`--max-charge-pct`, given to the sampler as a constraint, so it learns where the feasible region is).

**Safe by construction.** The optimiser never sees amplitudes. It proposes a unit number u ∈ [0, 1] per amplitude,
and the amplitude tried is u × the largest amplitude the gate passes unclamped at that frequency and pulse width
(bisection on `limit_violations` with [safety] and the board's limits: amplitude, charge per phase, charge density,
Shannon k, the board's own limits), so every proposal is inside the gate's static envelope before it is tried; the
config built from it is validated as the daemon validates one (a law's targets must pass [safety]); and after each
episode the audit is read back: a command the gate cut for anything but the ramp or the device's rounding fails
the trial and is reported (`gate_cuts`, which must stay 0).

`--grid N` also runs the exhaustive grid (N points per searched dimension, the same unit parametrisation) on the
same seeds and episodes, so the convergence plot and summary say how far the search is from the grid's best after
each trial. Writes into --out: trials.jsonl (every trial: proposal, settings tried, per-seed metrics, score),
grid.jsonl, summary.json / summary.md, convergence.png, tuned-policy.toml (the tuned [policy] or [stimulation]
tables for a daemon config) and tuned-eval.toml (the evaluation file with the tuned arm:
`neurostimd closed-loop-eval --arms tuned-eval.toml --seed 0` checks it on seeds it was not tuned on).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import sys
import time
import tomllib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neurostimd.commands.evaluation import (
    DEFAULT_BLOCK_SIZE,
    EvalSpec,
    EvaluationError,
    continuous_params,
    default_spec_path,
    load_spec,
    run_arm,
)
from neurostimd.core.safety import SafetyConfig, limit_violations
from neurostimd.drivers.types import BoardLimits, StimParams
from neurostimd.parallel import (
    Runner,
    RunnerFailed,
    RunnerUnavailable,
    SerialRunner,
    errors_only,
    make_runner,
    runner_exit,
)
from neurostimd.progress import progress_bar
from neurostimd.service.exitcodes import EX_CONFIG, EX_DATAERR, EX_OK, EX_SOFTWARE, EX_UNAVAILABLE

# What the gate may change on a command without having cut it for a limit.
BENIGN_LIMITS = frozenset({"ramp", "device_rounding"})


@dataclass(frozen=True)
class Dim:
    """One searched dimension: a [policy] key (or `state<N>.<field>` of a table row). kind "unit" is an amplitude's
    fraction of the largest amplitude the gate passes at that row's frequency and pulse width."""

    name: str
    low: float
    high: float
    log: bool = False
    kind: str = "float"  # "float" or "unit"

    def value(self, x: float) -> float:
        """The setting for x ∈ [0, 1] (grid points and the sampler's proposals share this map)."""
        if self.log:
            return math.exp(math.log(self.low) + x * (math.log(self.high) - math.log(self.low)))
        return self.low + x * (self.high - self.low)


def max_amplitude_ma(frequency_hz: float, pulse_width_us: float, safety: SafetyConfig,
                     board: BoardLimits | None, interphase_gap_us: float) -> float:
    """The largest amplitude the gate passes unclamped at this frequency and pulse width (0 when none does)."""
    def ok(a: float) -> bool:
        return not limit_violations(StimParams(frequency_hz, a, pulse_width_us, interphase_gap_us), safety,
                                    board_limits=board, check_amplitude_min=False)

    hi = safety.max_amplitude_ma if board is None else min(safety.max_amplitude_ma, board.max_amplitude_ma)
    if ok(hi):
        return hi
    if not ok(0.0):
        return 0.0
    lo = 0.0
    for _ in range(40):  # every static rule grows with the amplitude: bisection
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return math.floor(lo * 1000.0) / 1000.0  # whole µA, rounded toward the envelope


DEFAULT_SPACES: dict[str, list[Dim]] = {
    "dual_threshold": [Dim("amplitude_high_ma", 0.0, 1.0, kind="unit"),
                       Dim("termination_ms", 2_000.0, 300_000.0, log=True)],
    "proportional": [Dim("kp", 0.5, 10.0, log=True), Dim("setpoint", 0.01, 0.5, log=True)],
    "table": [],  # filled per table: each stimulating row's amplitude (unit)
}


def parse_dim(text: str) -> Dim:
    """`NAME=LO:HI`, `NAME=LO:HI:log` or `NAME=unit` (an amplitude as a fraction of the gate's largest)."""
    name, sep, rng = text.partition("=")
    if not sep or not name.strip():
        raise EvaluationError(f"--space {text!r}: give NAME=LO:HI, NAME=LO:HI:log or NAME=unit")
    if rng.strip() == "unit":
        return Dim(name.strip(), 0.0, 1.0, kind="unit")
    parts = rng.split(":")
    try:
        low, high = float(parts[0]), float(parts[1])
    except (IndexError, ValueError) as err:
        raise EvaluationError(f"--space {text!r}: LO and HI must be numbers") from err
    log = len(parts) > 2 and parts[2] == "log"
    if not (math.isfinite(low) and math.isfinite(high) and low < high) or (log and low <= 0):
        raise EvaluationError(f"--space {text!r}: need LO < HI (and LO > 0 for log)")
    return Dim(name.strip(), low, high, log=log)


# bundles a worker process has loaded, by (path, verified): what Problem.loaded_bundle reuses across tasks
_WORKER_BUNDLES: dict[tuple[str, bool], Any] = {}


@dataclass
class Problem:
    """The law, its base settings, the dimensions searched and what a trial needs to run."""

    spec: EvalSpec
    law: str
    dims: list[Dim]
    seeds: list[int]
    episode_s: float
    charge_weight: float
    max_charge_pct: float | None
    board: BoardLimits
    log_dir: Path
    block_size: int = DEFAULT_BLOCK_SIZE
    base_policy: dict[str, Any] = field(default_factory=dict)
    base_table: dict[str, Any] | None = None
    continuous_charge: dict[int, float] = field(default_factory=dict)
    bundle: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # a loaded bundle holds LiteRT interpreters: a worker (Ray) loads its own from the config's path
        return {**self.__dict__, "bundle": None}

    def loaded_bundle(self) -> Any:
        if self.bundle is None:
            from neurostimd.model.runtime import load_bundle

            cfg = self.spec.arm_config(self.law)
            key = (str(cfg.model.bundle), bool(cfg.model.verify_on_load))
            if key not in _WORKER_BUNDLES:  # a Ray worker unpickles a fresh Problem per task: load once per process
                _WORKER_BUNDLES[key] = load_bundle(cfg.model.bundle, verify=cfg.model.verify_on_load)
            self.bundle = _WORKER_BUNDLES[key]
        return self.bundle

    def settings(self, xs: Sequence[float]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The [policy] settings and (table law) the [stimulation] table for the unit point `xs`; every amplitude
        inside the gate's static envelope."""
        cfg = self.spec.arm_config(self.law)
        safety, gap = cfg.safety, cfg.safety.interphase_gap_us
        pol = copy.deepcopy(self.base_policy)
        table = copy.deepcopy(self.base_table)
        for d, x in zip(self.dims, xs, strict=True):
            if d.name.startswith("state"):
                assert table is not None
                idx, _, key = d.name[len("state"):].partition(".")
                row = next(r for r in table["states"] if int(r["state"]) == int(idx))
                if d.kind == "unit":
                    row[key] = round(x * max_amplitude_ma(row["frequency_hz"], row["pulse_width_us"], safety,
                                                          self.board, gap), 3)
                else:
                    row[key] = d.value(x)
            elif d.kind == "unit":
                f = pol.get("frequency_hz") or 130.0
                pw = pol["pulse_width_us"]
                pol[d.name] = round(x * max_amplitude_ma(f, pw, safety, self.board, gap), 3)
            else:
                pol[d.name] = round(d.value(x), 6)
        return pol, table

    def arm_spec(self, pol: dict[str, Any], table: dict[str, Any] | None) -> EvalSpec:
        spec = copy.deepcopy(self.spec)
        arm = dict(spec.arms.get(self.law, {}))
        arm["policy"] = pol
        if table is not None:
            arm["stimulation"] = table
        spec.arms[self.law] = arm
        return spec


def _gate_cuts(log_dir: Path, law: str, seed: int) -> list[dict[str, Any]]:
    from neurostimd.commands.evaluation import audit_commands

    commands, _ = audit_commands(log_dir / f"{law}-seed{seed}.audit.jsonl")
    return [{"t_s": c.t_s, "limited_by": list(c.limited_by)} for c in commands
            if set(c.limited_by) - BENIGN_LIMITS]


def run_point(prob: Problem, xs: Sequence[float], slot: int = 0) -> dict[str, Any]:
    """One trial: the law at unit point `xs` on every plant seed; its score, metrics and gate cuts. Trials run at
    once write their audit logs in their own slot's folder."""
    log_dir = prob.log_dir if slot == 0 else prob.log_dir / f"slot{slot}"
    pol, table = prob.settings(xs)
    spec = prob.arm_spec(pol, table)
    try:
        cfg = spec.arm_config(prob.law)  # validated as the daemon validates a config
    except EvaluationError as err:
        # a point the config check refuses (e.g. lower above upper) is an infeasible trial, not the end of the run
        return {"x": list(xs), "policy": pol, "stimulation": table, "per_seed": [], "time_in_target_pct": None,
                "charge_pct": None, "score": None, "gate_cuts": [], "feasible": False,
                "refused": str(err).rpartition("is not a valid config: ")[2] or str(err)}
    per_seed = []
    cuts: list[dict[str, Any]] = []
    for seed in prob.seeds:
        run = run_arm(prob.law, cfg, spec.plant, prob.loaded_bundle(), seed, prob.episode_s, log_dir,
                      setpoint=spec.biomarker_setpoint, block_size=prob.block_size)
        m = run.metrics
        charge_pct = 100.0 * m["charge_uc"] / prob.continuous_charge[seed] if prob.continuous_charge[seed] else 0.0
        per_seed.append({"seed": seed, "time_in_target_pct": m["time_in_target_pct"], "charge_uc": m["charge_uc"],
                         "charge_pct": charge_pct, "switches_per_hour": m.get("switches_per_hour"),
                         "stim_on_pct": m.get("stim_on_pct")})
        cuts += [{"seed": seed, **c} for c in _gate_cuts(log_dir, prob.law, seed)]
    tit = sum(s["time_in_target_pct"] for s in per_seed) / len(per_seed)
    charge = sum(s["charge_pct"] for s in per_seed) / len(per_seed)
    return {"x": list(xs), "policy": pol, "stimulation": table, "per_seed": per_seed, "time_in_target_pct": tit,
            "charge_pct": charge, "score": tit - prob.charge_weight * charge, "gate_cuts": cuts,
            # a trial the gate had to cut is never the best, whatever it scored
            "feasible": not cuts and (prob.max_charge_pct is None or charge <= prob.max_charge_pct),
            "refused": None}


def make_problem(args: argparse.Namespace) -> Problem:
    from neurostimd.firmware_sim.board import DEFAULT_LIMITS
    from neurostimd.model.runtime import load_bundle

    spec_path = Path(args.arms) if args.arms else default_spec_path(args.plant)
    spec = load_spec(spec_path, args.plant)
    law = args.law
    cfg = spec.arm_config(law)
    board = BoardLimits(**{**DEFAULT_LIMITS.__dict__,
                           "watchdog_ms": round(getattr(cfg.device, "watchdog_ms", 250.0))})
    bundle = load_bundle(cfg.model.bundle, verify=cfg.model.verify_on_load)
    base_policy = dict(spec.arms.get(law, {}).get("policy", {"kind": law}))
    base_table = None
    dims = [parse_dim(s) for s in args.space] if args.space else list(DEFAULT_SPACES[law])
    if law == "table":
        from neurostimd.loop import stim_table_in_force

        tif = stim_table_in_force(cfg, bundle)
        rows: list[dict[str, Any]] = [
            {"state": s.state, "name": s.name, "frequency_hz": s.frequency_hz, "amplitude_ma": s.amplitude_ma,
             "pulse_width_us": s.pulse_width_us} for s in tif.table.states]
        base_table = {"classes": list(bundle.class_names), "states": rows}
        if not args.space:
            dims = [Dim(f"state{r['state']}.amplitude_ma", 0.0, 1.0, kind="unit") for r in rows
                    if r["amplitude_ma"] > 0]
    if not dims:
        raise EvaluationError(f"nothing to search for the {law} law: give --space NAME=LO:HI")
    known = set(type(cfg.policy).model_fields)
    names = [d.name for d in dims]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise EvaluationError(f"--space names a setting twice: {', '.join(twice)}")
    for d in dims:
        if not d.name.startswith("state") and d.name not in known:
            raise EvaluationError(f"--space {d.name}: the {law} law has no setting {d.name!r} "
                                  f"(its settings: {', '.join(sorted(known - {'kind'}))})")
        if d.name.startswith("state") and (base_table is None or not d.name.partition(".")[2]):
            raise EvaluationError(f"--space {d.name}: state<N>.<field> is for the table law only")
    seeds = [int(s) for s in args.plant_seeds.split(",") if s.strip()]
    if not seeds:
        raise EvaluationError("--plant-seeds: give at least one seed")
    return Problem(spec=spec, law=law, dims=dims, seeds=seeds, episode_s=float(args.episode_s),
                   charge_weight=float(args.charge_weight), max_charge_pct=args.max_charge_pct, board=board,
                   log_dir=(Path(args.out) / "logs").resolve(), base_policy=base_policy, base_table=base_table,
                   bundle=bundle)


def measure_continuous(prob: Problem) -> None:
    """The continuous arm's charge on each plant seed: the reference the charge term is a percentage of."""
    cont_cfg = prob.spec.arm_config("continuous")
    c = prob.spec.continuous
    fixed, _ = continuous_params(cont_cfg, StimParams(c["frequency_hz"], c["amplitude_ma"], c["pulse_width_us"],
                                                      cont_cfg.safety.interphase_gap_us), prob.board)
    for seed in prob.seeds:
        run = run_arm("continuous", cont_cfg, prob.spec.plant, prob.bundle, seed, prob.episode_s, prob.log_dir,
                      continuous=fixed, setpoint=prob.spec.biomarker_setpoint, block_size=prob.block_size)
        prob.continuous_charge[seed] = float(run.metrics["charge_uc"])


REFUSED_VIOLATION = 1e6


def _point(prob: Problem, item: tuple[int, Sequence[float]]) -> dict[str, Any]:
    slot, xs = item
    return run_point(prob, xs, slot)


def _run_batch(runner: Runner, prob: Problem, points: Sequence[Sequence[float]]) -> list[dict[str, Any]]:
    """One batch of trials at once (each in its own audit slot)."""
    return runner.map(_point, prob, [(slot, list(xs)) for slot, xs in enumerate(points)], setup=errors_only)


def _line(tag: str, k: int, n: int, r: dict[str, Any], best: float) -> str:
    if r.get("refused"):
        return f"[{tag} {k}/{n}] refused by the config check: {r['refused']}  best {best:7.2f}"
    return (f"[{tag} {k}/{n}] score {r['score']:7.2f} (in target {r['time_in_target_pct']:5.1f} %, charge "
            f"{r['charge_pct']:5.1f} %) best {best:7.2f}")


def search(prob: Problem, trials: int, seed: int, out: Path,
           on_trial: Callable[[dict[str, Any]], None] | None = None, jobs: int = 1,
           runner: Runner | None = None) -> list[dict[str, Any]]:
    """The constrained TPE search over the unit cube of `prob.dims`, `jobs` trials asked at a time and run by
    `runner` (one by one by default). The history does not depend on the runner."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    # TPE with constraints: a trial's constraint (set_constraint, > 0 infeasible) steers the sampler away from the
    # infeasible region (Optuna >= 5)
    # constant liar (trials of a batch asked before any is told): a running point counts as a poor result, which
    # pushes a batch's points apart
    kw: dict[str, Any] = {"constant_liar": True} if jobs > 1 else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True,
                                             n_startup_trials=min(8, max(1, trials // 3)), **kw)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    runner = runner or SerialRunner()
    results: list[dict[str, Any]] = []
    best = -math.inf
    with (out / "trials.jsonl").open("w") as fh, progress_bar(trials, "tune-stim trials") as bar:
        k = 0
        while k < trials:
            batch = [study.ask() for _ in range(min(max(1, jobs), trials - k))]
            points = [[t.suggest_float(f"x{i}:{d.name}", 0.0, 1.0) for i, d in enumerate(prob.dims)]
                      for t in batch]
            for trial, r in zip(batch, _run_batch(runner, prob, points), strict=True):
                k = _tell(study, trial, r, k, prob, results)
                if r["feasible"]:
                    best = max(best, r["score"])
                r["best_so_far"] = best if math.isfinite(best) else None  # None until a trial is feasible
                results.append(r)
                fh.write(json.dumps(r) + "\n")
                fh.flush()
                bar.update(_line("trial", k, trials, r, best))
                if on_trial is not None:
                    on_trial(r)
    return results


def _tell(study: Any, trial: Any, r: dict[str, Any], k: int, prob: Problem, results: list[dict[str, Any]]) -> int:
    """Tell the sampler trial k's result with its constraints (every trial sets the same keys); the count told."""
    r["trial"] = k
    refused = bool(r.get("refused"))
    if prob.max_charge_pct is not None:
        trial.set_constraint("charge_pct", 0.0 if refused else r["charge_pct"] - prob.max_charge_pct)
    trial.set_constraint("gate_cuts", float(len(r["gate_cuts"])))
    # TPE ranks infeasible trials by their summed violations: a refused point (no result at all) ranks below any
    # trial that ran, whatever its charge excess or cuts
    trial.set_constraint("refused", REFUSED_VIOLATION if refused else 0.0)
    # a refused point has no score: the sampler ranks it among the infeasible by its constraint; the value it is
    # told (the worst score so far) only keeps the study's values finite
    scores = [q["score"] for q in results if q["score"] is not None]
    study.tell(trial, r["score"] if not refused else (min(scores) if scores else 0.0))
    return k + 1


def grid(prob: Problem, n: int, out: Path, jobs: int = 1,
         runner: Runner | None = None) -> list[dict[str, Any]]:
    """The exhaustive grid, n points per dimension on the same unit map, `jobs` points at a time."""
    points = list(itertools.product(*[[i / (n - 1) for i in range(n)] for _ in prob.dims]))
    runner = runner or SerialRunner()
    results: list[dict[str, Any]] = []
    best = -math.inf
    step = max(1, jobs)
    with (out / "grid.jsonl").open("w") as fh, progress_bar(len(points), "tune-stim grid") as bar:
        for start in range(0, len(points), step):
            for r in _run_batch(runner, prob, points[start:start + step]):
                if r["feasible"]:
                    best = max(best, r["score"])
                results.append(r)
                fh.write(json.dumps(r) + "\n")
                fh.flush()
                bar.update(_line("grid", len(results), len(points), r, best))
    return results


def _best(results: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [r for r in results if r["feasible"]]
    return max(ok, key=lambda r: r["score"]) if ok else None


def importances(dims: Sequence[Dim], results: Sequence[dict[str, Any]], seed: int) -> dict[str, float] | None:
    """Each searched setting's share of the score's variance over the scored points (Optuna's fANOVA on the
    history, seeded); None with one dimension or fewer than 4 scored points (nothing to apportion)."""
    import optuna
    from optuna.distributions import BaseDistribution, FloatDistribution

    scored = [r for r in results if r["score"] is not None]
    if len(dims) < 2 or len(scored) < 4:
        return None
    if len({d.name for d in dims}) < len(dims):
        return None
    study = optuna.create_study(direction="maximize")
    dist: dict[str, BaseDistribution] = {d.name: FloatDistribution(0.0, 1.0) for d in dims}
    for r in scored:
        study.add_trial(optuna.trial.create_trial(params=dict(zip(dist, r["x"], strict=True)), distributions=dist,
                                                  value=r["score"]))
    try:
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed))
    except (RuntimeError, ValueError, ImportError) as err:  # e.g. every point scored the same: no variance
        print(f"tune-stim: no importance ({err})", file=sys.stderr)
        return None
    return {d.name: float(imp.get(d.name, 0.0)) for d in dims}


def summarise(prob: Problem, trials: list[dict[str, Any]], grid_results: list[dict[str, Any]] | None,
              args: argparse.Namespace) -> dict[str, Any]:
    best = _best(trials)
    s: dict[str, Any] = {
        "command": "neurostimd tune-stim " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else None,
        "plant": prob.spec.plant, "law": prob.law, "evaluation_file": str(prob.spec.path),
        "dims": [d.__dict__ for d in prob.dims], "plant_seeds": prob.seeds, "episode_s": prob.episode_s,
        "charge_weight": prob.charge_weight, "max_charge_pct": prob.max_charge_pct, "search_seed": args.seed,
        "continuous_charge_uc": prob.continuous_charge, "trials": len(trials),
        "best": best, "gate_cuts": sum(len(r["gate_cuts"]) for r in trials + (grid_results or [])),
        "refused": sum(1 for r in trials if r.get("refused")),
        "importance": importances(prob.dims, trials + (grid_results or []), args.seed),
    }
    if grid_results:
        g = _best(grid_results)
        s["grid"] = {"points_per_dim": args.grid, "episodes": len(grid_results), "best": g}
        if g is not None and best is not None:
            tol = 0.1 * abs(g["score"])
            reach = next((r["trial"] + 1 for r in trials
                          if r["best_so_far"] is not None and r["best_so_far"] >= g["score"] - tol), None)
            s["grid"]["search_minus_grid_best"] = best["score"] - g["score"]
            s["grid"]["trials_to_within_10pct"] = reach
    return s


def summary_markdown(s: dict[str, Any]) -> str:
    b = s["best"]
    lines = [f"tune-stim: the `{s['law']}` law on the `{s['plant']}` plant, seeds {s['plant_seeds']}, "
             f"{s['episode_s']:g} s episodes; score = time in target (%) − {s['charge_weight']:g} × charge (% of "
             f"continuous)" + (f", charge ≤ {s['max_charge_pct']:g} %" if s["max_charge_pct"] is not None else "")
             + ".", ""]
    if b is None:
        lines.append("No trial met the constraint.")
    else:
        lines += [f"Best of {s['trials']} trials (trial {b['trial'] + 1}): score {b['score']:.2f}, in target "
                  f"{b['time_in_target_pct']:.1f} %, charge {b['charge_pct']:.1f} % of continuous.", "",
                  "| setting | tuned |", "|---|---:|"]
        for d in s["dims"]:
            name = d["name"]
            if name.startswith("state"):
                idx, _, key = name[len("state"):].partition(".")
                row = next(r for r in b["stimulation"]["states"] if int(r["state"]) == int(idx))
                lines.append(f"| state {idx} {key} | {row[key]:g} |")
            else:
                lines.append(f"| {name} | {b['policy'][name]:g} |")
    g = s.get("grid")
    if g and g.get("best") is not None:
        gb = g["best"]
        reach = g.get("trials_to_within_10pct")
        lines += ["", f"Exhaustive grid ({g['points_per_dim']} points per dimension, {g['episodes']} episodes): best "
                  f"score {gb['score']:.2f} (in target {gb['time_in_target_pct']:.1f} %, charge "
                  f"{gb['charge_pct']:.1f} %). The search's best is "
                  f"{g.get('search_minus_grid_best', float('nan')):+.2f} "
                  f"from it; within 10 % of it after "
                  + (f"{reach} trial{'s' if reach != 1 else ''}." if reach is not None else "no trial.")]
    if s.get("refused"):
        lines += ["", f"{s['refused']} of {s['trials']} trials proposed settings the config check refuses (no "
                  f"episode run; counted infeasible)."]
    if s.get("importance"):
        lines += ["", "Importance of each setting (fANOVA over the scored points): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in sorted(s["importance"].items(), key=lambda kv: -kv[1]))
                  + "."]
    lines += ["", f"Gate cuts in every episode (a command the gate cut for a limit, not the ramp): {s['gate_cuts']}.",
              "", f"Command: `{s['command']}`", ""]
    return "\n".join(lines)


def plot(trials: list[dict[str, Any]], grid_results: list[dict[str, Any]] | None, s: dict[str, Any],
         path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    imp = s.get("importance")
    fig, axes = plt.subplots(1, 2 if imp else 1, figsize=(11.5 if imp else 7.5, 4.2), constrained_layout=True,
                             squeeze=False, width_ratios=[2, 1] if imp else None)
    ax = axes[0][0]
    scored = [r for r in trials if r["score"] is not None]
    ks = [r["trial"] + 1 for r in scored]
    ax.plot(ks, [r["score"] for r in scored], "o", color="0.6", ms=4, label="trial")
    for r in trials:
        if r["score"] is None:
            ax.axvline(r["trial"] + 1, color="tab:red", alpha=0.25, lw=1)
    if len(scored) < len(trials):
        ax.plot([], [], color="tab:red", alpha=0.5, label="refused by the config check")
    best_so_far = [math.nan if r["best_so_far"] is None else r["best_so_far"] for r in trials]
    ax.step([r["trial"] + 1 for r in trials], best_so_far, where="post", color="tab:blue", label="best so far")
    g = (s.get("grid") or {}).get("best")
    if g is not None:
        ax.axhline(g["score"], color="tab:green", ls="--", label=f"grid best ({s['grid']['episodes']} episodes)")
        ax.axhspan(g["score"] - 0.1 * abs(g["score"]), g["score"], color="tab:green", alpha=0.1,
                   label="within 10 % of the grid's best")
    ax.set_xlabel("trial (one closed-loop episode per plant seed)")
    ax.set_ylabel(f"score: in target % − {s['charge_weight']:g} × charge %")
    ax.set_title(f"tune-stim: {s['law']} on the {s['plant']} plant")
    ax.legend(fontsize=8)
    if imp:
        bx = axes[0][1]
        names = sorted(imp, key=lambda k: imp[k])
        bx.barh(names, [imp[k] for k in names], color="tab:blue")
        bx.set_xlim(0, 1)
        bx.set_xlabel("share of the score's variance (fANOVA)")
        bx.set_title("which setting mattered")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_tuned(prob: Problem, best: dict[str, Any], out: Path) -> None:
    import tomli_w

    tables: dict[str, Any] = {"policy": best["policy"]}
    if best["stimulation"] is not None:
        tables["stimulation"] = best["stimulation"]
    head = (f"# Tuned by neurostimd tune-stim on the simulated {prob.spec.plant} plant (seeds {prob.seeds}): a "
            f"simulated plant is not tissue.\n# Merge these tables into a daemon config; the safety gate still "
            f"has the last word.\n")
    (out / "tuned-policy.toml").write_text(head + tomli_w.dumps(tables), encoding="utf-8")
    data = tomllib.loads(prob.spec.path.read_text(encoding="utf-8"))
    ev = data.setdefault("evaluation", {})
    ev["base_config"] = str(prob.spec.base_path)
    ev["tuning_seeds"] = list(prob.seeds)
    arm = data.setdefault("arms", {}).setdefault(prob.law, {})
    arm.update(tables)
    (out / "tuned-eval.toml").write_text("# The evaluation file with the tuned arm (neurostimd tune-stim).\n"
                                         + tomli_w.dumps(data), encoding="utf-8")


def _refused(err: EvaluationError) -> int:
    print(f"neurostimd tune-stim: {err}", file=sys.stderr)
    return EX_DATAERR if "cannot read" in str(err) else EX_CONFIG


def cmd_tune_stim(args: argparse.Namespace) -> int:
    from neurostimd.service.logs import configure_logging

    configure_logging("error", "console")
    try:
        import optuna  # noqa: F401
        import tomli_w  # noqa: F401
    except ImportError as err:
        print(f"neurostimd tune-stim: {err.name} is missing; install the train extra: pip install "
              f"'neurostimd[train]'", file=sys.stderr)
        return EX_UNAVAILABLE
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        prob = make_problem(args)
        print(f"tune-stim: {prob.law} on {prob.spec.plant}, {len(prob.dims)} dimension(s) "
              f"({', '.join(d.name for d in prob.dims)}), seeds {prob.seeds}, {prob.episode_s:g} s episodes",
              file=sys.stderr, flush=True)
        # before any episode: a refusal costs nothing
        runner = make_runner(args.jobs, args.address, args.no_ray, "tune-stim")
        try:
            measure_continuous(prob)
        except BaseException:
            runner.close()
            raise
    except EvaluationError as err:
        return _refused(err)
    except RunnerUnavailable as err:
        return runner_exit("tune-stim", err)
    print(f"tune-stim: trials run {runner.description}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        trials = search(prob, args.trials, args.seed, out, jobs=args.jobs, runner=runner)
        grid_results = grid(prob, args.grid, out, jobs=args.jobs, runner=runner) if args.grid else None
    except EvaluationError as err:  # e.g. the virtual board failed during an episode (a Ray task's error too)
        return _refused(err)
    except RunnerFailed as err:
        return runner_exit("tune-stim", err)
    finally:
        runner.close()
    wall_s = time.perf_counter() - t0
    s = summarise(prob, trials, grid_results, args)
    s["runner"] = {"jobs": args.jobs, "how": runner.description, "wall_s": round(wall_s, 1)}
    (out / "summary.json").write_text(json.dumps(s, indent=2) + "\n")
    (out / "summary.md").write_text(summary_markdown(s))
    plot(trials, grid_results, s, out / "convergence.png")
    if s["best"] is not None and not s["gate_cuts"]:
        write_tuned(prob, s["best"], out)
    print(summary_markdown(s))
    if s["gate_cuts"]:
        print(f"neurostimd tune-stim: the gate cut {s['gate_cuts']} command(s) for a limit (see trials.jsonl): the "
              f"feasible-set mapping missed a rule; report it", file=sys.stderr)
        return EX_SOFTWARE
    return EX_OK if s["best"] is not None else 1
