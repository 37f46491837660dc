"""The per-state stimulation table: which parameters the policy asks for in each classified state.

The default is the research notebook's table. Note that its state 2 (5 mA, 500 µs) is outside the default safety
envelope on small contacts: the safety gate cuts it (docs/safety.md shows why)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class StateStim(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    state: int = Field(ge=0)
    name: str
    frequency_hz: float = Field(gt=0)
    amplitude_ma: float = Field(ge=0)
    pulse_width_us: float = Field(gt=0)
    duration_min: float | None = Field(default=None, gt=0)
    description: str = ""


class StimTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    states: list[StateStim]

    def for_state(self, state: int) -> StateStim:
        for s in self.states:
            if s.state == state:
                return s
        raise KeyError(f"stimulation table has no entry for state {state}; states: {[s.state for s in self.states]}")

    def to_json(self) -> str:
        return json.dumps(self.model_dump(), indent=2) + "\n"

    @classmethod
    def from_file(cls, path: str | Path) -> StimTable:
        p = Path(path)
        text = p.read_text()
        if p.suffix == ".toml":
            import tomllib

            return cls.model_validate(tomllib.loads(text))
        return cls.model_validate_json(text)


def notebook_table() -> StimTable:
    """The research notebook's three-state table, unchanged (the gate, not the table, enforces safety)."""
    return StimTable(states=[
        StateStim(state=0, name="low", frequency_hz=20.0, amplitude_ma=2.5, pulse_width_us=200.0, duration_min=30.0,
                  description="low intensity — early nerve-injury stage"),
        StateStim(state=1, name="medium", frequency_hz=50.0, amplitude_ma=3.5, pulse_width_us=300.0, duration_min=45.0,
                  description="medium — activation"),
        StateStim(state=2, name="high", frequency_hz=100.0, amplitude_ma=5.0, pulse_width_us=500.0, duration_min=60.0,
                  description="high — accelerated regeneration"),
    ])
