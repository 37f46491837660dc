"""`neurostimd sweep`: every config on every recording (a replay through the whole pipeline and the virtual board)
and on every plant seed (a closed-loop episode on the simulated plant), the way a lab compares policies across
patients: one row per cell in sweep.csv / sweep.json / sweep.md, a figure of each metric per config (one dot per
recording or seed) and each cell's own outputs under cells/.

Cells are independent, so they run as Ray tasks (`--jobs N`, `--address`; neurostimd.parallel), or one by one
without Ray. A cell that fails (a recording that does not fit a config's bundle, a board that failed) is a row with
its error, not the end of the sweep; a config that cannot be read stops the sweep before any cell runs (exit 78).
Exit 0 when every cell ran, 1 when some failed (their rows say why)."""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neurostimd.errors import ConfigError
from neurostimd.parallel import Runner, RunnerFailed, RunnerUnavailable, errors_only, make_runner, runner_exit
from neurostimd.progress import progress_bar
from neurostimd.service.exitcodes import EX_CONFIG, EX_OK, EX_USAGE

if TYPE_CHECKING:
    import numpy as np

REPLAY_METRICS = ("decisions", "stim_on_pct", "charge_uc", "state_changes_per_hour", "safe_state_pct", "faults",
                  "label_agreement_pct", "x_realtime")
PLANT_METRICS = ("time_in_target_pct", "charge_uc", "stim_on_pct", "switches_per_hour", "biomarker_error")
UNITS = {"stim_on_pct": "%", "charge_uc": "µC", "state_changes_per_hour": "/h", "safe_state_pct": "%",
         "label_agreement_pct": "%", "x_realtime": "× real time", "time_in_target_pct": "%",
         "switches_per_hour": "/h", "biomarker_error": "biomarker above setpoint", "decisions": "", "faults": ""}


@dataclass(frozen=True)
class Cell:
    """One config on one recording (kind "replay") or one plant seed (kind "plant")."""

    kind: str
    config: str  # the config file
    config_name: str
    target: str  # the recording's path, or the plant seed
    target_name: str
    out: str  # the cell's own folder
    plant: str = ""
    duration_s: float = 0.0


def _names(paths: list[str]) -> list[str]:
    """Short names for files, unique also as folder names: the stem, or the parent-stem where stems repeat, numbered
    where even those (or their folder-safe forms) repeat."""
    stems = [Path(p).stem or Path(p).name for p in paths]
    names = [s if stems.count(s) == 1 else f"{Path(p).parent.name}-{s}" for p, s in zip(paths, stems, strict=True)]
    safe = [_safe(n).lower() for n in names]
    return [n if safe.count(safe[i]) == 1 else f"{i + 1}-{n}" for i, n in enumerate(names)]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def plan(configs: list[str], recordings: list[str], plant: str | None, seeds: list[int], duration_s: float,
         out: Path) -> list[Cell]:
    """Every (config, recording) and (config, plant seed) cell, configs first."""
    cells = []
    for cfg, cname in zip(configs, _names(configs), strict=True):
        for rec, rname in zip(recordings, _names(recordings), strict=True):
            cells.append(Cell("replay", cfg, cname, rec, rname, str(out / "cells" / _safe(cname) / "recordings" /
                                                                _safe(rname))))
        for seed in seeds:
            cells.append(Cell("plant", cfg, cname, str(seed), f"{plant} seed {seed}",
                              str(out / "cells" / _safe(cname) / "plant" / f"{plant}-seed{seed}"), plant=plant or "",
                              duration_s=duration_s))
    return cells


def run_cell(_shared: None, cell: Cell) -> dict[str, Any]:
    """One cell's row: its metrics, or its error (a cell's failure is its row's, not the sweep's)."""
    row: dict[str, Any] = {"kind": cell.kind, "config": cell.config_name, "target": cell.target_name,
                           "config_path": cell.config, "out": cell.out}
    t0 = time.perf_counter()
    try:
        row.update(_replay_cell(cell) if cell.kind == "replay" else _plant_cell(cell))
        row["error"] = None
    except Exception as err:
        row["error"] = f"{type(err).__name__}: {err}"
    row["wall_s"] = round(time.perf_counter() - t0, 2)
    return row


def _replay_cell(cell: Cell) -> dict[str, Any]:
    from neurostimd.clock import VirtualClock
    from neurostimd.commands.replay import replay_config, replay_source, run_replay
    from neurostimd.config import load_config
    from neurostimd.outputs.audit import iter_records

    cfg = load_config(Path(cell.config))
    out = Path(cell.out)
    summary = run_replay(cfg, Path(cell.target), out, progress=False, plot=False)
    decisions = [json.loads(line) for line in (out / "decisions.jsonl").read_text().splitlines() if line]
    audit = list(iter_records(out / "audit.jsonl"))
    # read again as the replay read it, for its sample clock (run_replay keeps no copy of the source)
    source = replay_source(replay_config(cfg, Path(cell.target), "max", out), Path(cell.target), VirtualClock())
    rec = source.recording
    classes = next((r.get("classes") for r in audit if r.get("event") == "model_loaded"), None)
    labels = rec.labels
    note = None
    if labels is not None and rec.class_names is not None and classes is not None and \
            list(rec.class_names) != list(classes):
        labels, note = None, f"the recording's classes {list(rec.class_names)} are not the bundle's {classes}"
    m = replay_metrics(decisions, audit, cfg.loop.cadence_ms / 1000.0, labels, rec.fs, source.sample_positions)
    return m | {"x_realtime": summary["x_realtime"], "recording_s": summary["recording_s"],
                **({"label_note": note} if note else {})}


def replay_metrics(decisions: list[dict[str, Any]], audit: list[dict[str, Any]], tick_s: float,
                   labels: np.ndarray | None, fs: float, positions: np.ndarray | None = None) -> dict[str, Any]:
    """What a replay delivered and decided: stimulation-on time, charge (µC per phase: I·pw·f·t, over each tick the
    applied setting ran), accepted-state changes per hour, time in the safe state, faults raised, and, where the
    recording carries labels, how often the classifier's state agreed with the label at that tick's newest sample
    (found by its position on the replay's sample clock, `positions`: 0, 1, 2, … unless the recording skips)."""
    import numpy as np

    n = len(decisions)
    on = charge = safe = 0.0
    agree = known = 0
    for d in decisions:
        a = d.get("applied")
        if a and a.get("amplitude_ma", 0) > 0:
            on += 1
            charge += a["amplitude_ma"] * a["pulse_width_us"] * 1e-3 * a["frequency_hz"] * tick_s
        safe += bool(d.get("safe_state"))
        if labels is not None and d.get("t_data_s") is not None and d.get("state") is not None:
            pos = round(d["t_data_s"] * fs)
            i = int(np.searchsorted(positions, pos)) if positions is not None else pos
            if 0 <= i < len(labels) and (positions is None or positions[i] == pos) and labels[i] >= 0:
                known += 1
                agree += int(labels[i] == d["state"])
    hours = n * tick_s / 3600.0
    changes = sum(1 for r in audit if r.get("event") == "state_change")
    faults = sum(len(r.get("raised") or []) for r in audit if r.get("event") == "fault")
    return {"decisions": n, "stim_on_pct": 100.0 * on / n if n else None, "charge_uc": charge,
            "state_changes_per_hour": changes / hours if hours > 0 else None,
            "safe_state_pct": 100.0 * safe / n if n else None, "faults": faults,
            "label_agreement_pct": 100.0 * agree / known if known else None}


def _plant_cell(cell: Cell) -> dict[str, Any]:
    from neurostimd.commands.evaluation import LAW_ARMS, EvaluationError, default_spec_path, load_spec, run_arm
    from neurostimd.config import load_config
    from neurostimd.model.runtime import load_bundle

    cfg = load_config(Path(cell.config))
    law = getattr(cfg.policy, "kind", "table")
    if law not in LAW_ARMS:
        raise EvaluationError(f"{cell.config}: [policy] kind {law!r} is not a law the plant runs "
                              f"({', '.join(LAW_ARMS)})")
    spec = load_spec(default_spec_path(cell.plant), cell.plant)
    bundle = load_bundle(cfg.model.bundle, verify=cfg.model.verify_on_load)
    run = run_arm(law, cfg, cell.plant, bundle, int(cell.target), cell.duration_s, Path(cell.out),
                  setpoint=spec.biomarker_setpoint)
    return {k: run.metrics.get(k) for k in PLANT_METRICS} | {"law": law, "simulated_s": cell.duration_s}


def sweep(cells: list[Cell], out: Path, runner: Runner, *, command: str | None = None,
          plot: bool = True) -> dict[str, Any]:
    """Run the cells `runner.jobs` at a time; write sweep.json, sweep.csv, sweep.md (and sweep.png)."""
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    step = max(1, runner.jobs)
    with progress_bar(len(cells), "sweep") as bar:
        for start in range(0, len(cells), step):
            batch = cells[start:start + step]
            try:
                done = runner.map(run_cell, None, batch, setup=errors_only)
            except RunnerFailed as err:  # a worker lost (e.g. killed for memory): those cells' rows say so
                done = [{"kind": c.kind, "config": c.config_name, "target": c.target_name, "config_path": c.config,
                         "out": c.out, "error": f"RunnerFailed: {err}", "wall_s": None} for c in batch]
            for row in done:
                rows.append(row)
                what = f"error: {row['error']}" if row["error"] else _brief(row)
                bar.update(f"[{len(rows)}/{len(cells)}] {row['config']} on {row['target']}: {what}")
    result = {"command": command, "cells": rows, "runner": runner.description,
              "wall_s": round(time.perf_counter() - t0, 1), "failed": sum(1 for r in rows if r["error"])}
    result["by_config"] = by_config(rows)
    (out / "sweep.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    _write_csv(out / "sweep.csv", rows)
    (out / "sweep.md").write_text(markdown(result))
    if plot and any(not r["error"] for r in rows):
        plot_sweep(rows, out / "sweep.png")
    return result


def _brief(row: dict[str, Any]) -> str:
    keys = REPLAY_METRICS[1:4] if row["kind"] == "replay" else PLANT_METRICS[:3]
    return ", ".join(f"{k} {_num(row.get(k))}" for k in keys)


def _num(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 10 or v == 0 else f"{v:.3g}"
    return str(v)


def by_config(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per config and kind: the mean and standard deviation (n − 1) of each metric over its recordings or seeds."""
    import numpy as np

    out = []
    for kind, metrics in (("replay", REPLAY_METRICS), ("plant", PLANT_METRICS)):
        for cfg in dict.fromkeys(r["config"] for r in rows if r["kind"] == kind):
            ok = [r for r in rows if r["kind"] == kind and r["config"] == cfg and not r["error"]]
            entry: dict[str, Any] = {"kind": kind, "config": cfg, "n": len(ok)}
            for m in metrics:
                vals = [float(r[m]) for r in ok if r.get(m) is not None]
                entry[m] = {"mean": float(np.mean(vals)) if vals else None,
                            "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else None}
            out.append(entry)
    return out


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    cols = ["kind", "config", "target", *dict.fromkeys(m for m in REPLAY_METRICS + PLANT_METRICS), "wall_s",
            "error", "config_path", "out"]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in cols})


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Sweep: {len(result['cells'])} cells ({result['failed']} failed), {result['wall_s']:g} s, "
             f"{result['runner']}", ""]
    if result.get("command"):
        lines += [f"`{result['command']}`", ""]
    for kind, metrics, title in (("replay", REPLAY_METRICS, "Recordings (replay through the whole pipeline)"),
                                 ("plant", PLANT_METRICS, "Simulated plant (closed-loop episodes)")):
        entries = [e for e in result["by_config"] if e["kind"] == kind]
        if not entries:
            continue
        lines += [f"## {title}: mean ± SD over {'recordings' if kind == 'replay' else 'seeds'}", "",
                  "| config | n | " + " | ".join(f"{m} ({UNITS[m]})" if UNITS[m] else m for m in metrics) + " |",
                  "|---|---:|" + "---:|" * len(metrics)]
        for e in entries:
            cells = []
            for m in metrics:
                s = e[m]
                cells.append("—" if s["mean"] is None else _num(s["mean"]) + ("" if s["sd"] is None
                                                                              else f" ± {_num(s['sd'])}"))
            lines.append(f"| {e['config']} | {e['n']} | " + " | ".join(cells) + " |")
        lines.append("")
    failed = [r for r in result["cells"] if r["error"]]
    if failed:
        lines += ["## Failed cells", ""] + [f"- {r['config']} on {r['target']}: {r['error']}" for r in failed] + [""]
    return "\n".join(lines)


def plot_sweep(rows: list[dict[str, Any]], path: Path) -> Path:
    """One panel per metric: a row per config, a dot per recording or seed, the mean as a bar."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, m) for k, ms in (("replay", REPLAY_METRICS[1:7]), ("plant", PLANT_METRICS))
              for m in ms if any(r["kind"] == k and not r["error"] and r.get(m) is not None for r in rows)]
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 0.5 + 2.6 * nrow), squeeze=False)
    for ax, (kind, m) in zip(axes.flat, panels, strict=False):
        configs = list(dict.fromkeys(r["config"] for r in rows if r["kind"] == kind))
        targets = list(dict.fromkeys(r["target"] for r in rows if r["kind"] == kind))
        cmap = plt.get_cmap("tab10")
        for i, cfg in enumerate(configs):
            vals = [(targets.index(r["target"]), float(r[m])) for r in rows if r["kind"] == kind and
                    r["config"] == cfg and not r["error"] and r.get(m) is not None]
            if vals:
                ax.barh(i, float(np.mean([v for _, v in vals])), color="0.85", height=0.6)
            for j, v in vals:
                ax.plot(v, i + (j - (len(targets) - 1) / 2) * min(0.5 / max(len(targets), 1), 0.12), "o",
                        color=cmap(j % 10), ms=5, label=targets[j] if i == 0 else None)
        ax.set_yticks(range(len(configs)), configs)
        ax.set_xlabel(f"{m} ({UNITS[m]})" if UNITS[m] else m)
        ax.set_title(("recordings: " if kind == "replay" else "plant: ") + m, fontsize=9)
        ax.invert_yaxis()
        if len(targets) <= 10:
            ax.legend(fontsize=7, loc="best", title="bar: mean", title_fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def add_parser(sub: Any) -> None:
    from neurostimd.parallel import add_runner_options

    p = sub.add_parser(
        "sweep", help="every config on every recording (replay) and plant seed (closed loop), in parallel on Ray",
        description="Compare configs (policies, tables, thresholds) across recordings and simulated plants: each "
                    "cell is a replay through the whole pipeline or a closed-loop episode; the table and figure "
                    "give each metric per config over the recordings or seeds (docs/sweep.md)",
        epilog="example:\n  neurostimd sweep --config config/replay.toml --config my-policy.toml --recording a.npz "
               "--recording b.edf --out runs/sweep --jobs 2")
    p.add_argument("--config", action="append", required=True, help="a daemon config (repeatable)")
    p.add_argument("--recording", action="append", default=[],
                   help="a recording to replay with every config (repeatable; any format replay reads)")
    p.add_argument("--plant", choices=("markov", "beta"), default=None,
                   help="also run every config's law on this simulated plant, one episode per --plant-seeds")
    p.add_argument("--plant-seeds", default="0,1,2", help="plant seeds (with --plant; default 0,1,2)")
    p.add_argument("--duration", type=float, default=300.0, help="simulated seconds per plant episode (default 300)")
    add_runner_options(p, "cells")
    p.add_argument("--no-plot", action="store_true", help="skip sweep.png")
    p.add_argument("--out", required=True, help="folder for sweep.json/csv/md/png and cells/")


def cmd_sweep(args: argparse.Namespace) -> int:
    if not args.recording and not args.plant:
        print("neurostimd sweep: give at least one --recording or a --plant to run the configs on", file=sys.stderr)
        return EX_USAGE
    if not (math.isfinite(args.duration) and args.duration > 0):
        print(f"neurostimd sweep: --duration must be a positive number of seconds, not {args.duration}",
              file=sys.stderr)
        return EX_USAGE
    try:
        seeds = [int(s) for s in args.plant_seeds.split(",") if s.strip()] if args.plant else []
    except ValueError:
        print(f"neurostimd sweep: --plant-seeds {args.plant_seeds!r}: give whole numbers separated by commas",
              file=sys.stderr)
        return EX_USAGE
    if args.plant and (not seeds or len(set(seeds)) != len(seeds)):
        print(f"neurostimd sweep: --plant-seeds {args.plant_seeds!r}: give at least one seed, each once",
              file=sys.stderr)
        return EX_USAGE
    missing = [p for p in args.config + args.recording if not Path(p).exists()]
    if missing:
        print(f"neurostimd sweep: not found: {', '.join(missing)}", file=sys.stderr)
        return EX_CONFIG
    from neurostimd.config import load_config
    from neurostimd.service.logs import configure_logging

    configure_logging("error", "console")  # a cell's loop logs its every decision at info
    for c in args.config:  # every config is read and checked before any cell runs
        try:
            load_config(Path(c))
        except ConfigError as err:
            for line in err.errors or [str(err)]:
                print(f"neurostimd sweep: {c}: {line}", file=sys.stderr)
            return EX_CONFIG
    out = Path(args.out)
    cells = plan([str(Path(c).resolve()) for c in args.config], [str(Path(r).resolve()) for r in args.recording],
                 args.plant, seeds, float(args.duration), out.resolve())
    try:
        runner = make_runner(args.jobs, args.address, args.no_ray, "sweep")
    except RunnerUnavailable as err:
        return runner_exit("sweep", err)
    print(f"sweep: {len(cells)} cells ({len(args.config)} config(s) × {len(args.recording)} recording(s)"
          f"{f' + {len(seeds)} {args.plant} seed(s)' if seeds else ''}), run {runner.description}",
          file=sys.stderr, flush=True)
    command = "neurostimd " + " ".join(sys.argv[1:]) if len(sys.argv) > 1 and sys.argv[1] == "sweep" else None
    with runner:
        result = sweep(cells, out, runner, command=command, plot=not args.no_plot)
    print(markdown(result))
    return EX_OK if not result["failed"] else 1
