"""Simulated tissue the board streams from, picked by name: `PLANTS[name](n_channels, sample_rate_hz, seed, ...)`.

A plant generates the signal the host's classifier sees and responds to the stimulation the board actually
delivers. Every plant is seeded and deterministic (same seed and same sequence of calls → the same samples), does no
I/O and has no clock of its own: `step(n_samples, delivered)` advances it by n_samples / sample_rate_hz seconds.

    markov   the quick plant: a three-state Markov chain whose rates respond to the charge rate, and the
             state-conditioned signal generator (neurostimd.firmware_sim.plant / .generator), unchanged
    beta     a delayed STN–GPe firing-rate model of Parkinsonian beta oscillations (Nevado-Holgado et al. 2010)
             driven by pulsatile DBS into the STN, integrated at the sample rate (docs/plants.md)

Besides the samples, a plant says what evaluation needs: `state` (an index into `state_names`), `in_target` (the
state is `target_state`), `biomarker` (a float in `biomarker_unit`), `charge_delivered_uc`, `time_s`, and `truth`
(the hidden variables by name, for traces).
Every plant is also a SampleSource (`read` is `step`), so the simulated board streams it as is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from neurostimd.drivers.types import StimParams
from neurostimd.firmware_sim.generator import F32


@runtime_checkable
class PlantModel(Protocol):
    """What the simulated board, the training-data writer and the closed-loop evaluation need of a plant."""

    name: str
    n_channels: int
    sample_rate_hz: float
    state_names: tuple[str, ...]
    target_state: int
    biomarker_unit: str

    def step(self, n_samples: int, delivered: StimParams | None) -> F32:
        """The next n_samples × n_channels float32 µV, with the plant advanced under `delivered` (None: off)."""
        ...

    def read(self, n_samples: int, stim: StimParams | None) -> F32: ...

    @property
    def state(self) -> int: ...

    @property
    def in_target(self) -> bool: ...

    @property
    def biomarker(self) -> float: ...

    @property
    def charge_delivered_uc(self) -> float: ...

    @property
    def time_s(self) -> float: ...

    @property
    def truth(self) -> dict[str, float]:
        """The plant's hidden variables now, by name (for traces and figures; the host never sees them)."""
        ...


PlantFactory = Callable[..., PlantModel]


def _markov(n_channels: int = 32, sample_rate_hz: float = 1000.0, seed: int = 0, **kw: Any) -> PlantModel:
    from neurostimd.firmware_sim.plants.markov import MarkovPlant

    return MarkovPlant(n_channels, sample_rate_hz, seed, **kw)


def _beta(n_channels: int = 8, sample_rate_hz: float = 1000.0, seed: int = 0, **kw: Any) -> PlantModel:
    from neurostimd.firmware_sim.plants.beta import BetaPlant

    return BetaPlant(n_channels, sample_rate_hz, seed, **kw)


# name → factory(n_channels, sample_rate_hz, seed, *, initial_state=0, ...)
PLANTS: dict[str, PlantFactory] = {"markov": _markov, "beta": _beta}
DEFAULT_PLANT = "markov"


def make_plant(name: str, n_channels: int, sample_rate_hz: float, seed: int = 0, **kw: Any) -> PlantModel:
    """The plant called `name`; ValueError naming the plants there are for an unknown name."""
    try:
        factory = PLANTS[name]
    except KeyError:
        raise ValueError(f"unknown plant {name!r}; the plants are {', '.join(PLANTS)}") from None
    return factory(n_channels, sample_rate_hz, seed, **kw)


__all__ = ["DEFAULT_PLANT", "PLANTS", "PlantModel", "make_plant"]
