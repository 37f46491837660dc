"""The policy seam (any Policy in the Controller, built by make_policy) and the table policy's examples:
confidence threshold, onset, termination, blanking and per-state durations."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from neurostimd.config import make_policy
from neurostimd.core.controller import ControlInputs, Controller
from neurostimd.core.policy import Observation, Policy, PolicyConfig, PolicyDecision, TablePolicy
from neurostimd.core.safety import SafetyConfig
from neurostimd.core.stimtable import StateStim, StimTable, notebook_table
from neurostimd.drivers.types import StimParams
from neurostimd.errors import ConfigError

DT = 0.05


def one_hot(state: int, conf: float = 0.9, n: int = 3) -> np.ndarray:
    p = np.full(n, (1.0 - conf) / (n - 1))
    p[state] = conf
    return p


def policy(**kw: object) -> TablePolicy:
    base: dict[str, object] = {"onset_ms": 0.0, "termination_ms": 0.0, "blanking_ms": 0.0}
    base.update(kw)
    return TablePolicy(PolicyConfig.model_validate(base), notebook_table())


def run(pol: TablePolicy, t0: float, seconds: float, probs: np.ndarray | None) -> list:
    out = []
    n = round(seconds / DT)
    for i in range(n):
        out.append(pol.step(t0 + i * DT, Observation(probs)))
    return out


def test_confident_state_maps_to_table_entry() -> None:
    """With no debouncing, a confident state asks for its table entry at once."""
    d = policy().step(0.0, Observation(one_hot(1)))
    assert d.state == 1 and d.changed and d.desired is not None
    assert (d.desired.frequency_hz, d.desired.amplitude_ma, d.desired.pulse_width_us) == (50.0, 3.5, 300.0)


def test_below_confidence_threshold_does_not_act() -> None:
    """An observation below the confidence threshold neither starts a state nor asks for stimulation."""
    pol = policy(confidence_threshold=0.8)
    d = pol.step(0.0, Observation(one_hot(2, conf=0.7)))
    assert d.state is None and d.desired is None and d.reason == "low_confidence" and d.confidence == 0.7


def test_invalid_or_missing_probabilities_do_not_act() -> None:
    """NaN probabilities or no classifier output never start a state."""
    pol = policy()
    assert pol.step(0.0, Observation(np.array([np.nan, 0.5, 0.5]))).state is None
    assert pol.step(0.1, Observation(None)).reason == "no_data"


def test_onset_delays_a_new_state() -> None:
    """A new state takes effect only after it has persisted for onset_ms."""
    pol = policy(onset_ms=500.0)
    ds = run(pol, 0.0, 0.5, one_hot(0))
    assert all(d.state is None and d.reason == "onset_pending" for d in ds)
    d = pol.step(0.5, Observation(one_hot(0)))
    assert d.state == 0 and d.changed


def test_interrupted_onset_restarts() -> None:
    """A candidate interrupted by another observation must persist for onset_ms again."""
    pol = policy(onset_ms=300.0)
    run(pol, 0.0, 0.25, one_hot(0))
    pol.step(0.25, Observation(one_hot(1)))
    assert pol.step(0.30, Observation(one_hot(0))).state is None
    assert pol.step(0.55, Observation(one_hot(0))).state is None
    assert pol.step(0.60, Observation(one_hot(0))).state == 0


def test_termination_keeps_the_old_state() -> None:
    """A state with weaker stimulation (state 0 of the notebook's table after state 1) replaces the one in effect
    only after it has been observed for termination_ms."""
    pol = policy(termination_ms=400.0)
    pol.step(0.0, Observation(one_hot(1)))
    ds = run(pol, DT, 0.35, one_hot(0))
    assert all(d.state == 1 for d in ds) and ds[-1].reason == "termination_pending"
    assert pol.step(0.40, Observation(one_hot(0))).state == 1
    assert pol.step(0.45, Observation(one_hot(0))).state == 0


def test_onset_delays_stronger_stimulation_and_termination_weaker() -> None:
    """Issue 14 (the Percept's meaning): onset is how long a state that stimulates more must persist, termination one
    that stimulates less; a quick onset is not held back by a slow termination (it was: a switch took the longer of
    the two), and a slow termination still keeps the stronger state through a short dip."""
    pol = policy(onset_ms=200.0, termination_ms=2000.0)
    assert pol.step(0.0, Observation(one_hot(0))).reason == "onset_pending"
    assert pol.step(0.2, Observation(one_hot(0))).state == 0  # nothing established: onset
    pol.step(0.3, Observation(one_hot(2)))
    assert pol.step(0.45, Observation(one_hot(2))).state == 0
    d = pol.step(0.5, Observation(one_hot(2)))
    assert d.state == 2 and d.changed  # stronger after onset_ms, not after termination_ms
    for t in (1.0, 2.0, 2.9):  # weaker (state 1) for 1.9 s: still 2
        d = pol.step(t, Observation(one_hot(1)))
        assert d.state == 2 and d.reason == "termination_pending"
    assert pol.step(3.0, Observation(one_hot(1))).state == 1  # 2 s after it was first seen


def test_low_confidence_holds_the_state_by_default() -> None:
    """Issue 14: unsure outputs are no evidence against the state in effect — it holds (stimulation goes on) for as
    long as they last; the fault monitor bounds the hold (hold_max_s), not the table law. An unsure output also
    interrupts a candidate: the weaker state must then be seen for termination_ms again."""
    pol = policy(termination_ms=200.0)
    pol.step(0.0, Observation(one_hot(1)))
    for i in range(1, 40):
        d = pol.step(0.1 * i, Observation(one_hot(1, conf=0.4) if i % 5 else None))
        assert d.state == 1 and d.desired is not None and not d.changed
    assert pol.step(4.0, Observation(one_hot(0))).reason == "termination_pending"
    pol.step(4.1, Observation(one_hot(0, conf=0.4)))
    assert pol.step(4.25, Observation(one_hot(0))).state == 1
    assert pol.step(4.4, Observation(one_hot(0))).state == 1
    assert pol.step(4.45, Observation(one_hot(0))).state == 0


def test_low_confidence_long_enough_ends_the_state() -> None:
    """With low_confidence = "unknown" (the law before issue 14), only unsure outputs for termination_ms end the state
    and stimulation stops."""
    pol = policy(termination_ms=200.0, low_confidence="unknown")
    pol.step(0.0, Observation(one_hot(0)))
    assert pol.step(0.1, Observation(one_hot(0, conf=0.4))).state == 0
    d = pol.step(0.2, Observation(one_hot(0, conf=0.4)))
    assert d.state is None and d.desired is None and d.changed and d.reason == "state_ended"


def test_blanking_defers_the_next_change() -> None:
    """No change happens within blanking_ms after a change."""
    pol = policy(blanking_ms=1000.0)
    pol.step(0.0, Observation(one_hot(0)))
    ds = run(pol, DT, 0.9, one_hot(1))
    assert all(d.state == 0 and d.reason == "blanking" for d in ds)
    d = pol.step(1.0, Observation(one_hot(1)))
    assert d.state == 1 and d.changed


def test_state_duration_ends_stimulation_when_enabled() -> None:
    """With use_state_durations, a state stops asking for stimulation after its table duration_min."""
    table = StimTable(states=[StateStim(state=0, name="a", frequency_hz=20.0, amplitude_ma=1.0, pulse_width_us=100.0,
                                        duration_min=0.01)])  # 0.6 s
    pol = TablePolicy(PolicyConfig.model_validate({"onset_ms": 0, "termination_ms": 0, "blanking_ms": 0,
                                              "use_state_durations": True}), table)
    ds = [pol.step(i * 0.1, Observation(np.array([1.0]))) for i in range(10)]
    assert [d.desired is not None for d in ds] == [True] * 6 + [False] * 4
    assert ds[-1].reason == "duration_elapsed" and ds[-1].state == 0
    assert pol.stimulated_s(0) >= 0.6
    pol.reset()
    assert pol.step(10.0, Observation(np.array([1.0]))).desired is not None


def test_state_duration_ignored_when_disabled() -> None:
    """Without use_state_durations the table's durations do not stop stimulation."""
    table = StimTable(states=[StateStim(state=0, name="a", frequency_hz=20.0, amplitude_ma=1.0, pulse_width_us=100.0,
                                        duration_min=0.001)])
    pol = TablePolicy(PolicyConfig.model_validate({"onset_ms": 0, "termination_ms": 0, "blanking_ms": 0}), table)
    assert all(pol.step(i * 0.1, Observation(np.array([1.0]))).desired is not None for i in range(10))


def test_state_missing_from_table_asks_for_nothing() -> None:
    """A classified state without a table entry asks for no stimulation."""
    table = StimTable(states=[StateStim(state=0, name="a", frequency_hz=20.0, amplitude_ma=1.0, pulse_width_us=100.0)])
    pol = TablePolicy(PolicyConfig.model_validate({"onset_ms": 0, "termination_ms": 0, "blanking_ms": 0}), table)
    d = pol.step(0.0, Observation(np.array([0.05, 0.95])))
    assert d.state == 1 and d.desired is None and d.reason == "state_not_in_table"


def test_time_going_backwards_does_not_advance_timers() -> None:
    """A non-monotonic time counts as no time passed (onset is not shortened)."""
    pol = policy(onset_ms=500.0)
    pol.step(10.0, Observation(one_hot(0)))
    assert pol.step(5.0, Observation(one_hot(0))).state is None
    assert pol.step(10.49, Observation(one_hot(0))).state is None
    assert pol.step(10.5, Observation(one_hot(0))).state == 0


class Constant:
    """Another control law: the same request whatever it sees; keeps what it was shown."""

    def __init__(self, desired: StimParams, threshold: float = 0.5) -> None:
        self.desired = desired
        self.threshold = threshold
        self.seen: list[Observation] = []

    @property
    def confidence_threshold(self) -> float:
        return self.threshold

    def step(self, t_s: float, observation: Observation) -> PolicyDecision:
        self.seen.append(observation)
        conf = 0.0 if observation.probs is None else float(np.max(observation.probs))
        return PolicyDecision(state=None, confidence=conf, desired=self.desired, changed=False, reason="constant")


def _drive(ctl: Controller, probs: np.ndarray, n: int = 40) -> list[Any]:
    out = []
    for i in range(n):
        cmd = ctl.step(i * DT, ControlInputs(probs=probs, data_age_ms=10.0))
        ctl.commit(i * DT, cmd.applied, True)
        out.append(cmd)
    return out


def test_make_policy_builds_the_table_policy_from_its_settings() -> None:
    pol = make_policy(PolicyConfig(confidence_threshold=0.7), notebook_table())
    assert isinstance(pol, TablePolicy) and isinstance(pol, Policy) and pol.confidence_threshold == 0.7


def test_the_controller_runs_any_policy_behind_the_same_monitor_and_gate() -> None:
    """A policy other than the table's gets each tick's observation; what it asks for passes the fault monitor
    (with the policy's own confidence threshold) and the gate (ramped) like the table's."""
    want = StimParams(30.0, 1.0, 100.0)
    safety = SafetyConfig.model_validate({"recovery_clean_ms": 0.0, "ramp_ma_per_s": 10.0})
    probs = np.array([0.05, 0.9, 0.05])
    law = Constant(want)
    cmds = _drive(Controller(law, safety, stale_after_ms=250.0), probs)
    assert len(law.seen) == len(cmds) and all(o.probs is probs for o in law.seen)
    assert cmds[-1].requested == want and cmds[-1].applied == want
    assert cmds[1].applied is not None and cmds[1].applied.amplitude_ma < 1.0 and "ramp" in cmds[1].gate.limited_by
    strict = _drive(Controller(Constant(want, threshold=0.95), safety, stale_after_ms=250.0), probs, 5)
    assert all(c.applied is None and "low_confidence" in c.fault.faults for c in strict)


def test_make_policy_refuses_a_kind_that_builds_no_policy() -> None:
    class Broken(PolicyConfig):
        def build(self, table: StimTable) -> Any:
            return object()

    with pytest.raises(ConfigError, match="built a object, which is not a policy"):
        make_policy(Broken(), notebook_table())


class Overconfident(Constant):
    """A law that reports a confidence the classifier never gave."""

    def step(self, t_s: float, observation: Observation) -> PolicyDecision:
        d = super().step(t_s, observation)
        return PolicyDecision(state=d.state, confidence=1.0, desired=d.desired, changed=False, reason="sure")


def test_the_fault_monitor_judges_confidence_itself_not_by_the_policys_word() -> None:
    """A policy cannot switch `low_confidence` off: its reported confidence is not what the monitor reads, and a
    threshold outside [0, 1] is refused when the controller is built."""
    want = StimParams(30.0, 1.0, 100.0)
    safety = SafetyConfig.model_validate({"recovery_clean_ms": 0.0})
    flat = np.array([0.34, 0.33, 0.33])
    cmds = _drive(Controller(Overconfident(want, threshold=0.6), safety, stale_after_ms=250.0), flat, 5)
    assert all(c.applied is None and "low_confidence" in c.fault.faults for c in cmds)
    for bad in (-1.0, 1.5, float("nan")):
        with pytest.raises(ConfigError, match=r"confidence_threshold is .* a number from 0 to 1"):
            Controller(Constant(want, threshold=bad), safety, stale_after_ms=250.0)
