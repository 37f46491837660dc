"""Publishes every decision as an LSL stream (irregular rate, float32) so that LabRecorder records the controller's
state, class probabilities and applied stimulation beside the raw stream. Channel labels, units and types are in the
stream's XML description, with the session's metadata (neurostimd.outputs.lsl_meta). `DecisionsListener` pushes
a loop's decisions, each stamped with its tick's time on LSL's clock (the markers of that decision carry the same
timestamp)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pylsl
import structlog

from neurostimd.config import DecisionsLslConfig
from neurostimd.listeners import BaseListener, DecisionEvent
from neurostimd.outputs.lsl_meta import LslTime, StreamMeta, write_channels

log = structlog.get_logger(__name__)

STREAM_TYPE = "Decisions"
_PARAMS = (("frequency_hz", "Hz"), ("amplitude_ma", "mA"), ("pulse_width_us", "us"))


def decision_channels(class_names: Sequence[str]) -> list[tuple[str, str, str]]:
    """(label, unit, type) of every channel, in stream order."""
    chans = [("state", "index", "State"), ("confidence", "probability", "Confidence")]
    chans += [(f"p_{c}", "probability", "Probability") for c in class_names]
    chans += [(name, unit, "Stimulation") for name, unit in _PARAMS]
    chans.append(("stimulating", "bool", "Stimulation"))
    return chans


def _num(v: Any) -> float:
    if v is None:
        return math.nan
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


class DecisionsOutlet:
    """An LSL outlet for decisions. `push(decision)` takes the loop's decision mapping:

    `state` (int index, or a class name), `confidence`, `probs` (or `probabilities`: one per class), the applied
    parameters either at the top level or under `applied` ({frequency_hz, amplitude_ma, pulse_width_us}), and
    `stimulating`. Missing values go out as NaN; a pushed decision never raises.
    """

    def __init__(self, cfg: DecisionsLslConfig, class_names: Sequence[str] = ("0", "1", "2"),
                 meta: StreamMeta | None = None) -> None:
        self.cfg = cfg
        self.class_names = [str(c) for c in class_names]
        self.channels = decision_channels(self.class_names)
        info = pylsl.StreamInfo(cfg.name, STREAM_TYPE, len(self.channels), pylsl.IRREGULAR_RATE, "float32",
                                cfg.source_id)
        desc = info.desc()
        if meta is not None:
            meta.write(desc, model="neurostimd decisions")
        else:
            desc.append_child_value("manufacturer", "neurostimd")
        write_channels(desc, self.channels)
        classes = desc.append_child("classes")
        for i, c in enumerate(self.class_names):
            classes.append_child("class").append_child_value("index", str(i)).append_child_value("name", c)
        self._outlet: Any = pylsl.StreamOutlet(info)
        self.pushed = 0
        log.info("decisions_outlet_open", name=cfg.name, channels=[c[0] for c in self.channels])

    def values(self, decision: Mapping[str, Any]) -> list[float]:
        """The channel values for one decision (NaN where the decision does not say)."""
        state = decision.get("state")
        if isinstance(state, str):
            state = self.class_names.index(state) if state in self.class_names else None
        probs = decision.get("probs", decision.get("probabilities"))
        probs_list = list(probs) if probs is not None else []
        applied = decision.get("applied")
        src = applied if isinstance(applied, Mapping) else decision
        out = [_num(state), _num(decision.get("confidence"))]
        out += [_num(probs_list[i]) if i < len(probs_list) else math.nan for i in range(len(self.class_names))]
        out += [_num(src.get(name)) for name, _ in _PARAMS]
        stim = decision.get("stimulating")
        if stim is None and isinstance(applied, Mapping):
            stim = _num(applied.get("amplitude_ma")) > 0
        out.append(_num(stim))
        return out

    def push(self, decision: Mapping[str, Any], timestamp: float | None = None) -> None:
        """Push one decision; `timestamp` in pylsl.local_clock() seconds (default: now)."""
        if self._outlet is None:
            return
        self._outlet.push_sample(self.values(decision), timestamp if timestamp is not None else 0.0)
        self.pushed += 1

    def close(self) -> None:
        self._outlet = None

    def __enter__(self) -> DecisionsOutlet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DecisionsListener(BaseListener):
    """A DecisionsOutlet as a loop listener: one sample per decision, stamped through `lsl_time` with the tick's
    time (without one, or for a decision that does not say when it was made: at the push). `close()` closes the
    outlet."""

    def __init__(self, outlet: DecisionsOutlet, lsl_time: LslTime | None = None) -> None:
        self.outlet = outlet
        self.lsl_time = lsl_time

    def on_decision(self, decision: DecisionEvent) -> None:
        self.outlet.push(decision.record, None if self.lsl_time is None else self.lsl_time.at(decision.t_ns))

    def close(self) -> None:
        self.outlet.close()
