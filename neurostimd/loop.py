"""The closed loop itself: one tick is source → ring buffer → features → LiteRT model → policy → fault monitor →
safety gate → audit → driver → listeners, on absolute deadlines of a Clock. The same code runs the daemon (real
clock, serial board) and replay (virtual clock, in-process virtual board); process concerns (signals, systemd, exit
codes) live in `neurostimd.service.daemon`, and every output (recorder, LSL, metrics, state file) is a
`neurostimd.listeners.LoopListener`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from neurostimd.clock import Clock
from neurostimd.config import Config, make_policy, watchdog_feed_problem
from neurostimd.core.controller import Command, ControlInputs, Controller, params_dict
from neurostimd.core.faults import (
    FAULT_AUDIT_UNAVAILABLE,
    FAULT_BOARD_INFO_MISMATCH,
    FAULT_BOARD_PARAMS_MISMATCH,
    FAULT_BOARD_RESET,
    FAULT_IMPLAUSIBLE_SIGNAL,
    FAULT_RATE_MISMATCH,
    FAULT_STARTUP,
    BoardReply,
    fallback_violations,
    policy_target_violations,
)
from neurostimd.core.ringbuffer import RingBuffer, Window
from neurostimd.core.safety import table_warnings
from neurostimd.core.stimtable import TableInForce, table_mismatch
from neurostimd.core.stream_checks import MontageError, PlausibilityCheck, RateMonitor, match_montage, saturation_rule
from neurostimd.drivers.base import Driver
from neurostimd.drivers.errors import BadReply, BoardLost, DriverError, DriverTimeout
from neurostimd.drivers.types import StimParams
from neurostimd.errors import BundleError, ConfigError, NeurostimError
from neurostimd.listeners import CommandEvent, DecisionEvent, Listeners, LoopListener, LoopState, LoopView, TickStats
from neurostimd.model.runtime import Bundle
from neurostimd.outputs.audit import AuditError, AuditLog, board_timing
from neurostimd.sources.base import Source

__all__ = ["ClosedLoop", "LoopState", "TickStats", "stim_table_in_force"]

log = structlog.get_logger(__name__)

_NS = 1_000_000_000
# Sentinel for "we do not know what the board runs" (after a failed send): the next decision is sent whatever it is.
_UNKNOWN = object()


def _names(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{f', … ({len(names)} in all)' if len(names) > limit else ''}]"


# STATUS fault flags that say the board stopped by itself (neurostimd.drivers.neurostim_board.codec.FaultFlag names)
_STOPPING_FLAGS = frozenset({"watchdog_trip", "limit_stop", "internal"})


def _failed_reply(err: DriverError) -> tuple[BoardReply, str]:
    """What a failed send means for the board's state: "nak" when the board refused (it runs what it ran),
    "timeout" when the outcome is unknown — no answer, no link, an answer of the wrong type, or the board no longer
    knowing our session (it stopped by itself; _board_checks sees the new session)."""
    if isinstance(err, DriverTimeout | BoardLost | BadReply) or err.reason == "bad_session":
        return "timeout", str(err)
    return "nak", f"{err.reason}: {err}" if err.reason else str(err)


@dataclass
class _AuditOutage:
    """The audit log cannot be written: since when, why, and what went unrecorded meanwhile (for `audit_resumed`)."""

    error: str
    since_wall: str
    since_mono_ns: int
    last_try_ns: int
    missed: dict[str, int] = field(default_factory=dict)
    unaudited_stops: list[dict[str, Any]] = field(default_factory=list)
    stopped_at: dict[str, Any] | None = None  # the first unaudited STOP the board ACKed


def stim_table_in_force(cfg: Config, bundle: Bundle) -> TableInForce:
    """The config's `[stimulation]` table when it has one, else the bundle's own. Either must have one row per class
    of the bundle (state i for class i), and a config table must name the bundle's classes, in order: ConfigError
    (config) or BundleError (bundle) naming both lists otherwise."""
    classes = list(bundle.class_names)
    stim = cfg.stimulation
    if stim is not None:
        if list(stim.classes) != classes:
            raise ConfigError(
                f"[stimulation] is written for the classes {list(stim.classes)}, but model bundle {bundle.path} "
                f"classifies {classes}: row i is the stimulation for class i, so this table belongs to another "
                f"model. Write [stimulation] classes and one row per class for {classes}, or remove [stimulation] "
                f"to use the bundle's own table")
        return TableInForce(stim.table(), "config")
    problem = table_mismatch([s.state for s in bundle.table.states], classes)
    if problem:
        raise BundleError(f"model bundle {bundle.path}: its stimulation table does not fit its classes: {problem}. "
                          f"Retrain it with a table of one row per class (`neurostimd train --table`), or give a "
                          f"[stimulation] table for {classes} in the config")
    return TableInForce(bundle.table, "bundle")


class _Stage:
    """Times one stage of a tick into `stages_ms[name]`."""

    __slots__ = ("_name", "_stages", "_t0")

    def __init__(self, stages: dict[str, float], name: str) -> None:
        self._stages, self._name, self._t0 = stages, name, 0

    def __enter__(self) -> None:
        self._t0 = time.perf_counter_ns()

    def __exit__(self, *exc: object) -> None:
        # accumulated: a stage may be timed in more than one place of a tick ("audit")
        self._stages[self._name] = self._stages.get(self._name, 0.0) + (time.perf_counter_ns() - self._t0) / 1e6


@dataclass
class _Tick:
    """One tick's working state, handed from stage to stage."""

    start_ns: int
    deadline_ns: int
    t_s: float
    stages_ms: dict[str, float] = field(default_factory=dict)
    board_ok: bool = True
    boundary: list[str] = field(default_factory=list)  # what the checks at the boundary found wrong
    sent: bool = False
    ack_ms: float | None = None
    command_event: CommandEvent | None = None

    def stage(self, name: str) -> _Stage:
        return _Stage(self.stages_ms, name)


@dataclass(frozen=True)
class _DataHealth:
    age_ms: float | None  # of the newest sample (inf when the source is stale without one)
    flags: list[str]  # the ring's quality reasons for the decision window
    quality_ok: bool


class ClosedLoop:
    """One decision per `tick()`; `run()` ticks on absolute deadlines until told to stop or the source runs dry.
    `listeners` get the samples, decisions, commands and tick statistics (neurostimd.listeners); the one who made
    them closes them."""

    def __init__(self, cfg: Config, *, clock: Clock, source: Source, bundle: Bundle, audit: AuditLog,
                 driver: Driver | None, shadow: bool = False, prior_daily_stim_s: float = 0.0,
                 listeners: Sequence[LoopListener] = ()) -> None:
        self.cfg = cfg
        self.clock = clock
        self.source = source
        self.bundle = bundle
        self.audit = audit
        self.driver = driver
        self.shadow = shadow or driver is None
        self.cadence_ns = int(cfg.loop.cadence_ms * 1e6)
        self.state = LoopState()
        self.view = LoopView(lambda: self.state, lambda: self.ring,
                             lambda: None if self.driver is None else self.driver.counters)
        self.listeners = Listeners(listeners, failures=self.state.listener_failures,
                                   on_first_failure=lambda name, method, error: self.audit_record(
                                       "output_failed", listener=name, method=method, error=error))
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
        _check_policy_targets(cfg, limits)
        self.table = stim_table_in_force(cfg, bundle)
        self.controller = self._make_controller(cfg, self.table, limits, prior_daily_stim_s)
        # the audit log at the boundary: down (nothing but STOP is sent) until a write succeeds again
        self._audit_down: _AuditOutage | None = None
        self._board_timing = board_timing(None if self.shadow else driver)
        self._next_index = 0
        self._last_reply: BoardReply | None = None
        # What the board was last confirmed to run (None = off). Unknown at start: a board may still be stimulating
        # from an earlier host (HELLO does not stop it), so the first decision is always sent — an audited STOP.
        self._board_applied: object = _UNKNOWN
        self._t0_ns: int | None = None
        self._tick_index = 0
        self._impedance_ohm: float | None = None
        # STATUS every status_poll_ms (one round trip): the electrode impedance for the gate's compliance rule, and
        # the check that the board runs what it last acknowledged.
        self._status_every = self._status_period(cfg)
        self._poll_soon = False
        self._poll_pending = False  # a tick scheduled a STATUS poll for after its work (after_tick)
        # What the last STATUS showed that the host did not command (None: it agreed); a fault until a STATUS agrees.
        self._board_mismatch: str | None = None
        # a decision window plus as much again for the filters to settle
        self._warm_samples = 2 * bundle.window_samples
        self._log_table(limits)
        # Which model and table decide from here on, before anything is sent; an unwritable log refuses the start.
        # Not fsync'd on its own (nothing waits on it): the next durable record, before any command, carries it.
        self.audit.write("model_loaded", durable=False, bundle=str(bundle.path), classes=list(bundle.class_names),
                         policy=cfg.policy.kind, **self.table.audit_fields())
        if driver is not None:
            # Know the electrode impedance (compliance rule) before the first command, not 2 s into stimulation. (The
            # session may have expired while the model and the source loaded: this poll renews it, before the loop
            # takes the driver's session count as its starting point. The board's state is unknown either way.)
            self._poll_status(0.0)
        # The driver's session count and reset count when last seen: a change means a new session on the board.
        self._epoch = driver.session_epoch if driver is not None else 0
        self._resets = driver.resets if driver is not None else 0

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
        needs_names = b.settings.front_end.input_names()
        if needs_names is not None and mine is None:
            # Picks and bipolar pairs are channels by name: by position they could pair the wrong electrodes.
            raise BundleError(f"model bundle {b.path} takes the channels {needs_names} by name (its front end picks "
                              f"or pairs them), but the {s.kind} source names no channels, so they cannot be found; "
                              f"use a source that labels its channels (an LSL stream's desc/channels, an EEG "
                              f"channel list), or a bundle trained without --channels / bipolar --reference")
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

    @staticmethod
    def _status_period(cfg: Config) -> int:
        return max(1, round(cfg.device.status_poll_interval_ms() / cfg.loop.cadence_ms))

    def _make_controller(self, cfg: Config, table: TableInForce, limits: Any, prior_daily_stim_s: float = 0.0
                         ) -> Controller:
        policy = make_policy(cfg.policy, table.table, class_names=list(self.bundle.class_names),
                             feature_names=self._feature_names())
        return Controller(policy, cfg.safety, stale_after_ms=cfg.loop.stale_after_ms,
                          board_limits=limits, prior_daily_stim_s=prior_daily_stim_s,
                          deliverable=None if self.driver is None else self.driver.deliverable)

    def _feature_names(self) -> list[str] | None:
        """The names of the model's input features (as training wrote them), for a law on a feature biomarker."""
        channels = self.bundle.manifest.get("channel_names")
        if not isinstance(channels, list):
            return None
        return list(self.bundle.settings.feature_names([str(c) for c in channels], self.bundle.sample_rate_hz))

    def _log_table(self, limits: Any) -> None:
        t = self.table
        log.info("stim_table", source=t.source, sha256=t.sha256, policy=self.cfg.policy.kind,
                 states={self._state_name(s.state): s.name for s in t.table.states})
        for w in table_warnings(self.cfg.safety, t.table, limits):
            log.warning("stim_table_limited", detail=w)

    # Sections a SIGHUP applies at once; any other change is reported and waits for a restart.
    LIVE_SECTIONS = ("policy", "stimulation", "safety", "loop")
    LIVE_LOOP_KEYS = ("cadence_ms", "stale_after_ms")

    def reload(self, cfg: Config) -> list[str]:
        """Take a new config's policy, stimulation table, safety and loop timing; return the changed keys that need
        a restart (their old values are kept). The decision pipeline restarts in its safe state, as at start-up:
        stimulation resumes, ramping, after `recovery_clean_ms` of clean data under the new limits. Raises
        ConfigError (nothing changed) if the new fallback would be cut on this board or the new table does not fit
        the bundle; BundleError likewise if, without [stimulation], the bundle's own table does not."""
        limits = self.controller.gate.board_limits
        bad_fallback = fallback_violations(cfg.safety, limits)
        if bad_fallback:
            raise ConfigError(f"[safety.fallback] would be cut by {', '.join(bad_fallback)} on this board")
        _check_policy_targets(cfg, limits, reload=True)
        needs_restart = [k for k in type(cfg).model_fields
                         if k not in self.LIVE_SECTIONS and getattr(cfg, k) != getattr(self.cfg, k)]
        loop_upd = {k: getattr(cfg.loop, k) for k in self.LIVE_LOOP_KEYS}
        needs_restart += [f"loop.{k}" for k in type(cfg.loop).model_fields
                          if k not in self.LIVE_LOOP_KEYS and getattr(cfg.loop, k) != getattr(self.cfg.loop, k)]
        if limits is not None:
            # the new cadence with the running device settings must still feed this board's dead-man timer (a
            # config refused at start must not get in by SIGHUP)
            live = self.cfg.model_copy(update={"loop": self.cfg.loop.model_copy(update=loop_upd)})
            problem = watchdog_feed_problem(live, float(limits.watchdog_ms))
            if problem:
                raise ConfigError(f"{problem}; the reload is refused and the running config kept")
        table = stim_table_in_force(cfg, self.bundle)
        t_s = self._t_s()
        ctl = self._make_controller(cfg, table, limits)
        # The dose history carries over, and the new gate ramps from what the board runs now, not from zero.
        current = self._board_applied if isinstance(self._board_applied, StimParams) else None
        ctl.gate.carry_over(self.controller.gate, t_s, current)
        ctl.commit(t_s, current, current is not None)  # a hold after the reload holds what runs now
        self.controller = ctl
        changed_table = table.sha256 != self.table.sha256
        self.table = table
        self.cfg = self.cfg.model_copy(update={"policy": cfg.policy, "stimulation": cfg.stimulation,
                                               "safety": cfg.safety,
                                               "loop": self.cfg.loop.model_copy(update=loop_upd)})
        self.cadence_ns = int(self.cfg.loop.cadence_ms * 1e6)
        self._status_every = self._status_period(self.cfg)
        if changed_table:
            self._log_table(limits)
        return needs_restart

    # --- one tick --------------------------------------------------------------------------------------------------
    def _t_s(self) -> float:
        t0 = self._t0_ns if self._t0_ns is not None else self.clock.now_ns()
        return (self.clock.now_ns() - t0) / _NS

    def _driver_lost(self) -> bool:
        return self.driver is not None and self.driver.lost

    def tick(self, deadline_ns: int | None = None) -> TickStats:
        """Make one decision now. Never raises on bad data or board trouble: those become faults."""
        if self._poll_pending:
            self.after_tick()  # a caller that does not run after_tick() between ticks: the poll goes first
        tk = self._begin_tick(deadline_ns)
        with tk.stage("audit"):
            self._audit_boundary(tk.t_s)  # retry a log that is down, or write a dose checkpoint that is due
        with tk.stage("ingest"):
            new = self._ingest(tk)  # source → ring; what the driver learnt about the board
        with tk.stage("features"):
            window = self._features(new)
        with tk.stage("inference"):
            probs = self._classify(window)
        with tk.stage("checks"):
            health = self._check_data(tk)  # sample age, window quality, stream rate and amplitudes, the audit log
        with tk.stage("policy_safety"):
            cmd = self._decide(tk, probs, health, None if window is None else window[-1])  # policy → faults → gate
        self._last_reply = None
        with tk.stage("audit"):
            self._audit_events(cmd)  # fault, fault_cleared, state_change
        with tk.stage("driver"):
            self._send_if_changed(tk, cmd)  # audit (fsync'd), then the board
        self._poll_pending = self._poll_due(tk)  # STATUS after the tick's work (after_tick), never inside it
        stats = self._end_tick(tk, cmd, probs, window is not None, health, len(new))
        self._notify(new, cmd, probs, tk.command_event, tk.start_ns)
        return stats

    # --- the stages of a tick --------------------------------------------------------------------------------------
    def _begin_tick(self, deadline_ns: int | None) -> _Tick:
        start_ns = self.clock.now_ns()
        if self._t0_ns is None:
            self._t0_ns = start_ns
        return _Tick(start_ns=start_ns, deadline_ns=start_ns if deadline_ns is None else deadline_ns,
                     t_s=(start_ns - self._t0_ns) / _NS)

    def _ingest(self, tk: _Tick) -> Window:
        """The source fills the ring; then the driver's per-tick upkeep (heartbeats, re-arming, draining), whatever
        the source; the board's health becomes `tk.board_ok` and boundary causes. Returns the samples new since the
        last tick."""
        try:
            self.source.pump(self.ring, 0.0)
        except DriverError:
            tk.board_ok = False
        if self.driver is not None:
            try:
                self.driver.service(self.clock.now_ns())
            except DriverError:
                tk.board_ok = False
        if self.driver is not None and self._driver_lost():
            tk.board_ok = False
        if not tk.board_ok and self._board_applied is not _UNKNOWN:
            # A lost board stops by its dead-man timer only if it stays silent long enough; a quick reconnect may
            # find it still stimulating. So: unknown, and the first decision after the reconnect is sent (a STOP).
            self._board_applied = _UNKNOWN
            self.controller.commit(tk.t_s, None, False)
        self._board_checks(tk.t_s, tk.boundary)
        new = self.ring.since(self._next_index, copy=False)
        self._next_index = new.end_index
        return new

    def _features(self, new: Window) -> np.ndarray | None:
        """Judge the new samples' amplitudes, feed them to the streaming features; the decision window, if any."""
        n_new = len(new)
        # the amplitudes of the new samples, judged before anything with memory sees them
        over_bound = self.plausibility.push(new.data) if n_new else False
        if n_new:
            data = new.data
            if over_bound or not np.isfinite(data).all():
                # NaN/Inf, or amplitudes beyond the plausibility bound (10^20 µV), would poison the filters' state
                # for seconds after they leave the window; start them afresh after it (the fault holds meanwhile,
                # and the window refills with clean frames before anything is decided on it).
                self.features.reset()
            else:
                if n_new > 2 * self._warm_samples:
                    # after a stall, only the newest stretch matters: bounded work per tick
                    self.features.reset()
                    data = data[-self._warm_samples:]
                self.features.push(data)
        return self.features.window()

    def _classify(self, window: np.ndarray | None) -> np.ndarray | None:
        probs = self.bundle.predict(window) if window is not None else None
        if probs is not None and not np.isfinite(probs).all():
            probs = None  # a model that returns NaN has no opinion
        return probs

    def _check_data(self, tk: _Tick) -> _DataHealth:
        newest = self.ring.newest_timestamp
        now_s = self.clock.now_ns() / _NS
        age_ms = None if newest is None else max(0.0, (now_s - newest) * 1000.0)
        quality = self.ring.quality(self.bundle.window_samples)
        flags = list(quality.reasons)
        if self.source.stale and "stale" not in flags:
            age_ms = math.inf if age_ms is None else max(age_ms, self.cfg.loop.stale_after_ms + 1.0)
        self._check_stream(tk.t_s, tk.boundary)
        if self._audit_down is not None:
            tk.boundary.append(FAULT_AUDIT_UNAVAILABLE)
        return _DataHealth(age_ms=age_ms, flags=flags, quality_ok=quality.ok)

    def _decide(self, tk: _Tick, probs: np.ndarray | None, health: _DataHealth,
                features: np.ndarray | None = None) -> Command:
        return self.controller.step(tk.t_s, ControlInputs(
            probs=probs, data_age_ms=health.age_ms, t_data_s=self.source.t_data_s, quality_flags=health.flags,
            board_ok=tk.board_ok, last_reply=self._last_reply, impedance_ohm=self._impedance_ohm,
            boundary_causes=tk.boundary, features=features))

    def _send_if_changed(self, tk: _Tick, cmd: Command) -> None:
        # an audit write failed in this tick: whatever the board runs is stopped now, not at the next decision
        must_stop = self._audit_down is not None and self._board_applied is not None
        if (cmd.applied != self._board_applied or must_stop) and (tk.board_ok or self.shadow):
            tk.sent = True
            tk.ack_ms, tk.command_event = self._send(cmd, tk.start_ns)

    def _poll_due(self, tk: _Tick) -> bool:
        # STATUS on schedule even after a tick that sent a command: a board that obeys someone else between two ramp
        # steps must still be caught (right after a mismatch, after the next tick: the fault waits for agreement)
        return (not self.shadow and self.driver is not None and tk.board_ok and self._board_applied is not _UNKNOWN
                and (self._poll_soon or self._tick_index % self._status_every == 0))

    def after_tick(self) -> float | None:
        """The STATUS poll a tick scheduled, done after the tick's work so that no tick — a commanding one above
        all — waits on its round trip: `run()` calls this right after each tick, before the sleep to the next
        deadline (a caller of `tick()` alone gets it at the start of the next tick, before anything is decided).
        Returns how long it took (ms), None when no poll was due."""
        if not self._poll_pending:
            return None
        self._poll_pending = False
        t0 = time.perf_counter_ns()
        self._poll_status(self._t_s())
        return (time.perf_counter_ns() - t0) / 1e6

    def _end_tick(self, tk: _Tick, cmd: Command, probs: np.ndarray | None, has_window: bool, health: _DataHealth,
                  n_new: int) -> TickStats:
        self._publish(cmd, probs, has_window and health.quality_ok and health.age_ms is not None
                      and health.age_ms <= self.cfg.loop.stale_after_ms)
        stats = TickStats(index=self._tick_index, deadline_ns=tk.deadline_ns, start_ns=tk.start_ns,
                          jitter_ms=(tk.start_ns - tk.deadline_ns) / 1e6, stages_ms=tk.stages_ms,
                          sample_age_ms=health.age_ms, new_samples=n_new, command_sent=tk.sent, ack_ms=tk.ack_ms)
        self._tick_index += 1
        self.state.ticks += 1
        return stats

    def _notify(self, new: Window, cmd: Command, probs: np.ndarray | None, sent: CommandEvent | None,
                t_ns: int | None = None) -> None:
        """The listeners, after the command path: each guarded, so none can stop the loop."""
        if len(new):
            self.listeners.samples(new)
        if sent is not None:
            self.listeners.command(sent)
        self.listeners.decision(DecisionEvent(tick=self._tick_index - 1, command=cmd, probs=probs, t_ns=t_ns))

    def _board_checks(self, t_s: float, boundary: list[str]) -> None:
        """What the driver learnt about the board since the last decision, as fault causes: a new session (a
        reconnect, or a board that lost ours) means its state is unknown and the ramp starts from zero; a reset, a
        refused board and a STATUS that disagrees with what was acknowledged are faults of their own."""
        drv = self.driver
        if drv is None:
            return
        resets = drv.resets
        if resets != self._resets:
            self._resets = resets
            boundary.append(FAULT_BOARD_RESET)
        epoch = drv.session_epoch
        if epoch != self._epoch:
            self._epoch = epoch
            # The board may run nothing (a new session) or the last command (a resumed one): unknown, so the next
            # decision is sent whatever it is, and any stimulation ramps up again from zero.
            self._board_applied = _UNKNOWN
            self.controller.commit(t_s, None, False)
        if drv.lost and drv.refusal_kind == "board":
            boundary.append(FAULT_BOARD_INFO_MISMATCH)
        if self._board_mismatch is not None:
            boundary.append(FAULT_BOARD_PARAMS_MISMATCH)

    def _check_stream(self, t_s: float, boundary: list[str]) -> None:
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
        bad = bool(self.plausibility.judge())  # the new samples were pushed before the features saw them
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
            self._audit_write(event, **fields)
            if event == "fault":
                for cause in fields["raised"]:
                    self.state.fault_counts[cause] = self.state.fault_counts.get(cause, 0) + 1
                log.warning("fault", faults=fields["faults"], raised=fields["raised"], safe_state=fields["safe_state"])
            elif event == "state_change":
                log.info("state_change", state=fields["state"], state_name=self._state_name(fields["state"]),
                         confidence=round(fields["confidence"], 3), reason=fields["reason"])
            else:
                log.info(event)

    def _send(self, cmd: Command, start_ns: int) -> tuple[float | None, CommandEvent | None]:
        """Audit (fsync'd) first, then command the board; record the outcome. Returns tick start → ACK in ms, and
        what the listeners are told when the command went to a board."""
        rec = self._audit_write(cmd.event, **cmd.audit_fields(), shadow=self.shadow)
        if rec is None:
            self._stop_unaudited(cmd.t_s)
            return None, None
        applied = cmd.applied
        t_s = cmd.t_s
        if self.shadow or self.driver is None:
            self._board_applied = applied
            self.controller.commit(t_s, applied, True)
            return None, None
        reply: BoardReply = "ack"
        error: str | None = None
        try:
            if applied is None:
                self.driver.stop()
            else:
                self.driver.set_stimulation(applied)
        except DriverError as err:
            reply, error = _failed_reply(err)
        ack_ns = self.clock.now_ns()
        acked = reply == "ack"
        ack_ms = (ack_ns - start_ns) / 1e6 if acked else None
        # The ACK outcome follows the send; it is not fsync'd on its own (the next durable record carries it to disk),
        # which keeps a second fsync out of every commanding tick.
        ack_rec = self._audit_write("stim_ack", durable=False, command_seq=rec["seq"], ack=acked,
                                    **({"error": error, "reply": reply} if error else {}))
        t_ack = ack_rec["t_mono_ns"] if ack_rec is not None else self.audit.clock_now()[1]
        event = CommandEvent(command=cmd, record=rec, reply=reply, error=error, t_ack_mono_ns=t_ack)
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
        return ack_ms, event

    def _poll_status(self, t_s: float) -> None:
        assert self.driver is not None
        self._poll_soon = False
        self._checkpoint_if_due(t_s)  # a STATUS exchange may take ack_timeout × tries: bounded by a fresh record
        epoch = self.driver.session_epoch
        try:
            st = self.driver.status()
        except DriverError as err:
            # No answer to STATUS is a missing ACK like any other: the next decision goes to the safe state.
            log.warning("status_poll_failed", error=str(err))
            self._last_reply = "timeout"
            return
        if st.impedance_ohm != self._impedance_ohm:
            log.info("electrode_impedance", impedance_ohm=st.impedance_ohm)
        self._impedance_ohm = st.impedance_ohm
        if st.fault_flags:
            log.warning("board_fault_flags", flags=st.fault_flags, names=list(st.fault_names))
        if self.driver.session_epoch != epoch:
            return  # the session was renewed to get this STATUS: _board_checks deals with that first
        mismatch = self._compare_status(st)
        if mismatch is not None:
            if self._board_mismatch is None:
                log.error("board_params_mismatch", detail=mismatch, expected=params_dict(self._expected_params()),
                          running=params_dict(st.params), fault_flags=list(st.fault_names),
                          action="stimulation off (STOP) until the board runs what it is told")
                self._audit_write("board_mismatch", check="board_params_mismatch", detail=mismatch,
                                  expected=params_dict(self._expected_params()), running=params_dict(st.params),
                                  fault_flags=list(st.fault_names))
            self._board_mismatch = mismatch
            self._board_applied = _UNKNOWN  # the next decision (a STOP: the fault forces off) is sent whatever it is
            self._poll_soon = True  # look again right after it: the fault clears only when STATUS agrees
        elif self._board_mismatch is not None:
            log.warning("board_params_agree_again", detail="the board runs what it was last told")
            self._board_mismatch = None
        if isinstance(self._board_applied, StimParams) and not st.stimulating:
            # The board stopped by itself and says why (its watchdog, a fault, its limits): it runs nothing, so the
            # gate ramps from zero again rather than jumping back to the last amplitude.
            log.warning("board_stopped_by_itself", fault_names=list(st.fault_names))
            # as good as an ACKed STOP for the dose: the board itself says it runs nothing
            self._audit_write("board_stopped", fault_flags=list(st.fault_names))
            self._board_applied = None
            self.controller.commit(t_s, None, True)

    def _expected_params(self) -> StimParams | None:
        return self._board_applied if isinstance(self._board_applied, StimParams) else None

    def _compare_status(self, st: Any) -> str | None:
        """How STATUS contradicts the last acknowledged command (None when it agrees, or when the host does not know
        what the board should run). A stop the board explains with a fault flag is not a contradiction."""
        expected = self._board_applied
        if expected is _UNKNOWN:
            return None
        if expected is None:
            return "the board is stimulating although the host's last acknowledged command was STOP" \
                if st.stimulating else None
        assert isinstance(expected, StimParams)
        if not st.stimulating:
            # only a flag that means "I stopped" explains a stop (high_impedance does not stop anything)
            if _STOPPING_FLAGS & set(st.fault_names):
                return None
            return "the board stopped stimulating without a fault flag that says why"
        running = st.params
        if running is None:
            return "the board says it stimulates but not with what"
        pairs = ((running.frequency_hz, expected.frequency_hz), (running.amplitude_ma, expected.amplitude_ma),
                 (running.pulse_width_us, expected.pulse_width_us),
                 (running.interphase_gap_us, expected.interphase_gap_us))
        # STATUS carries float32: equal within its rounding, nothing more (NaN is never close to anything)
        if not all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) for a, b in pairs):
            return "the board runs other parameters than the host last acknowledged"
        return None

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

    # --- the audit log at the boundary ------------------------------------------------------------------------------
    def audit_record(self, event: str, **fields: Any) -> dict[str, Any] | None:
        """A record from outside the tick (the daemon's config reload): like every record of the loop, one that
        cannot be written puts the log down (audit_unavailable) instead of raising."""
        return self._audit_write(event, **fields)

    def _audit_write(self, event: str, *, durable: bool = True, **fields: Any) -> dict[str, Any] | None:
        """One audit record; None when the log cannot be written. From the first failure on the log is down:
        `audit_unavailable` holds (safe state off), no command but STOP is sent, and each record that would have
        been written is counted for the `audit_resumed` record that ends the outage."""
        down = self._audit_down
        if down is None:
            try:
                return self.audit.write(event, durable=durable, **fields)
            except AuditError as err:
                wall, mono = self.audit.clock_now()
                down = self._audit_down = _AuditOutage(error=str(err), since_wall=wall, since_mono_ns=mono,
                                                       last_try_ns=mono)
                log.error("audit_unavailable", error=str(err), audit_event=event,
                          detail="no command but STOP is sent until the audit log is writable again")
        down.missed[event] = down.missed.get(event, 0) + 1
        return None

    def _audit_boundary(self, t_s: float) -> None:
        """At the start of a tick, before anything reaches the board: retry a log that is down, or write a dose
        checkpoint when one is due."""
        if self._audit_down is None:
            self._checkpoint_if_due(t_s)
        else:
            self._try_audit_resume()

    def _try_audit_resume(self, *, force: bool = False) -> None:
        """Retry a log that is down (once per checkpoint interval) with the `audit_resumed` record; on success the
        outage ends and the fault clears after recovery_clean_ms like any other."""
        down = self._audit_down
        if down is None:
            return
        _, mono = self.audit.clock_now()
        if not force and mono - down.last_try_ns < self.cfg.audit.checkpoint_ms * 1e6:
            return
        down.last_try_ns = mono
        try:
            self.audit.write("audit_resumed", error=down.error, down_since=down.since_wall,
                             down_s=round((mono - down.since_mono_ns) / _NS, 3), missed=down.missed,
                             unaudited_stops=down.unaudited_stops, stopped_at=down.stopped_at)
        except AuditError as err:
            log.debug("audit_still_unavailable", error=str(err))
            return
        self._audit_down = None
        log.warning("audit_resumed", down_s=round((mono - down.since_mono_ns) / _NS, 3), missed=down.missed,
                    detail="stimulation may resume after recovery_clean_ms of clean data")

    def _checkpoint_if_due(self, t_s: float) -> None:
        """While the board may be stimulating, a durable `dose_checkpoint` at least every [audit] checkpoint_ms, so
        that a crash hides no more than that (dose recovery counts on through the last record + this interval + the
        longest exchange + the board's watchdog). One per interval: any other durable record counts as one."""
        if self._audit_down is not None or self.shadow or self.driver is None or self._board_applied is None:
            return
        since = self.audit.since_durable_ns()
        # checked once a tick: a cadence early, so that the spacing stays within the interval
        due_ns = max(0.0, self.cfg.audit.checkpoint_ms - self.cfg.loop.cadence_ms) * 1e6
        if since is not None and since < due_ns:
            return
        gate = self.controller.gate
        running = self._board_applied
        self._audit_write("dose_checkpoint", session_stim_s=gate.session_stim_s, daily_stim_s=gate.daily_stim_s(t_s),
                          applied=params_dict(running) if isinstance(running, StimParams) else "unknown",
                          checkpoint_ms=self.cfg.audit.checkpoint_ms, **self._board_timing)

    def _stop_unaudited(self, t_s: float) -> None:
        """The audit log is down: STOP the board all the same (its record cannot be written), and remember it for
        the `audit_resumed` record."""
        if self.shadow or self.driver is None:
            self._board_applied = None
            self.controller.commit(t_s, None, True)
            return
        reply: BoardReply = "ack"
        error: str | None = None
        try:
            self.driver.stop()
        except DriverError as err:
            reply, error = _failed_reply(err)
        acked = reply == "ack"
        wall, mono = self.audit.clock_now()
        down = self._audit_down
        if down is not None:
            if len(down.unaudited_stops) < 16:
                down.unaudited_stops.append({"t_wall": wall, "t_mono_ns": mono, "ack": acked})
            if acked and down.stopped_at is None:
                down.stopped_at = {"t_wall": wall, "t_mono_ns": mono}
        log.error("stim_stop_unaudited", ack=acked, reply=reply, error=error,
                  detail="the audit log cannot be written; STOP was sent without its record")
        self.state.commands += 1
        if not acked:
            self.state.send_failures += 1
        self._board_applied = None if acked else (self._board_applied if reply == "nak" else _UNKNOWN)
        self.controller.commit(t_s, None, acked)
        self._last_reply = reply

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
        if self._audit_down is not None:
            self._try_audit_resume(force=True)  # what an outage missed goes in before the stop, if the log is back
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
            between_ticks: Callable[[], object] | None = None) -> None:
        """Tick on absolute deadlines (next = previous + cadence) until should_stop(), the duration is over, or a
        replay source is exhausted. Overruns are counted and logged, never silently absorbed. After each tick the
        tick's STATUS poll, if one is due, runs (`after_tick`); then the listeners' `on_tick` gets its statistics,
        the poll and any overrun included; then `between_ticks` runs (the real-time mode's garbage collection), before
        the sleep to the next deadline."""
        deadline = self.clock.now_ns()
        end = None if duration_s is None else deadline + int(duration_s * _NS)
        while not should_stop():
            self.clock.sleep_until(deadline)
            if should_stop():
                break
            stats = self.tick(deadline)
            stats.status_poll_ms = self.after_tick()
            deadline += self.cadence_ns
            now = self.clock.now_ns()
            if now > deadline:
                missed = (now - deadline) // self.cadence_ns + 1
                stats.overrun_ticks = int(missed)
                self.state.overruns += int(missed)
                log.warning("overrun", tick=stats.index, late_ms=round((now - deadline) / 1e6, 3),
                            missed_ticks=int(missed), stages_ms={k: round(v, 3) for k, v in stats.stages_ms.items()})
                deadline += missed * self.cadence_ns
            self.listeners.tick(stats, self.view)
            if between_ticks is not None:
                between_ticks()
            if self.source.exhausted:
                break
            if end is not None and deadline > end:
                break


def _check_policy_targets(cfg: Config, limits: Any, *, reload: bool = False) -> None:
    """ConfigError when a law's own targets (a clinician's settings, like the fallback) would be cut on this board:
    the config check at load knows only [safety], not the board's limits."""
    bad = policy_target_violations(cfg.policy, cfg.safety, limits)
    if bad:
        p, broken = bad[0]
        raise ConfigError(
            f"[policy] kind = {cfg.policy.kind!r} can ask for {p.frequency_hz:g} Hz, {p.amplitude_ma:g} mA, "
            f"{p.pulse_width_us:g} µs, which this board cuts ({', '.join(broken)}; its limits: {limits}); lower the "
            f"policy's amplitude, frequency or pulse width"
            + ("; the reload is refused and the running config kept" if reload else ""))
