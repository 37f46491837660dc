"""`neurostimd closed-loop-eval`: does the closed loop help? Three arms on the simulated board's plant, same seeds,
same duration — `adaptive` (the daemon's ClosedLoop: classifier → policy → safety gate → board), `continuous` (one
fixed, gated parameter set from t = 0) and `none` — compared on time in the target state, charge delivered and the
number of parameter changes the board applied. Everything runs in process on a virtual clock through the virtual
board (the real serial driver and protocol), so a 600 s arm takes seconds and the same seeds give the same numbers.

The truth comes from the board itself: a thin wrapper around the board's sample source records, for every block the
board produces (one plant step), the plant's state and the stimulation the board was running.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from neurostimd.clock import VirtualClock
from neurostimd.config import Config, load_config
from neurostimd.core.controller import params_dict
from neurostimd.drivers.errors import DriverError
from neurostimd.drivers.types import StimParams
from neurostimd.errors import ConfigError, NeurostimError
from neurostimd.firmware_sim.generator import F32, SyntheticSource
from neurostimd.firmware_sim.plant import N_STATES, STATE_NAMES, PlantParams, charge_rate_uc_per_s
from neurostimd.listeners import BaseListener, DecisionEvent, LoopView, TickStats
from neurostimd.service.exitcodes import EX_CONFIG, EX_USAGE

log = structlog.get_logger(__name__)

ARMS = ("adaptive", "continuous", "none")
DEFAULT_TARGET_STATE = 0
# Samples per board block, and so per plant step: 50 ms, one loop tick. The simulator process defaults to 10; the
# plant's minutes-scale dynamics do not notice, and the signal synthesis (most of the run time) is ~4x cheaper.
DEFAULT_BLOCK_SIZE = 50
DEFAULT_CONTINUOUS_STATE = 1  # the table's "medium" entry: what a fixed open-loop setting would plausibly be
# Metrics averaged over seeds in the table (mean ± sd); the rest stay per seed in results.json.
SUMMARY_KEYS = ("time_in_target_frac", "charge_uc", "param_changes", "ramp_steps", "stim_on_frac", "stim_onsets",
                "classifier_agreement", "policy_agreement")
_NS = 1_000_000_000


class EvaluationError(NeurostimError):
    """The evaluation cannot run as asked (a continuous setting the gate refuses, a board that will not answer)."""


# --- the truth, recorded at the board --------------------------------------------------------------------------------
@dataclass
class PlantTrace:
    """Per plant step (one block the board produced): its length, the plant's state, and what the board ran."""

    dt_s: list[float] = field(default_factory=list)
    state: list[int] = field(default_factory=list)
    frequency_hz: list[float] = field(default_factory=list)
    amplitude_ma: list[float] = field(default_factory=list)
    pulse_width_us: list[float] = field(default_factory=list)

    def arrays(self, duration_s: float) -> dict[str, npt.NDArray[Any]]:
        """The steps that end within the first `duration_s` seconds, as arrays (plus `t_s`, each step's start)."""
        dt = np.asarray(self.dt_s, dtype=np.float64)
        end = np.cumsum(dt)
        keep = int(np.searchsorted(end, duration_s + 1e-9, side="right"))
        return {
            "t_s": (end - dt)[:keep], "dt_s": dt[:keep],
            "state": np.asarray(self.state[:keep], dtype=np.int64),
            "frequency_hz": np.asarray(self.frequency_hz[:keep]),
            "amplitude_ma": np.asarray(self.amplitude_ma[:keep]),
            "pulse_width_us": np.asarray(self.pulse_width_us[:keep]),
        }


class TracingSource:
    """The board's synthetic sample source, recording the plant's state and the applied stimulation of every read
    (the board reads once per block and passes the parameters it is running, None when off).

    With `signal=False` the plant steps exactly as in SyntheticSource.read but no signal is synthesised (the board
    streams zeros): for the open-loop arms, whose host never looks at the signal. The plant draws from its own
    random stream, separate from the signal generator's, so its trajectory does not depend on this.
    """

    def __init__(self, inner: SyntheticSource, *, signal: bool = True) -> None:
        self.inner = inner
        self.signal = signal
        self.n_channels = inner.n_channels
        self.sample_rate_hz = inner.sample_rate_hz
        self.trace = PlantTrace()

    @property
    def state(self) -> int | None:
        return self.inner.state

    def read(self, n_samples: int, stim: StimParams | None) -> F32:
        if self.signal:
            out = self.inner.read(n_samples, stim)
        else:
            q = charge_rate_uc_per_s(stim.frequency_hz, stim.amplitude_ma, stim.pulse_width_us) if stim else 0.0
            self.inner.plant.step(n_samples / self.sample_rate_hz, q)
            out = np.zeros((n_samples, self.n_channels), dtype=np.float32)
        t = self.trace
        t.dt_s.append(n_samples / self.sample_rate_hz)
        t.state.append(int(self.inner.plant.state))
        t.frequency_hz.append(stim.frequency_hz if stim is not None else 0.0)
        t.amplitude_ma.append(stim.amplitude_ma if stim is not None else 0.0)
        t.pulse_width_us.append(stim.pulse_width_us if stim is not None else 0.0)
        return out


# --- one arm ---------------------------------------------------------------------------------------------------------
@dataclass
class ArmRun:
    """What one arm on one seed produced: the metrics and the trace (for the timeline figure)."""

    arm: str
    seed: int
    metrics: dict[str, Any]
    trace: dict[str, npt.NDArray[Any]]
    wall_s: float


def continuous_params(cfg: Config, table: Any, state: int, board_limits: Any = None) -> tuple[StimParams, list[str]]:
    """The fixed setting of the continuous arm: table entry `state` through the gate's static rules (everything but
    ramp and dose). Raises EvaluationError when the gate refuses it or the result still breaks a rule."""
    from neurostimd.core.safety import SafetyGate, limit_violations

    try:
        entry = table.for_state(state)
    except KeyError as err:
        raise EvaluationError(f"{err.args[0]}; choose --continuous-state from the table's states") from err
    requested = StimParams(entry.frequency_hz, entry.amplitude_ma, entry.pulse_width_us, cfg.safety.interphase_gap_us)
    gate = SafetyGate(cfg.safety, board_limits)
    params, rules = gate.clamp_static(requested)
    if params is None or params.amplitude_ma <= 0:
        raise EvaluationError(f"the safety gate refuses the table's state {state} parameters "
                              f"({params_dict(requested)}; rules: {', '.join(rules) or 'none'}); choose another "
                              f"--continuous-state or review [safety]")
    broken = limit_violations(params, cfg.safety, board_limits=board_limits)
    if broken:
        raise EvaluationError(f"the gated continuous setting {params_dict(params)} still breaks {broken}; review "
                              f"[safety]")
    return params, rules


def _make_board(cfg: Config, bundle: Any, seed: int, clock: VirtualClock, log_path: Path, initial_state: int,
                block_size: int, signal: bool) -> tuple[Any, TracingSource]:
    from neurostimd.firmware_sim.inprocess import VirtualBoardDriver

    dev = cfg.device
    log_path.unlink(missing_ok=True)
    # The board is made for the bundle's montage, so the model always matches the data it sees.
    driver = VirtualBoardDriver(n_channels=bundle.n_channels, sample_rate_hz=bundle.sample_rate_hz, seed=seed,
                                watchdog_ms=getattr(dev, "watchdog_ms", 250.0), clock=clock, stream_samples=True,
                                log_path=log_path, initial_state=initial_state, block_size=block_size,
                                heartbeat_ms=getattr(dev, "heartbeat_ms", 100.0))
    inner = driver.board.source
    if not isinstance(inner, SyntheticSource):
        raise EvaluationError("the virtual board has no synthetic plant to evaluate on")
    tracer = TracingSource(inner, signal=signal)
    driver.board.source = tracer
    return driver, tracer


def _board_events(log_path: Path) -> list[dict[str, Any]]:
    events = []
    with log_path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                events.append(json.loads(line))
    return events


def _metrics(trace: dict[str, npt.NDArray[Any]], events: list[dict[str, Any]], target_state: int,
             duration_ns: int, t0_ns: int) -> dict[str, Any]:
    dt = trace["dt_s"]
    total_s = float(dt.sum())
    q_uc_per_s = trace["amplitude_ma"] * trace["pulse_width_us"] / 1000.0 * trace["frequency_hz"]
    on = trace["amplitude_ma"] > 0
    in_state = [float(dt[trace["state"] == s].sum()) for s in range(N_STATES)]
    # Parameter changes as the board logged them, within the evaluated window: every SET_STIM it applied (ramp
    # steps included) and every stop.
    window = [e for e in events if t0_ns <= e["t_mono_ns"] <= t0_ns + duration_ns]
    applied = [e for e in window if e["event"] == "stim_applied"]
    offs = [e for e in window if e["event"] == "stim_off"]
    onsets = int(np.count_nonzero(on[1:] & ~on[:-1]) + (1 if len(on) and on[0] else 0))
    return {
        "simulated_s": round(total_s, 6),
        "time_in_target_frac": in_state[target_state] / total_s if total_s > 0 else 0.0,
        "time_in_state_s": [round(v, 6) for v in in_state],
        "charge_uc": float(np.sum(q_uc_per_s * dt)),
        "mean_charge_rate_uc_per_s": float(np.sum(q_uc_per_s * dt) / total_s) if total_s > 0 else 0.0,
        "stim_on_frac": float(dt[on].sum() / total_s) if total_s > 0 else 0.0,
        "param_changes": len(applied) + len(offs),
        "stim_applied_events": len(applied),
        "stim_off_events": len(offs),
        "stim_onsets": onsets,
        "watchdog_trips": sum(1 for e in window if e["event"] == "watchdog_trip"),
        "state_transitions": int(np.count_nonzero(np.diff(trace["state"]))),
    }


Progress = Callable[[str, float], None]


def run_arm(arm: str, cfg: Config, bundle: Any, seed: int, duration_s: float, log_dir: Path, *,
            continuous: StimParams | None = None, initial_state: int = 0, block_size: int = DEFAULT_BLOCK_SIZE,
            progress: Progress | None = None) -> ArmRun:
    """Run one arm for `duration_s` simulated seconds on the plant of `seed`; board (and audit) logs go to log_dir.

    The plant steps once per board block (`block_size` samples), in every arm alike."""
    if arm not in ARMS:
        raise EvaluationError(f"unknown arm {arm!r}; choose one of {', '.join(ARMS)}")
    target_state = cfg.policy.target_state if cfg.policy.target_state is not None else DEFAULT_TARGET_STATE
    if not 0 <= target_state < N_STATES:
        raise EvaluationError(f"[policy] target_state = {target_state} is not a plant state (0..{N_STATES - 1})")
    log_dir.mkdir(parents=True, exist_ok=True)
    clock = VirtualClock()
    board_log = log_dir / f"{arm}-seed{seed}.board.jsonl"
    if block_size <= 0:
        raise EvaluationError(f"the board block size must be a positive number of samples, got {block_size}")
    driver, tracer = _make_board(cfg, bundle, seed, clock, board_log, initial_state, block_size,
                                 signal=arm == "adaptive")
    t0_ns = clock.now_ns()
    duration_ns = round(duration_s * _NS)
    wall0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if arm == "adaptive":
        extra = _run_adaptive(cfg, bundle, driver, tracer, clock, duration_s, log_dir / f"adaptive-seed{seed}",
                              progress)
    else:
        params = None
        if arm == "continuous":
            if continuous is None:
                raise EvaluationError("the continuous arm needs its fixed parameters")
            params = continuous
        extra = _run_fixed(cfg, driver, clock, params, duration_s, progress)
    wall = time.perf_counter() - wall0
    trace = tracer.trace.arrays(duration_s)
    metrics = _metrics(trace, _board_events(board_log), target_state, duration_ns, t0_ns)
    metrics.update(extra)
    return ArmRun(arm=arm, seed=seed, metrics=metrics, trace=trace, wall_s=wall)


def _run_fixed(cfg: Config, driver: Any, clock: VirtualClock, params: StimParams | None, duration_s: float,
               progress: Progress | None) -> dict[str, Any]:
    """`none` (params None) or `continuous`: the host only keeps the board's link alive at the loop cadence; the
    continuous setting goes through the safety gate every tick, so it ramps up at the configured rate and is then
    never sent again."""
    from neurostimd.core.safety import SafetyGate

    cadence_ns = int(cfg.loop.cadence_ms * 1e6)
    commands = 0
    ramp_steps = 0
    try:
        driver.open()
        gate = SafetyGate(cfg.safety, driver.info().limits)
        t0 = clock.now_ns()
        end = t0 + round(duration_s * _NS)
        deadline = t0
        running: StimParams | None = None
        ramp_done_s: float | None = None
        while deadline <= end + cadence_ns:
            clock.sleep_until(deadline)
            driver.service(clock.now_ns())  # heartbeats; the board, and the tissue, advance to now
            t_s = (clock.now_ns() - t0) / _NS
            if params is not None:
                result = gate.apply(t_s, params)
                if result.applied is None:
                    raise EvaluationError(f"the safety gate stopped the continuous setting at {t_s:.2f} s "
                                          f"({', '.join(result.limited_by)})")
                if result.applied != running:
                    driver.set_stimulation(result.applied)
                    gate.commit(t_s, result.applied, True)
                    running = result.applied
                    commands += 1
                    ramp_steps += "ramp" in result.limited_by
                    if running == params:
                        ramp_done_s = t_s
            if progress is not None:
                progress("tick", t_s)
            deadline += cadence_ns
        if running is not None:
            driver.stop()
    except DriverError as err:
        raise EvaluationError(f"the virtual board failed during the evaluation: {err}") from err
    finally:
        driver.close()
    return {"commands": commands, "ramp_steps": ramp_steps, "ramp_done_s": ramp_done_s}


def _run_adaptive(cfg: Config, bundle: Any, driver: Any, tracer: TracingSource, clock: VirtualClock,
                  duration_s: float, stem: Path, progress: Progress | None) -> dict[str, Any]:
    """The daemon's ClosedLoop, unchanged, on the board's own samples; per tick, the classifier's and the policy's
    state are compared with the plant's true state at that moment."""
    from neurostimd.loop import ClosedLoop
    from neurostimd.outputs.audit import AuditLog, remove_log
    from neurostimd.sources.board import BoardSource

    audit_path = stem.with_name(stem.name + ".audit.jsonl")
    remove_log(audit_path)  # a fresh log per run, earlier segments included
    run_cfg = cfg.model_copy(update={"audit": cfg.audit.model_copy(update={"path": audit_path})})
    source = BoardSource(driver, stale_after_ms=cfg.loop.stale_after_ms)
    agreement = _Agreement(tracer)
    t0 = clock.now_ns()
    with AuditLog(audit_path, rotate_mb=cfg.audit.rotate_mb) as audit:
        source.open()
        try:
            # One cadence before the first tick, so that every tick sees fresh samples.
            clock.sleep_until(clock.now_ns() + int(cfg.loop.cadence_ms * 1e6))
            listeners: list[BaseListener] = [agreement]
            if progress is not None:
                listeners.append(_TickProgress(progress, clock, t0))
            loop = ClosedLoop(run_cfg, clock=clock, source=source, bundle=bundle, audit=audit, driver=driver,
                              listeners=listeners)
            end_s = duration_s + cfg.loop.cadence_ms / 1000.0
            loop.run(should_stop=lambda: False, duration_s=end_s - (clock.now_ns() - t0) / _NS)
            loop.stop_stimulation("end_of_evaluation")
        finally:
            source.close()
            driver.close()
    if loop.state.listener_failures:
        raise EvaluationError(f"the adaptive arm's per-tick comparison failed (calls that raised: "
                              f"{loop.state.listener_failures}; the log says why), so its agreement figures would "
                              f"be wrong")
    arr = np.asarray(agreement.ticks, dtype=np.int64).reshape(-1, 3)
    has_probs = arr[:, 1] >= 0
    has_state = arr[:, 2] >= 0
    return {
        **_audit_summary(audit_path, duration_s),
        "ticks": len(arr),
        "commands": loop.state.commands,
        "send_failures": loop.state.send_failures,
        "classifier_agreement": float(np.mean(arr[has_probs, 1] == arr[has_probs, 0])) if has_probs.any() else None,
        "policy_agreement": float(np.mean(arr[has_state, 2] == arr[has_state, 0])) if has_state.any() else None,
        "classifier_confusion": _confusion(arr[has_probs, 0], arr[has_probs, 1]),
    }


class _Agreement(BaseListener):
    """Per decision: (the plant's true state, the classifier's argmax or -1, the policy's state or -1)."""

    def __init__(self, tracer: TracingSource) -> None:
        self.tracer = tracer
        self.ticks: list[tuple[int, int, int]] = []

    def on_decision(self, decision: DecisionEvent) -> None:
        truth = self.tracer.state
        rec = decision.record
        probs, state = rec["probs"], rec["state"]
        self.ticks.append((-1 if truth is None else int(truth), -1 if probs is None else int(np.argmax(probs)),
                           -1 if state is None else int(state)))


class _TickProgress(BaseListener):
    def __init__(self, progress: Progress, clock: VirtualClock, t0_ns: int) -> None:
        self.progress, self.clock, self.t0_ns = progress, clock, t0_ns

    def on_tick(self, stats: TickStats, loop: LoopView) -> None:
        self.progress("tick", (self.clock.now_ns() - self.t0_ns) / _NS)


def _audit_summary(path: Path, duration_s: float) -> dict[str, Any]:
    """Why the adaptive arm changed what it did, from its audit log: acknowledged commands that were ramp steps, the
    faults raised, and the reasons of the stops (decisions up to `duration_s` of board time)."""
    from neurostimd.outputs.audit import read_audit

    recs = read_audit(path).records
    acked = {r["command_seq"] for r in recs if r["event"] == "stim_ack" and r.get("ack")}
    in_window = [r for r in recs if r.get("t_data_s") is not None and r["t_data_s"] <= duration_s]
    faults: dict[str, int] = {}
    stops: dict[str, int] = {}
    for r in in_window:
        if r["event"] == "fault":
            for f in r.get("raised", []):
                faults[f] = faults.get(f, 0) + 1
        elif r["event"] == "stim_stop" and r["seq"] in acked:
            reason = str(r.get("reason"))
            stops[reason] = stops.get(reason, 0) + 1
    ramp = sum(1 for r in in_window if r["event"] == "stim_command" and r["seq"] in acked
               and "ramp" in (r.get("limited_by") or []))
    return {"ramp_steps": ramp, "faults_raised": dict(sorted(faults.items())),
            "stops_by_reason": dict(sorted(stops.items()))}


def _confusion(truth: npt.NDArray[np.int64], pred: npt.NDArray[np.int64]) -> list[list[int]]:
    m = np.zeros((N_STATES, N_STATES), dtype=np.int64)
    for t, p in zip(truth, pred, strict=True):
        if 0 <= t < N_STATES and 0 <= p < N_STATES:
            m[t, p] += 1
    return m.tolist()


# --- all arms, all seeds ---------------------------------------------------------------------------------------------
def _mean_sd(values: list[float | None]) -> dict[str, float | None]:
    v = [x for x in values if x is not None]
    if not v:
        return {"mean": None, "sd": None, "n": 0}
    a = np.asarray(v, dtype=np.float64)
    return {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": len(a)}


def evaluate(cfg: Config, out: Path, *, duration_s: float = 600.0, seeds: list[int] | None = None,
             continuous_state: int = DEFAULT_CONTINUOUS_STATE, initial_state: int = 0,
             block_size: int = DEFAULT_BLOCK_SIZE, bundle_path: Path | None = None,
             plot: bool = True, progress: bool = True, command: str | None = None) -> dict[str, Any]:
    """Run every arm on every seed and write results.json, results.md and closed_loop.png into `out`."""
    from neurostimd.core.safety import table_warnings
    from neurostimd.model.runtime import load_bundle

    if not (math.isfinite(duration_s) and duration_s > 0):
        raise EvaluationError(f"the duration must be a positive number of seconds, got {duration_s}")
    seeds = [0] if seeds is None else list(seeds)
    if not seeds:
        raise EvaluationError("give at least one seed")
    if not 0 <= initial_state < N_STATES:
        raise EvaluationError(f"the initial state must be 0..{N_STATES - 1}, got {initial_state}")
    if bundle_path is not None:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"bundle": bundle_path})})
    target_state = cfg.policy.target_state if cfg.policy.target_state is not None else DEFAULT_TARGET_STATE
    out.mkdir(parents=True, exist_ok=True)
    wall0 = time.perf_counter()
    bundle = load_bundle(cfg.model.bundle, verify=cfg.model.verify_on_load)
    from neurostimd.firmware_sim.board import DEFAULT_LIMITS

    limits = dataclasses.replace(DEFAULT_LIMITS, watchdog_ms=round(getattr(cfg.device, "watchdog_ms", 250.0)))
    from neurostimd.loop import stim_table_in_force

    table = stim_table_in_force(cfg, bundle).table  # the adaptive arm's table: [stimulation], else the bundle's
    fixed, fixed_rules = continuous_params(cfg, table, continuous_state, limits)
    entry = table.for_state(continuous_state)

    runs: list[ArmRun] = []
    n_total = len(seeds) * len(ARMS)
    for i_seed, seed in enumerate(seeds):
        for i_arm, arm in enumerate(ARMS):
            k = i_seed * len(ARMS) + i_arm + 1
            reporter = _progress_printer(f"[{k}/{n_total}] seed {seed} {arm:<10}", duration_s) if progress else None
            run = run_arm(arm, cfg, bundle, seed, duration_s, out / "logs", continuous=fixed,
                          initial_state=initial_state, block_size=block_size, progress=reporter)
            runs.append(run)
            if progress:
                m = run.metrics
                print(f"[{k}/{n_total}] seed {seed} {arm:<10} done in {run.wall_s:6.1f} s: "
                      f"in target {100 * m['time_in_target_frac']:5.1f} %, charge {m['charge_uc']:9.0f} µC, "
                      f"{m['param_changes']} parameter changes", file=sys.stderr, flush=True)
    wall = time.perf_counter() - wall0

    arms: dict[str, Any] = {}
    for arm in ARMS:
        per_seed = [dict(seed=r.seed, **r.metrics) for r in runs if r.arm == arm]
        summary = {k: _mean_sd([p.get(k) for p in per_seed]) for k in SUMMARY_KEYS
                   if any(p.get(k) is not None for p in per_seed)}
        arms[arm] = {"per_seed": per_seed, "summary": summary}
    results: dict[str, Any] = {
        "command": command,
        "duration_s": duration_s,
        "seeds": seeds,
        "target_state": target_state,
        "target_state_name": STATE_NAMES[target_state],
        "initial_state": initial_state,
        "block_size": block_size,
        "plant_step_s": block_size / bundle.sample_rate_hz,
        "cadence_ms": cfg.loop.cadence_ms,
        "bundle": _display_path(Path(cfg.model.bundle)),
        "bundle_tflite_sha256": (bundle.manifest.get("files") or {}).get("model.tflite"),
        "table": table.model_dump(),
        "table_warnings": table_warnings(cfg.safety, table, limits),
        "continuous": {
            "table_state": continuous_state, "requested": {"frequency_hz": entry.frequency_hz,
                                                           "amplitude_ma": entry.amplitude_ma,
                                                           "pulse_width_us": entry.pulse_width_us},
            "applied": params_dict(fixed), "limited_by": fixed_rules,
            "charge_rate_uc_per_s": charge_rate_uc_per_s(fixed.frequency_hz, fixed.amplitude_ma,
                                                          fixed.pulse_width_us),
            "ramp_ma_per_s": cfg.safety.ramp_ma_per_s,
        },
        "plant_params": dataclasses.asdict(PlantParams()),
        "arms": arms,
        "timing": {"wall_s": round(wall, 3), "arm_wall_s": {
            arm: round(sum(r.wall_s for r in runs if r.arm == arm), 3) for arm in ARMS}},
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(results_markdown(results))
    if plot:
        plot_results(results, [r for r in runs if r.seed == seeds[0]], out / "closed_loop.png")
    return results


def _display_path(p: Path) -> str:
    """Relative to the working directory when inside it: results committed to the repository carry no home paths."""
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def _progress_printer(label: str, duration_s: float) -> Progress:
    last = [time.perf_counter()]

    def report(_what: str, t_s: float) -> None:
        now = time.perf_counter()
        if now - last[0] >= 2.0:
            last[0] = now
            print(f"{label} {min(t_s, duration_s):7.1f} / {duration_s:g} simulated s", file=sys.stderr, flush=True)

    return report


# --- outputs -------------------------------------------------------------------------------------------------------
def _fmt(s: dict[str, Any], scale: float = 1.0, digits: int = 1) -> str:
    if s.get("mean") is None:
        return "—"
    return f"{s['mean'] * scale:,.{digits}f} ± {s['sd'] * scale:,.{digits}f}"


def results_markdown(results: dict[str, Any]) -> str:
    """The comparison table (mean ± sd over seeds) with what was run."""
    c = results["continuous"]
    a = c["applied"]
    lines = [
        f"Closed-loop evaluation on the simulated board's plant: {len(results['seeds'])} seed(s) "
        f"({', '.join(str(s) for s in results['seeds'])}), {results['duration_s']:g} simulated s per arm, "
        f"target state {results['target_state']} ({results['target_state_name']}), mean ± sd over seeds.",
        "",
        "| arm | time in target (%) | charge delivered (µC) | parameter changes | of which ramp steps "
        "| stimulation on (%) | stimulation onsets | classifier agrees with true state (%) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm in ARMS:
        s = results["arms"][arm]["summary"]
        lines.append(
            f"| {arm} | {_fmt(s['time_in_target_frac'], 100)} | {_fmt(s['charge_uc'], 1, 0)} "
            f"| {_fmt(s['param_changes'], 1, 1)} | {_fmt(s.get('ramp_steps', {}), 1, 1)} "
            f"| {_fmt(s['stim_on_frac'], 100)} | {_fmt(s['stim_onsets'], 1, 1)} "
            f"| {_fmt(s.get('classifier_agreement', {}), 100)} |")
    lines += [
        "",
        f"continuous: the table's state {c['table_state']} entry ({c['requested']['frequency_hz']:g} Hz, "
        f"{c['requested']['amplitude_ma']:g} mA, {c['requested']['pulse_width_us']:g} µs) through the safety gate → "
        f"{a['frequency_hz']:g} Hz, {a['amplitude_ma']:.3g} mA, {a['pulse_width_us']:g} µs "
        f"({'limited by ' + ', '.join(c['limited_by']) if c['limited_by'] else 'unclamped'}), "
        f"{c['charge_rate_uc_per_s']:.4g} µC/s, ramped up at {c['ramp_ma_per_s']:g} mA/s from t = 0.",
        "Parameter changes: every SET_STIM the board applied (ramp steps included) plus every stop, from the board's "
        "event log.",
        f"Wall time: {results['timing']['wall_s']:.1f} s.",
    ]
    if results.get("command"):
        lines += ["", f"Command: `{results['command']}`"]
    return "\n".join(lines) + "\n"


def plot_results(results: dict[str, Any], runs: list[ArmRun], path: Path) -> Path:
    """Bars (mean ± sd, one dot per seed) for time in target, charge and parameter changes; below them the first
    seed's timeline per arm: the plant's true state and the amplitude the board ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"adaptive": "tab:blue", "continuous": "tab:orange", "none": "0.5"}
    fig = plt.figure(figsize=(13, 9))
    grid = fig.add_gridspec(1 + len(runs), 3, height_ratios=[2.2] + [1.0] * len(runs), hspace=0.55, wspace=0.3)
    bars = (("time_in_target_frac", 100.0, f"time in target state {results['target_state']} (%)"),
            ("charge_uc", 1e-3, "charge delivered (mC)"),
            ("param_changes", 1.0, "parameter changes"))
    x = np.arange(len(ARMS))
    for j, (key, scale, title) in enumerate(bars):
        ax = fig.add_subplot(grid[0, j])
        means = [(results["arms"][a]["summary"][key]["mean"] or 0.0) * scale for a in ARMS]
        sds = [(results["arms"][a]["summary"][key]["sd"] or 0.0) * scale for a in ARMS]
        ax.bar(x, means, yerr=sds, capsize=4, color=[colors[a] for a in ARMS], alpha=0.8)
        for i, a in enumerate(ARMS):
            vals = [p[key] * scale for p in results["arms"][a]["per_seed"]]
            ax.scatter(np.full(len(vals), x[i]), vals, color="k", s=10, zorder=3)
        ax.set_xticks(x, ARMS)
        ax.set_title(title, fontsize=10)
    seed = runs[0].seed if runs else None
    amp_top = max([1.0] + [float(r.trace["amplitude_ma"].max()) * 1.15 for r in runs if len(r.trace["t_s"])])
    for i, run in enumerate(runs):
        ax = fig.add_subplot(grid[1 + i, :])
        tr = run.trace
        step = max(1, len(tr["t_s"]) // 4000)
        t = tr["t_s"][::step]
        # amplitude underneath, the true state drawn over it (the twin axis is on top)
        ax.fill_between(t, tr["amplitude_ma"][::step], step="post", color=colors[run.arm], alpha=0.45)
        ax.set_ylim(0, amp_top)
        ax.set_ylabel("amplitude (mA)", fontsize=8)
        ax_state = ax.twinx()
        ax_state.step(t, tr["state"][::step], where="post", color="k", lw=0.9)
        ax_state.set_ylim(-0.3, N_STATES - 0.7)
        ax_state.set_yticks(range(N_STATES), [f"{s} {STATE_NAMES[s]}" for s in range(N_STATES)], fontsize=7)
        m = run.metrics
        ax.set_title(f"{run.arm}, seed {seed}: true plant state (black line) and applied amplitude (shaded) — "
                     f"in target {100 * m['time_in_target_frac']:.0f} %, {m['charge_uc'] / 1000:.1f} mC, "
                     f"{m['param_changes']} changes", fontsize=9)
        if i == len(runs) - 1:
            ax.set_xlabel("simulated time (s)")
    fig.suptitle(f"Closed-loop evaluation: {len(results['seeds'])} seed(s) × {results['duration_s']:g} s per arm",
                 fontsize=12)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


# --- the command ---------------------------------------------------------------------------------------------------
def cmd_closed_loop_eval(args: argparse.Namespace) -> int:
    from neurostimd.service.logs import configure_logging

    n_seeds = int(getattr(args, "seeds", 1))
    if n_seeds < 1:
        print(f"--seeds must be at least 1, not {n_seeds}", file=sys.stderr)
        return EX_USAGE
    if not (math.isfinite(args.duration) and args.duration > 0):
        print(f"--duration must be a positive number of simulated seconds, not {args.duration}", file=sys.stderr)
        return EX_USAGE
    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        for line in err.errors or [str(err)]:
            print(f"{args.config}: {line}", file=sys.stderr)
        return EX_CONFIG
    # The loop logs every command at info; here only problems matter, progress goes to stderr.
    configure_logging("error", "console")
    seeds = [args.seed + i for i in range(n_seeds)]
    bundle = getattr(args, "bundle", None)
    command = "neurostimd closed-loop-eval " + " ".join(shlex.quote(a) for a in sys.argv[2:]) \
        if len(sys.argv) > 2 and sys.argv[1] == "closed-loop-eval" else None
    t0 = time.perf_counter()
    try:
        results = evaluate(cfg, Path(args.out), duration_s=float(args.duration), seeds=seeds,
                           continuous_state=int(getattr(args, "continuous_state", DEFAULT_CONTINUOUS_STATE)),
                           initial_state=int(getattr(args, "initial_state", 0)),
                           block_size=int(getattr(args, "block", DEFAULT_BLOCK_SIZE)),
                           bundle_path=Path(bundle) if bundle else None, command=command)
    except NeurostimError as err:
        print(f"neurostimd closed-loop-eval: {err}", file=sys.stderr)
        return EX_CONFIG
    print(results_markdown(results))
    print(f"wrote {args.out}/results.json, results.md, closed_loop.png in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    return 0
