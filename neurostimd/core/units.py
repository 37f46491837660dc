"""Measurement units of neural samples: a declared unit string (an LSL stream's `desc/channels/channel/unit`, an XDF
stream's, an EDF signal's physical dimension, `[source] units`) → the factor that turns it into µV, the one unit of
the ring buffer and the model. Pure: no I/O.

Accepted, case-insensitive, spaces, `_` and `-` ignored:

- text units: `V`, `volt(s)`; `mV`, `millivolt(s)`; `uV`, `µV` (U+00B5), `μV` (U+03BC), `microvolt(s)`
  (the XDF EEG meta-data convention, which LabRecorder files and most amplifier apps follow, writes "microvolts");
  `nV`, `nanovolt(s)`;
- MNE-LSL's convention (what `mne_lsl` StreamInfo.set_channel_info and PlayerLSL write): the unit is a FIFF unit
  multiplier, an integer exponent of ten of the channel type's SI unit, e.g. `0` = V and `-6` = µV for a channel
  whose `type` (or, without one, the stream's type) is a voltage type (eeg, seeg, ecog, dbs, eog, emg, ecg, bio).
  A PlayerLSL at its default streams volts with unit `0`.

Anything else (an empty unit, `counts`, `a.u.`, a bare `0` on a channel of unknown type) is unknown: the caller
refuses the stream unless the operator states the unit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

# µV per one of the unit
_TEXT_UV: dict[str, float] = {}
for _names, _uv in ((("v", "volt", "volts"), 1e6), (("mv", "millivolt", "millivolts"), 1e3),
                    (("uv", "microvolt", "microvolts"), 1.0), (("nv", "nanovolt", "nanovolts"), 1e-3)):
    for _n in _names:
        _TEXT_UV[_n] = _uv

# MNE channel types whose SI unit is the volt (mne: _CH_TYPES_DICT entries with FIFF_UNIT_V, neural ones only)
VOLTAGE_CHANNEL_TYPES = frozenset({"eeg", "seeg", "ecog", "dbs", "eog", "emg", "ecg", "bio"})
_EXPONENT = re.compile(r"[+-]?\d{1,2}")
SPELLINGS = "uV (also µV, μV, microvolts), mV (millivolts), V (volts) or nV (nanovolts)"


def _normal(unit: str) -> str:
    s = unit.strip().lower().replace("\u00b5", "u").replace("\u03bc", "u")
    return re.sub(r"[\s_\-]", "", s)


def uv_per_unit(unit: str | None, channel_type: str | None = None) -> float | None:
    """µV per one `unit` (multiply samples by it), or None when the unit is missing or not a known voltage unit.
    `channel_type` (an MNE/LSL channel type such as "eeg") is needed only for MNE-LSL's integer exponents."""
    if unit is None:
        return None
    raw = unit.strip()
    if _EXPONENT.fullmatch(raw):
        if channel_type is not None and channel_type.strip().lower() in VOLTAGE_CHANNEL_TYPES:
            return float(10.0 ** (int(raw) + 6))
        return None
    s = _normal(unit)
    if s in _TEXT_UV:
        return _TEXT_UV[s]
    return None


def config_uv(unit: str) -> float:
    """µV per one unit named in a config (`[source] units`); ValueError naming the accepted spellings otherwise."""
    f = uv_per_unit(unit)
    if f is None:
        raise ValueError(f"units = {unit!r} is not a voltage unit neurostimd knows; use {SPELLINGS}")
    return f


class UnitError(ValueError):
    """The declared units of a stream or file cannot be turned into µV; the message says what to do."""


def _name(i: int, labels: Sequence[str] | None) -> str:
    label = labels[i] if labels is not None and i < len(labels) and labels[i] else None
    return f"channel {i} ({label!r})" if label else f"channel {i}"


def _listing(items: list[str], limit: int = 4) -> str:
    more = len(items) - limit
    return ", ".join(items[:limit]) + (f" and {more} more" if more > 0 else "")


def scales_to_uv(units: Sequence[str | None], *, channel_types: Sequence[str | None] | None = None,
                 stream_type: str | None = None, configured: str | None = None,
                 labels: Sequence[str] | None = None, what: str = "the stream",
                 config_key: str = "[source] units") -> npt.NDArray[np.float64]:
    """Per-channel µV factors for samples declared in `units` (one entry per channel; None = not declared).

    Without `configured`, every channel must declare a known unit. With it, channels that declare nothing or an
    unknown unit take the configured one; a channel that declares a known unit other than the configured one is a
    contradiction and refused (both are named). Raises UnitError."""
    n = len(units)
    types = list(channel_types) if channel_types is not None else [None] * n
    found: list[float | None] = []
    for i, u in enumerate(units):
        ct = types[i] if i < len(types) and types[i] else stream_type
        found.append(uv_per_unit(u, ct))
    cfg = config_uv(configured) if configured is not None else None
    if cfg is None:
        missing = [_name(i, labels) for i, u in enumerate(units) if u is None or not str(u).strip()]
        unknown = [f"{_name(i, labels)}: {u!r}" for i, (u, f) in enumerate(zip(units, found, strict=True))
                   if f is None and u is not None and str(u).strip()]
        problems = []
        if missing:
            problems.append(f"no unit declared for {_listing(missing)}")
        if unknown:
            problems.append(f"unknown unit for {_listing(unknown)}")
        if problems:
            raise UnitError(f"{what} does not say in which unit its samples are ({'; '.join(problems)}), so they "
                            f"cannot be scaled to µV. Fix the outlet's or file's channel units (accepted: "
                            f"{SPELLINGS}), or, if you know the unit, state it with {config_key} = \"uV\" (or the "
                            f"true unit)")
        return np.array(found, dtype=np.float64)
    # A bare integer (an MNE-LSL FIFF exponent) on a channel of no voltage type is not a unit we can apply, but it
    # says something: read as a power of ten of volts, it must agree with the configured unit.
    as_volts = [None if f is not None else _exponent_uv(units[i]) for i, f in enumerate(found)]
    clash = [f"{_name(i, labels)} declares {units[i]!r}" for i, f in enumerate(found)
             if (g := f if f is not None else as_volts[i]) is not None and not np.isclose(g, cfg, rtol=1e-9, atol=0.0)]
    if clash:
        raise UnitError(f"{what} contradicts {config_key} = {configured!r}: {_listing(clash)}. Remove "
                        f"{config_key} (the declared units are then used) or fix the outlet's or file's units")
    return np.array([cfg if f is None else f for f in found], dtype=np.float64)


def _exponent_uv(unit: object) -> float | None:
    """µV per unit of a bare integer exponent read as 10^e V (MNE-LSL's FIFF convention), or None if it is not one."""
    text = str(unit).strip() if unit is not None else ""
    if not text.lstrip("+-").isdigit():
        return None
    return float(10.0 ** (int(text) + 6))
