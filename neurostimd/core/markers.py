"""The string markers of a session (the `[markers_lsl]` stream, docs/lsl-outputs.md): what changed, as one short,
parseable line per event — state changes, stimulation on/off and each applied parameter change, faults raised and
cleared, the safe state, config reloads, the session's start and stop. Pure: the tracker turns decisions and the
loop's published state into marker strings; the outlet stamps and sends them.

Grammar (stable; `parse_marker` reads it back): `TAG[ KEY=VALUE]...` — one space between the parts, no spaces
inside them. TAG is `kind:detail` (`fault:raised:stale_data` has two details). VALUE is a number written with
`format(v, "g")`, a class name, or a comma-separated list. Kinds:

- `session:start`, `session:stop`
- `state:<class name> index=<i> confidence=<c>` (the class name, or `none` before the first state)
- `stim:on frequency_hz=<f> amplitude_ma=<a> pulse_width_us=<w>[ limited_by=<rule,...>]`: the board was confirmed
  (acknowledged) to run this after running nothing; `stim:params ...` (same keys): a change while stimulating
  (each ramp step too, with `limited_by=ramp`); `stim:off`: confirmed to run nothing; `stim:unknown`: what the
  board runs is not known (a failed send, a lost board), until the next acknowledged command
- `fault:raised:<cause>`, `fault:cleared:<cause>`: one cause (neurostimd.core.faults) appearing or going away
- `safe_state:on`, `safe_state:off`: the fault monitor's safe state starts, or ends (after recovery_clean_ms)
- `config:reloaded[ needs_restart=<key,...>]`, `config:reload_rejected`
- `stim:off reason=shutdown` / `stim:unknown reason=shutdown`: the daemon's STOP at exit, confirmed or not
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

_PARAMS = ("frequency_hz", "amplitude_ma", "pulse_width_us")
_TOKEN = re.compile(r"[^\s=]+")


def _clean(value: str) -> str:
    """A value with no spaces or '=' (they would break the grammar): replaced by '_'."""
    return re.sub(r"[\s=]", "_", value) or "_"


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int | float):
        return format(float(v), "g") if isinstance(v, float) else str(v)
    if isinstance(v, list | tuple):
        return ",".join(_clean(str(x)) for x in v)
    return _clean(str(v))


def format_marker(tag: str, **fields: Any) -> str:
    """`tag` followed by ` key=value` for each field that is not None (in the order given)."""
    parts = [_clean(tag)]
    parts += [f"{k}={_value(v)}" for k, v in fields.items() if v is not None]
    return " ".join(parts)


def parse_marker(marker: str) -> tuple[list[str], dict[str, str]]:
    """A marker as (`tag` split at ':', {key: value}); ValueError when it does not follow the grammar."""
    parts = marker.split(" ")
    if not parts or not parts[0] or "=" in parts[0]:
        raise ValueError(f"marker {marker!r} does not start with a tag (kind:detail)")
    fields: dict[str, str] = {}
    for p in parts[1:]:
        key, sep, value = p.partition("=")
        if not sep or not _TOKEN.fullmatch(key) or not value:
            raise ValueError(f"marker {marker!r}: {p!r} is not key=value")
        fields[key] = value
    return parts[0].split(":"), fields


def stim_fields(params: Mapping[str, Any]) -> dict[str, Any]:
    """The stimulation parameters of a marker, in the fixed order."""
    return {k: float(params[k]) for k in _PARAMS if params.get(k) is not None}


class MarkerTracker:
    """Turns a session's decisions into its markers: `decision(record)` (a decisions.jsonl record) for the session
    start, state, faults and safe state; `stimulation(applied, known, limited_by)` (the loop's published state after
    the tick: what the board was confirmed to run) for the stimulation markers. Each returns the markers of that
    change only (empty when nothing changed)."""

    def __init__(self, class_names: Sequence[str]) -> None:
        self.class_names = [str(c) for c in class_names]
        self._started = False
        self._state: int | None = None
        self._faults: list[str] = []
        self._safe: bool = False
        self._stim: tuple[bool, tuple[float, ...] | None] = (False, None)  # (known, params): unknown at start

    def state_name(self, state: int | None) -> str:
        if state is None:
            return "none"
        return self.class_names[state] if 0 <= state < len(self.class_names) else str(state)

    def decision(self, record: Mapping[str, Any]) -> list[str]:
        out: list[str] = []
        first = not self._started
        if first:
            self._started = True
            out.append("session:start")
        state = record.get("state")
        state = int(state) if isinstance(state, int) and not isinstance(state, bool) else None
        if first or state != self._state:
            self._state = state
            conf = record.get("confidence")
            out.append(format_marker(f"state:{self.state_name(state)}", index=state,
                                     confidence=None if conf is None or state is None else round(float(conf), 4)))
        faults = [str(f) for f in (record.get("faults") or [])]
        out += [f"fault:raised:{_clean(f)}" for f in faults if f not in self._faults]
        out += [f"fault:cleared:{_clean(f)}" for f in self._faults if f not in faults]
        self._faults = faults
        safe = bool(record.get("safe_state"))
        if safe != self._safe:
            self._safe = safe
            out.append("safe_state:on" if safe else "safe_state:off")
        return out

    def stimulation(self, applied: Mapping[str, Any] | None, known: bool,
                    limited_by: Sequence[str] = ()) -> list[str]:
        params = None if applied is None else tuple(float(applied[k]) for k in _PARAMS)
        now = (known, params if known else None)
        if now == self._stim:
            return []
        was_known, was = self._stim
        self._stim = now
        if not known:
            return ["stim:unknown"]
        if params is None:
            return ["stim:off"]
        assert applied is not None
        tag = "stim:params" if was_known and was is not None else "stim:on"
        return [format_marker(tag, **stim_fields(applied), limited_by=list(limited_by) or None)]

    def shutdown(self, confirmed: bool) -> list[str]:
        """The daemon's STOP at exit: `stim:off reason=shutdown` when the board confirmed it (said even when it ran
        nothing), else `stim:unknown reason=shutdown`."""
        self._stim = (confirmed, None)
        return [format_marker("stim:off" if confirmed else "stim:unknown", reason="shutdown")]
