"""The per-state stimulation table: which parameters the policy asks for in each classified state.

Row `state = i` is the stimulation for the classifier's class i. The table comes with the model bundle, or from the
config's `[stimulation]` section (`StimulationConfig`), which replaces the bundle's. Either must have exactly one row
per class of the bundle (`table_mismatch`).

The default is the research notebook's table. Note that its state 2 (5 mA, 500 µs) is outside the default safety
envelope on small contacts: the safety gate cuts it (docs/safety.md shows why)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from neurostimd.core.settings import Strict


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

    def sha256(self) -> str:
        """The hash of the table's content (canonical JSON): the same table from the config or a bundle hashes the
        same."""
        canonical = json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

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


def table_mismatch(states: Sequence[int], class_names: Sequence[str]) -> str | None:
    """Why a table with rows for `states` does not fit a classifier with `class_names` (it needs exactly one row per
    class: state i for class i), or None when it fits."""
    n = len(class_names)
    if sorted(states) == list(range(n)):
        return None
    count = Counter(states)
    problems = []
    missing = [i for i in range(n) if i not in count]
    if missing:
        problems.append(f"no row for state(s) {missing} ({', '.join(repr(class_names[i]) for i in missing)})")
    extra = sorted(s for s in count if s >= n)
    if extra:
        problems.append(f"rows for state(s) {extra}, which no class has")
    twice = sorted(s for s, k in count.items() if k > 1)
    if twice:
        problems.append(f"more than one row for state(s) {twice}")
    return (f"the table's states {list(states)} do not match the {n} classes {list(class_names)} "
            f"({'; '.join(problems)})")


class ConfigStateStim(StateStim):
    """A row of `[stimulation]`: StateStim under the config's rules (TOML numbers only, no NaN or infinity)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class StimulationConfig(Strict):
    """`[stimulation]`: a stimulation table in the config, in force instead of the model bundle's. `classes` names
    the classifier classes the rows are written for (row `state = i` is for `classes[i]`); at start the loop
    refuses the table unless they are the bundle's classes, in order."""

    classes: list[str] = Field(min_length=1)
    states: list[ConfigStateStim] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_row_per_class(self) -> StimulationConfig:
        problem = table_mismatch([s.state for s in self.states], self.classes)
        if problem:
            raise ValueError(f"{problem}; write one [[stimulation.states]] row per entry of classes, state = its index")
        return self

    def table(self) -> StimTable:
        return StimTable(states=[StateStim.model_validate(s.model_dump()) for s in self.states])


@dataclass(frozen=True)
class TableInForce:
    """The stimulation table the policy runs on, and where it came from."""

    table: StimTable
    source: Literal["config", "bundle"]

    @cached_property
    def sha256(self) -> str:
        return self.table.sha256()

    def audit_fields(self) -> dict[str, Any]:
        """`stim_table_source`, `stim_table_sha256` and `stim_table` (the rows) for an audit record."""
        return {"stim_table_source": self.source, "stim_table_sha256": self.sha256,
                "stim_table": self.table.model_dump()["states"]}
