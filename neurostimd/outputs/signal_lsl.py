"""The samples the loop decides on, as an LSL EEG stream (`[signal_lsl]`), so that an XDF recorded by LabRecorder
holds the signal, the decisions and the markers on one clock. For a source that is not already on the network: the
stimulator board, a BrainFlow board, a replayed recording (an LSL source is refused by the config: its stream is
already there).

What goes out is what the ring holds: the source's channels in the model's order (after any [source] channels
pick), in µV, each sample stamped with its ring timestamp mapped through the session's LslTime. A gap in the source
(missing samples, a stall) is a gap in the stamps, not filled. Stream: type "EEG", float32, nominal rate the
source's, `desc/channels/channel` label, unit "microvolts" and type "EEG" — the XDF EEG meta-data convention, which
MNE-LSL also reads as µV (its human-readable units map "microvolts" to the FIFF multiplier -6 for a voltage channel
type), and neurostimd's own LSL source reads back (neurostimd.core.units)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pylsl
import structlog

from neurostimd.config import SignalLslConfig
from neurostimd.core.ringbuffer import Window
from neurostimd.listeners import BaseListener
from neurostimd.outputs.lsl_meta import LslTime, StreamMeta, write_channels

log = structlog.get_logger(__name__)

STREAM_TYPE = "EEG"
UNIT = "microvolts"


class SignalOutlet:
    """An LSL outlet of the loop's samples. `push(window)` sends a ring window with its own timestamps."""

    def __init__(self, cfg: SignalLslConfig, *, sample_rate_hz: float, channel_names: Sequence[str],
                 lsl_time: LslTime, meta: StreamMeta | None = None, model: str = "neurostimd signal") -> None:
        self.cfg = cfg
        self.lsl_time = lsl_time
        self.channel_names = [str(c) for c in channel_names]
        self.n_channels = len(self.channel_names)
        info = pylsl.StreamInfo(cfg.name, STREAM_TYPE, self.n_channels, float(sample_rate_hz), "float32",
                                cfg.source_id)
        desc = info.desc()
        if meta is not None:
            meta.write(desc, model=model)
        write_channels(desc, [(c, UNIT, STREAM_TYPE) for c in self.channel_names])
        self._outlet: Any = pylsl.StreamOutlet(info)
        self.pushed = 0
        log.info("signal_outlet_open", name=cfg.name, source_id=cfg.source_id, n_channels=self.n_channels,
                 sample_rate_hz=sample_rate_hz)

    def push(self, window: Window) -> None:
        if self._outlet is None or len(window) == 0:
            return
        data = np.ascontiguousarray(window.data, dtype=np.float32)
        if data.shape[1] != self.n_channels:
            raise ValueError(f"signal outlet {self.cfg.name!r} has {self.n_channels} channels, the window "
                             f"{data.shape[1]}")
        stamps = (np.asarray(window.timestamps, dtype=np.float64) - self.lsl_time.offset_s).tolist()
        self._outlet.push_chunk(data, stamps)
        self.pushed += len(window)

    def close(self) -> None:
        self._outlet = None


class SignalListener(BaseListener):
    """A SignalOutlet as a loop listener: the new samples of each tick."""

    def __init__(self, outlet: SignalOutlet) -> None:
        self.outlet = outlet

    def on_samples(self, window: Window) -> None:
        self.outlet.push(window)

    def close(self) -> None:
        self.outlet.close()
