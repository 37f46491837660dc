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
from typing import Any

import structlog

from neurostimd.clock import MonotonicClock
from neurostimd.config import Config, load_config, watchdog_feed_problem
from neurostimd.devices import make_device
from neurostimd.drivers.base import Driver
from neurostimd.drivers.errors import BoardRefused, DriverError, PortBusy, PortInvalid
from neurostimd.errors import BundleError, ConfigError, DataFormatError, NeurostimError, SourceError
from neurostimd.outputs.audit import AuditError, AuditLog, DoseRecovery, board_timing
from neurostimd.outputs.status import write_state
from neurostimd.safe_io import UnsafePath, check_regular_or_absent, real_directory
from neurostimd.service.exitcodes import EX_CONFIG, EX_OK, EX_SOFTWARE, EX_TEMPFAIL, EX_UNAVAILABLE
from neurostimd.service.logs import configure_logging
from neurostimd.service.notify import SystemdNotifier

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
        self._last_watchdog = 0.0
        self._last_state_write = 0.0
        self.metrics: Any = None
        self._faults_exported: dict[str, int] = {}
        self._state_file_refused = False

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
        recorder: Any = None
        outlet: Any = None
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

            if cfg.recorder.enabled:
                from neurostimd.outputs.recorder import Recorder

                session = cfg.recorder.dir / time.strftime("%Y%m%dT%H%M%S", time.gmtime())
                recorder = Recorder(session, source.n_channels, source.sample_rate_hz, source.channel_names,
                                    cfg.recorder.flush_interval_ms,
                                    extra_meta={"config": self.config_path, "bundle": str(cfg.model.bundle)})
            if cfg.decisions_lsl.enabled:
                from neurostimd.outputs.decisions_lsl import DecisionsOutlet

                outlet = DecisionsOutlet(cfg.decisions_lsl, class_names=bundle.class_names)
            loop = ClosedLoop(cfg, clock=self.clock, source=source, bundle=bundle, audit=audit, driver=driver,
                              shadow=self.shadow, on_tick=self._after_tick, prior_daily_stim_s=prior_daily_s,
                              recorder=recorder, outlet=outlet)
            self.loop = loop
            if cfg.metrics.enabled:
                from neurostimd.outputs.metrics import Metrics

                self.metrics = Metrics()
                self.metrics.serve(cfg.metrics.host, cfg.metrics.port)
                log.info("metrics_serving", host=cfg.metrics.host, port=cfg.metrics.port)
            loop.state.phase = "waiting_for_clean_data"
            log.info("loop_start", cadence_ms=cfg.loop.cadence_ms, shadow=self.shadow, source=cfg.source.kind,
                     device=cfg.device.kind, bundle=str(cfg.model.bundle), classes=bundle.class_names)
            loop.run(should_stop=self._should_stop, duration_s=duration_s, between_ticks=self._between_ticks)
            if self._crash is not None:
                code = EX_SOFTWARE
        except AuditError as err:
            # Before the loop (the board_ready record) an unwritable log refuses the start like any other; the
            # loop itself never lets one out, so later only a config reload's record can get here.
            log.error("startup_refused" if loop is None else "crashed", error=str(err))
            code = EX_CONFIG if loop is None else EX_SOFTWARE
        except (BundleError, SourceError, ConfigError, BoardRefused, PortInvalid, DataFormatError) as err:
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
            code = self._shutdown(code, loop, audit, recorder, outlet, source, driver)
        return code

    def _shutdown(self, code: int, loop: Any, audit: AuditLog, *closables: Any) -> int:
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
            if not confirmed:
                log.error("shutdown_without_confirmed_stop",
                          detail="the board's dead-man timer stops stimulation once this process is gone")
                if code == EX_OK:
                    code = EX_UNAVAILABLE
            self._write_state(force=True, exited=True)
        for obj in (*closables, self.metrics):
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
        except ConfigError as err:
            errors = err.errors or [str(err)]
            log.error("config_reload_rejected", errors=errors, detail="keeping the running config")
            loop.audit_record("config_reload", ok=False, errors=errors)
        else:
            self.cfg = loop.cfg
            loop.audit_record("config_reload", ok=True, needs_restart=needs_restart)
            log.info("config_reloaded", needs_restart=needs_restart,
                     detail="safe state until clean data for recovery_clean_ms, then stimulation resumes, ramping")
            if needs_restart:
                log.warning("config_reload_partial", keys=needs_restart,
                            detail="these settings take effect only after a restart; the old ones stay in force")
        if self._ready:
            self.notifier.notify("READY=1")

    # --- per tick --------------------------------------------------------------------------------------------------
    def _after_tick(self, stats: Any) -> None:
        loop = self.loop
        if self._timings is not None:
            self._timings.write(json.dumps({
                "tick": stats.index, "jitter_ms": round(stats.jitter_ms, 4), "sample_age_ms": stats.sample_age_ms,
                "stages_ms": {k: round(v, 4) for k, v in stats.stages_ms.items()}, "ack_ms": stats.ack_ms,
                "sent": stats.command_sent, "overrun": stats.overrun_ticks, "new_samples": stats.new_samples,
            }) + "\n")
        if self.metrics is not None:
            m = self.metrics
            for k, v in stats.stages_ms.items():
                m.stage_seconds.labels(stage=k).observe(v / 1000.0)
            if stats.sample_age_ms is not None and stats.sample_age_ms != float("inf"):
                m.sample_age_seconds.observe(stats.sample_age_ms / 1000.0)
            m.ticks.inc()
            if stats.overrun_ticks:
                m.overruns.inc(stats.overrun_ticks)
            m.samples.inc(stats.new_samples)
            m.gaps.set(loop.ring.gaps)
            m.ring_overruns.set(loop.ring.counters.overrun_samples)
            for cause, n in loop.state.fault_counts.items():
                seen = self._faults_exported.get(cause, 0)
                if n > seen:
                    m.faults.labels(kind=cause).inc(n - seen)
                    self._faults_exported[cause] = n
            if loop.driver is not None:
                c = loop.driver.counters
                m.bad_frames.set(c.bad_frames)
                m.blocks_dropped.set(c.extra.get("blocks_dropped", 0))
            m.state.set(-1 if loop.state.state is None else loop.state.state)
            m.confidence.set(loop.state.confidence)
            applied = loop.state.applied
            m.stimulating.set(1 if applied else 0)
            for k in ("frequency_hz", "amplitude_ma", "pulse_width_us"):
                m.applied.labels(param=k).set(applied[k] if applied else 0.0)
        if not self._ready and loop.state.first_clean_window:
            self._ready = True
            loop.state.phase = "running"
            ready_s = time.monotonic() - self._t_start
            log.info("ready", ready_s=round(ready_s, 3))
            self.notifier.ready(self._status_text())

    def _between_ticks(self, stats: Any) -> None:
        now = time.monotonic()
        wd = self.notifier.watchdog_interval_s
        # WATCHDOG=1 comes from the loop itself: a hung loop stops sending it and systemd restarts the service.
        if wd is not None and now - self._last_watchdog >= min(wd, 1.0):
            self.notifier.watchdog()
            self._last_watchdog = now
        if now - self._last_state_write >= 0.5:
            self._write_state()
            if self._ready:
                self.notifier.status(self._status_text())

    def _status_text(self) -> str:
        s = self.loop.state
        a = s.applied
        stim = "off" if not a else f"{a['frequency_hz']:g} Hz {a['amplitude_ma']:g} mA {a['pulse_width_us']:g} us"
        return (f"state={s.state_name or '-'} conf={s.confidence:.2f} stim={stim}"
                f"{' fault=' + s.fault if s.fault else ''}{' (shadow)' if self.shadow else ''}")

    def _status(self, text: str) -> None:
        self.notifier.status(text)

    def _write_state(self, *, force: bool = False, exited: bool = False) -> None:
        self._last_state_write = time.monotonic()
        loop = getattr(self, "loop", None)
        if loop is None:
            return
        s = loop.state
        state: dict[str, Any] = {
            "pid": os.getpid(), "t_unix": time.time(), "phase": s.phase, "shadow": self.shadow,
            "state": s.state, "state_name": s.state_name, "confidence": s.confidence, "probs": s.probs,
            "applied": s.applied, "fault": s.fault, "limited_by": s.limited_by, "ticks": s.ticks,
            "overruns": s.overruns, "samples": loop.ring.samples_written, "gaps": loop.ring.gaps,
            "commands": s.commands, "send_failures": s.send_failures, "exited": exited,
            "uptime_s": round(time.monotonic() - self._t_start, 3),
            # The daemon must run the model through LiteRT alone; this lets anyone check it never loaded TensorFlow.
            "tensorflow_loaded": "tensorflow" in sys.modules,
        }
        if loop.driver is not None:
            state["driver"] = {k: v for k, v in loop.driver.counters.__dict__.items() if k != "extra"}
        try:
            write_state(self.cfg.runtime.state_file, state)
        except UnsafePath as err:
            if not self._state_file_refused:  # say it once, not twice a second
                self._state_file_refused = True
                log.error("state_file_refused", path=str(self.cfg.runtime.state_file), error=str(err))
        except OSError as err:
            if force:
                log.warning("state_file_unwritable", path=str(self.cfg.runtime.state_file), error=str(err))


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
