"""The quick plant behind the plant interface: SyntheticSource (the three-state Markov plant and the
state-conditioned signal generator), unchanged — `step` is SyntheticSource.read, so its samples are byte-identical
to those the board streamed before plants had names."""

from __future__ import annotations

from neurostimd.drivers.types import StimParams
from neurostimd.firmware_sim.generator import F32, SyntheticSource
from neurostimd.firmware_sim.plant import STATE_NAMES, PlantParams


class MarkovPlant(SyntheticSource):
    """SyntheticSource with the PlantModel attributes. The biomarker is the state index itself (this plant has no
    continuous biomarker); the target is state 0, "quiet"."""

    name = "markov"
    state_names: tuple[str, ...] = tuple(STATE_NAMES)
    target_state = 0
    biomarker_unit = "state"

    def __init__(self, n_channels: int = 32, sample_rate_hz: float = 1000.0, seed: int = 0, *,
                 initial_state: int = 0, plant_params: PlantParams | None = None) -> None:
        super().__init__(n_channels, sample_rate_hz, seed, initial_state=initial_state, plant_params=plant_params)

    @property
    def state(self) -> int:
        return int(self.plant.state)

    def step(self, n_samples: int, delivered: StimParams | None) -> F32:
        return self.read(n_samples, delivered)

    @property
    def in_target(self) -> bool:
        return self.state == self.target_state

    @property
    def biomarker(self) -> float:
        return float(self.plant.state)

    @property
    def charge_delivered_uc(self) -> float:
        return float(self.plant.charge_delivered_uc)

    @property
    def time_s(self) -> float:
        return float(self.plant.time_s)

    @property
    def truth(self) -> dict[str, float]:
        return {"state": float(self.plant.state), "habituation": float(self.plant.habituation)}
