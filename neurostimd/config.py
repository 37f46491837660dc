"""The daemon's configuration: TOML validated by pydantic models (extra="forbid", one model per source and driver
kind joined in discriminated unions). Key names other tools rely on are fixed in DESIGN.md."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from neurostimd.core.policy import PolicyConfig
from neurostimd.core.safety import SafetyConfig
from neurostimd.core.settings import FilePath, Strict
from neurostimd.errors import ConfigError


# --- sources ----------------------------------------------------------------------------------------------------------
class BoardSourceConfig(Strict):
    """Samples come from the stimulator board itself, through the driver (SAMPLES frames)."""

    kind: Literal["board"] = "board"


def _check_units(v: str | None) -> str | None:
    if v is not None:
        from neurostimd.core.units import config_uv

        config_uv(v)  # ValueError naming the accepted spellings
    return v


def _check_channels(v: list[str] | None) -> list[str] | None:
    if v is None:
        return v
    if not v or any(not c.strip() for c in v):
        raise ValueError("channels must list at least one non-empty channel name")
    seen: set[str] = set()
    for c in v:
        key = c.strip().casefold()
        if key in seen:
            raise ValueError(f"channels lists {c!r} twice (names compare without case and surrounding spaces)")
        seen.add(key)
    return v


class LslSourceConfig(Strict):
    """Samples come from a Lab Streaming Layer stream.

    `n_channels` and `sample_rate_hz` are what the stream must declare. `units` states the samples' unit for a stream
    that declares none (or an unknown one); `channels` picks, by name, the channels the model needs from a wider
    stream, in any order. `timestamp_jitter_ms` is how far an outlet's stamps may stray from its sample clock (0 for
    an outlet that stamps each sample at its rate; a few ms for one that stamps chunks at push time) before a step is
    a gap. `source_id` and `hostname` narrow the choice of stream; after a stream is chosen, only that stream (same
    source_id and host, or the same uid without a source_id) is reconnected to, unless `allow_other_outlets`."""

    kind: Literal["lsl"]
    name: str | None = None
    type: str | None = None
    source_id: str | None = None
    hostname: str | None = None
    resolve_timeout_s: float = Field(5.0, gt=0)
    n_channels: int = Field(gt=0)
    sample_rate_hz: float = Field(gt=0)
    stale_after_ms: float = Field(250.0, gt=0)
    units: str | None = None
    channels: list[str] | None = None
    timestamp_jitter_ms: float = Field(0.0, ge=0, le=1000)
    allow_other_outlets: bool = False

    _units = field_validator("units")(_check_units)
    _channels = field_validator("channels")(_check_channels)

    @model_validator(mode="after")
    def _one_selector(self) -> LslSourceConfig:
        if not (self.name or self.type or self.source_id or self.hostname):
            raise ValueError("set at least one of name, type, source_id or hostname to choose the LSL stream")
        if self.channels is not None and len(self.channels) > self.n_channels:
            raise ValueError(f"channels lists {len(self.channels)} names but n_channels (the stream's channel "
                             f"count) is {self.n_channels}")
        return self


class ReplaySourceConfig(Strict):
    """Samples come from a recording file (.npz, .csv, .edf/.bdf, .xdf) played on a clock."""

    kind: Literal["replay"]
    path: FilePath
    speed: float | Literal["max"] = 1.0
    loop: bool = False
    sample_rate_hz: float | None = Field(None, gt=0)  # for files that carry no rate (CSV without time, ARFF)
    units: str | None = None  # for files that declare no unit (an EDF with an empty physical dimension, ...)
    channels: list[str] | None = None  # pick these channels, by name, from a wider recording
    timestamp_jitter_ms: float = Field(0.0, ge=0, le=1000)  # a timestamp step beyond 1.5 periods + this is a gap

    _units = field_validator("units")(_check_units)
    _channels = field_validator("channels")(_check_channels)

    @field_validator("speed")
    @classmethod
    def _positive_speed(cls, v: float | str) -> float | str:
        if v != "max" and not (isinstance(v, float | int) and v > 0):
            raise ValueError("speed must be a positive number (x real time) or \"max\"")
        return v


SourceConfig = Annotated[BoardSourceConfig | LslSourceConfig | ReplaySourceConfig, Field(discriminator="kind")]


# --- the stimulator device --------------------------------------------------------------------------------------------
class _BoardLinkConfig(Strict):
    """What every board driven through the serial driver shares (a real port, or the in-process virtual board)."""

    heartbeat_ms: float = Field(100.0, gt=0)
    # A board whose dead-man timer is longer than this (or that has none) is refused: after the host dies it would go
    # on stimulating for that long.
    max_watchdog_ms: float = Field(500.0, gt=0)
    # How often the loop asks the board for STATUS and checks that it runs what was last acknowledged.
    status_poll_ms: float = Field(1000.0, gt=0, le=10_000)


class SerialDeviceConfig(_BoardLinkConfig):
    """A board on a serial port (real hardware, or neurostimd-sim behind a pty)."""

    kind: Literal["serial"] = "serial"
    port: str = "/dev/ttyACM0"
    baudrate: int = Field(2_000_000, gt=0)
    ack_timeout_ms: float = Field(100.0, gt=0)
    retries: int = Field(2, ge=0, le=10)
    reconnect_interval_ms: float = Field(500.0, gt=0)
    # Failed reconnects back off, doubling from reconnect_interval_ms up to this.
    reconnect_max_interval_ms: float = Field(5000.0, gt=0)

    @model_validator(mode="after")
    def _backoff_ordered(self) -> SerialDeviceConfig:
        if self.reconnect_max_interval_ms < self.reconnect_interval_ms:
            raise ValueError(f"reconnect_max_interval_ms ({self.reconnect_max_interval_ms:g}) is below "
                             f"reconnect_interval_ms ({self.reconnect_interval_ms:g})")
        return self


class VirtualDeviceConfig(_BoardLinkConfig):
    """The in-process virtual board: the serial driver over an in-memory link to the simulator's board logic."""

    kind: Literal["virtual"]
    n_channels: int = Field(8, gt=0)
    sample_rate_hz: float = Field(1000.0, gt=0)
    watchdog_ms: float = Field(250.0, gt=0)
    seed: int = 0

    @model_validator(mode="after")
    def _watchdog_within_max(self) -> VirtualDeviceConfig:
        if self.watchdog_ms > self.max_watchdog_ms:
            raise ValueError(f"watchdog_ms ({self.watchdog_ms:g}) is above max_watchdog_ms "
                             f"({self.max_watchdog_ms:g}); the daemon would refuse this board")
        return self


class NoDeviceConfig(Strict):
    """No stimulator at all: decide and audit only (shadow mode forced)."""

    kind: Literal["none"]


DeviceConfig = Annotated[
    SerialDeviceConfig | VirtualDeviceConfig | NoDeviceConfig, Field(discriminator="kind")
]


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


class MetricsConfig(Strict):
    enabled: bool = False
    port: int = Field(9108, gt=0, lt=65536)
    # Bound to loopback only; a lab that wants it elsewhere puts a reverse proxy in front.
    host: Literal["127.0.0.1", "::1"] = "127.0.0.1"


class LoggingConfig(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class RuntimeConfig(Strict):
    state_file: FilePath = Path("neurostimd.state.json")  # what `neurostimd status` reads


class Config(Strict):
    source: SourceConfig = Field(default_factory=BoardSourceConfig)
    device: DeviceConfig = Field(default_factory=SerialDeviceConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    recorder: RecorderConfig = Field(default_factory=RecorderConfig)
    decisions_lsl: DecisionsLslConfig = Field(default_factory=DecisionsLslConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @model_validator(mode="after")
    def _source_needs_device(self) -> Config:
        if self.source.kind == "board" and self.device.kind == "none":
            raise ValueError("source.kind = \"board\" reads samples from the device, so device.kind cannot be \"none\"")
        return self

    @model_validator(mode="after")
    def _watchdog_can_be_fed(self) -> Config:
        dev = self.device
        if isinstance(dev, SerialDeviceConfig | VirtualDeviceConfig):
            # the board's timeout is known for the virtual board; a serial board's is read at the handshake and must
            # be at most max_watchdog_ms, so a loop that cannot feed even that one can never run
            if isinstance(dev, VirtualDeviceConfig):
                problem = watchdog_feed_problem(self, dev.watchdog_ms)
            else:
                problem = watchdog_feed_problem(self, dev.max_watchdog_ms, what="the longest dead-man timer a board "
                                                "may have ([device] max_watchdog_ms) is")
            if problem:
                raise ValueError(problem)
        return self


def watchdog_feed_interval_ms(cfg: Config) -> float:
    """The longest the host can go without sending the board a frame: heartbeats go out from the loop's ticks when
    heartbeat_ms have passed since the last frame, and the last frame left a little into its tick, so the heartbeat
    leaves at the first tick more than heartbeat_ms later — cadence × (floor(heartbeat / cadence) + 1): 150 ms with
    the defaults (100 ms, 50 ms), as measured on the virtual board."""
    dev = cfg.device
    heartbeat = dev.heartbeat_ms if isinstance(dev, SerialDeviceConfig | VirtualDeviceConfig) else 0.0
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
            f"([loop] cadence_ms = {cadence:g}, [device] heartbeat_ms = {getattr(cfg.device, 'heartbeat_ms', 0):g}), "
            f"and one late tick adds {cadence:g} ms: {feed + cadence:g} ms; lower heartbeat_ms or cadence_ms so that "
            f"the gap is at most {max(0.0, watchdog_ms - cadence):g} ms")


def _error_lines(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        line = f"{path}: {e['msg']}"
        if e["type"].endswith("_type"):
            # a wrong type: show what was written, e.g. a quoted number or a bool where a number belongs
            line += f" (got {e['input']!r}, a {type(e['input']).__name__}; write a bare TOML value of the right type)"
        lines.append(line)
    return lines


def parse_config(data: dict[str, Any], *, base_dir: Path | None = None) -> Config:
    """Validate a config mapping. Relative paths are taken relative to `base_dir` (the config file's folder)."""
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        lines = _error_lines(err)
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
    if isinstance(cfg.source, ReplaySourceConfig):
        upd["source"] = cfg.source.model_copy(update={"path": fix(cfg.source.path)})
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
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{p} is not valid TOML: {err}", [f"(file): not valid TOML: {err}"]) from err
    return parse_config(data, base_dir=config_base_dir(p))


def config_base_dir(path: Path) -> Path:
    path = path.resolve()
    if path.parent.name == "config" and (path.parent.parent / "pyproject.toml").exists():
        return path.parent.parent
    return path.parent


def json_schema() -> dict[str, Any]:
    return Config.model_json_schema()
