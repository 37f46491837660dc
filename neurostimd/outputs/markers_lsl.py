"""The session's markers as an LSL stream for LabRecorder (`[markers_lsl]`): type "Markers", one string channel,
irregular rate. Each marker (neurostimd.core.markers: state changes, stimulation on/off and parameter changes,
faults, the safe state, config reloads, session start/stop) is stamped with the timestamp of the decision it
belongs to, through the session's LslTime — the same float the decisions outlet stamps that decision with."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import pylsl
import structlog

from neurostimd.config import MarkersLslConfig
from neurostimd.core.markers import MarkerTracker, format_marker
from neurostimd.listeners import BaseListener, DecisionEvent, LoopView, TickStats
from neurostimd.outputs.lsl_meta import LslTime, StreamMeta

log = structlog.get_logger(__name__)

STREAM_TYPE = "Markers"


class MarkersOutlet:
    """An LSL outlet of string markers. `push(marker, timestamp)`; a closed outlet takes nothing."""

    def __init__(self, cfg: MarkersLslConfig, meta: StreamMeta | None = None) -> None:
        self.cfg = cfg
        info = pylsl.StreamInfo(cfg.name, STREAM_TYPE, 1, pylsl.IRREGULAR_RATE, "string", cfg.source_id)
        desc = info.desc()
        if meta is not None:
            meta.write(desc, model="neurostimd markers")
        else:
            desc.append_child_value("manufacturer", "neurostimd")
        ch = desc.append_child("channels").append_child("channel")
        ch.append_child_value("label", "marker")
        ch.append_child_value("type", STREAM_TYPE)
        desc.append_child_value("marker_format", "neurostimd-markers/1 (docs/lsl-outputs.md)")
        self._outlet: Any = pylsl.StreamOutlet(info)
        self.pushed = 0
        log.info("markers_outlet_open", name=cfg.name, source_id=cfg.source_id)

    def push(self, marker: str, timestamp: float) -> None:
        if self._outlet is None:
            return
        self._outlet.push_sample([marker], timestamp)
        self.pushed += 1

    def close(self) -> None:
        self._outlet = None


class MarkersListener(BaseListener):
    """The markers of a running loop. `on_decision` sends the session, state, fault and safe-state markers with
    the decision's timestamp; `on_tick` (right after, same tick) the stimulation markers from what the loop
    publishes as confirmed on the board, with the same timestamp. `note(marker)` (the daemon's config reload) goes
    out with the next decision; `shutdown(confirmed)` and `close()` send the last ones, stamped when they happen.
    `sent` keeps (timestamp, marker) of the last 1000 pushed."""

    def __init__(self, outlet: MarkersOutlet, class_names: Sequence[str], lsl_time: LslTime) -> None:
        self.outlet = outlet
        self.tracker = MarkerTracker(class_names)
        self.lsl_time = lsl_time
        self._pending: list[str] = []
        self._stamp: float | None = None
        self._limited_by: list[str] = []
        self._closed = False
        self.sent: deque[tuple[float, str]] = deque(maxlen=1000)

    def _push(self, markers: Sequence[str], ts: float) -> None:
        for m in markers:
            self.outlet.push(m, ts)
            self.sent.append((ts, m))

    def stamp(self, decision: DecisionEvent) -> float:
        """The decision's timestamp on LSL's clock (now, for an event that does not say when it was made)."""
        return self.lsl_time.at(decision.t_ns)

    def on_decision(self, decision: DecisionEvent) -> None:
        ts = self._stamp = self.stamp(decision)
        rec = decision.record
        self._limited_by = list(rec.get("limited_by") or [])
        markers = self.tracker.decision(rec) + self._pending
        self._pending = []
        self._push(markers, ts)

    def on_tick(self, stats: TickStats, loop: LoopView) -> None:
        s = loop.state
        markers = self.tracker.stimulation(s.applied, s.board_state_known, self._limited_by)
        if markers:
            self._push(markers, self._stamp if self._stamp is not None else self.lsl_time.now())

    def note(self, tag: str, **fields: Any) -> None:
        """A marker from outside the tick, sent with the next decision's timestamp."""
        self._pending.append(format_marker(tag, **fields))

    def shutdown(self, confirmed: bool) -> None:
        """The daemon's STOP at exit: confirmed by the board or not."""
        self._push(self.tracker.shutdown(confirmed), self.lsl_time.now())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._push([*self._pending, "session:stop"], self.lsl_time.now())
            self._pending = []
        self.outlet.close()
