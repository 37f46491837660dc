"""The closed loop itself: one tick is source → ring buffer → features → LiteRT model → policy → fault monitor →
safety gate → audit → driver, on absolute deadlines of a Clock. The same code runs the daemon (real clock, serial
board) and replay (virtual clock, in-process virtual board); process concerns (signals, systemd, exit codes) live in
`neurostimd.daemon`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from drivers.base import Driver, StimParams
from drivers.errors import BoardLost, DriverError, DriverTimeout
from neurostimd.audit import AuditLog, params_dict
from neurostimd.clock import Clock
from neurostimd.config import Config
from neurostimd.errors import BundleError, ConfigError, NeurostimError
from neurostimd.faults import (
    FAULT_IMPLAUSIBLE_SIGNAL,
    FAULT_RATE_MISMATCH,
    FAULT_STARTUP,
    BoardReply,
    Command,
    ControlInputs,
    Controller,
    fallback_violations,
)
from neurostimd.model.runtime import Bundle
from neurostimd.ringbuffer import RingBuffer
from neurostimd.safety import table_warnings
from neurostimd.sources.base import Source
from neurostimd.stream_checks import MontageError, PlausibilityCheck, RateMonitor, match_montage, saturation_rule

log = structlog.get_logger(__name__)

_NS = 1_000_000_000
# Sentinel for "we do not know what the board runs" (after a failed send): the next decision is sent whatever it is.
_UNKNOWN = object()


def _names(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{f', … ({len(names)} in all)' if len(names) > limit else ''}]"


@dataclass
class TickStats:
    """What one tick did and how long each stage took (ms). Kept for metrics, the bench and the status file."""

    index: int
    deadline_ns: int
    start_ns: int
    jitter_ms: float
    stages_ms: dict[str, float]
    sample_age_ms: float | None
    new_samples: int
    command_sent: bool
    ack_ms: float | None  # tick start → the board's ACK, when a command was sent and acknowledged
    overrun_ticks: int = 0


@dataclass
class LoopState:
    """The loop's observable state (status file, systemd STATUS=, metrics)."""

    phase: str = "starting"
    ticks: int = 0
    overruns: int = 0
    state: int | None = None
    state_name: str | None = None
    confidence: float = 0.0
    probs: list[float] = field(default_factory=list)
    applied: dict[str, float] | None = None
    fault: str | None = None
    limited_by: list[str] = field(default_factory=list)
    first_clean_window: bool = False
    board_state_known: bool = False
    fault_counts: dict[str, int] = field(default_factory=dict)  # faults raised so far, by cause
    commands: int = 0
    send_failures: int = 0


class ClosedLoop:
    """One decision per `tick()`; `run()` ticks on absolute deadlines until told to stop or the source runs dry."""

    def __init__(self, cfg: Config, *, clock: Clock, source: Source, bundle: Bundle, audit: AuditLog,
                 driver: Driver | None, shadow: bool = False,
                 on_decision: Callable[[dict[str, Any]], None] | None = None,
                 on_tick: Callable[[TickStats], None] | None = None, prior_daily_stim_s: float = 0.0,
                 recorder: Any = None, outlet: Any = None) -> None:
        self.cfg = cfg
        self.recorder = recorder  # neurostimd.recorder.Recorder: raw samples, decisions, commands of the session
        self.outlet = outlet  # neurostimd.decisions_lsl.DecisionsOutlet: decisions as an LSL stream
        self.clock = clock
        self.source = source
        self.bundle = bundle
        self.audit = audit
        self.driver = driver
        self.shadow = shadow or driver is None
        self.on_decision = on_decision
        self.on_tick = on_tick
        self.cadence_ns = int(cfg.loop.cadence_ms * 1e6)
        self.state = LoopState()
        self._check_bundle_matches_source()
        fs = source.sample_rate_hz
        sat = saturation_rule(source.n_channels, configured_uv=cfg.loop.saturation_uv, source_range_uv=source.range_uv,
                              stats=bundle.signal_stats)
        self.ring = RingBuffer(source.n_channels, max(int(cfg.loop.ring_seconds * fs), 4 * bundle.window_samples),
                               fs, saturation_bounds_uv=None if sat is None else (sat.lo, sat.hi),
                               jitter_tolerance_s=source.timestamp_tolerance_s)
        # The boundary checks of the stream itself (docs/safety.md): effective rate and plausible amplitudes.
        self.rate = RateMonitor(fs, cfg.loop.cadence_ms / 1000.0)
        self.plausibility = PlausibilityCheck(source.n_channels, bundle.signal_stats, cfg.loop.plausibility_factor,
                                              window_samples=bundle.window_samples)
        self._rate_bad = False
        self._implausible = False
        self._log_stream_checks(sat)
        self.features = bundle.new_features()
        limits = None
        if driver is not None:
            limits = driver.info().limits
        bad_fallback = fallback_violations(cfg.safety, limits)
        if bad_fallback:
            raise ConfigError(f"[safety.fallback] would be cut by {', '.join(bad_fallback)} on this board "
                              f"(its limits: {limits}); lower the fallback parameters or use safe_state = \"off\"")
        self.controller = self._make_controller(cfg, limits, prior_daily_stim_s)
        self._next_index = 0
        self._last_reply: BoardReply | None = None
        # What the board was last confirmed to run (None = off). Unknown at start: a board may still be stimulating
        # from an earlier host (HELLO does not stop it), so the first decision is always sent — an audited STOP.
        self._board_applied: object = _UNKNOWN
        self._t0_ns: int | None = None
        self._tick_index = 0
        self._impedance_ohm: float | None = None
        # Electrode impedance for the gate's compliance rule: asked of the board every ~2 s (one STATUS round trip).
        self._status_every = max(1, round(2000.0 / cfg.loop.cadence_ms))
        # a decision window plus as much again for the filters to settle
        self._warm_samples = 2 * bundle.window_samples
        for w in table_warnings(cfg.safety, bundle.table, limits):
            log.warning("stim_table_limited", detail=w)
        if driver is not None:
            # Know the electrode impedance (compliance rule) before the first command, not 2 s into stimulation.
            self._poll_status(0.0)

    # --- set-up ----------------------------------------------------------------------------------------------------
    def _check_bundle_matches_source(self) -> None:
        b, s = self.bundle, self.source
        self._match_montage()
        problems = []
        if b.n_channels != s.n_channels:
            problems.append(f"{s.n_channels} channels from the source, the model expects {b.n_channels}")
        if not math.isclose(b.sample_rate_hz, s.sample_rate_hz, rel_tol=1e-3):
            problems.append(f"{s.sample_rate_hz:g} Hz from the source, the model expects {b.sample_rate_hz:g} Hz")
        if problems:
            raise BundleError(f"model bundle {b.path} does not match the data source: {'; '.join(problems)}. "
                              f"Train a bundle for this source (`neurostimd train`) or configure a matching source")

    def _match_montage(self) -> None:
        """Match the source's channels to the model's by name and make the source deliver them in the model's order;
        BundleError naming the missing and extra channels. Without names on either side, only the count is checked
        (and the operator told so once)."""
        b, s = self.bundle, self.source
        model, mine = b.channel_names, s.declared_channel_names
        if model is None or mine is None:
            log.warning("montage_unchecked", n_channels=s.n_channels, source=s.kind,
                        reason="the source names no channels" if mine is None else
                        "the model bundle records no channel names",
                        detail="only the channel count is compared with the model; a miswired or reordered montage "
                               "cannot be seen")
            return
        try:
            idx = match_montage(model, mine)
        except MontageError as err:
            picked = getattr(self.cfg.source, "channels", None) is not None
            if err.missing:
                fix = ("connect or label the missing channels, or use a bundle trained on this montage "
                       "(`neurostimd train`)")
            elif picked:
                fix = "remove the channels the model does not know from [source] channels"
            else:
                fix = f"choose the model's channels from the wider source with [source] channels = {list(model)!r}"
            count = (f"{s.n_channels} channels from the source, the model expects {b.n_channels}; "
                     if s.n_channels != b.n_channels else "")
            raise BundleError(f"model bundle {b.path} does not match the data source: {count}by channel name, {err} "
                              f"(the model was trained on {_names(model)}, the source delivers {_names(mine)}). "
                              f"Fix: {fix}") from err
        s.select_channels(idx)
        if not np.array_equal(idx, np.arange(len(idx))):
            log.info("montage_reordered", source_order=mine, model_order=list(model))

    def _log_stream_checks(self, sat: Any) -> None:
        b = self.bundle
        if b.signal_stats is None:
            log.warning("training_stats_missing", bundle=str(b.path),
                        detail="the bundle has no signal_stats: amplitudes are checked only against |x| >= 1e6 uV; "
                               "add them with `python -m neurostimd.model.bundle add-stats`")
        if sat is None:
            log.warning("saturation_unchecked", detail="no [loop] saturation_uv, no range declared by the source and "
                                                       "no training statistics: saturation is not detected")
        else:
            log.info("saturation_threshold", origin=sat.origin, lo_uv=float(sat.lo.max()), hi_uv=float(sat.hi.min()))

    def _make_controller(self, cfg: Config, limits: Any, prior_daily_stim_s: float = 0.0) -> Controller:
        return Controller(cfg.policy, cfg.safety, self.bundle.table, stale_after_ms=cfg.loop.stale_after_ms,
                          board_limits=limits, prior_daily_stim_s=prior_daily_stim_s)

    # Sections a SIGHUP applies at once; any other change is reported and waits for a restart.
    LIVE_LOOP_KEYS = ("cadence_ms", "stale_after_ms")

    def reload(self, cfg: Config) -> list[str]:
        """Take a new config's policy, safety and loop timing; return the changed keys that need a restart (their
        old values are kept). The decision pipeline restarts in its safe state, as at start-up: stimulation resumes,
        ramping, after `recovery_clean_ms` of clean data under the new limits. Raises ConfigError (nothing changed)
        if the new fallback would be cut on this board."""
        limits = self.controller.gate.board_limits
        bad_fallback = fallback_violations(cfg.safety, limits)
        if bad_fallback:
            raise ConfigError(f"[safety.fallback] would be cut by {', '.join(bad_fallback)} on this board")
        needs_restart = [k for k in type(cfg).model_fields
                         if k not in ("policy", "safety", "loop") and getattr(cfg, k) != getattr(self.cfg, k)]
        loop_upd = {k: getattr(cfg.loop, k) for k in self.LIVE_LOOP_KEYS}
        needs_restart += [f"loop.{k}" for k in type(cfg.loop).model_fields
                          if k not in self.LIVE_LOOP_KEYS and getattr(cfg.loop, k) != getattr(self.cfg.loop, k)]
        t_s = self._t_s()
        ctl = self._make_controller(cfg, limits)
        # The dose history carries over, and the new gate ramps from what the board runs now, not from zero.
        current = self._board_applied if isinstance(self._board_applied, StimParams) else None
        ctl.gate.carry_over(self.controller.gate, t_s, current)
        self.controller = ctl
        self.cfg = self.cfg.model_copy(update={"policy": cfg.policy, "safety": cfg.safety,
                                               "loop": self.cfg.loop.model_copy(update=loop_upd)})
        self.cadence_ns = int(self.cfg.loop.cadence_ms * 1e6)
        self._status_every = max(1, round(2000.0 / self.cfg.loop.cadence_ms))
        return needs_restart

    # --- one tick --------------------------------------------------------------------------------------------------
    def _t_s(self) -> float:
        t0 = self._t0_ns if self._t0_ns is not None else self.clock.now_ns()
        return (self.clock.now_ns() - t0) / _NS

    def _driver_lost(self) -> bool:
        return bool(getattr(self.driver, "lost", False))

    def tick(self, deadline_ns: int | None = None) -> TickStats:
        """Make one decision now. Never raises on bad data or board trouble: those become faults."""
        start_ns = self.clock.now_ns()
        if self._t0_ns is None:
            self._t0_ns = start_ns
        deadline_ns = start_ns if deadline_ns is None else deadline_ns
        t_s = (start_ns - self._t0_ns) / _NS
        stages: dict[str, float] = {}
        perf = time.perf_counter_ns

        # ingest: the source fills the ring; a non-board source still pumps the driver for its heartbeats
        p = perf()
        board_ok = True
        try:
            self.source.pump(self.ring, 0.0)
        except BoardLost:
            board_ok = False
        if self.driver is not None and self.source.kind != "board":
            try:
                self.driver.read_samples(0.0)
            except BoardLost:
                board_ok = False
        if self.driver is not None and self._driver_lost():
            board_ok = False
        if not board_ok and self._board_applied is not _UNKNOWN:
            # A lost board stops by its dead-man timer only if it stays silent long enough; a quick reconnect may
            # find it still stimulating. So: unknown, and the first decision after the reconnect is sent (a STOP).
            self._board_applied = _UNKNOWN
            self.controller.commit(t_s, None, False)
        new = self.ring.since(self._next_index, copy=False)
        self._next_index = new.end_index
        n_new = len(new)
        if self.recorder is not None and n_new:
            self.recorder.record_samples(new)
        stages["ingest"] = (perf() - p) / 1e6

        # features + inference
        p = perf()
        if n_new:
            data = new.data
            if not np.isfinite(data).all():
                # NaN/Inf would poison the filters' state for good; start them afresh after it (the ring's quality
                # flag keeps the fault raised meanwhile, and the window refills with clean frames).
                self.features.reset()
            else:
                if n_new > 2 * self._warm_samples:
                    # after a stall, only the newest stretch matters: bounded work per tick
                    self.features.reset()
                    data = data[-self._warm_samples:]
                self.features.push(data)
        window = self.features.window()
        stages["features"] = (perf() - p) / 1e6
        p = perf()
        probs = self.bundle.predict(window) if window is not None else None
        if probs is not None and not np.isfinite(probs).all():
            probs = None  # a model that returns NaN has no opinion
        stages["inference"] = (perf() - p) / 1e6

        # data health
        newest = self.ring.newest_timestamp
        now_s = self.clock.now_ns() / _NS
        age_ms = None if newest is None else max(0.0, (now_s - newest) * 1000.0)
        quality = self.ring.quality(self.bundle.window_samples)
        flags = list(quality.reasons)
        if self.source.stale and "stale" not in flags:
            age_ms = math.inf if age_ms is None else max(age_ms, self.cfg.loop.stale_after_ms + 1.0)
        # what the checks at the boundary (board, stream, audit log) found wrong at this decision
        boundary: list[str] = []
        self._check_stream(t_s, new.data, boundary)

        # policy → fault monitor → gate
        p = perf()
        cmd = self.controller.step(t_s, ControlInputs(
            probs=probs, data_age_ms=age_ms, t_data_s=self.source.t_data_s, quality_flags=flags, board_ok=board_ok,
            last_reply=self._last_reply, impedance_ohm=self._impedance_ohm, boundary_causes=boundary))
        stages["policy_safety"] = (perf() - p) / 1e6
        self._last_reply = None
        self._audit_events(cmd)

        # send what changed
        p = perf()
        sent, ack_ms = False, None
        if cmd.applied != self._board_applied and (board_ok or self.shadow):
            sent = True
            ack_ms = self._send(cmd, start_ns)
        if (not self.shadow and self.driver is not None and board_ok and not sent
                and self._tick_index % self._status_every == 0):
            self._poll_status(t_s)
        stages["driver"] = (perf() - p) / 1e6

        self._publish(cmd, probs, window is not None and quality.ok and age_ms is not None
                      and age_ms <= self.cfg.loop.stale_after_ms)
        stats = TickStats(index=self._tick_index, deadline_ns=deadline_ns, start_ns=start_ns,
                          jitter_ms=(start_ns - deadline_ns) / 1e6, stages_ms=stages, sample_age_ms=age_ms,
                          new_samples=n_new, command_sent=sent, ack_ms=ack_ms)
        self._tick_index += 1
        self.state.ticks += 1
        if self.on_decision is not None or self.recorder is not None or self.outlet is not None:
            rec = self._decision_record(cmd, probs)
            if self.on_decision is not None:
                self.on_decision(rec)
            if self.recorder is not None:
                self.recorder.record_decision(rec)
            if self.outlet is not None:
                self.outlet.push(rec)
        return stats

    def _check_stream(self, t_s: float, new_data: np.ndarray, boundary: list[str]) -> None:
        """The stream's effective rate and the plausibility of the decision window's amplitudes, as boundary
        causes. Until the rate has a first verdict, the start-up cause holds the safe state."""
        c = self.ring.counters
        bad_rate = self.rate.update(t_s, self.ring.total_written, c.missing_samples, c.gaps,
                                    flowing=not self.source.stale)
        if bad_rate:
            boundary.append(FAULT_RATE_MISMATCH)
        elif not self.rate.judged:
            boundary.append(FAULT_STARTUP)
        if bad_rate != self._rate_bad:
            self._rate_bad = bad_rate
            if bad_rate:
                log.warning("rate_mismatch", declared_hz=self.rate.declared_hz,
                            effective_hz=round(self.rate.effective_hz or 0.0, 2),
                            tolerance=round(self.rate.threshold or 0.0, 4))
            else:
                log.info("rate_mismatch_cleared", effective_hz=round(self.rate.effective_hz or 0.0, 2))
        self.plausibility.push(new_data)
        bad = bool(self.plausibility.judge())
        if bad and not self._implausible:
            names = self.source.channel_names
            data = self.ring.latest_data(self.bundle.window_samples)
            log.warning("implausible_signal", reason=self.plausibility.last_reason,
                        channels=[names[i] for i in self.plausibility.channels(data)][:16],
                        factor=self.plausibility.factor, has_training_stats=self.bundle.signal_stats is not None)
        if bad:
            boundary.append(FAULT_IMPLAUSIBLE_SIGNAL)
        elif self._implausible:
            log.info("implausible_signal_cleared")
        self._implausible = bad

    def _audit_events(self, cmd: Command) -> None:
        for event, fields in cmd.side_events():
            self.audit.write(event, **fields)
            if event == "fault":
                for cause in fields["raised"]:
                    self.state.fault_counts[cause] = self.state.fault_counts.get(cause, 0) + 1
                log.warning("fault", faults=fields["faults"], raised=fields["raised"], safe_state=fields["safe_state"])
            elif event == "state_change":
                log.info("state_change", state=fields["state"], state_name=self._state_name(fields["state"]),
                         confidence=round(fields["confidence"], 3), reason=fields["reason"])
            else:
                log.info(event)

    def _send(self, cmd: Command, start_ns: int) -> float | None:
        """Audit (fsync'd) first, then command the board; record the outcome. Returns tick start → ACK in ms."""
        rec = self.audit.write(cmd.event, **cmd.audit_fields(), shadow=self.shadow)
        applied = cmd.applied
        t_s = cmd.t_s
        if self.shadow or self.driver is None:
            self._board_applied = applied
            self.controller.commit(t_s, applied, True)
            return None
        reply: BoardReply = "ack"
        error: str | None = None
        try:
            if applied is None:
                self.driver.stop()
            else:
                self.driver.set_stimulation(applied)
        except DriverTimeout as err:
            reply, error = "timeout", str(err)
        except BoardLost as err:
            reply, error = "timeout", str(err)
        except DriverError as err:
            reply, error = "nak", f"{err.reason}: {err}" if err.reason else str(err)
        ack_ns = self.clock.now_ns()
        acked = reply == "ack"
        ack_ms = (ack_ns - start_ns) / 1e6 if acked else None
        # The ACK outcome follows the send; it is not fsync'd on its own (the next durable record carries it to disk),
        # which keeps a second fsync out of every commanding tick.
        ack_rec = self.audit.write("stim_ack", durable=False, command_seq=rec["seq"], ack=acked,
                                   **({"error": error, "reply": reply} if error else {}))
        if self.recorder is not None:
            self.recorder.record_command({**rec, "ack": acked, "t_ack_mono_ns": ack_rec["t_mono_ns"]})
        self.state.commands += 1
        if acked:
            self._board_applied = applied
            # Ramp steps go to the audit log every tick; the service log gets the commands a person wants to see.
            level = log.debug if cmd.gate.limited_by == ["ramp"] else log.info
            level("stim_command" if applied is not None else "stim_stop",
                  applied=params_dict(applied), limited_by=cmd.gate.limited_by, state=cmd.decision.state)
        else:
            self.state.send_failures += 1
            # NAK: the board kept what it ran. Timeout/lost: unknown, so the next decision is sent regardless.
            self._board_applied = self._board_applied if reply == "nak" else _UNKNOWN
            log.warning("stim_send_failed", reply=reply, error=error, requested=params_dict(applied))
        self.controller.commit(t_s, applied, acked)
        self._last_reply = reply
        return ack_ms

    def _poll_status(self, t_s: float) -> None:
        assert self.driver is not None
        try:
            st = self.driver.status()
        except DriverError as err:
            # No answer to STATUS is a missing ACK like any other: the next decision goes to the safe state.
            log.warning("status_poll_failed", error=str(err))
            self._last_reply = "timeout"
            return
        if isinstance(self._board_applied, StimParams) and not st.stimulating:
            # The board stopped by itself (its watchdog, a fault, its limits): it runs nothing, so the gate ramps
            # from zero again rather than jumping back to the last amplitude.
            log.warning("board_stopped_by_itself", fault_names=list(st.fault_names))
            self._board_applied = None
            self.controller.commit(t_s, None, True)
        elif self._board_applied is None and st.stimulating:
            log.error("board_stimulating_unexpectedly", params=params_dict(st.params))
            self._board_applied = _UNKNOWN  # the next decision is sent whatever it is
        if st.impedance_ohm != self._impedance_ohm:
            log.info("electrode_impedance", impedance_ohm=st.impedance_ohm)
        self._impedance_ohm = st.impedance_ohm
        if st.fault_flags:
            log.warning("board_fault_flags", flags=st.fault_flags, names=list(st.fault_names))

    def _state_name(self, state: int | None) -> str | None:
        if state is None:
            return None
        names = self.bundle.class_names
        return names[state] if 0 <= state < len(names) else str(state)

    def _publish(self, cmd: Command, probs: np.ndarray | None, clean: bool) -> None:
        s = self.state
        s.state = cmd.decision.state
        s.state_name = self._state_name(cmd.decision.state)
        s.confidence = float(cmd.decision.confidence)
        s.probs = [] if probs is None else [round(float(v), 4) for v in probs]
        s.applied = params_dict(self._board_applied) if isinstance(self._board_applied, StimParams) else None
        s.board_state_known = self._board_applied is not _UNKNOWN
        s.fault = ",".join(cmd.fault.faults) if cmd.fault.active and cmd.fault.faults else (
            "recovering" if cmd.fault.active else None)
        s.limited_by = list(cmd.gate.limited_by)
        if clean:
            s.first_clean_window = True

    def _decision_record(self, cmd: Command, probs: np.ndarray | None) -> dict[str, Any]:
        """One line of decisions.jsonl: only data-derived values, so a replay is byte-for-byte reproducible."""
        return {
            "tick": self._tick_index - 1,
            "t_s": round(cmd.t_s, 6),
            "t_data_s": None if cmd.t_data_s is None else round(float(cmd.t_data_s), 6),
            "state": cmd.decision.state,
            "confidence": round(float(cmd.decision.confidence), 6),
            "probs": None if probs is None else [round(float(v), 6) for v in probs],
            "requested": params_dict(cmd.requested),
            "applied": params_dict(cmd.applied),
            "limited_by": list(cmd.gate.limited_by),
            "faults": list(cmd.fault.faults),
            "safe_state": cmd.fault.active,
        }

    # --- stopping --------------------------------------------------------------------------------------------------
    def _audit_safely(self, event: str, **fields: Any) -> dict[str, Any] | None:
        """An audit write on the stopping path: a broken log must not keep the STOP from the board."""
        try:
            return self.audit.write(event, **fields)
        except NeurostimError as err:
            log.error("audit_write_failed", audit_event=event, error=str(err),
                      detail="stopping stimulation regardless")
            return None

    def stop_stimulation(self, reason: str, attempts: int = 3) -> bool:
        """STOP the board and wait for its ACK (bounded retries); audit it. True when the board confirmed."""
        rec = self._audit_safely("stim_stop", reason=reason, requested=None, applied=None, limited_by=[],
                                 state=self.state.state, confidence=self.state.confidence,
                                 t_data_s=self.source.t_data_s, shadow=self.shadow)
        if self.shadow or self.driver is None:
            return True
        err: str | None = None
        for _ in range(attempts):
            try:
                self.driver.stop()
            except DriverError as e:
                err = str(e)
                continue
            if rec is not None:
                self._audit_safely("stim_ack", command_seq=rec["seq"], ack=True)
            self._board_applied = None
            self.state.applied = None
            log.info("stim_stop", reason=reason, confirmed=True)
            return True
        if rec is not None:
            self._audit_safely("stim_ack", command_seq=rec["seq"], ack=False, error=err)
        log.error("stim_stop_unconfirmed", reason=reason, error=err,
                  detail="the board's dead-man timer stops it once heartbeats cease")
        return False

    # --- running ---------------------------------------------------------------------------------------------------
    def run(self, *, should_stop: Callable[[], bool], duration_s: float | None = None,
            between_ticks: Callable[[TickStats], None] | None = None) -> None:
        """Tick on absolute deadlines (next = previous + cadence) until should_stop(), the duration is over, or a
        replay source is exhausted. Overruns are counted and logged, never silently absorbed."""
        deadline = self.clock.now_ns()
        end = None if duration_s is None else deadline + int(duration_s * _NS)
        while not should_stop():
            self.clock.sleep_until(deadline)
            if should_stop():
                break
            stats = self.tick(deadline)
            deadline += self.cadence_ns
            now = self.clock.now_ns()
            if now > deadline:
                missed = (now - deadline) // self.cadence_ns + 1
                stats.overrun_ticks = int(missed)
                self.state.overruns += int(missed)
                log.warning("overrun", tick=stats.index, late_ms=round((now - deadline) / 1e6, 3),
                            missed_ticks=int(missed), stages_ms={k: round(v, 3) for k, v in stats.stages_ms.items()})
                deadline += missed * self.cadence_ns
            if self.on_tick is not None:
                self.on_tick(stats)
            if between_ticks is not None:
                between_ticks(stats)
            if self.source.exhausted:
                break
            if end is not None and deadline > end:
                break
