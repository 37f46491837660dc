"""`neurostimd run`: the closed loop as a long-running service — start-up checks, signals (SIGTERM/SIGINT stop with
a confirmed STOP, SIGHUP reloads), the systemd notify protocol, the status file, metrics, and exit codes."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

import structlog

from neurostimd.clock import MonotonicClock
from neurostimd.config import Config, load_config, watchdog_feed_problem
from neurostimd.devices import make_device
from neurostimd.drivers.base import Driver
from neurostimd.drivers.errors import BoardRefused, DriverError, PortBusy, PortInvalid
from neurostimd.drivers.types import BoardInfo
from neurostimd.errors import BundleError, ConfigError, DataFormatError, NeurostimError, SourceError
from neurostimd.listeners import BaseListener, LoopListener, LoopView, TickStats, close_all
from neurostimd.outputs.audit import AuditError, AuditLog, DoseRecovery, board_timing
from neurostimd.outputs.status import StateFile
from neurostimd.safe_io import check_regular_or_absent, real_directory
from neurostimd.service.exitcodes import EX_CONFIG, EX_OK, EX_SOFTWARE, EX_TEMPFAIL, EX_UNAVAILABLE
from neurostimd.service.logs import configure_logging
from neurostimd.service.notify import SystemdNotifier
from neurostimd.service.realtime import (
    RealtimeRefused,
    TickGC,
    enter_realtime,
    freeze_gc,
    leave_realtime,
    locked_kib,
)

if TYPE_CHECKING:
    from neurostimd.loop import ClosedLoop
    from neurostimd.outputs.lsl_meta import LslTime, StreamMeta
    from neurostimd.outputs.markers_lsl import MarkersListener
    from neurostimd.outputs.metrics import Metrics

log = structlog.get_logger("neurostimd.service.daemon")


class Daemon:
    """Owns the process: builds the loop from the config, runs it, and stops it safely whatever happens."""

    def __init__(self, cfg: Config, config_path: str | None, *, shadow: bool = False,
                 timings_path: str | None = None, notifier: SystemdNotifier | None = None,
                 port_override: str | None = None) -> None:
        self.cfg = cfg
        self.port_override = port_override
        self.config_path = config_path
        self.shadow = shadow or cfg.device.kind == "none"
        self.notifier = notifier or SystemdNotifier()
        self.clock = MonotonicClock()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._crash: BaseException | None = None
        self._timings = open(timings_path, "w", buffering=1) if timings_path else None  # noqa: SIM115
        self._ready = False
        self._t_start = time.monotonic()
        self.state_file = StateFile(cfg.runtime.state_file, shadow=self.shadow, started_mono=self._t_start)
        self._lsl_time: LslTime | None = None
        self._lsl_meta: StreamMeta | None = None
        self._markers: MarkersListener | None = None

    # --- signals and threads ---------------------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload.set()
        else:
            self._stop.set()

    def _on_thread_crash(self, args: threading.ExceptHookArgs) -> None:
        self._crash = args.exc_value or RuntimeError(f"thread {args.thread} died")
        log.error("thread_crashed", thread=getattr(args.thread, "name", None), error=repr(args.exc_value))
        self._stop.set()

    def request_stop(self) -> None:
        self._stop.set()

    # --- main ------------------------------------------------------------------------------------------------------
    def run(self, duration_s: float | None = None) -> int:
        """Run until stopped; the process's signal handlers and thread excepthook are ours meanwhile."""
        prev_handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT,
                                                                             signal.SIGHUP)}
        prev_hook = threading.excepthook
        threading.excepthook = self._on_thread_crash
        try:
            return self._run(duration_s)
        finally:
            threading.excepthook = prev_hook
            for sig, handler in prev_handlers.items():
                signal.signal(sig, handler)

    def _run(self, duration_s: float | None) -> int:
        cfg = self.cfg
        # Opening the log reads its active segment once: the chain head, and the day's earlier stimulation (a run
        # that crashed counted on until the board's watchdog would have stopped it), which counts toward the daily
        # dose. A log that cannot be read or written is a refusal to start, never "no dose today".
        audit: AuditLog | None = None
        try:
            audit = AuditLog(cfg.audit.path, rotate_mb=cfg.audit.rotate_mb)
            recovery = audit.dose_recovery()
            check_regular_or_absent(cfg.runtime.state_file, what="state file ([runtime] state_file)")
            if cfg.recorder.enabled:
                real_directory(cfg.recorder.dir, what="recordings folder ([recorder] dir)")
            prior_daily_s = recovery.daily_stim_s
            self._log_recovery(audit, recovery)
            # what dose recovery needs to bound this run if it crashes: its boot and its checkpoint interval
            audit.write("startup", pid=os.getpid(), config=self.config_path, shadow=self.shadow,
                        prior_daily_stim_s=prior_daily_s, prior_open_stim_s=recovery.open_s, boot_id=audit.boot_id,
                        checkpoint_ms=cfg.audit.checkpoint_ms, audit_chain_problems=len(audit.findings))
        except (NeurostimError, OSError) as err:
            log.error("startup_refused", error=str(err), detail="fix the path named here and start again")
            if audit is not None:
                audit.close()
            return EX_CONFIG
        driver: Driver | None = None
        source = None
        loop = None
        listeners: list[LoopListener] = []
        code = EX_OK
        try:
            # Handshake first: the board streams from the first valid frame on, so the 0.55 s of signal that the
            # first decision needs accumulates while the model loads. (Nothing is commanded before the loop runs,
            # and the loop's first decision is sent whatever it is: a STOP until data has been clean.)
            driver = make_device(cfg, self.clock)
            if driver is not None:
                self._open_driver(driver, audit)
                if self._stop.is_set():
                    return EX_OK
            from neurostimd.model.runtime import load_bundle

            self._status("loading model")
            bundle = load_bundle(cfg.model.bundle, verify=cfg.model.verify_on_load)
            from neurostimd.sources import make_source

            source = make_source(cfg.source, driver=driver, clock=self.clock,
                                 stale_after_ms=cfg.loop.stale_after_ms)
            source.open()
            from neurostimd.loop import ClosedLoop

            metrics = self._make_outputs(listeners, source, bundle, driver)
            loop = ClosedLoop(cfg, clock=self.clock, source=source, bundle=bundle, audit=audit, driver=driver,
                              shadow=self.shadow, prior_daily_stim_s=prior_daily_s, listeners=listeners)
            self.loop = loop
            self._add_signal_outlet(loop, listeners, source)
            if metrics is not None:
                metrics.serve(cfg.metrics.host, cfg.metrics.port)
                log.info("metrics_serving", host=cfg.metrics.host, port=cfg.metrics.port)
            loop.state.phase = "waiting_for_clean_data"
            log.info("loop_start", cadence_ms=cfg.loop.cadence_ms, shadow=self.shadow, source=cfg.source.kind,
                     device=cfg.device.kind, bundle=str(cfg.model.bundle), classes=bundle.class_names,
                     policy=cfg.policy.kind, stim_table=loop.table.source)
            tick_gc = self._enter_realtime(audit)
            try:
                loop.run(should_stop=self._should_stop, duration_s=duration_s,
                         between_ticks=None if tick_gc is None else tick_gc.between_ticks)
            finally:
                if tick_gc is not None:
                    leave_realtime()
                    log.info("realtime_gc", **tick_gc.stats())
            if self._crash is not None:
                code = EX_SOFTWARE
        except AuditError as err:
            # Before the loop (the board_ready and model_loaded records) an unwritable log refuses the start like
            # any other; the loop itself never lets one out, so later only a config reload's record can get here.
            log.error("startup_refused" if loop is None else "crashed", error=str(err))
            code = EX_CONFIG if loop is None else EX_SOFTWARE
        except (BundleError, SourceError, ConfigError, BoardRefused, PortInvalid, DataFormatError,
                RealtimeRefused) as err:
            log.error("startup_refused", error=str(err), error_type=type(err).__name__)
            try:
                audit.write("fault", faults=["startup_refused"], detail=str(err))
            except AuditError as audit_err:
                log.error("audit_write_failed", audit_event="fault", error=str(audit_err))
            code = EX_CONFIG
        except PortBusy as err:
            # Another host on the board: refuse to start (systemd retries a few times; it may have been released).
            log.error("startup_refused", error=str(err), error_type=type(err).__name__)
            try:
                audit.write("fault", faults=["startup_refused", "port_busy"], detail=str(err))
            except AuditError as audit_err:
                log.error("audit_write_failed", audit_event="fault", error=str(audit_err))
            code = EX_TEMPFAIL
        except Exception as err:  # a crash anywhere: stop stimulation, exit non-zero so systemd restarts us
            log.exception("crashed", error=repr(err))
            code = EX_SOFTWARE
        finally:
            code = self._shutdown(code, loop, audit, listeners, source, driver)
        return code

    def _make_outputs(self, listeners: list[LoopListener], source: Any, bundle: Any,
                      driver: Driver | None = None) -> Metrics | None:
        """The loop's listeners, into `listeners` (so that shutdown closes those made before a failure): the
        recorder, the decisions and markers outlets, metrics, the daemon's systemd messages and timings file, and
        the state file. Returns the Metrics to serve once the loop exists (None when [metrics] is off)."""
        cfg = self.cfg
        if cfg.decisions_lsl.enabled or cfg.markers_lsl.enabled or cfg.signal_lsl.enabled:
            from neurostimd.outputs.lsl_meta import LslTime, StreamMeta, bundle_sha256, software_version

            # one clock mapping and one description for every outlet of the session (docs/lsl-outputs.md)
            self._lsl_time = LslTime(self.clock.now_ns)
            device_id = None
            if driver is not None:
                try:
                    device_id = str(driver.info().device_id)
                except DriverError as err:
                    log.warning("lsl_device_id_unavailable", error=str(err))
            self._lsl_meta = StreamMeta(version=software_version(), bundle=str(cfg.model.bundle),
                                        bundle_sha256=bundle_sha256(bundle.path), config=self.config_path,
                                        source=cfg.source.kind, device_id=device_id, shadow=self.shadow)
        if cfg.recorder.enabled:
            from neurostimd.outputs.lsl_meta import bundle_sha256
            from neurostimd.outputs.recorder import Recorder, RecorderListener

            session = cfg.recorder.dir / time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            meta: dict[str, Any] = {"config": self.config_path, "bundle": str(cfg.model.bundle),
                                    "bundle_sha256": bundle_sha256(bundle.path)}
            # A replay at N x real time stamps its samples N times closer than the signal's own period: say so, so
            # that a reader puts the session back on the signal's time (docs/recording-format.md).
            speed = float(getattr(source, "speed", 1.0)) if source.kind == "replay" else 1.0
            if speed != 1.0:
                meta["replay_speed"] = speed
            recorder = Recorder(session, source.n_channels, source.sample_rate_hz, source.channel_names,
                                cfg.recorder.flush_interval_ms, extra_meta=meta)
            listeners.append(RecorderListener(recorder))
        if cfg.decisions_lsl.enabled:
            from neurostimd.outputs.decisions_lsl import DecisionsListener, DecisionsOutlet

            listeners.append(DecisionsListener(DecisionsOutlet(cfg.decisions_lsl, class_names=bundle.class_names,
                                                               meta=self._lsl_meta), self._lsl_time))
        if cfg.markers_lsl.enabled:
            from neurostimd.outputs.markers_lsl import MarkersListener, MarkersOutlet

            assert self._lsl_time is not None
            self._markers = MarkersListener(MarkersOutlet(cfg.markers_lsl, self._lsl_meta), bundle.class_names,
                                            self._lsl_time)
            listeners.append(self._markers)
        metrics = None
        if cfg.metrics.enabled:
            from neurostimd.outputs.metrics import Metrics, MetricsListener

            metrics = Metrics()
            listeners.append(MetricsListener(metrics))
        if self._timings is not None:
            listeners.append(_TimingsFile(self._timings))
        listeners.append(_SystemdListener(self))
        listeners.append(self.state_file)
        return metrics

    def _add_signal_outlet(self, loop: ClosedLoop, listeners: list[LoopListener], source: Any) -> None:
        """[signal_lsl]: the ring's samples as an EEG stream, made once the loop has put the source's channels in
        the model's order (what the ring holds). The config refuses it for an LSL source."""
        if not self.cfg.signal_lsl.enabled:
            return
        from neurostimd.outputs.signal_lsl import SignalListener, SignalOutlet

        assert self._lsl_time is not None
        outlet = SignalOutlet(self.cfg.signal_lsl, sample_rate_hz=source.sample_rate_hz,
                              channel_names=source.channel_names, lsl_time=self._lsl_time, meta=self._lsl_meta,
                              model=f"neurostimd {self.cfg.source.kind} source")
        sig = SignalListener(outlet)
        listeners.append(sig)  # closed at shutdown with the others
        loop.listeners.add(sig)

    def _shutdown(self, code: int, loop: ClosedLoop | None, audit: AuditLog, listeners: list[LoopListener],
                  *closables: Any) -> int:
        """Stop stimulation (confirmed by the board's ACK), then close everything; each step runs even if an
        earlier one failed. A STOP the board did not confirm makes the exit code non-zero."""
        self.notifier.stopping("stopping: stimulation off")
        if loop is not None:
            loop.state.phase = "stopping"
            try:
                confirmed = loop.stop_stimulation("shutdown")
            except Exception as err:  # never let a failure here skip closing the link (the board's watchdog)
                log.exception("shutdown_stop_failed", error=repr(err))
                confirmed = False
            if self._markers is not None:
                try:
                    self._markers.shutdown(confirmed)
                except Exception as err:  # an output: never in the way of the shutdown
                    log.error("markers_shutdown_failed", error=repr(err))
            if not confirmed:
                log.error("shutdown_without_confirmed_stop",
                          detail="the board's dead-man timer stops stimulation once this process is gone")
                if code == EX_OK:
                    code = EX_UNAVAILABLE
            self.state_file.write(loop.view, exited=True, report_errors=True)
        close_all(listeners)
        for obj in closables:
            if obj is None:
                continue
            try:
                obj.close()
            except Exception as err:
                log.error("close_failed", what=type(obj).__name__, error=repr(err))
        try:
            audit.write("shutdown", exit_code=code)
        except NeurostimError as err:
            log.error("audit_write_failed", audit_event="shutdown", error=str(err))
        finally:
            audit.close()
        if self._timings is not None:
            self._timings.close()
        self.notifier.close()
        log.info("exit", code=code)
        return code

    @staticmethod
    def _log_recovery(audit: AuditLog, recovery: DoseRecovery) -> None:
        log.info("daily_dose_recovered", daily_stim_s=round(recovery.daily_stim_s, 3),
                 open_at_crash_s=round(recovery.open_s, 3), audit=str(audit.path), next_seq=audit.next_seq)
        if recovery.clock_back_s > 0:
            log.warning("audit_clock_went_back", log_ahead_s=round(recovery.clock_back_s, 3),
                        detail="the audit log's last record is later than the wall clock now; stimulation from "
                               "earlier boots counts whole until the clock passes it — check NTP and the RTC")

    def _open_driver(self, driver: Driver, audit: AuditLog) -> None:
        """Handshake with the board; while it is not there, say so and keep trying (systemd shows the STATUS).
        The board's identity and dead-man timeout go to the audit log: dose recovery bounds a crash with them.
        A board that answers but cannot be used (BoardRefused), a port another process holds (PortBusy) and a
        config that cannot feed this board's dead-man timer (ConfigError) end the start-up instead."""
        interval = self.cfg.device.reconnect_interval_s()
        attempt = 0
        while not self._stop.is_set():
            try:
                driver.open()
                info = driver.info()
                log.info("board_ready", device_id=info.device_id, firmware=info.firmware_version,
                         n_channels=info.n_channels, sample_rate_hz=info.sample_rate_hz,
                         limits=info.limits.__dict__)
                self._refuse_unsafe_board(driver, info)
                problem = watchdog_feed_problem(self.cfg, float(info.limits.watchdog_ms))
                if problem:
                    raise ConfigError(f"{problem}; fix the config (`neurostimd check-config` checks it against the "
                                      f"longest timer allowed, [device] max_watchdog_ms)")
                audit.write("board_ready", device_id=info.device_id, firmware=info.firmware_version,
                            limits=info.limits.__dict__, **board_timing(driver))
                return
            except (BoardRefused, PortBusy, PortInvalid):
                raise
            except DriverError as err:
                attempt += 1
                if attempt == 1 or attempt % 20 == 0:
                    log.warning("board_unavailable", error=str(err), attempt=attempt, retry_s=interval)
                self._status(f"waiting for the board: {err}")
                self._stop.wait(interval)

    def _refuse_unsafe_board(self, driver: Driver, info: BoardInfo) -> None:
        """Whatever the driver checked itself: a board whose limits are unusable (BoardLimits.problems: no dead-man
        timer, impossible limits), whose sample stream is (BoardInfo.problems, for a driver that streams samples), or
        whose dead-man timer is longer than the device's settings allow is refused (BoardRefused, exit 78). The
        neurostim board's driver refuses all of these at its handshake; this holds for every device kind, a
        plugin's included."""
        problems = info.problems() if "samples" in driver.capabilities else info.limits.problems()
        longest = self.cfg.device.longest_watchdog_ms()
        if info.limits.watchdog_ms > longest:
            problems.append(f"its dead-man timer is {info.limits.watchdog_ms} ms, longer than the {longest:g} ms "
                            f"allowed ([device] max_watchdog_ms): after the host dies it would stimulate that long")
        if problems:
            raise BoardRefused(f"board {info.device_id!r} is refused: {'; '.join(problems)}")

    def _should_stop(self) -> bool:
        if self._reload.is_set():
            self._reload.clear()
            self._do_reload()
        return self._stop.is_set()

    def _do_reload(self) -> None:
        if self.config_path is None:
            return
        if self._ready:
            self.notifier.reloading()
        loop = self.loop
        try:
            new = apply_port(load_config(self.config_path), self.port_override)
            needs_restart = loop.reload(new)
        except (ConfigError, BundleError) as err:
            errors = getattr(err, "errors", None) or [str(err)]
            log.error("config_reload_rejected", errors=errors, detail="keeping the running config")
            loop.audit_record("config_reload", ok=False, errors=errors)
            if self._markers is not None:
                self._markers.note("config:reload_rejected")
        else:
            self.cfg = loop.cfg
            loop.audit_record("config_reload", ok=True, needs_restart=needs_restart, **loop.table.audit_fields())
            if self._markers is not None:
                self._markers.note("config:reloaded", needs_restart=needs_restart or None)
            log.info("config_reloaded", needs_restart=needs_restart,
                     detail="safe state until clean data for recovery_clean_ms, then stimulation resumes, ramping")
            if needs_restart:
                log.warning("config_reload_partial", keys=needs_restart,
                            detail="these settings take effect only after a restart; the old ones stay in force")
        if self._ready:
            self.notifier.notify("READY=1")

    # --- per tick --------------------------------------------------------------------------------------------------
    def _enter_realtime(self, audit: AuditLog) -> TickGC | None:
        """[runtime] realtime: this (the loop's) thread under SCHED_FIFO, memory locked, the collector between
        ticks; RealtimeRefused (the start refused, exit 78) where the OS does not allow it."""
        rt = self.cfg.runtime
        if not rt.realtime:
            return None
        report = enter_realtime(rt.rt_priority, rt.cpu_affinity, rt.lock_memory)
        try:
            audit.write("realtime", **{k: v for k, v in report.as_dict().items() if k != "gc_frozen_objects"})
        except AuditError as err:  # before the first tick: a refusal to start, like any unwritable log
            raise RealtimeRefused(f"the audit log could not record the real-time mode: {err}") from err
        report.gc_frozen = freeze_gc()
        log.info("realtime_on", **report.as_dict(), locked_kib=locked_kib())
        return TickGC()

    def _status_text(self) -> str:
        s = self.loop.state
        a = s.applied
        stim = "off" if not a else f"{a['frequency_hz']:g} Hz {a['amplitude_ma']:g} mA {a['pulse_width_us']:g} us"
        return (f"state={s.state_name or '-'} conf={s.confidence:.2f} stim={stim}"
                f"{' fault=' + s.fault if s.fault else ''}{' (shadow)' if self.shadow else ''}")

    def _status(self, text: str) -> None:
        self.notifier.status(text)


class _SystemdListener(BaseListener):
    """The daemon's messages to systemd after each tick: READY=1 (and phase "running") once a decision was made on a
    clean window, WATCHDOG=1 from the loop itself (a hung loop stops sending it and systemd restarts the service),
    and STATUS= twice a second."""

    STATUS_EVERY_S = 0.5

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._last_watchdog = 0.0
        self._last_status = 0.0

    def on_tick(self, stats: TickStats, loop: LoopView) -> None:
        d = self.daemon
        if not d._ready and loop.state.first_clean_window:
            d._ready = True
            loop.state.phase = "running"
            ready_s = time.monotonic() - d._t_start
            log.info("ready", ready_s=round(ready_s, 3))
            d.notifier.ready(d._status_text())
        now = time.monotonic()
        wd = d.notifier.watchdog_interval_s
        if wd is not None and now - self._last_watchdog >= min(wd, 1.0):
            d.notifier.watchdog()
            self._last_watchdog = now
        if d._ready and now - self._last_status >= self.STATUS_EVERY_S:
            d.notifier.status(d._status_text())
            self._last_status = now


class _TimingsFile(BaseListener):
    """`neurostimd run --timings FILE`: one JSON line per tick (stage times, jitter, sample age, ACK time)."""

    def __init__(self, fh: TextIO) -> None:
        self.fh = fh

    def on_tick(self, stats: TickStats, loop: LoopView) -> None:
        self.fh.write(json.dumps({
            "tick": stats.index, "jitter_ms": round(stats.jitter_ms, 4), "sample_age_ms": stats.sample_age_ms,
            "stages_ms": {k: round(v, 4) for k, v in stats.stages_ms.items()}, "ack_ms": stats.ack_ms,
            "sent": stats.command_sent, "overrun": stats.overrun_ticks, "status_poll_ms": stats.status_poll_ms,
            "new_samples": stats.new_samples,
        }) + "\n")


def apply_port(cfg: Config, port: str | None) -> Config:
    """The config with `--port` put into [device] (which must then be a serial device)."""
    if not port:
        return cfg
    return cfg.model_copy(update={"device": cfg.device.with_port(port)})


def cmd_run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        for line in err.errors or [str(err)]:
            print(f"{args.config}: {line}", file=sys.stderr)
        print("neurostimd: refusing to start with an invalid config; fix the lines above "
              "(`neurostimd check-config` re-checks)", file=sys.stderr)
        return EX_CONFIG
    try:
        cfg = apply_port(cfg, args.port)
    except ConfigError as err:
        print(f"neurostimd: {err}", file=sys.stderr)
        return EX_CONFIG
    configure_logging(cfg.logging.level, cfg.logging.format)
    Path(cfg.audit.path).parent.mkdir(parents=True, exist_ok=True)
    daemon = Daemon(cfg, args.config, shadow=args.shadow, timings_path=getattr(args, "timings", None),
                    port_override=args.port)
    return daemon.run(args.duration)
