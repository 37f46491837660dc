"""The policy: what the observation of a tick (the classifier's class probabilities) asks the board to run.

Pure code (no clock, no I/O): time is an input in seconds. The first of three independent safety layers — it only
decides *what to ask for*; the safety gate decides what may be sent. `Policy` is the seam: anything with
`step(t_s, observation) -> PolicyDecision` and a `confidence_threshold`; `[policy] kind` picks one through
neurostimd.registry.POLICIES, whose settings model builds it on the stimulation table in force.

`TablePolicy` (kind "table", the default) is the research notebook's law: the accepted state's row of the table.
Like the detectors of embedded adaptive-DBS systems it debounces, with the Percept's meaning of the two delays: a
new state whose stimulation is stronger (more charge per second) must persist for the onset time, one whose
stimulation is weaker or none for the termination time, and a blanking period follows every change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from pydantic import Field

from neurostimd.core.settings import Strict
from neurostimd.core.stimtable import StimTable
from neurostimd.drivers.types import StimParams


class PolicyConfig(Strict):
    """The stimulation-table law (`[policy] kind = "table"`, the default): the accepted state's row of the table."""

    kind: Literal["table"] = "table"
    confidence_threshold: float = Field(0.6, ge=0.0, le=1.0)
    # "hold": a low-confidence (or missing) observation keeps the state in effect — a state ends only when another
    # replaces it (the fault monitor bounds a hold by [safety.on_fault] hold_max_s). "unknown" (before issue 14):
    # it counts for no state, and the state ends after termination_ms of them.
    low_confidence: Literal["hold", "unknown"] = "hold"
    onset_ms: float = Field(500.0, ge=0)  # a state with stronger stimulation: observed this long before it applies
    termination_ms: float = Field(500.0, ge=0)  # one with weaker (or no) stimulation: observed this long
    blanking_ms: float = Field(1000.0, ge=0)
    use_state_durations: bool = False  # end a state's stimulation after its table `duration_min`
    target_state: int | None = None  # the state closed-loop control aims for (used by the evaluation)

    def build(self, table: StimTable) -> TablePolicy:
        return TablePolicy(self, table)


# Reasons a decision carries (stable strings: the loop logs and records them).
REASON_NO_DATA = "no_data"
REASON_INVALID = "invalid_probabilities"
REASON_LOW_CONFIDENCE = "low_confidence"
REASON_NO_STATE = "no_state"
REASON_ONSET_PENDING = "onset_pending"
REASON_TERMINATION_PENDING = "termination_pending"
REASON_BLANKING = "blanking"
REASON_STATE_CHANGE = "state_change"
REASON_STATE_ENDED = "state_ended"
REASON_HOLDING = "holding"
REASON_DURATION_ELAPSED = "duration_elapsed"
REASON_NOT_IN_TABLE = "state_not_in_table"


@dataclass(frozen=True)
class PolicyDecision:
    """`state` is the state in effect (None: none established); `desired` None means no stimulation."""

    state: int | None
    confidence: float
    desired: StimParams | None
    changed: bool
    reason: str


@dataclass(frozen=True)
class Observation:
    """What a policy sees at one decision. `probs`: the classifier's class probabilities (None: no window this
    tick). `features`: the newest frame of the model's input window, scaled as the model sees it (None: none this
    tick); its names are the bundle's `feature_names`, given to a policy once by `bind`. `applied`: what the board
    runs as far as the controller knows (the gate's output last committed with an ACK; None: nothing or unknown) —
    a law with memory (the PI's integrator) tracks it so that the gate's clamps and ramps do not wind it up."""

    probs: npt.NDArray[np.floating] | None
    features: npt.NDArray[np.floating] | None = None
    applied: StimParams | None = None


@runtime_checkable
class Policy(Protocol):
    """A control law: one decision per tick from the tick's observation. Pure: time is the argument."""

    @property
    def confidence_threshold(self) -> float:
        """The classifier confidence below which an observation does not count (the fault monitor's
        `low_confidence` uses the same threshold)."""
        ...

    def step(self, t_s: float, observation: Observation) -> PolicyDecision: ...


class TablePolicy:
    """Debounced state tracking over classifier outputs, with the state's table entry as the desired command.

    Class index i of the classifier is state i of the table. An observation counts only when its top probability is
    at or above `confidence_threshold`; below it the observation is "unknown" (it does not count for any state).
    A new state replaces the one in effect once it has been observed without interruption for `onset_ms` when its
    stimulation is stronger (charge per second, amplitude × pulse width × frequency; no stimulation is 0; equal
    counts as stronger), for `termination_ms` when it is weaker: a law can start stimulating quickly and stop
    slowly, as the Percept's onset and termination durations do. With nothing established the first state needs
    `onset_ms`. With `low_confidence = "unknown"`, the state in effect also ends (no state, no stimulation) after
    `termination_ms` without being observed. No change happens within `blanking_ms` after a change.
    With `use_state_durations`, a state stops asking for stimulation once it has stimulated for its table
    `duration_min` in total during this session (`reset()` starts a new session).
    """

    def __init__(self, cfg: PolicyConfig, table: StimTable) -> None:
        self.cfg = cfg
        self.table = table
        self._states = {s.state: s for s in table.states}
        self.reset()

    def reset(self) -> None:
        """Start a new session: no state established, all timers and duration counters cleared."""
        self._t_last: float | None = None
        self._active: int | None = None
        self._active_last_seen_s: float | None = None
        self._candidate: int | None = None
        self._candidate_since_s: float | None = None
        self._blank_until_s = -math.inf
        self._stimulating_state: int | None = None  # the state whose stimulation ran since the last step
        self._used_s: dict[int, float] = {}

    @property
    def state(self) -> int | None:
        return self._active

    @property
    def confidence_threshold(self) -> float:
        return self.cfg.confidence_threshold

    def stimulated_s(self, state: int) -> float:
        """Seconds this session the policy asked for `state`'s stimulation."""
        return self._used_s.get(state, 0.0)

    def step(self, t_s: float, observation: Observation) -> PolicyDecision:
        """One decision at time `t_s` from the observation's class probabilities."""
        t_s = self._advance(t_s)
        obs, confidence, reason = self._observe(observation.probs)
        if obs is not None and obs == self._active:
            self._active_last_seen_s = t_s
        elif obs is None and self.cfg.low_confidence == "hold" and self._active is not None:
            # not evidence against the state in effect: its termination clock does not run
            self._active_last_seen_s = t_s
        if obs != self._candidate:
            self._candidate, self._candidate_since_s = obs, t_s

        changed = False
        blanking = t_s < self._blank_until_s
        if obs is not None and obs != self._active:
            stronger = self._active is None or self._rate(obs) >= self._rate(self._active)
            need_s = (self.cfg.onset_ms if stronger else self.cfg.termination_ms) / 1000.0
            since = self._candidate_since_s if self._candidate_since_s is not None else t_s
            if t_s - since < need_s:
                reason = REASON_ONSET_PENDING if stronger else REASON_TERMINATION_PENDING
            elif blanking:
                reason = REASON_BLANKING
            else:
                self._set_active(t_s, obs)
                changed, reason = True, REASON_STATE_CHANGE
        elif self._active is not None and obs is None and self._terminated(t_s):
            if blanking:
                reason = REASON_BLANKING
            else:
                self._set_active(t_s, None)
                changed, reason = True, REASON_STATE_ENDED
        elif obs is not None and obs == self._active:
            reason = REASON_HOLDING

        desired = None
        if self._active is None:
            if reason in (REASON_HOLDING, REASON_STATE_CHANGE):
                reason = REASON_NO_STATE
        elif self._active not in self._states:
            reason = REASON_NOT_IN_TABLE
        else:
            entry = self._states[self._active]
            limit_s = entry.duration_min * 60.0 if (self.cfg.use_state_durations and entry.duration_min) else None
            if limit_s is not None and self._used_s.get(self._active, 0.0) >= limit_s:
                reason = REASON_DURATION_ELAPSED
            else:
                desired = StimParams(frequency_hz=entry.frequency_hz, amplitude_ma=entry.amplitude_ma,
                                     pulse_width_us=entry.pulse_width_us)
        self._stimulating_state = self._active if desired is not None else None
        return PolicyDecision(state=self._active, confidence=confidence, desired=desired, changed=changed,
                              reason=reason)

    # --- internals -------------------------------------------------------------------------------------------------
    def _advance(self, t_s: float) -> float:
        # A non-monotonic or non-finite time counts as "no time passed": timers never run backwards.
        if self._t_last is None:
            self._t_last = t_s if math.isfinite(t_s) else 0.0
        elif math.isfinite(t_s) and t_s > self._t_last:
            if self._stimulating_state is not None:
                s = self._stimulating_state
                self._used_s[s] = self._used_s.get(s, 0.0) + (t_s - self._t_last)
            self._t_last = t_s
        return self._t_last

    def _observe(self, probs: npt.NDArray[np.floating] | None) -> tuple[int | None, float, str]:
        if probs is None:
            return None, 0.0, REASON_NO_DATA
        p = np.asarray(probs, dtype=np.float64).ravel()
        if p.size == 0 or not np.all(np.isfinite(p)):
            return None, 0.0, REASON_INVALID
        idx = int(np.argmax(p))
        confidence = float(p[idx])
        if confidence < self.cfg.confidence_threshold:
            return None, confidence, REASON_LOW_CONFIDENCE
        return idx, confidence, REASON_HOLDING

    def _rate(self, state: int) -> float:
        """The charge per second state `state`'s row asks for (0: no row, no stimulation, or its table duration
        already used up with use_state_durations)."""
        entry = self._states.get(state)
        if entry is None:
            return 0.0
        if self.cfg.use_state_durations and entry.duration_min \
                and self._used_s.get(state, 0.0) >= entry.duration_min * 60.0:
            return 0.0
        return entry.amplitude_ma * entry.pulse_width_us * entry.frequency_hz

    def _terminated(self, t_s: float) -> bool:
        if self._active is None or self._active_last_seen_s is None:
            return True
        return t_s - self._active_last_seen_s >= self.cfg.termination_ms / 1000.0

    def _set_active(self, t_s: float, state: int | None) -> None:
        self._active = state
        self._active_last_seen_s = t_s if state is not None else None
        self._blank_until_s = t_s + self.cfg.blanking_ms / 1000.0
