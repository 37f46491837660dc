"""`neurostimd closed-loop-eval --plant NAME`: which control law earns its place? Five arms on a simulated plant,
the same plant seeds for every arm — `none`, `continuous` (one clinically usual setting through the same gate from
t = 0), and the three laws behind `[policy] kind`: `table`, `dual_threshold`, `proportional` (the daemon's own
ClosedLoop: classifier → law → fault monitor → safety gate → board). Everything runs in process on a virtual clock
through the virtual board (the real serial driver and protocol) with the plant named by `--plant`
(firmware_sim/plants), so a 600 s arm takes seconds to minutes and the same seeds give the same numbers.

The arms come from an evaluation file (config/eval/beta.toml, config/eval/markov.toml): a base daemon config and,
per law arm, the tables merged over it. The truth comes from the board: a thin wrapper around the plant records, for
every block the board produces (one plant step), the plant's state, its biomarker and the stimulation delivered.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import platform
import shlex
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from neurostimd.clock import VirtualClock
from neurostimd.config import Config, config_base_dir, parse_config
from neurostimd.core.controller import params_dict
from neurostimd.drivers.errors import DriverError
from neurostimd.drivers.types import StimParams
from neurostimd.errors import ConfigError, NeurostimError
from neurostimd.firmware_sim.generator import F32
from neurostimd.listeners import BaseListener, LoopView, TickStats
from neurostimd.parallel import Runner, RunnerFailed, RunnerUnavailable, make_runner, runner_exit
from neurostimd.service.exitcodes import EX_CONFIG, EX_USAGE

log = structlog.get_logger(__name__)

ARMS = ("none", "continuous", "table", "dual_threshold", "proportional")
LAW_ARMS = ("table", "dual_threshold", "proportional")
PLANT_NAMES = ("markov", "beta")
# Samples per board block, and so per plant step: 50 ms, one loop tick (the simulator process defaults to 10).
DEFAULT_BLOCK_SIZE = 50
# TEED (Koss et al. 2005, J Neurosci Methods): energy = I² · R · pulse width · frequency · time, one phase per
# pulse, with a stated load. 1 kΩ is the usual DBS lead impedance the formula is quoted with.
TEED_LOAD_OHM = 1000.0
# "Steady state" for the switch rate: switches after the first minute (the start from off is not a switch).
DEFAULT_WARMUP_S = 60.0
# Per-arm metrics reported as {"mean", "ci95", "per_seed"}; the paired comparison against continuous covers these.
REPORTED = ("time_in_target_pct", "charge_uc", "energy_uj", "stim_on_pct", "switches_per_hour",
            "onoff_switches_per_hour", "undone_switches", "low_confidence_switches", "biomarker_error",
            "biomarker_error_reduction_pct", "power_reduction_pct", "charge_reduction_pct",
            "plant_regime_changes_per_hour")
_NS = 1_000_000_000


class EvaluationError(NeurostimError):
    """The evaluation cannot run as asked (a setting the gate refuses, a bad evaluation file, a board that fails)."""


# --- the truth, recorded at the board --------------------------------------------------------------------------------
@dataclass
class PlantTrace:
    """Per plant step (one block the board produced): its length, the plant's state and biomarker, what ran."""

    dt_s: list[float] = field(default_factory=list)
    state: list[int] = field(default_factory=list)
    in_target: list[bool] = field(default_factory=list)
    biomarker: list[float] = field(default_factory=list)
    frequency_hz: list[float] = field(default_factory=list)
    amplitude_ma: list[float] = field(default_factory=list)
    pulse_width_us: list[float] = field(default_factory=list)
    regime: list[int] = field(default_factory=list)  # the beta plant's hidden regime (0 healthy, 1 beta-prone)

    def arrays(self, duration_s: float) -> dict[str, npt.NDArray[Any]]:
        """The steps that end within the first `duration_s` seconds, as arrays (plus `t_s`, each step's start)."""
        dt = np.asarray(self.dt_s, dtype=np.float64)
        end = np.cumsum(dt)
        keep = int(np.searchsorted(end, duration_s + 1e-9, side="right"))
        return {
            "t_s": (end - dt)[:keep], "dt_s": dt[:keep],
            "state": np.asarray(self.state[:keep], dtype=np.int64),
            "in_target": np.asarray(self.in_target[:keep], dtype=bool),
            "biomarker": np.asarray(self.biomarker[:keep], dtype=np.float64),
            "frequency_hz": np.asarray(self.frequency_hz[:keep], dtype=np.float64),
            "amplitude_ma": np.asarray(self.amplitude_ma[:keep], dtype=np.float64),
            "pulse_width_us": np.asarray(self.pulse_width_us[:keep], dtype=np.float64),
            "regime": np.asarray(self.regime[:keep], dtype=np.int64),
        }


class TracingSource:
    """The board's plant, recording after every read its state, target flag and biomarker and the stimulation the
    board delivered during the read (the board reads once per block and passes what it runs, None when off)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.n_channels = inner.n_channels
        self.sample_rate_hz = inner.sample_rate_hz
        self.trace = PlantTrace()

    @property
    def state(self) -> int:
        return int(self.inner.state)

    def read(self, n_samples: int, stim: StimParams | None) -> F32:
        out: F32 = self.inner.read(n_samples, stim)
        t = self.trace
        t.dt_s.append(n_samples / self.sample_rate_hz)
        t.state.append(int(self.inner.state))
        t.in_target.append(bool(self.inner.in_target))
        t.biomarker.append(float(self.inner.biomarker))
        t.frequency_hz.append(stim.frequency_hz if stim is not None else 0.0)
        t.amplitude_ma.append(stim.amplitude_ma if stim is not None else 0.0)
        t.pulse_width_us.append(stim.pulse_width_us if stim is not None else 0.0)
        t.regime.append(int(getattr(self.inner, "regime", -1)))
        return out


# --- the evaluation file ---------------------------------------------------------------------------------------------
@dataclass
class EvalSpec:
    """What an evaluation file says: the plant, the base daemon config, the continuous setting and each law arm's
    tables (merged over the base), the biomarker setpoint the error is measured to, and the tuning seeds used."""

    plant: str
    base_path: Path
    base: dict[str, Any]
    continuous: dict[str, float]
    arms: dict[str, dict[str, Any]]
    biomarker_setpoint: float | None
    tuning_seeds: list[int]
    notes: dict[str, str]
    path: Path

    def arm_config(self, arm: str) -> Config:
        """The daemon config the arm runs (for none/continuous: the base; their [safety] gates the setting)."""
        data = copy.deepcopy(self.base)
        for key, table in self.arms.get(arm, {}).items():
            if isinstance(table, dict) and isinstance(data.get(key), dict) and key != "policy":
                data[key] = _deep_merge(data[key], table)
            else:
                data[key] = copy.deepcopy(table)
        try:
            return parse_config(data, base_dir=config_base_dir(self.base_path))
        except ConfigError as err:
            raise EvaluationError(f"{self.path}: arm {arm!r} over {self.base_path} is not a valid config: "
                                  f"{'; '.join(err.errors or [str(err)])}") from err


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def default_spec_path(plant: str) -> Path:
    """config/eval/<plant>.toml of the project checkout; installed from a wheel there is none (its configs would
    write into the package): ConfigError saying to pass --arms from `neurostimd init DIR`."""
    path = Path(__file__).resolve().parents[2] / "config" / "eval" / f"{plant}.toml"
    if not path.is_file():
        raise ConfigError(f"no evaluation file for --plant {plant} in an installed package: run `neurostimd init DIR` "
                          f"and pass --arms DIR/config/eval/{plant}.toml")
    return path


def load_spec(path: Path, plant: str | None = None) -> EvalSpec:
    """Read an evaluation file; EvaluationError naming the file and the field otherwise."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise EvaluationError(f"cannot read the evaluation file {path}: {err.strerror}; check --arms") from err
    except tomllib.TOMLDecodeError as err:
        raise EvaluationError(f"{path} is not valid TOML: {err}") from err
    ev = data.get("evaluation", {})
    file_plant = ev.get("plant")
    if file_plant not in PLANT_NAMES:
        raise EvaluationError(f"{path}: [evaluation] plant must be one of {', '.join(PLANT_NAMES)}, "
                              f"got {file_plant!r}")
    if plant is not None and plant != file_plant:
        raise EvaluationError(f"{path} is for plant {file_plant!r}, not {plant!r}; give --arms for that plant")
    base_name = ev.get("base_config")
    if not isinstance(base_name, str):
        raise EvaluationError(f"{path}: [evaluation] base_config (the daemon config the arms start from) is missing")
    base_path = (path.parent / base_name).resolve()  # relative to the evaluation file
    try:
        base = tomllib.loads(base_path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise EvaluationError(f"{path}: [evaluation] base_config {base_path} cannot be read: {err}") from err
    cont = data.get("continuous", {})
    try:
        continuous = {k: float(cont[k]) for k in ("frequency_hz", "amplitude_ma", "pulse_width_us")}
    except (KeyError, TypeError, ValueError) as err:
        raise EvaluationError(f"{path}: [continuous] needs frequency_hz, amplitude_ma and pulse_width_us as "
                              f"numbers ({err})") from err
    arms = data.get("arms", {})
    unknown = sorted(set(arms) - set(LAW_ARMS))
    if unknown:
        raise EvaluationError(f"{path}: [arms.{unknown[0]}] is not a law arm; the law arms are {', '.join(LAW_ARMS)}")
    for arm in LAW_ARMS:
        kind = arms.get(arm, {}).get("policy", {}).get("kind", "table")
        if kind != arm:
            raise EvaluationError(f"{path}: [arms.{arm}.policy] kind must be {arm!r}, got {kind!r}")
    setpoint = ev.get("biomarker_setpoint")
    notes = {str(k): str(v) for k, v in data.get("notes", {}).items()}
    return EvalSpec(plant=file_plant, base_path=base_path, base=base, continuous=continuous, arms=arms,
                    biomarker_setpoint=float(setpoint) if setpoint is not None else None,
                    tuning_seeds=[int(s) for s in ev.get("tuning_seeds", [])], notes=notes, path=path)


def continuous_params(cfg: Config, requested: StimParams, board_limits: Any = None) -> tuple[StimParams, list[str]]:
    """The continuous arm's fixed setting through the gate's static rules (everything but ramp and dose). Raises
    EvaluationError when the gate refuses it or the result still breaks a rule."""
    from neurostimd.core.safety import SafetyGate, limit_violations

    gate = SafetyGate(cfg.safety, board_limits)
    params, rules = gate.clamp_static(requested)
    if params is None or params.amplitude_ma <= 0:
        raise EvaluationError(f"the safety gate refuses the continuous setting {params_dict(requested)} (rules: "
                              f"{', '.join(rules) or 'none'}); choose another --continuous-amplitude or review "
                              f"[safety]")
    broken = limit_violations(params, cfg.safety, board_limits=board_limits)
    if broken:
        raise EvaluationError(f"the gated continuous setting {params_dict(params)} still breaks {broken}")
    return params, rules


# --- metrics on a trace and a command list (pure) --------------------------------------------------------------------
@dataclass(frozen=True)
class AppliedCommand:
    """One parameter change the board acknowledged: when (s from the arm's start), what now runs (None: off), the
    gate's rules that shaped it, and the faults in force at its decision."""

    t_s: float
    applied: tuple[float, float, float] | None  # (frequency_hz, amplitude_ma, pulse_width_us)
    limited_by: tuple[str, ...] = ()
    faults: tuple[str, ...] = ()

    @property
    def ramp_step(self) -> bool:
        return "ramp" in self.limited_by


def switch_metrics(commands: Sequence[AppliedCommand], duration_s: float, *, warmup_s: float,
                   undo_window_s: float) -> dict[str, Any]:
    """Switches: acknowledged parameter changes that are not ramp steps (a ramp's steps are limited by the ramp
    except its last, which completes the change, so one ramped change counts once). A switch is *undone* when a later
    switch within `undo_window_s` brings back the setting that ran before the change began. A *low-confidence*
    switch is one whose decision had low confidence as its only fault. Rates are per hour after `warmup_s`."""
    switches: list[tuple[float, Any, Any]] = []  # (t, setting before the change began, setting after)
    running: Any = None
    before: Any = None  # what ran before the current (possibly ramped) change began
    in_change = False
    ramp_steps = 0
    low_conf = 0
    for c in commands:
        if c.applied == running:
            continue  # not a change of what runs (e.g. a 0 mA command while off)
        if not in_change:
            before = running
        if c.ramp_step:
            ramp_steps += 1
            in_change = True
        else:
            switches.append((c.t_s, before, c.applied))
            in_change = False
            if c.faults and set(c.faults) == {"low_confidence"}:
                low_conf += 1
        running = c.applied
    undone = 0
    for i, (t_i, prev_i, _after) in enumerate(switches):
        for t_j, _b, after_j in switches[i + 1:]:
            if t_j - t_i > undo_window_s:
                break
            if after_j == prev_i:
                undone += 1
                break
    steady = [s for s in switches if s[0] >= warmup_s]
    steady_h = max(duration_s - warmup_s, 0.0) / 3600.0
    onoff = [s for s in steady if (s[1] is None) != (s[2] is None)]
    return {
        "switches": len(switches),
        "switches_steady": len(steady),
        "switches_per_hour": len(steady) / steady_h if steady_h > 0 else None,
        "onoff_switches_per_hour": len(onoff) / steady_h if steady_h > 0 else None,
        "ramp_steps": ramp_steps,
        "undone_switches": undone,
        "low_confidence_switches": low_conf,
        "parameter_changes": len(commands),
    }


def delivery_metrics(trace: dict[str, npt.NDArray[Any]], setpoint: float | None,
                     load_ohm: float = TEED_LOAD_OHM) -> dict[str, Any]:
    """Time in target, charge (µC, per phase: I·pw·f·t), energy (µJ, TEED: I²·R·pw·f·t), stimulation-on time, and the
    biomarker's mean and its error to `setpoint` (mean of max(0, biomarker − setpoint): above the setpoint only)."""
    dt = trace["dt_s"]
    total_s = float(dt.sum())
    amp, pw, f = trace["amplitude_ma"], trace["pulse_width_us"], trace["frequency_hz"]
    charge_uc = float(np.sum(amp * pw * 1e-3 * f * dt))
    energy_uj = float(np.sum((amp * 1e-3) ** 2 * load_ohm * pw * 1e-6 * f * dt) * 1e6)
    on = amp > 0
    out: dict[str, Any] = {
        "simulated_s": round(total_s, 6),
        "time_in_target_pct": 100.0 * float(dt[trace["in_target"]].sum()) / total_s if total_s > 0 else 0.0,
        "charge_uc": charge_uc,
        "energy_uj": energy_uj,
        "stim_on_pct": 100.0 * float(dt[on].sum()) / total_s if total_s > 0 else 0.0,
        "mean_amplitude_ma": float(np.sum(amp * dt) / total_s) if total_s > 0 else 0.0,
        "biomarker_mean": float(np.sum(trace["biomarker"] * dt) / total_s) if total_s > 0 else 0.0,
    }
    if setpoint is not None and total_s > 0:
        out["biomarker_error"] = float(np.sum(np.maximum(trace["biomarker"] - setpoint, 0.0) * dt) / total_s)
    return out


def t_interval(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and 95 % t-interval over seeds (None where fewer than two values), with the values."""
    from scipy import stats

    v = [float(x) for x in values if x is not None and math.isfinite(x)]
    if not v:
        return {"mean": None, "ci95": [None, None], "per_seed": list(values)}
    a = np.asarray(v)
    mean = float(a.mean())
    if len(a) < 2:
        return {"mean": mean, "ci95": [None, None], "per_seed": list(values)}
    half = float(stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))
    return {"mean": mean, "ci95": [mean - half, mean + half], "per_seed": list(values)}


def paired(arm_values: Sequence[float | None], ref_values: Sequence[float | None]) -> dict[str, Any]:
    """Per-seed differences arm − reference, their mean and 95 % t-interval."""
    diffs = [None if a is None or b is None else float(a) - float(b)
             for a, b in zip(arm_values, ref_values, strict=True)]
    return t_interval(diffs)


# --- one arm ---------------------------------------------------------------------------------------------------------
Progress = Callable[[float], None]


@dataclass
class ArmRun:
    """What one arm on one seed produced: the metrics and (first seed only) the trace for the timeline figure."""

    arm: str
    seed: int
    metrics: dict[str, Any]
    trace: dict[str, npt.NDArray[Any]] | None
    wall_s: float


def _make_board(cfg: Config, plant: str, bundle: Any, seed: int, clock: VirtualClock, log_path: Path,
                block_size: int) -> tuple[Any, TracingSource]:
    from neurostimd.firmware_sim.inprocess import VirtualBoardDriver

    dev = cfg.device
    log_path.unlink(missing_ok=True)
    driver = VirtualBoardDriver(n_channels=bundle.n_channels, sample_rate_hz=bundle.sample_rate_hz, seed=seed,
                                watchdog_ms=getattr(dev, "watchdog_ms", 250.0), clock=clock, stream_samples=True,
                                log_path=log_path, block_size=block_size, plant=plant,
                                heartbeat_ms=getattr(dev, "heartbeat_ms", 100.0))
    if driver.plant_model is None:
        raise EvaluationError("the virtual board has no plant to evaluate on")
    tracer = TracingSource(driver.board.source)
    driver.board.source = tracer
    return driver, tracer


def run_arm(arm: str, cfg: Config, plant: str, bundle: Any, seed: int, duration_s: float, log_dir: Path, *,
            continuous: StimParams | None = None, setpoint: float | None = None,
            block_size: int = DEFAULT_BLOCK_SIZE, warmup_s: float = DEFAULT_WARMUP_S, keep_trace: bool = False,
            progress: Progress | None = None) -> ArmRun:
    """Run one arm for `duration_s` simulated seconds on the plant of `seed`; board and audit logs go to log_dir."""
    if arm not in ARMS:
        raise EvaluationError(f"unknown arm {arm!r}; choose one of {', '.join(ARMS)}")
    if block_size <= 0:
        raise EvaluationError(f"the board block size must be a positive number of samples, got {block_size}")
    log_dir.mkdir(parents=True, exist_ok=True)
    clock = VirtualClock()
    driver, tracer = _make_board(cfg, plant, bundle, seed, clock, log_dir / f"{arm}-seed{seed}.board.jsonl",
                                 block_size)
    wall0 = time.perf_counter()
    if arm in LAW_ARMS:
        commands, extra = _run_law(cfg, bundle, driver, clock, duration_s, log_dir / f"{arm}-seed{seed}", progress)
        undo_s = _onset_s(cfg)
    else:
        if arm == "continuous" and continuous is None:
            raise EvaluationError("the continuous arm needs its fixed parameters")
        commands, extra = _run_fixed(cfg, driver, clock, continuous if arm == "continuous" else None, duration_s,
                                     progress)
        undo_s = 1.0
    wall = time.perf_counter() - wall0
    trace = tracer.trace.arrays(duration_s)
    metrics = delivery_metrics(trace, setpoint)
    metrics.update(switch_metrics([c for c in commands if c.t_s <= duration_s], duration_s,
                                  warmup_s=min(warmup_s, duration_s / 4), undo_window_s=undo_s))
    metrics["undo_window_s"] = undo_s
    metrics["state_transitions"] = int(np.count_nonzero(np.diff(trace["state"])))
    if len(trace["regime"]) and trace["regime"][0] >= 0 and duration_s > 0:
        # how often the plant's hidden regime itself changes: the floor for a law that follows it
        metrics["plant_regime_changes_per_hour"] = float(np.count_nonzero(np.diff(trace["regime"]))
                                                         / (duration_s / 3600.0))
    metrics.update(extra)
    return ArmRun(arm=arm, seed=seed, metrics=metrics, trace=trace if keep_trace else None, wall_s=wall)


def _onset_s(cfg: Config) -> float:
    """The law's onset time (the window a switch counts as undone in); a PI has none: its update period, ≥ 1 s."""
    pol = cfg.policy
    onset = getattr(pol, "onset_ms", None)
    if onset is None:
        return max(1.0, float(getattr(pol, "update_ms", 1000.0)) / 1000.0)
    return max(float(onset) / 1000.0, 0.05)


def _params_tuple(p: StimParams | None) -> tuple[float, float, float] | None:
    return None if p is None else (p.frequency_hz, p.amplitude_ma, p.pulse_width_us)


def _run_fixed(cfg: Config, driver: Any, clock: VirtualClock, params: StimParams | None, duration_s: float,
               progress: Progress | None) -> tuple[list[AppliedCommand], dict[str, Any]]:
    """`none` (params None) or `continuous`: the host keeps the board's link alive at the loop cadence; the
    continuous setting goes through the safety gate every tick, so it ramps up at the configured rate from t = 0."""
    from neurostimd.core.safety import SafetyGate

    cadence_ns = int(cfg.loop.cadence_ms * 1e6)
    commands: list[AppliedCommand] = []
    try:
        driver.open()
        gate = SafetyGate(cfg.safety, driver.info().limits)
        t0 = clock.now_ns()
        end = t0 + round(duration_s * _NS)
        deadline = t0
        running: StimParams | None = None
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
                    commands.append(AppliedCommand(t_s, _params_tuple(running), tuple(result.limited_by)))
            if progress is not None:
                progress(t_s)
            deadline += cadence_ns
        if running is not None:
            driver.stop()
    except DriverError as err:
        raise EvaluationError(f"the virtual board failed during the evaluation: {err}") from err
    finally:
        driver.close()
    return commands, {}


def _run_law(cfg: Config, bundle: Any, driver: Any, clock: VirtualClock, duration_s: float, stem: Path,
             progress: Progress | None) -> tuple[list[AppliedCommand], dict[str, Any]]:
    """The daemon's ClosedLoop, unchanged, with the arm's [policy] on the board's own samples."""
    from neurostimd.loop import ClosedLoop
    from neurostimd.outputs.audit import AuditLog, remove_log
    from neurostimd.sources.board import BoardSource

    audit_path = stem.with_name(stem.name + ".audit.jsonl")
    remove_log(audit_path)
    run_cfg = cfg.model_copy(update={"audit": cfg.audit.model_copy(update={"path": audit_path})})
    source = BoardSource(driver, stale_after_ms=cfg.loop.stale_after_ms)
    t0 = clock.now_ns()
    with AuditLog(audit_path, rotate_mb=cfg.audit.rotate_mb) as audit:
        source.open()
        try:
            clock.sleep_until(clock.now_ns() + int(cfg.loop.cadence_ms * 1e6))
            listeners: list[BaseListener] = []
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
    commands, extra = audit_commands(audit_path)
    extra.update(commands_sent=loop.state.commands, send_failures=loop.state.send_failures)
    return commands, extra


def audit_commands(path: Path) -> tuple[list[AppliedCommand], dict[str, Any]]:
    """The acknowledged parameter changes of a law arm's audit log, in order, and the faults raised. Times are the
    decision's data time (s of board time since the arm's start)."""
    from neurostimd.outputs.audit import read_audit

    recs = read_audit(path).records
    acked = {r["command_seq"] for r in recs if r["event"] == "stim_ack" and r.get("ack")}
    commands: list[AppliedCommand] = []
    faults: dict[str, int] = {}
    for r in recs:
        if r["event"] == "fault":
            for f in r.get("raised", []):
                faults[f] = faults.get(f, 0) + 1
        if r["event"] not in ("stim_command", "stim_stop") or r["seq"] not in acked:
            continue
        if r.get("reason") == "end_of_evaluation" or r.get("t_data_s") is None:
            continue
        a = r.get("applied")
        # a 0 mA command is a stop (docs/control-laws.md): it counts as "off"
        applied = None
        if a and float(a["amplitude_ma"]) > 0:
            applied = (float(a["frequency_hz"]), float(a["amplitude_ma"]), float(a["pulse_width_us"]))
        commands.append(AppliedCommand(float(r["t_data_s"]), applied, tuple(r.get("limited_by") or ()),
                                       tuple(r.get("faults") or ())))
    return commands, {"faults_raised": dict(sorted(faults.items()))}


class _TickProgress(BaseListener):
    def __init__(self, progress: Progress, clock: VirtualClock, t0_ns: int) -> None:
        self.progress, self.clock, self.t0_ns = progress, clock, t0_ns

    def on_tick(self, stats: TickStats, loop: LoopView) -> None:
        self.progress((self.clock.now_ns() - self.t0_ns) / _NS)


# --- all arms, all seeds ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Job:
    spec_path: str
    plant: str
    arm: str
    seed: int
    duration_s: float
    log_dir: str
    continuous: tuple[float, float, float]
    block_size: int
    warmup_s: float
    keep_trace: bool
    progress: bool
    label: str


_BUNDLES: dict[str, Any] = {}


def _run_job(job: _Job) -> ArmRun:
    """One (arm, seed) in this process (a worker loads the bundle once)."""
    from neurostimd.model.runtime import load_bundle
    from neurostimd.service.logs import configure_logging

    configure_logging("error", "console")
    spec = load_spec(Path(job.spec_path), job.plant)
    cfg = spec.arm_config(job.arm)
    key = str(cfg.model.bundle)
    if key not in _BUNDLES:
        _BUNDLES[key] = load_bundle(cfg.model.bundle, verify=cfg.model.verify_on_load)
    bundle = _BUNDLES[key]
    cont = StimParams(*job.continuous, cfg.safety.interphase_gap_us)
    reporter = _progress_printer(job.label, job.duration_s) if job.progress else None
    run = run_arm(job.arm, cfg, job.plant, bundle, job.seed, job.duration_s, Path(job.log_dir), continuous=cont,
                  setpoint=spec.biomarker_setpoint, block_size=job.block_size, warmup_s=job.warmup_s,
                  keep_trace=job.keep_trace, progress=reporter)
    if job.progress:
        m = run.metrics
        print(f"{job.label} done in {run.wall_s:6.1f} s: in target {m['time_in_target_pct']:5.1f} %, charge "
              f"{m['charge_uc']:9.0f} µC, {m['switches']} switches", file=sys.stderr, flush=True)
    return run


def _job_item(_shared: None, job: _Job) -> ArmRun:
    return _run_job(job)


def evaluate(spec: EvalSpec, out: Path, *, duration_s: float = 600.0, seeds: Sequence[int] = (0,),
             continuous_amplitude_ma: float | None = None, block_size: int = DEFAULT_BLOCK_SIZE,
             warmup_s: float = DEFAULT_WARMUP_S, jobs: int = 1, arms: Sequence[str] = ARMS, plot: bool = True,
             progress: bool = True, command: str | None = None, runner: Runner | None = None) -> dict[str, Any]:
    """Run every arm on every seed and write results.json, results.md and closed_loop.png into `out`; the (arm,
    seed) jobs run on `runner`, or, without one, `jobs` at a time on a local Ray instance (one by one without
    Ray)."""
    from neurostimd.firmware_sim.board import DEFAULT_LIMITS

    if not (math.isfinite(duration_s) and duration_s > 0):
        raise EvaluationError(f"the duration must be a positive number of seconds, got {duration_s}")
    seeds = list(seeds)
    if not seeds:
        raise EvaluationError("give at least one seed")
    overlap = sorted(set(seeds) & set(spec.tuning_seeds))
    if overlap:
        log.warning("reported_seeds_are_tuning_seeds", seeds=overlap)
    arms = [a for a in ARMS if a in arms]
    out.mkdir(parents=True, exist_ok=True)
    wall0 = time.perf_counter()
    cont_req = dict(spec.continuous)
    if continuous_amplitude_ma is not None:
        cont_req["amplitude_ma"] = float(continuous_amplitude_ma)
    base_cfg = spec.arm_config("continuous")
    limits = dataclasses.replace(DEFAULT_LIMITS, watchdog_ms=round(getattr(base_cfg.device, "watchdog_ms", 250.0)))
    fixed, fixed_rules = continuous_params(base_cfg, StimParams(cont_req["frequency_hz"], cont_req["amplitude_ma"],
                                                                cont_req["pulse_width_us"],
                                                                base_cfg.safety.interphase_gap_us), limits)
    settings = {arm: spec.arm_config(arm).policy.model_dump(mode="json") for arm in arms if arm in LAW_ARMS}
    safety = {arm: spec.arm_config(arm).safety.model_dump(mode="json") for arm in arms}
    job_list = []
    n_total = len(seeds) * len(arms)
    for i_seed, seed in enumerate(seeds):
        for i_arm, arm in enumerate(arms):
            k = i_seed * len(arms) + i_arm + 1
            job_list.append(_Job(str(spec.path), spec.plant, arm, seed, duration_s, str(out / "logs"),
                                 _params_tuple(fixed) or (0.0, 0.0, 0.0), block_size, warmup_s, seed == seeds[0],
                                 progress, f"[{k}/{n_total}] seed {seed} {arm:<14}"))
    own = runner is None
    runner = runner or make_runner(jobs, None, False, "closed-loop-eval")
    try:
        runs = runner.map(_job_item, None, job_list)
    finally:
        if own:
            runner.close()
    wall = time.perf_counter() - wall0
    results = summarise(runs, arms, seeds)
    results.update({
        "command": command,
        "plant": spec.plant,
        "evaluation_file": _display_path(spec.path),
        "base_config": _display_path(spec.base_path),
        "duration_s": duration_s,
        "seeds": seeds,
        "tuning_seeds": spec.tuning_seeds,
        "warmup_s": min(warmup_s, duration_s / 4),
        "block_size": block_size,
        "biomarker_setpoint": spec.biomarker_setpoint,
        "teed_load_ohm": TEED_LOAD_OHM,
        "continuous": {"requested": cont_req, "applied": params_dict(fixed), "limited_by": fixed_rules},
        "arm_settings": settings,
        "arm_safety": safety,
        "notes": spec.notes,
        "versions": _versions(),
        "timing": {"wall_s": round(wall, 3), "jobs": runner.jobs, "runner": runner.description,
                   "arm_wall_s": {a: round(sum(r.wall_s for r in runs if r.arm == a), 3) for a in arms}},
    })
    results["targets"] = targets(results)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(results_markdown(results))
    if plot:
        plot_results(results, [r for r in runs if r.seed == seeds[0]], out / "closed_loop.png")
    return results


def summarise(runs: Sequence[ArmRun], arms: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """Per arm: each reported metric as {mean, ci95, per_seed} (seeds in order), the per-seed metrics, and the paired
    comparison against `continuous`. Reductions are per seed: error vs `none`, power (energy) and charge vs
    `continuous`."""
    by = {(r.arm, r.seed): dict(r.metrics) for r in runs}
    for seed in seeds:
        ref_none = by.get(("none", seed))
        ref_cont = by.get(("continuous", seed))
        for arm in arms:
            m = by[(arm, seed)]
            if ref_none is not None and m.get("biomarker_error") is not None and ref_none.get("biomarker_error"):
                m["biomarker_error_reduction_pct"] = 100.0 * (1.0 - m["biomarker_error"] / ref_none["biomarker_error"])
            if ref_cont is not None and ref_cont["energy_uj"] > 0:
                m["power_reduction_pct"] = 100.0 * (1.0 - m["energy_uj"] / ref_cont["energy_uj"])
                m["charge_reduction_pct"] = 100.0 * (1.0 - m["charge_uc"] / ref_cont["charge_uc"])
    out: dict[str, Any] = {"arms": {}, "paired_vs_continuous": {}}
    for arm in arms:
        per = [by[(arm, s)] for s in seeds]
        entry: dict[str, Any] = {k: t_interval([p.get(k) for p in per]) for k in REPORTED
                                 if any(p.get(k) is not None for p in per)}
        entry["per_seed_metrics"] = [dict(seed=s, **p) for s, p in zip(seeds, per, strict=True)]
        out["arms"][arm] = entry
        if "continuous" in arms and arm != "continuous":
            ref = [by[("continuous", s)] for s in seeds]
            out["paired_vs_continuous"][arm] = {
                k: paired([p.get(k) for p in per], [q.get(k) for q in ref])
                for k in ("time_in_target_pct", "charge_uc", "energy_uj", "stim_on_pct", "switches_per_hour",
                          "biomarker_error")
                if all(p.get(k) is not None for p in per + ref)}
    return out


def _mean(results: dict[str, Any], arm: str, key: str) -> float | None:
    v = results["arms"].get(arm, {}).get(key)
    return None if v is None else v["mean"]


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, judged on the means over seeds (the intervals are in the table beside them)."""
    arms = results["arms"]
    laws = [a for a in LAW_ARMS if a in arms]
    out: dict[str, Any] = {}
    if "continuous" in arms and laws:
        c_tit, c_q = _mean(results, "continuous", "time_in_target_pct"), _mean(results, "continuous", "charge_uc")
        per_law = {}
        for a in laws:
            tit, q = _mean(results, a, "time_in_target_pct"), _mean(results, a, "charge_uc")
            per_law[a] = {"time_in_target_ge_continuous": bool(tit is not None and c_tit is not None
                                                               and tit >= c_tit),
                          "charge_le_half_continuous": bool(q is not None and c_q is not None and q <= 0.5 * c_q)}
        out["target_and_half_charge"] = {"per_law": per_law,
                                         "met": any(all(v.values()) for v in per_law.values())}
    out["switches_le_6_per_hour"] = {a: bool((_mean(results, a, "switches_per_hour") or 0.0) <= 6.0) for a in laws}
    out["no_low_confidence_switch"] = {a: sum(arms[a]["low_confidence_switches"]["per_seed"]) == 0 for a in laws}
    if results.get("plant") == "beta":
        out["pi_anchor"] = {a: {"error_reduction_ge_80": bool((_mean(results, a, "biomarker_error_reduction_pct")
                                                                or -1e9) >= 80.0),
                                "power_reduction_ge_75": bool((_mean(results, a, "power_reduction_pct")
                                                               or -1e9) >= 75.0)} for a in laws}
    out["seizure_plant"] = "not applicable: neither plant has seizures (no detection latency, no false detections)"
    return out


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    v = {"python": platform.python_version(), "numpy": np.__version__}
    for pkg in ("neurostimd", "ai-edge-litert", "scipy"):
        with contextlib.suppress(md.PackageNotFoundError):
            v[pkg] = md.version(pkg)
    try:
        import subprocess

        v["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                  cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return v


def _display_path(p: Path) -> str:
    """Relative to the working directory when inside it: results committed to the repository carry no home paths."""
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def _progress_printer(label: str, duration_s: float) -> Progress:
    last = [time.perf_counter()]

    def report(t_s: float) -> None:
        now = time.perf_counter()
        if now - last[0] >= 10.0:
            last[0] = now
            print(f"{label} {min(t_s, duration_s):7.1f} / {duration_s:g} simulated s", file=sys.stderr, flush=True)

    return report


# --- outputs -------------------------------------------------------------------------------------------------------
def _ci(s: dict[str, Any] | None, digits: int = 1) -> str:
    if not s or s.get("mean") is None:
        return "—"
    lo, hi = s["ci95"]
    if lo is None:
        return f"{s['mean']:,.{digits}f}"
    return f"{s['mean']:,.{digits}f} [{lo:,.{digits}f}, {hi:,.{digits}f}]"


def results_markdown(results: dict[str, Any]) -> str:
    """The comparison table (mean [95 % t-interval] over seeds), the paired comparison, the targets."""
    c = results["continuous"]["applied"]
    n = len(results["seeds"])
    lines = [
        f"Closed-loop evaluation on the `{results['plant']}` plant: {n} seed(s) "
        f"({', '.join(str(s) for s in results['seeds'])}), {results['duration_s']:g} simulated s per arm; "
        f"mean [95 % t-interval] over seeds. Laws tuned on seeds {results['tuning_seeds'] or 'none stated'}.",
        "",
        "| arm | time in target (%) | charge (µC) | energy, TEED (µJ) | stim on (%) | switches / h (steady) "
        "| of which on/off | undone | low-conf. switches | biomarker error | error reduction vs none (%) "
        "| power reduction vs continuous (%) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, s in results["arms"].items():
        lines.append(
            f"| {arm} | {_ci(s.get('time_in_target_pct'))} | {_ci(s.get('charge_uc'), 0)} "
            f"| {_ci(s.get('energy_uj'), 0)} | {_ci(s.get('stim_on_pct'))} | {_ci(s.get('switches_per_hour'))} "
            f"| {_ci(s.get('onoff_switches_per_hour'))} | {_ci(s.get('undone_switches'))} "
            f"| {_ci(s.get('low_confidence_switches'))} "
            f"| {_ci(s.get('biomarker_error'), 2)} | {_ci(s.get('biomarker_error_reduction_pct'))} "
            f"| {_ci(s.get('power_reduction_pct'))} |")
    lines += ["", "Paired against continuous (arm − continuous, per seed; mean [95 % t-interval]):", "",
              "| arm | Δ time in target (pp) | Δ charge (µC) | Δ energy (µJ) | Δ switches / h |",
              "|---|---:|---:|---:|---:|"]
    for arm, p in results["paired_vs_continuous"].items():
        lines.append(f"| {arm} | {_ci(p.get('time_in_target_pct'))} | {_ci(p.get('charge_uc'), 0)} "
                     f"| {_ci(p.get('energy_uj'), 0)} | {_ci(p.get('switches_per_hour'))} |")
    t = results["targets"]
    lines += ["", "Targets (on the means):", ""]
    if "target_and_half_charge" in t:
        lines.append(f"- a law with ≥ continuous's time in target at ≤ half its charge: "
                     f"{'met' if t['target_and_half_charge']['met'] else 'NOT met'} "
                     f"({json.dumps(t['target_and_half_charge']['per_law'])})")
    lines.append(f"- ≤ 6 switches per hour in steady state: {json.dumps(t['switches_le_6_per_hour'])}")
    lines.append(f"- no switch caused by low confidence alone: {json.dumps(t['no_low_confidence_switch'])}")
    if "pi_anchor" in t:
        lines.append(f"- PI anchor (≥ 80 % error reduction vs none, ≥ 75 % less power than continuous): "
                     f"{json.dumps(t['pi_anchor'])}")
    lines.append(f"- seizure plant metrics: {t['seizure_plant']}")
    lines += [
        "",
        f"continuous: {c['frequency_hz']:g} Hz, {c['amplitude_ma']:.3g} mA, {c['pulse_width_us']:g} µs through the "
        f"safety gate from t = 0. Charge per phase: I·pw·f·t; energy (TEED, Koss et al. 2005): I²·R·pw·f·t with "
        f"R = {results['teed_load_ohm']:g} Ω. Biomarker error: time mean of max(0, biomarker − "
        f"{results['biomarker_setpoint']}). Switches: acknowledged parameter changes that are not ramp steps, after "
        f"the first {results['warmup_s']:g} s; undone: brought back within the law's onset time.",
        f"Wall time: {results['timing']['wall_s']:.1f} s with {results['timing']['jobs']} process(es).",
    ]
    if results.get("command"):
        lines += ["", f"Command: `{results['command']}`"]
    return "\n".join(lines) + "\n"


COLORS = {"none": "0.5", "continuous": "tab:orange", "table": "tab:green", "dual_threshold": "tab:blue",
          "proportional": "tab:purple"}


def plot_results(results: dict[str, Any], runs: list[ArmRun], path: Path) -> Path:
    """Top: bars (mean, 95 % interval, one dot per seed) for time in target, charge, energy and switches per hour.
    Below, for the first seed: per arm the biomarker, the true plant state (shaded where not in target) and the
    amplitude the board ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(results["arms"])
    fig = plt.figure(figsize=(14, 3.2 + 1.6 * len(runs)))
    grid = fig.add_gridspec(1 + len(runs), 4, height_ratios=[2.2] + [1.0] * len(runs), hspace=0.6, wspace=0.35)
    bars = (("time_in_target_pct", 1.0, "time in target (%)"), ("charge_uc", 1e-3, "charge (mC)"),
            ("energy_uj", 1e-3, f"energy, TEED at {results['teed_load_ohm']:g} Ω (mJ)"),
            ("switches_per_hour", 1.0, "switches per hour (steady state)"))
    x = np.arange(len(arms))
    for j, (key, scale, label) in enumerate(bars):
        ax = fig.add_subplot(grid[0, j])
        means, err_lo, err_hi = [], [], []
        for a in arms:
            s = results["arms"][a].get(key) or {"mean": None, "ci95": [None, None]}
            m = (s["mean"] or 0.0) * scale
            lo, hi = s["ci95"]
            means.append(m)
            err_lo.append(m - lo * scale if lo is not None else 0.0)
            err_hi.append(hi * scale - m if hi is not None else 0.0)
        ax.bar(x, means, yerr=[err_lo, err_hi], capsize=4, color=[COLORS[a] for a in arms], alpha=0.8)
        for i, a in enumerate(arms):
            vals = [v * scale for v in (results["arms"][a].get(key) or {}).get("per_seed", []) if v is not None]
            ax.scatter(np.full(len(vals), x[i]), vals, color="k", s=8, zorder=3)
        ax.set_xticks(x, [a.replace("_", "\n") for a in arms], fontsize=8)
        ax.set_ylabel(label, fontsize=8)
    amp_top = max([1.0] + [float(r.trace["amplitude_ma"].max()) * 1.15 for r in runs
                           if r.trace is not None and len(r.trace["t_s"])])
    bio_top = max([1.0] + [float(np.percentile(r.trace["biomarker"], 99.5)) * 1.1 for r in runs
                           if r.trace is not None and len(r.trace["t_s"])])
    for i, run in enumerate(runs):
        tr = run.trace
        if tr is None:
            continue
        ax = fig.add_subplot(grid[1 + i, :])
        step = max(1, len(tr["t_s"]) // 6000)
        t = tr["t_s"][::step]
        off_target = ~tr["in_target"][::step]
        ax.fill_between(t, 0, bio_top, where=off_target, step="post", color="tab:red", alpha=0.12, lw=0)
        ax.plot(t, tr["biomarker"][::step], color="k", lw=0.6)
        ax.set_ylim(0, bio_top)
        ax.set_ylabel("biomarker", fontsize=8)
        ax_amp = ax.twinx()
        ax_amp.step(t, tr["amplitude_ma"][::step], where="post", color=COLORS[run.arm], lw=1.0)
        ax_amp.set_ylim(0, amp_top)
        ax_amp.set_ylabel("amplitude (mA)", fontsize=8, color=COLORS[run.arm])
        m = run.metrics
        ax.set_title(f"{run.arm}, seed {run.seed}: biomarker (black), true state not in target (red shade), "
                     f"amplitude (coloured, right axis) — in target {m['time_in_target_pct']:.0f} %, "
                     f"{m['charge_uc'] / 1000:.1f} mC, {m['switches']} switches", fontsize=9)
        if i == len(runs) - 1:
            ax.set_xlabel("simulated time (s)")
    fig.suptitle(f"Closed-loop evaluation on the {results['plant']} plant: {len(results['seeds'])} seed(s) × "
                 f"{results['duration_s']:g} s per arm (bars: mean and 95 % t-interval; dots: seeds)", fontsize=11)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


# --- the command ---------------------------------------------------------------------------------------------------
def cmd_closed_loop_eval(args: argparse.Namespace) -> int:
    from neurostimd.service.logs import configure_logging

    quick = bool(getattr(args, "quick", False))
    n_seeds = 2 if quick else int(args.seeds)
    duration = 30.0 if quick else float(args.duration)
    if n_seeds < 1:
        print(f"--seeds must be at least 1, not {n_seeds}", file=sys.stderr)
        return EX_USAGE
    if not (math.isfinite(duration) and duration > 0):
        print(f"--duration must be a positive number of simulated seconds, not {duration}", file=sys.stderr)
        return EX_USAGE
    if int(args.jobs) < 1:
        print(f"--jobs must be at least 1, not {args.jobs}", file=sys.stderr)
        return EX_USAGE
    configure_logging("error", "console")
    seeds = [args.seed + i for i in range(n_seeds)]
    if len(sys.argv) > 2 and sys.argv[1] == "closed-loop-eval":
        command = "neurostimd closed-loop-eval " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    else:  # called in process (tests): the equivalent command line
        command = (f"neurostimd closed-loop-eval --plant {args.plant} --seed {args.seed} --seeds {n_seeds} "
                   f"--duration {duration:g} --out {shlex.quote(str(args.out))}")
    t0 = time.perf_counter()
    try:
        spec_path = Path(args.arms) if args.arms else default_spec_path(args.plant)
        spec = load_spec(spec_path, args.plant)
        with make_runner(int(args.jobs), args.address, args.no_ray, "closed-loop-eval") as runner:
            results = evaluate(spec, Path(args.out), duration_s=duration, seeds=seeds,
                               continuous_amplitude_ma=args.continuous_amplitude, block_size=int(args.block),
                               jobs=int(args.jobs), arms=args.arm or ARMS, plot=not args.no_plot, command=command,
                               runner=runner)
    except NeurostimError as err:
        print(f"neurostimd closed-loop-eval: {err}", file=sys.stderr)
        return EX_CONFIG
    except (RunnerUnavailable, RunnerFailed) as err:
        return runner_exit("closed-loop-eval", err)
    print(results_markdown(results))
    print(f"wrote {args.out}/results.json, results.md{'' if args.no_plot else ', closed_loop.png'} in "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0
