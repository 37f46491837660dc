"""The base of every settings model: strict pydantic (no coercion, no NaN or infinity, unknown keys refused).
Each part of the pipeline defines its own settings model on it; `neurostimd.config` composes them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    # No NaN or infinity anywhere: `inf` would silently switch a limit off (a ramp, a staleness bound, a dose).
    # Strict types: a number must be a TOML number (an integer is taken where a float is due), never a bool or a
    # numeric string — `k_max = true` or `max_amplitude_ma = "3.0"` is a typo to report, not a value to coerce.
    # Paths are the one lax field (FilePath below): TOML has no path type, so they arrive as strings.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


# A path in the config: a TOML string, turned into a Path.
FilePath = Annotated[Path, Field(strict=False)]
