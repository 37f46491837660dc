"""`neurostimd replay`: a recording through the whole pipeline — the same ClosedLoop as the daemon — on a virtual
clock (as fast as possible) or a scaled one (xN), commanding the in-process virtual board over the real protocol.
Writes decisions.jsonl (byte-identical for the same file and config), audit.jsonl, the board's event log and a
timeline PNG. Exit 65 (EX_DATAERR) when the recording cannot be used, 78 (EX_CONFIG) for a bad config or a bundle
or config that does not fit it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np
import structlog

from neurostimd.clock import Clock, ScaledClock, VirtualClock
from neurostimd.config import Config, load_config
from neurostimd.errors import ConfigError, DataFormatError, NeurostimError
from neurostimd.listeners import BaseListener, DecisionEvent, ListenerFailed, LoopView, TickStats
from neurostimd.outputs.audit import AuditLog, iter_records, remove_log
from neurostimd.service.exitcodes import EX_CONFIG, EX_DATAERR
from neurostimd.sources.settings import ReplaySourceConfig

log = structlog.get_logger(__name__)


def replay_config(cfg: Config, recording: Path, speed: float | Literal["max"], out: Path,
                  streams: dict[str, str] | None = None) -> Config:
    """The config with the recording as its source and every output inside `out`; `streams` (stream_name,
    stream_type) choose an XDF file's signal stream over the config's."""
    # The replay config's own file options (units, channels, gap jitter, XDF stream) apply to the recording given.
    keep = {k: getattr(cfg.source, k) for k in ("units", "channels", "timestamp_jitter_ms", "stream_name",
                                               "stream_type")} \
        if isinstance(cfg.source, ReplaySourceConfig) else {}
    keep.update(streams or {})
    return cfg.model_copy(update={
        "source": ReplaySourceConfig(kind="replay", path=recording, speed=speed, **keep),
        "audit": cfg.audit.model_copy(update={"path": out / "audit.jsonl"}),
        "runtime": cfg.runtime.model_copy(update={"state_file": out / "state.json"}),
    })


def replay_source(cfg: Config, recording: Path, clock: Clock) -> Any:
    """The ReplaySource of a replay config (`replay_config`'s) as replay reads the recording: its units, channels,
    gap jitter and XDF stream."""
    from neurostimd.sources.replay import ReplaySource

    src_cfg = cfg.source
    assert isinstance(src_cfg, ReplaySourceConfig)
    return ReplaySource(recording, 1.0, clock, units=src_cfg.units, channels=src_cfg.channels,
                        timestamp_jitter_ms=src_cfg.timestamp_jitter_ms, stream_name=src_cfg.stream_name,
                        stream_type=src_cfg.stream_type)


def _refuse_a_daemons_log(path: Path) -> None:
    """ConfigError when the audit log replay would replace was written by the daemon (its records begin with
    `startup`, which replay never writes): `--out` pointed at the daemon's folder must not erase its dose history."""
    for i, rec in enumerate(iter_records(path)):
        if rec.get("event") == "startup":
            raise ConfigError(f"{path} is a daemon's audit log (it holds the dose history and the hash chain); replay "
                              f"would replace it — choose another --out folder")
        if i >= 8:  # a daemon's log starts with `startup`; a replay's never holds one
            return


def run_replay(cfg: Config, recording: Path, out: Path, speed: float | Literal["max"] = "max", *,
               progress: bool = True, plot: bool = True, streams: dict[str, str] | None = None) -> dict[str, Any]:
    """Replay `recording` and write the outputs; returns a summary (ticks, wall time, x real time, commands).
    `streams` ({"stream_name": ..., "stream_type": ...}) chooses an XDF file's signal stream."""
    from neurostimd.firmware_sim.inprocess import VirtualBoardDriver
    from neurostimd.loop import ClosedLoop
    from neurostimd.model.runtime import load_bundle

    out.mkdir(parents=True, exist_ok=True)
    cfg = replay_config(cfg, recording, speed, out, streams)
    clock: Clock = VirtualClock() if speed == "max" else ScaledClock(float(speed))
    bundle = load_bundle(cfg.model.bundle, verify=cfg.model.verify_on_load)
    source = replay_source(cfg, recording, clock)
    board_log = out / "board.jsonl"
    board_log.unlink(missing_ok=True)
    dev = cfg.device
    driver = VirtualBoardDriver(n_channels=source.n_channels, sample_rate_hz=source.sample_rate_hz,
                                watchdog_ms=getattr(dev, "watchdog_ms", 250.0), clock=clock, stream_samples=False,
                                log_path=board_log)
    decisions_path = out / "decisions.jsonl"
    _refuse_a_daemons_log(out / "audit.jsonl")
    remove_log(out / "audit.jsonl")  # and the segments of an earlier replay into the same folder
    decisions: list[dict[str, Any]] = []
    duration_s = source.recording.duration_s
    # Not fsync'd: the virtual board is in memory and the clock is virtual, so there is no command to protect.
    with open(decisions_path, "w") as dec_f, \
            AuditLog(cfg.audit.path, durable=False, rotate_mb=cfg.audit.rotate_mb) as audit:
        driver.open()
        source.open()
        try:
            loop = ClosedLoop(cfg, clock=clock, source=source, bundle=bundle, audit=audit, driver=driver,
                              listeners=[_DecisionsFile(dec_f, decisions), _Progress(source, duration_s,
                                                                                      enabled=progress)])
            wall0 = time.perf_counter()
            loop.run(should_stop=lambda: False)
            loop.stop_stimulation("end_of_recording")
            wall = time.perf_counter() - wall0
        finally:
            source.close()
            driver.close()
    if loop.state.listener_failures:
        raise ListenerFailed(f"an output of the replay failed (calls that raised, by output: "
                             f"{loop.state.listener_failures}; the log says why), so {decisions_path} may be "
                             f"incomplete: fix the cause and replay again")
    summary = {
        "recording": str(recording), "ticks": len(decisions), "recording_s": round(duration_s, 3),
        "wall_s": round(wall, 3), "x_realtime": round(duration_s / wall, 1) if wall > 0 else None,
        "commands": loop.state.commands, "decisions": str(decisions_path),
    }
    if plot:
        summary["timeline"] = str(plot_timeline(source.recording, decisions, bundle.class_names,
                                                out / "timeline.png"))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


class _DecisionsFile(BaseListener):
    """decisions.jsonl: one line per decision, also kept in `decisions` for the timeline."""

    def __init__(self, fh: TextIO, decisions: list[dict[str, Any]]) -> None:
        self.fh = fh
        self.decisions = decisions

    def on_decision(self, decision: DecisionEvent) -> None:
        rec = decision.record
        self.fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self.decisions.append(rec)


class _Progress(BaseListener):
    """A progress line on stderr at most once a second of wall time."""

    def __init__(self, source: Any, duration_s: float, *, enabled: bool) -> None:
        self.source = source
        self.duration_s = duration_s
        self.enabled = enabled
        self._t0 = self._last = time.perf_counter()

    def on_tick(self, stats: TickStats, loop: LoopView) -> None:
        now = time.perf_counter()
        if self.enabled and now - self._last >= 1.0:
            self._last = now
            t = self.source.t_data_s or 0.0
            left = (now - self._t0) / t * max(0.0, self.duration_s - t) if t > 0 else None
            print(f"replay: {t:8.1f} / {self.duration_s:.1f} s of recording ({100 * t / self.duration_s:5.1f} %), "
                  f"ETA {'?' if left is None else f'{left:.0f} s'}", file=sys.stderr, flush=True)


def plot_timeline(recording: Any, decisions: list[dict[str, Any]], class_names: list[str], path: Path) -> Path:
    """Signal, state probabilities and applied parameters on one time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.asarray(recording.data)
    fs = float(recording.fs)
    step = max(1, len(data) // 20000)
    t_sig = np.arange(0, len(data), step) / fs
    fig, ax = plt.subplots(4, 1, figsize=(12, 8), sharex=True, gridspec_kw={"height_ratios": [2, 1.3, 1, 1]})
    ax[0].plot(t_sig, data[::step, 0], lw=0.4, color="k")
    ax[0].set_ylabel(f"{recording.channel_names[0] if len(recording.channel_names) else 'ch0'} (µV)")
    ax[0].set_title("neurostimd replay timeline")
    labels = getattr(recording, "labels", None)
    if labels is not None:
        ax2 = ax[0].twinx()
        ax2.plot(np.arange(0, len(labels), step) / fs, np.asarray(labels)[::step], color="tab:orange", lw=1.0,
                 alpha=0.7)
        ax2.set_ylabel("true label", color="tab:orange")
    t = np.array([d["t_data_s"] if d["t_data_s"] is not None else np.nan for d in decisions], dtype=float)
    probs = np.array([d["probs"] if d["probs"] is not None else [np.nan] * len(class_names) for d in decisions],
                     dtype=float)
    if len(probs):
        for k, name in enumerate(class_names):
            ax[1].plot(t, probs[:, k], lw=0.8, label=name)
    ax[1].set_ylabel("P(state)")
    ax[1].set_ylim(-0.05, 1.05)
    ax[1].legend(loc="upper right", fontsize=8, ncol=len(class_names))
    amp = np.array([d["applied"]["amplitude_ma"] if d["applied"] else 0.0 for d in decisions])
    freq = np.array([d["applied"]["frequency_hz"] if d["applied"] else 0.0 for d in decisions])
    req = np.array([d["requested"]["amplitude_ma"] if d["requested"] else 0.0 for d in decisions])
    ax[2].step(t, req, where="post", lw=0.8, color="0.6", label="requested")
    ax[2].step(t, amp, where="post", lw=1.0, color="tab:red", label="applied")
    ax[2].set_ylabel("amplitude (mA)")
    ax[2].legend(loc="upper right", fontsize=8)
    ax[3].step(t, freq, where="post", lw=1.0, color="tab:blue")
    ax[3].set_ylabel("frequency (Hz)")
    ax[3].set_xlabel("recording time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cmd_replay(args: argparse.Namespace) -> int:
    from neurostimd.service.logs import configure_logging

    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        for line in err.errors or [str(err)]:
            print(f"{args.config}: {line}", file=sys.stderr)
        return EX_CONFIG
    speed: float | Literal["max"] = "max"
    if args.speed != "max":
        try:
            speed = float(args.speed)
            if speed <= 0:
                raise ValueError
        except ValueError:
            print(f"--speed must be a positive number or max, not {args.speed!r}", file=sys.stderr)
            return 2
    configure_logging("warning", "console")
    streams = {k: v for k in ("stream_name", "stream_type") if (v := getattr(args, k, None)) is not None}
    try:
        summary = run_replay(cfg, Path(args.recording), Path(args.out), speed, streams=streams)
    except DataFormatError as err:  # the recording: bad data, not bad configuration
        print(f"neurostimd replay: {err}", file=sys.stderr)
        return EX_DATAERR
    except NeurostimError as err:
        print(f"neurostimd replay: {err}", file=sys.stderr)
        return EX_CONFIG
    print(json.dumps(summary, indent=2))
    return 0
