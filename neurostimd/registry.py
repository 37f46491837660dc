"""The lookup tables of what a config can name: `kind` → the settings model of a device, a source or a policy.

Each table line is `"kind": "module:SettingsClass"`; the settings model is a strict pydantic model with a
`kind: Literal["..."]` field and a `build(...)` method that imports the implementation only when called, so that
reading a config loads no serial, LSL or model library. `neurostimd.config` joins each table's models into one
discriminated union (`[device] kind = ...`), and one factory per table builds what the config names:
`neurostimd.devices.make_device`, `neurostimd.sources.make_source`, `neurostimd.config.make_policy`.

Other packages add kinds without editing this file through entry points in the groups `neurostimd.drivers`,
`neurostimd.sources` and `neurostimd.policies` (name = kind, value = "module:SettingsClass"). A plugin may not take
the name of a built-in kind: the built-in one is the one tested here, and is kept. A plugin that fails to import,
or whose model does not declare its own kind, is left out with a warning naming it; a config that uses its kind
then gets "unknown kind" with the list of known ones. See docs/extending.md.
"""

from __future__ import annotations

import importlib
import typing
import warnings
from importlib import metadata
from typing import Any

from pydantic import BaseModel


class Registry:
    """One lookup table: built-in kinds, then the kinds other packages declare as entry points."""

    def __init__(self, what: str, group: str, builtin: dict[str, str]) -> None:
        self.what = what
        self.group = group
        self.builtin = dict(builtin)
        self._models: dict[str, type[BaseModel]] | None = None

    def models(self) -> dict[str, type[BaseModel]]:
        """kind → settings model, loading every table line (once)."""
        if self._models is None:
            models: dict[str, type[BaseModel]] = {}
            for kind, target in self.builtin.items():
                models[kind] = self._load(kind, target)  # a broken built-in line is a bug: let it raise
            for ep in metadata.entry_points(group=self.group):
                if ep.name in models:
                    kept = "the built-in one" if ep.name in self.builtin else "the first one found"
                    what = "the built-in" if ep.name in self.builtin else "an already registered"
                    warnings.warn(f"entry point {ep.value!r} ({self.group}) names {what} {self.what} kind "
                                  f"{ep.name!r}; {kept} is kept", RuntimeWarning, stacklevel=2)
                    continue
                try:
                    models[ep.name] = self._load(ep.name, ep.value)
                except Exception as err:  # a third-party plugin must not stop the daemon reading its config
                    warnings.warn(f"{self.what} kind {ep.name!r} from entry point {ep.value!r} ({self.group}) "
                                  f"cannot be used: {err}", RuntimeWarning, stacklevel=2)
            self._models = models
        return self._models

    def kinds(self) -> list[str]:
        return list(self.models())

    def model(self, kind: str) -> type[BaseModel]:
        try:
            return self.models()[kind]
        except KeyError:
            raise KeyError(f"unknown {self.what} kind {kind!r}; known: {', '.join(self.kinds())}") from None

    def _load(self, kind: str, target: str) -> type[BaseModel]:
        module_name, _, attr = target.partition(":")
        if not attr:
            raise ValueError(f"{target!r} is not \"module:Class\"")
        obj = getattr(importlib.import_module(module_name), attr)
        if not (isinstance(obj, type) and issubclass(obj, BaseModel)):
            raise TypeError(f"{target} is not a pydantic settings model")
        field = obj.model_fields.get("kind")
        if field is None or typing.get_args(field.annotation) != (kind,):
            raise TypeError(f"{target} must declare `kind: Literal[{kind!r}]`")
        if not callable(getattr(obj, "build", None)):
            raise TypeError(f"{target} has no build() method")
        return obj


DEVICES = Registry("device", "neurostimd.drivers", {
    "serial": "neurostimd.devices:SerialDeviceConfig",
    "virtual": "neurostimd.devices:VirtualDeviceConfig",
    "none": "neurostimd.devices:NoDeviceConfig",
    "pulsepal": "neurostimd.devices:PulsePalDeviceConfig",
    "stimjim": "neurostimd.devices:StimJimDeviceConfig",
})

SOURCES = Registry("source", "neurostimd.sources", {
    "board": "neurostimd.sources.settings:BoardSourceConfig",
    "lsl": "neurostimd.sources.settings:LslSourceConfig",
    "replay": "neurostimd.sources.settings:ReplaySourceConfig",
    "brainflow": "neurostimd.sources.settings:BrainFlowSourceConfig",
})

POLICIES = Registry("policy", "neurostimd.policies", {
    "table": "neurostimd.core.policy:PolicyConfig",
    "dual_threshold": "neurostimd.core.laws:DualThresholdConfig",
    "proportional": "neurostimd.core.laws:ProportionalConfig",
})


def union_of(registry: Registry, *, default_kind: str | None = None) -> Any:
    """The discriminated union of a table's settings models, for a Config field. With `default_kind`, a table that
    names no kind is that kind (`[policy]` without `kind` is the stimulation table). A kind the table does not know
    is refused with the list of those it does."""
    from pydantic import BeforeValidator, Field

    models = tuple(registry.models().values())
    union: Any = models[0] if len(models) == 1 else \
        typing.Annotated[typing.Union[models], Field(discriminator="kind")]  # noqa: UP007 (a runtime tuple)

    def known(v: Any) -> Any:
        if isinstance(v, dict):
            if default_kind is not None and "kind" not in v:
                v = {"kind": default_kind, **v}
            kind = v.get("kind")
            if isinstance(kind, str) and kind not in registry.models():
                raise ValueError(f"unknown {registry.what} kind {kind!r}; known: {', '.join(registry.kinds())}")
        return v

    return typing.Annotated[union, BeforeValidator(known)]
