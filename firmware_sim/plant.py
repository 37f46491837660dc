"""The simulated tissue: a three-state Markov plant whose transitions respond to stimulation.

States: 0 = quiet (healthy), 1 = activated (beta bursts), 2 = pathological (large slow rhythmic / spiky activity).
Without stimulation, pathology drifts upward (0 → 1 → 2) with only slow spontaneous recovery. Stimulation pushes it
back down, with diminishing returns, so that closed-loop control has a measurable effect to optimise:

* charge rate  q = amplitude_ma · pulse_width_us / 1000 · frequency_hz   [µC/s, per phase]
* efficacy     e = (1 − exp(−q / q_half)) · (1 − h)
  - the first factor saturates: doubling the charge does not double the effect;
  - h ∈ [0, 1) is habituation: it grows toward `h_max` while stimulation is on (time constant `tau_habituate_s`)
    and decays toward 0 while it is off (`tau_recover_s`). Stimulating all the time therefore blunts the effect,
    which is what lets an adaptive controller reach a similar time in state 0 with less charge than continuous
    stimulation.
* rates (per second), each transition drawn with probability 1 − exp(−rate · dt) per step:
  - 0 → 1:  up_01 · (1 − protect · e)           (stimulation also slows the drift a little)
  - 1 → 2:  up_12 · (1 − protect · e)
  - 1 → 0:  down_10 + gain_10 · e
  - 2 → 1:  down_21 + gain_21 · e
  Stimulating in state 0 has no benefit (there is nowhere lower to go) but still habituates.

The plant is deterministic given its seed and the sequence of step() calls. It does no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

N_STATES = 3
STATE_NAMES = ("quiet", "activated", "pathological")


@dataclass(frozen=True)
class PlantParams:
    """Rates in 1/s, charge in µC/s, time constants in s. Defaults give minutes-scale dynamics."""

    up_01: float = 1 / 30.0
    up_12: float = 1 / 25.0
    down_10: float = 1 / 90.0
    down_21: float = 1 / 150.0
    gain_10: float = 1 / 6.0
    gain_21: float = 1 / 8.0
    protect: float = 0.5
    q_half_uc_per_s: float = 40.0
    h_max: float = 0.8
    tau_habituate_s: float = 60.0
    tau_recover_s: float = 30.0


def charge_rate_uc_per_s(frequency_hz: float, amplitude_ma: float, pulse_width_us: float) -> float:
    """Charge per phase times pulse rate, in µC/s."""
    return max(0.0, amplitude_ma) * max(0.0, pulse_width_us) / 1000.0 * max(0.0, frequency_hz)


class Plant:
    """The state of the simulated tissue; step() advances it by dt under a given stimulation."""

    def __init__(self, seed: int = 0, *, initial_state: int = 0, params: PlantParams | None = None,
                 rng: np.random.Generator | None = None) -> None:
        if not 0 <= initial_state < N_STATES:
            raise ValueError(f"initial_state must be 0..{N_STATES - 1}, got {initial_state}")
        self.params = params or PlantParams()
        self.rng = rng if rng is not None else np.random.default_rng(seed)
        self.state = initial_state
        self.habituation = 0.0
        self.charge_delivered_uc = 0.0
        self.time_s = 0.0
        self.time_in_state_s = [0.0] * N_STATES

    def efficacy(self, q_uc_per_s: float) -> float:
        if q_uc_per_s <= 0:
            return 0.0
        return (1.0 - math.exp(-q_uc_per_s / self.params.q_half_uc_per_s)) * (1.0 - self.habituation)

    def step(self, dt_s: float, q_uc_per_s: float = 0.0) -> int:
        """Advance by dt_s seconds while stimulation delivers q_uc_per_s µC/s; returns the new state."""
        if dt_s <= 0:
            return self.state
        p = self.params
        e = self.efficacy(q_uc_per_s)
        if self.state == 0:
            rates = {1: p.up_01 * (1 - p.protect * e)}
        elif self.state == 1:
            rates = {2: p.up_12 * (1 - p.protect * e), 0: p.down_10 + p.gain_10 * e}
        else:
            rates = {1: p.down_21 + p.gain_21 * e}
        self.time_in_state_s[self.state] += dt_s
        total = sum(rates.values())
        if self.rng.random() < 1.0 - math.exp(-total * dt_s):
            # which transition: proportional to its rate (competing exponential clocks)
            targets = list(rates)
            probs = np.array([rates[t] for t in targets]) / total
            self.state = int(targets[int(self.rng.choice(len(targets), p=probs))])
        if q_uc_per_s > 0:
            self.habituation += (p.h_max - self.habituation) * (1 - math.exp(-dt_s / p.tau_habituate_s))
            self.charge_delivered_uc += q_uc_per_s * dt_s
        else:
            self.habituation *= math.exp(-dt_s / p.tau_recover_s)
        self.time_s += dt_s
        return self.state

    def force_state(self, state: int) -> None:
        """Put the plant in `state` (for schedules that dictate the state, e.g. training data)."""
        if not 0 <= state < N_STATES:
            raise ValueError(f"state must be 0..{N_STATES - 1}, got {state}")
        self.state = state
