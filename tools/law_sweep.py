"""Sweep one setting of one control law on the closed-loop evaluation and show the trade-off it buys.

    python tools/law_sweep.py --plant beta --arm dual_threshold --param termination_ms \
        --values 5000,20000,45000,120000,300000 --seed 100 --seeds 3 --duration 600 --jobs 2 --out DIR

Each value runs the arm (and the continuous arm once, for the reference) through `neurostimd closed-loop-eval`'s
own evaluate() with the evaluation file's arm settings and that one setting replaced (`--set KEY=VALUE` replaces
others for every value). Use the evaluation file's tuning seeds to choose settings and other seeds to report
them. Writes DIR/sweep.json (per value: the arm's means and per-seed values), DIR/sweep.md and DIR/sweep.png
(switches per hour against charge, time in target, each point a value), and the evaluation of each value under
DIR/<param>=<value>/.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from neurostimd.commands.evaluation import LAW_ARMS, default_spec_path, evaluate, load_spec

METRICS = ("time_in_target_pct", "charge_uc", "energy_uj", "stim_on_pct", "switches_per_hour", "undone_switches",
           "biomarker_error")


def _value(text: str) -> Any:
    """A TOML value as written (`1.5`, `"p:beta_high"`, `true`)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def variant_file(spec_path: Path, arm: str, settings: dict[str, Any], out: Path) -> Path:
    """The evaluation file with [arms.ARM.policy] updated by `settings` (base_config made absolute)."""
    data = tomllib.loads(spec_path.read_text(encoding="utf-8"))
    ev = data.setdefault("evaluation", {})
    ev["base_config"] = str((spec_path.parent / ev["base_config"]).resolve())
    data.setdefault("arms", {}).setdefault(arm, {}).setdefault("policy", {"kind": arm}).update(settings)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "evaluation.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--plant", choices=("markov", "beta"), default="beta")
    p.add_argument("--arms", type=Path, default=None, help="evaluation file (default config/eval/PLANT.toml)")
    p.add_argument("--arm", choices=LAW_ARMS, required=True, help="the law whose setting is swept")
    p.add_argument("--param", required=True, help="the [policy] setting swept, e.g. termination_ms")
    p.add_argument("--values", required=True, help="comma-separated values of --param")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="another setting, fixed")
    p.add_argument("--seed", type=int, default=100, help="first seed (default: the beta file's first tuning seed)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--duration", type=float, default=600.0, help="simulated seconds per run")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    spec_path = (args.arms or default_spec_path(args.plant)).resolve()
    fixed: dict[str, Any] = {}
    for item in args.set:
        key, sep, val = item.partition("=")
        if not sep:
            p.error(f"--set {item!r}: give KEY=VALUE")
        fixed[key.strip()] = _value(val.strip())
    values = [_value(v.strip()) for v in args.values.split(",") if v.strip()]
    if not values:
        p.error("--values: give at least one value")
    seeds = list(range(args.seed, args.seed + args.seeds))
    rows: list[dict[str, Any]] = []
    reference: dict[str, Any] | None = None
    none: dict[str, Any] = {}
    for i, value in enumerate(values):
        tag = f"{args.param}={value}"
        print(f"[{i + 1}/{len(values)}] {args.arm}: {tag}", file=sys.stderr, flush=True)
        folder = args.out / tag
        path = variant_file(spec_path, args.arm, {**fixed, args.param: value}, folder)
        spec = load_spec(path, args.plant)
        arms = [args.arm] if reference is not None else ["none", "continuous", args.arm]
        res = evaluate(spec, folder, duration_s=args.duration, seeds=seeds, jobs=args.jobs, arms=arms, plot=False,
                       progress=False, command=" ".join(["python", "tools/law_sweep.py", *sys.argv[1:]]))
        if reference is None:
            reference = {k: res["arms"]["continuous"].get(k) for k in METRICS}
            none = {k: res["arms"]["none"].get(k) for k in METRICS}
        arm = res["arms"][args.arm]
        row = {"value": value, **{k: arm.get(k) for k in METRICS},
               "plant_regime_changes_per_hour": arm.get("plant_regime_changes_per_hour")}
        # reductions of the means (the evaluation's own are per seed against arms run beside it)
        row["error_reduction_pct"] = _reduction(row["biomarker_error"], none.get("biomarker_error"))
        row["power_reduction_pct"] = _reduction(row["energy_uj"], reference.get("energy_uj"))
        rows.append(row)
    summary = {"plant": args.plant, "arm": args.arm, "param": args.param, "fixed": fixed, "seeds": seeds,
               "duration_s": args.duration, "evaluation_file": str(spec_path), "continuous": reference, "rows": rows,
               "command": " ".join(["python", "tools/law_sweep.py", *sys.argv[1:]])}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "sweep.md").write_text(markdown(summary))
    plot(summary, args.out / "sweep.png")
    print(markdown(summary))
    return 0


def _reduction(stat: Any, ref: Any) -> float | None:
    a, b = (stat or {}).get("mean"), (ref or {}).get("mean")
    return None if a is None or not b else 100.0 * (1.0 - a / b)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def _m(stat: Any, digits: int = 1) -> str:
    if not isinstance(stat, dict) or stat.get("mean") is None:
        return "—"
    lo, hi = (stat.get("ci95") or [None, None])[:2]
    ci = f" [{lo:,.{digits}f}, {hi:,.{digits}f}]" if lo is not None and hi is not None else ""
    return f"{stat['mean']:,.{digits}f}{ci}"


def markdown(s: dict[str, Any]) -> str:
    cont = s["continuous"] or {}
    c_charge = (cont.get("charge_uc") or {}).get("mean")
    lines = [f"Sweep of `{s['param']}` for the `{s['arm']}` law on the `{s['plant']}` plant: seeds {s['seeds']}, "
             f"{s['duration_s']:g} simulated s each; mean [95 % t-interval]. Fixed: {s['fixed'] or 'nothing'}. "
             f"Continuous: time in target {_m(cont.get('time_in_target_pct'))} %, charge "
             f"{_m(cont.get('charge_uc'), 0)} µC.", "",
             f"| {s['param']} | time in target (%) | charge (µC) | charge / continuous (%) | stim on (%) | "
             f"switches / h | undone | error reduction vs none (%, of the means) | "
             f"power (TEED) reduction vs continuous (%, of the means) | "
             f"plant regime changes / h |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in s["rows"]:
        charge = (r["charge_uc"] or {}).get("mean")
        ratio = f"{100 * charge / c_charge:.0f}" if charge is not None and c_charge else "—"
        lines.append(f"| {r['value']} | {_m(r['time_in_target_pct'])} | {_m(r['charge_uc'], 0)} | {ratio} | "
                     f"{_m(r['stim_on_pct'])} | {_m(r['switches_per_hour'])} | {_m(r['undone_switches'])} | "
                     f"{_pct(r['error_reduction_pct'])} | {_pct(r['power_reduction_pct'])} | "
                     f"{_m(r['plant_regime_changes_per_hour'])} |")
    lines += ["", f"Command: `{s['command']}`", ""]
    return "\n".join(lines)


def plot(s: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cont = s["continuous"] or {}
    c_charge = (cont.get("charge_uc") or {}).get("mean") or 1.0
    xs = [r["switches_per_hour"]["mean"] for r in s["rows"]]
    charge = [100 * r["charge_uc"]["mean"] / c_charge for r in s["rows"]]
    tit = [r["time_in_target_pct"]["mean"] for r in s["rows"]]
    c_tit = (cont.get("time_in_target_pct") or {}).get("mean")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for ax, ys, label, ref in ((axes[0], charge, "charge (% of continuous)", 100.0),
                               (axes[1], tit, "time in target (%)", c_tit)):
        ax.plot(xs, ys, "o-", color="tab:blue")
        for x, y, r in zip(xs, ys, s["rows"], strict=True):
            ax.annotate(f"{r['value']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.axvline(6.0, color="tab:red", ls="--", lw=1, label="target: 6 switches / h")
        if ref is not None:
            ax.axhline(ref, color="0.4", ls=":", lw=1, label="continuous")
        if label.startswith("charge"):
            ax.axhline(50.0, color="tab:green", ls="--", lw=1, label="half of continuous")
        ax.set_xlabel("switches per hour (steady state)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(f"{s['arm']} on the {s['plant']} plant: {s['param']} swept (seeds {s['seeds'][0]}–{s['seeds'][-1]}, "
                 f"{s['duration_s']:g} s); labels are {s['param']}")
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
