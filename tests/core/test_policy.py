"""Policy examples: confidence threshold, onset, termination, blanking and per-state durations."""

from __future__ import annotations

import numpy as np

from neurostimd.core.policy import Policy, PolicyConfig
from neurostimd.core.stimtable import StateStim, StimTable, notebook_table

DT = 0.05


def one_hot(state: int, conf: float = 0.9, n: int = 3) -> np.ndarray:
    p = np.full(n, (1.0 - conf) / (n - 1))
    p[state] = conf
    return p


def policy(**kw: object) -> Policy:
    base: dict[str, object] = {"onset_ms": 0.0, "termination_ms": 0.0, "blanking_ms": 0.0}
    base.update(kw)
    return Policy(PolicyConfig.model_validate(base), notebook_table())


def run(pol: Policy, t0: float, seconds: float, probs: np.ndarray | None) -> list:
    out = []
    n = round(seconds / DT)
    for i in range(n):
        out.append(pol.step(t0 + i * DT, probs))
    return out


def test_confident_state_maps_to_table_entry() -> None:
    """With no debouncing, a confident state asks for its table entry at once."""
    d = policy().step(0.0, one_hot(1))
    assert d.state == 1 and d.changed and d.desired is not None
    assert (d.desired.frequency_hz, d.desired.amplitude_ma, d.desired.pulse_width_us) == (50.0, 3.5, 300.0)


def test_below_confidence_threshold_does_not_act() -> None:
    """An observation below the confidence threshold neither starts a state nor asks for stimulation."""
    pol = policy(confidence_threshold=0.8)
    d = pol.step(0.0, one_hot(2, conf=0.7))
    assert d.state is None and d.desired is None and d.reason == "low_confidence" and d.confidence == 0.7


def test_invalid_or_missing_probabilities_do_not_act() -> None:
    """NaN probabilities or no classifier output never start a state."""
    pol = policy()
    assert pol.step(0.0, np.array([np.nan, 0.5, 0.5])).state is None
    assert pol.step(0.1, None).reason == "no_data"


def test_onset_delays_a_new_state() -> None:
    """A new state takes effect only after it has persisted for onset_ms."""
    pol = policy(onset_ms=500.0)
    ds = run(pol, 0.0, 0.5, one_hot(0))
    assert all(d.state is None and d.reason == "onset_pending" for d in ds)
    d = pol.step(0.5, one_hot(0))
    assert d.state == 0 and d.changed


def test_interrupted_onset_restarts() -> None:
    """A candidate interrupted by another observation must persist for onset_ms again."""
    pol = policy(onset_ms=300.0)
    run(pol, 0.0, 0.25, one_hot(0))
    pol.step(0.25, one_hot(1))
    assert pol.step(0.30, one_hot(0)).state is None
    assert pol.step(0.55, one_hot(0)).state is None
    assert pol.step(0.60, one_hot(0)).state == 0


def test_termination_keeps_the_old_state() -> None:
    """The state in effect is left only after it has been absent for termination_ms."""
    pol = policy(termination_ms=400.0)
    pol.step(0.0, one_hot(0))
    ds = run(pol, DT, 0.35, one_hot(1))
    assert all(d.state == 0 for d in ds) and ds[-1].reason == "termination_pending"
    assert pol.step(0.40, one_hot(1)).state == 1


def test_low_confidence_long_enough_ends_the_state() -> None:
    """With only unsure outputs for termination_ms, the state ends and stimulation stops."""
    pol = policy(termination_ms=200.0)
    pol.step(0.0, one_hot(0))
    assert pol.step(0.1, one_hot(0, conf=0.4)).state == 0
    d = pol.step(0.2, one_hot(0, conf=0.4))
    assert d.state is None and d.desired is None and d.changed and d.reason == "state_ended"


def test_blanking_defers_the_next_change() -> None:
    """No change happens within blanking_ms after a change."""
    pol = policy(blanking_ms=1000.0)
    pol.step(0.0, one_hot(0))
    ds = run(pol, DT, 0.9, one_hot(1))
    assert all(d.state == 0 and d.reason == "blanking" for d in ds)
    d = pol.step(1.0, one_hot(1))
    assert d.state == 1 and d.changed


def test_state_duration_ends_stimulation_when_enabled() -> None:
    """With use_state_durations, a state stops asking for stimulation after its table duration_min."""
    table = StimTable(states=[StateStim(state=0, name="a", frequency_hz=20.0, amplitude_ma=1.0, pulse_width_us=100.0,
                                        duration_min=0.01)])  # 0.6 s
    pol = Policy(PolicyConfig.model_validate({"onset_ms": 0, "termination_ms": 0, "blanking_ms": 0,
                                              "use_state_durations": True}), table)
    ds = [pol.step(i * 0.1, np.array([1.0])) for i in range(10)]
    assert [d.desired is not None for d in ds] == [True] * 6 + [False] * 4
    assert ds[-1].reason == "duration_elapsed" and ds[-1].state == 0
    assert pol.stimulated_s(0) >= 0.6
    pol.reset()
    assert pol.step(10.0, np.array([1.0])).desired is not None


def test_state_duration_ignored_when_disabled() -> None:
    """Without use_state_durations the table's durations do not stop stimulation."""
    table = StimTable(states=[StateStim(state=0, name="a", frequency_hz=20.0, amplitude_ma=1.0, pulse_width_us=100.0,
                                        duration_min=0.001)])
    pol = Policy(PolicyConfig.model_validate({"onset_ms": 0, "termination_ms": 0, "blanking_ms": 0}), table)
    assert all(pol.step(i * 0.1, np.array([1.0])).desired is not None for i in range(10))


def test_state_missing_from_table_asks_for_nothing() -> None:
    """A classified state without a table entry asks for no stimulation."""
    table = StimTable(states=[StateStim(state=0, name="a", frequency_hz=20.0, amplitude_ma=1.0, pulse_width_us=100.0)])
    pol = Policy(PolicyConfig.model_validate({"onset_ms": 0, "termination_ms": 0, "blanking_ms": 0}), table)
    d = pol.step(0.0, np.array([0.05, 0.95]))
    assert d.state == 1 and d.desired is None and d.reason == "state_not_in_table"


def test_time_going_backwards_does_not_advance_timers() -> None:
    """A non-monotonic time counts as no time passed (onset is not shortened)."""
    pol = policy(onset_ms=500.0)
    pol.step(10.0, one_hot(0))
    assert pol.step(5.0, one_hot(0)).state is None
    assert pol.step(10.49, one_hot(0)).state is None
    assert pol.step(10.5, one_hot(0)).state == 0
