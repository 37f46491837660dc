"""The daemon's configuration: TOML validated by strict pydantic models. Each part brings its own settings model
(sources/settings.py, devices.py, core/policy.py, core/safety.py, core/stimtable.py, the outputs' models below); the
kinds of sources, devices and policies come from neurostimd.registry and are joined in discriminated unions, and
`make_policy` builds the policy `[policy] kind` names. Key names other tools rely on are fixed in docs/design.md."""

from __future__ import annotations

import difflib
import math
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import BaseModel, Field, ValidationError, model_validator

from neurostimd.core.faults import policy_target_violations
from neurostimd.core.policy import Policy, PolicyConfig
from neurostimd.core.safety import SafetyConfig
from neurostimd.core.settings import FilePath, Strict
from neurostimd.core.stimtable import StimTable, StimulationConfig
from neurostimd.devices import SerialDeviceConfig
from neurostimd.errors import ConfigError
from neurostimd.registry import DEVICES, POLICIES, SOURCES, union_of
from neurostimd.sources.settings import BoardSourceConfig

# Each part's settings model, joined by kind (neurostimd.registry: the built-in kinds and the entry points). The type
# checker sees the built-in kinds.
if TYPE_CHECKING:
    from neurostimd.devices import NoDeviceConfig, VirtualDeviceConfig
    from neurostimd.sources.settings import BrainFlowSourceConfig, LslSourceConfig, ReplaySourceConfig

    SourceConfig = BoardSourceConfig | LslSourceConfig | ReplaySourceConfig | BrainFlowSourceConfig
    DeviceConfig = SerialDeviceConfig | VirtualDeviceConfig | NoDeviceConfig
    from neurostimd.core.laws import DualThresholdConfig, ProportionalConfig

    PolicySettings = PolicyConfig | DualThresholdConfig | ProportionalConfig
else:
    SourceConfig = union_of(SOURCES)
    DeviceConfig = union_of(DEVICES)
    PolicySettings = union_of(POLICIES, default_kind="table")


# --- model, loop, policy ----------------------------------------------------------------------------------------------
class ModelConfig(Strict):
    bundle: FilePath = Path("models/default")
    verify_on_load: bool = True


class LoopConfig(Strict):
    cadence_ms: float = Field(50.0, gt=0, le=1000)  # stopping waits for at most one tick (TimeoutStopSec=5s)
    stale_after_ms: float = Field(250.0, gt=0, le=10_000)
    ring_seconds: float = Field(30.0, gt=0)
    # |sample| at or above this flags the window as saturated (a clipping amplifier). Default: the source's declared
    # range (the board's int16 full scale, an EDF's physical range), else 3 x the bundle's largest training |x|.
    saturation_uv: float | None = Field(None, gt=0)
    # implausible_signal when a decision window's per-channel RMS is outside [lo / F, hi · F] of the training windows'
    # RMS range, or some |x| exceeds F x the training maximum (docs/safety.md)
    plausibility_factor: float = Field(5.0, gt=1, le=1e6)


# --- outputs ----------------------------------------------------------------------------------------------------------
class AuditConfig(Strict):
    """The audit log (docs/audit-log.md): where it is, when it rotates, how often a dose checkpoint is written."""

    path: FilePath = Path("audit.jsonl")
    # The active file is renamed to <path>.<NNNNNN> before it would grow past this many MB (10^6 bytes); rotated
    # segments are kept, never deleted, and start-up reads only the active one.
    rotate_mb: float = Field(4.0, gt=0)
    # While the board may be stimulating, a durable `dose_checkpoint` at least this often: after a crash the dose is
    # counted up to the last record plus this interval plus the board's watchdog. Above 1 s a crash could hide more.
    checkpoint_ms: float = Field(1000.0, gt=0, le=1000)


class RecorderConfig(Strict):
    enabled: bool = False
    dir: FilePath = Path("recordings")
    flush_interval_ms: float = Field(500.0, gt=0)


class DecisionsLslConfig(Strict):
    enabled: bool = False
    name: str = "neurostimd-decisions"
    source_id: str = "neurostimd-decisions"


class MarkersLslConfig(Strict):
    """A string Markers stream beside the decisions (docs/lsl-outputs.md): state changes, stimulation, faults,
    config reloads, stamped with their decision's timestamp."""

    enabled: bool = False
    name: str = "neurostimd-markers"
    source_id: str = "neurostimd-markers"


class SignalLslConfig(Strict):
    """The loop's samples as an LSL EEG stream (µV), for a source that is not LSL already (board, BrainFlow,
    replay)."""

    enabled: bool = False
    name: str = "neurostimd-signal"
    source_id: str = "neurostimd-signal"


class MetricsConfig(Strict):
    enabled: bool = False
    port: int = Field(9108, gt=0, lt=65536)
    # Bound to loopback only; a lab that wants it elsewhere puts a reverse proxy in front.
    host: Literal["127.0.0.1", "::1"] = "127.0.0.1"


class LoggingConfig(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # auto: the journal under systemd (priorities and fields), a console on a TTY, JSON lines otherwise
    format: Literal["auto", "json", "console", "journal"] = "auto"


class RuntimeConfig(Strict):
    state_file: FilePath = Path("neurostimd.state.json")  # what `neurostimd status` reads
    # The real-time mode (docs/realtime.md): the loop's thread under SCHED_FIFO, memory locked, the garbage
    # collector out of the tick. Refused at start (exit 78) where the OS does not allow it, never silently ignored.
    realtime: bool = Field(False, description="run the loop's thread under SCHED_FIFO with memory locked and the "
                                              "garbage collector only between ticks")
    rt_priority: int = Field(40, ge=1, le=99, description="SCHED_FIFO priority of the loop (1-99; below the "
                                                          "kernel's threaded interrupts at 50)")
    cpu_affinity: list[int] | None = Field(None, description="CPUs the loop runs on (None: wherever it may)")
    lock_memory: bool = Field(True, description="realtime: mlockall the process, so no page of it is swapped out "
                                                "or faulted in during a tick")

    @model_validator(mode="after")
    def _affinity(self) -> RuntimeConfig:
        if self.cpu_affinity is not None and (not self.cpu_affinity or min(self.cpu_affinity) < 0
                                              or len(set(self.cpu_affinity)) != len(self.cpu_affinity)):
            raise ValueError(f"cpu_affinity {self.cpu_affinity}: give distinct CPU numbers >= 0, or leave it out")
        return self


class Config(Strict):
    source: SourceConfig = Field(default_factory=BoardSourceConfig)
    device: DeviceConfig = Field(default_factory=SerialDeviceConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)
    policy: PolicySettings = Field(default_factory=PolicyConfig)
    # a stimulation table in force instead of the bundle's (None: the bundle's own)
    stimulation: StimulationConfig | None = None
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    recorder: RecorderConfig = Field(default_factory=RecorderConfig)
    decisions_lsl: DecisionsLslConfig = Field(default_factory=DecisionsLslConfig)
    markers_lsl: MarkersLslConfig = Field(default_factory=MarkersLslConfig)
    signal_lsl: SignalLslConfig = Field(default_factory=SignalLslConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @model_validator(mode="after")
    def _source_needs_device(self) -> Config:
        if self.source.kind == "board" and self.device.kind == "none":
            raise ValueError("source.kind = \"board\" reads samples from the device, so device.kind cannot be \"none\"")
        return self

    @model_validator(mode="after")
    def _signal_outlet_needs_a_source_off_the_network(self) -> Config:
        if self.signal_lsl.enabled and self.source.kind == "lsl":
            raise ValueError("signal_lsl.enabled = true republishes the source's samples, but source.kind = \"lsl\" "
                             "reads a stream that is already on the network (LabRecorder can record it directly); "
                             "set [signal_lsl] enabled = false")
        outlets = (("decisions_lsl", self.decisions_lsl.enabled, self.decisions_lsl.source_id),
                   ("markers_lsl", self.markers_lsl.enabled, self.markers_lsl.source_id),
                   ("signal_lsl", self.signal_lsl.enabled, self.signal_lsl.source_id))
        ids: dict[str, str] = {}
        for key, enabled, source_id in outlets:
            if enabled and source_id in ids:
                raise ValueError(f"{key}.source_id = {source_id!r} is also {ids[source_id]}.source_id; give "
                                 f"each LSL outlet its own source_id (recorders tell streams apart by it)")
            if enabled:
                ids[source_id] = key
        return self

    @model_validator(mode="after")
    def _policy_passes_the_gate(self) -> Config:
        # A law's own targets (dual_threshold's two amplitudes, the PI's output bounds) are clinician settings: each
        # must pass the gate unclamped, like the fallback — a law that can only be reached clamped is a config error.
        for p, broken in policy_target_violations(self.policy, self.safety):
            raise ValueError(
                f"[policy] kind = {self.policy.kind!r} can ask for {p.frequency_hz:g} Hz, "
                f"{p.amplitude_ma:g} mA, {p.pulse_width_us:g} µs, which breaks [safety] "
                f"({', '.join(broken)}); lower the policy's amplitude, frequency or pulse width")
        return self

    @model_validator(mode="after")
    def _watchdog_can_be_fed(self) -> Config:
        bound = self.device.watchdog_bound()
        if bound is not None:
            problem = watchdog_feed_problem(self, bound[0], what=bound[1])
            if problem:
                raise ValueError(problem)
        return self


def make_policy(settings: PolicySettings, table: StimTable, *, class_names: Sequence[str] | None = None,
                feature_names: Sequence[str] | None = None) -> Policy:
    """The policy `[policy]` names, built by its settings model (neurostimd.registry.POLICIES) on `table`. ConfigError
    when what that model builds is not a Policy (a plugin's bug). A policy with `bind` (the biomarker laws) is given
    the model's class and feature names; ConfigError when its biomarker names something the model does not have."""
    policy = settings.build(table)
    if not isinstance(policy, Policy):
        raise ConfigError(f"[policy] kind = {settings.kind!r} ({type(settings).__module__}) built a "
                          f"{type(policy).__name__}, which is not a policy: it needs step(t_s, observation) and "
                          f"confidence_threshold; fix or remove the plugin that provides this kind")
    bind = getattr(policy, "bind", None)
    if callable(bind):
        bind(class_names, feature_names)
    return policy


def watchdog_feed_interval_ms(cfg: Config) -> float:
    """The longest the host can go without sending the board a frame: heartbeats go out from the loop's ticks when
    heartbeat_ms have passed since the last frame, and the last frame left a little into its tick, so the heartbeat
    leaves at the first tick more than heartbeat_ms later — cadence × (floor(heartbeat / cadence) + 1): 150 ms with
    the defaults (100 ms, 50 ms), as measured on the virtual board."""
    heartbeat = cfg.device.heartbeat_interval_ms() or 0.0
    cadence = cfg.loop.cadence_ms
    return (math.floor(heartbeat / cadence + 1e-9) + 1) * cadence


def watchdog_feed_problem(cfg: Config, watchdog_ms: float, *, what: str = "the board's dead-man timer is"
                          ) -> str | None:
    """Why this config cannot keep a board with a `watchdog_ms` dead-man timer fed, or None. The longest gap between
    the host's frames, plus one late tick, must fit in the timeout (a loop at cadence_ms = 1000 against a 250 ms
    timer tripped it 20 times in 20 s, each time stopping stimulation without a word)."""
    feed = watchdog_feed_interval_ms(cfg)
    cadence = cfg.loop.cadence_ms
    if feed + cadence <= watchdog_ms:
        return None
    return (f"{what} {watchdog_ms:g} ms but the host sends the board a frame only every {feed:g} ms at worst "
            f"([loop] cadence_ms = {cadence:g}, [device] heartbeat_ms = {cfg.device.heartbeat_interval_ms() or 0:g}), "
            f"and one late tick adds {cadence:g} ms: {feed + cadence:g} ms; lower heartbeat_ms or cadence_ms so that "
            f"the gap is at most {max(0.0, watchdog_ms - cadence):g} ms")


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, unions, Annotated, lists)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _follow(path: Sequence[Any]) -> tuple[list[type[BaseModel]], list[str]] | None:
    """Walk the config's models along a pydantic error location: the models that can be there, and the TOML table
    it is written in (the path without the kinds pydantic inserts for a union member: source.board is [source]).
    None where the models cannot be followed: a list item ([[stimulation.states]] rows), a free-form table."""
    models: list[type[BaseModel]] = [Config]
    table: list[str] = []
    for part in path:
        if not isinstance(part, str):
            return None
        if not models:  # a free-form table (a dict) has no models below it, and nothing further is followed
            return None
        if len(models) > 1:  # a union: pydantic names the member by its kind
            tagged = [m for m in models if m.model_fields.get("kind") is not None
                      and m.model_fields["kind"].default == part]
            if tagged:
                models = tagged
                continue
        field = next((m.model_fields[part] for m in models if part in m.model_fields), None)
        if field is None:
            return None
        table.append(part)
        models = _models_in(field.annotation)
    return models, table


def _keys_at(loc: Sequence[Any]) -> list[str] | None:
    """The keys the config allows where `loc` (an error location without its last part) points, for a misspelt
    key's "did you mean"; None when that place is not one model."""
    found = _follow(loc)
    if found is None or len(found[0]) != 1:  # a union not yet named, or a free-form table: no keys to offer
        return None
    return [f.alias or name for name, f in found[0][0].model_fields.items()]


def _table_path(loc: Sequence[Any]) -> list[str] | None:
    """The TOML table a location's key is written in (None: see `_follow`)."""
    if not loc or not isinstance(loc[-1], str):
        return None
    found = _follow(loc[:-1])
    return None if found is None else found[1]


def _line_of(text: str, loc: Sequence[Any]) -> int | None:
    """The line of the TOML text where the key `loc` names is written, under exactly its table's header (or as a
    dotted key); None when it cannot be told for sure (a default, an inline table, an array of tables): no line is
    better than a wrong one."""
    table = _table_path(loc)
    if table is None or not loc:
        return None
    key = str(loc[-1])
    current: list[str] | None = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if line.startswith("[[") and line.endswith("]]"):
            current = None  # inside an array of tables: no key here is told apart from the next row's
            continue
        if line.startswith("[") and line.endswith("]"):
            current = [x.strip().strip('"') for x in line[1:-1].split(".")]
            continue
        if "=" not in line or current is None:
            continue
        full = current + [x.strip().strip('"') for x in line.split("=", 1)[0].split(".")]
        if full == [*table, key]:
            return n
    return None


def _error_lines(err: ValidationError, text: str | None = None) -> list[str]:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        at = _line_of(text, e["loc"]) if text is not None else None
        line = f"{path}{f' (line {at})' if at else ''}: {e['msg']}"
        if e["type"].endswith("_type"):
            # a wrong type: show what was written, e.g. a quoted number or a bool where a number belongs
            line += f" (got {e['input']!r}, a {type(e['input']).__name__}; write a bare TOML value of the right type)"
        if e["type"] == "extra_forbidden" and e["loc"]:
            keys = _keys_at(e["loc"][:-1])
            close = difflib.get_close_matches(str(e["loc"][-1]), keys or [], n=1, cutoff=0.6)
            line += f"; did you mean {close[0]!r}?" if close else (
                f"; the keys allowed here: {', '.join(sorted(keys))}" if keys else "")
        lines.append(line)
    return lines


def parse_config(data: dict[str, Any], *, base_dir: Path | None = None, text: str | None = None) -> Config:
    """Validate a config mapping. Relative paths are taken relative to `base_dir` (the config file's folder);
    `text`, the TOML it was read from, puts line numbers into the errors."""
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        lines = _error_lines(err, text)
        raise ConfigError(f"invalid configuration ({len(lines)} error(s))", lines) from err
    return resolve_paths(cfg, base_dir) if base_dir is not None else cfg


def resolve_paths(cfg: Config, base_dir: Path) -> Config:
    """Make the config's relative paths relative to `base_dir`."""

    def fix(p: Path) -> Path:
        return p if p.is_absolute() else (base_dir / p)

    upd: dict[str, Any] = {
        "model": cfg.model.model_copy(update={"bundle": fix(cfg.model.bundle)}),
        "audit": cfg.audit.model_copy(update={"path": fix(cfg.audit.path)}),
        "recorder": cfg.recorder.model_copy(update={"dir": fix(cfg.recorder.dir)}),
        "runtime": cfg.runtime.model_copy(update={"state_file": fix(cfg.runtime.state_file)}),
    }
    upd["source"] = cfg.source.resolve_paths(fix)
    return cfg.model_copy(update=upd)


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML config file; ConfigError with one line per problem otherwise.

    Relative paths in the file (bundle, audit log, recordings) are resolved against the project root when the file
    lives in the project's `config/` folder, else against the file's own folder.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read config {p}: {err.strerror}; check the path",
                          [f"(file): cannot read {p}: {err.strerror}"]) from err
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{p} is not valid TOML: {err}", [f"(file): not valid TOML: {err}"]) from err
    return parse_config(data, base_dir=config_base_dir(p), text=text)


def config_base_dir(path: Path) -> Path:
    path = path.resolve()
    if path.parent.name == "config" and (path.parent.parent / "pyproject.toml").exists():
        return path.parent.parent
    return path.parent


def json_schema() -> dict[str, Any]:
    """The config's JSON Schema (draft 2020-12, as pydantic writes it), for editors and `neurostimd config-schema`."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **Config.model_json_schema(),
            "title": "neurostimd configuration"}
