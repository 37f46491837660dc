"""Samples from a Lab Streaming Layer stream: chosen by name / type / source_id, checked against the config, pulled
in chunks straight into numpy, and stamped on the local monotonic clock. A vanished outlet makes the source stale;
a background resolver keeps looking and the source reconnects on its own."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np
import pylsl
import structlog

from neurostimd.config import LslSourceConfig
from neurostimd.errors import SourceError
from neurostimd.ringbuffer import RingBuffer
from neurostimd.sources.base import Source

log = structlog.get_logger(__name__)

_FORMAT_NAMES = {pylsl.cf_float32: "float32", pylsl.cf_double64: "double64", pylsl.cf_string: "string",
                 pylsl.cf_int32: "int32", pylsl.cf_int16: "int16", pylsl.cf_int8: "int8", pylsl.cf_int64: "int64"}


def describe_stream(info: pylsl.StreamInfo) -> str:
    """One line naming a stream the way a user would look for it."""
    return (f"name={info.name()!r} type={info.type()!r} source_id={info.source_id()!r} "
            f"channels={info.channel_count()} rate={info.nominal_srate():g} Hz "
            f"format={_FORMAT_NAMES.get(info.channel_format(), info.channel_format())} host={info.hostname()!r}")


def _mono_minus_lsl_s() -> float:
    """Offset from pylsl.local_clock() to time.monotonic() (both steady clocks; measured, not assumed equal)."""
    best = None
    for _ in range(5):
        a = time.monotonic()
        b = pylsl.local_clock()
        c = time.monotonic()
        cand = (c - a, (a + c) / 2 - b)
        if best is None or cand[0] < best[0]:
            best = cand
    assert best is not None
    return best[1]


class LslSource(Source):
    """An LSL inlet as a sample source.

    Timestamps: LSL stamps + the inlet's time_correction (refreshed every second) land on the LSL local clock, then a
    measured offset moves them to time.monotonic() seconds. Gaps in the stamps show up as ring-buffer gap flags.
    """

    kind = "lsl"

    def __init__(
        self,
        cfg: LslSourceConfig,
        *,
        max_buflen_s: int = 30,
        max_chunk_samples: int = 4096,
        reconnect_interval_s: float = 0.25,
        connect_timeout_s: float = 0.05,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.max_buflen_s = int(max_buflen_s)
        self.max_chunk_samples = int(max_chunk_samples)
        self.reconnect_interval_s = reconnect_interval_s
        self.connect_timeout_s = connect_timeout_s
        self._resolver: Any = None
        self._inlet: Any = None
        self._inlet_uid: str | None = None
        self._lost_uids: set[str] = set()
        self._buf: np.ndarray[Any, Any] | None = None
        self._channel_names: list[str] = []
        self._correction_s = 0.0
        self._next_correction_s = 0.0
        self._mono_offset_s = 0.0
        self._last_data_mono_s: float | None = None
        self._opened_mono_s = 0.0
        self._next_reconnect_s = 0.0
        self._first_lsl_ts: float | None = None
        self._newest_lsl_ts: float | None = None
        self.reconnects = 0

    # --- description -----------------------------------------------------------------------------------------------
    @property
    def n_channels(self) -> int:
        return self.cfg.n_channels

    @property
    def sample_rate_hz(self) -> float:
        return self.cfg.sample_rate_hz

    @property
    def channel_names(self) -> list[str]:
        return list(self._channel_names) or super().channel_names

    @property
    def t_data_s(self) -> float | None:
        if self._first_lsl_ts is None or self._newest_lsl_ts is None:
            return None
        return self._newest_lsl_ts - self._first_lsl_ts

    # --- stream choice ---------------------------------------------------------------------------------------------
    def _selector(self) -> str:
        parts = [f"{k}={v!r}" for k, v in (("name", self.cfg.name), ("type", self.cfg.type),
                                             ("source_id", self.cfg.source_id)) if v]
        return " ".join(parts)

    def _matches(self, infos: list[pylsl.StreamInfo]) -> list[pylsl.StreamInfo]:
        c = self.cfg
        found = [i for i in infos
                 if (c.name is None or i.name() == c.name) and (c.type is None or i.type() == c.type)
                 and (c.source_id is None or i.source_id() == c.source_id)
                 and i.uid() not in self._lost_uids]
        # The newest outlet first: after a restart the old one may linger in the resolver's memory for a while.
        found.sort(key=lambda i: i.created_at(), reverse=True)
        return found

    def _check(self, info: pylsl.StreamInfo) -> None:
        c = self.cfg
        problems = []
        if info.channel_count() != c.n_channels:
            problems.append(f"it has {info.channel_count()} channels but source.n_channels = {c.n_channels}")
        rate = info.nominal_srate()
        if rate <= 0:
            problems.append("it has an irregular rate (0 Hz) but a regular stream is needed")
        elif abs(rate - c.sample_rate_hz) > 1e-6 * c.sample_rate_hz:
            problems.append(f"its nominal rate is {rate:g} Hz but source.sample_rate_hz = {c.sample_rate_hz:g}")
        if info.channel_format() == pylsl.cf_string:
            problems.append("it carries strings, not numbers")
        if problems:
            raise SourceError(f"LSL stream {describe_stream(info)} does not match the config: "
                              + "; ".join(problems)
                              + ". Fix [source] in the config or choose another stream.")

    # --- lifecycle -------------------------------------------------------------------------------------------------
    def _open(self) -> None:
        self._mono_offset_s = _mono_minus_lsl_s()
        self._resolver = pylsl.ContinuousResolver(forget_after=2.0)
        deadline = time.monotonic() + self.cfg.resolve_timeout_s
        matches: list[pylsl.StreamInfo] = []
        seen: list[pylsl.StreamInfo] = []
        while True:
            seen = self._resolver.results()
            matches = self._matches(seen)
            if matches or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        if not matches:
            self._resolver = None
            listing = "; ".join(describe_stream(i) for i in seen) or "none at all"
            raise SourceError(f"no LSL stream with {self._selector()} found within {self.cfg.resolve_timeout_s:g} s; "
                              f"streams seen: {listing}. Start the outlet, or fix [source] name/type/source_id.")
        if len(matches) > 1:
            log.warning("lsl_several_streams_match", selector=self._selector(), chosen=describe_stream(matches[0]),
                        others=[describe_stream(i) for i in matches[1:]])
        try:
            self._check(matches[0])
        except SourceError:
            self._resolver = None
            raise
        self._opened_mono_s = time.monotonic()
        if not self._connect(matches[0], timeout_s=max(1.0, self.cfg.resolve_timeout_s)):
            self._resolver = None
            self._drop_inlet()
            raise SourceError(f"LSL stream {describe_stream(matches[0])} was found but would not open within "
                              f"{max(1.0, self.cfg.resolve_timeout_s):g} s; check that the outlet is still running")
        self._stale_reason = "no samples received yet"
        log.info("lsl_source_open", stream=describe_stream(matches[0]))

    def _connect(self, info: pylsl.StreamInfo, *, timeout_s: float, keep_pending: bool = False) -> bool:
        """Open an inlet on `info`; False (and no inlet) when it does not open within timeout_s, unless
        keep_pending, in which case the inlet stays and liblsl finishes connecting in the background (so that a
        reconnect never holds up the caller's tick for more than timeout_s)."""
        inlet = pylsl.StreamInlet(info, max_buflen=self.max_buflen_s, max_chunklen=0, recover=True,
                                  processing_flags=0)
        try:
            inlet.open_stream(timeout=timeout_s)
        except pylsl.util.TimeoutError as err:
            if not keep_pending:
                log.warning("lsl_connect_failed", stream=describe_stream(info), error=str(err))
                inlet.close_stream()
                return False
        except pylsl.util.LostError as err:
            log.warning("lsl_connect_failed", stream=describe_stream(info), error=str(err))
            return False
        self._inlet = inlet
        self._inlet_uid = info.uid()
        dtype = inlet.np_dtype if inlet.np_dtype is not None else np.float32
        self._buf = np.empty((self.max_chunk_samples, self.cfg.n_channels), dtype=dtype)
        self._next_correction_s = 0.0
        self._refresh_correction(first=not keep_pending)
        if not keep_pending and not self._channel_names:  # at open only: reading the full info can block
            self._channel_names = self._read_channel_names(inlet)
        return True

    def _read_channel_names(self, inlet: Any) -> list[str]:
        try:
            full = inlet.info(timeout=1.0)
        except (pylsl.util.TimeoutError, pylsl.util.LostError):
            return []
        names: list[str] = []
        ch = full.desc().child("channels").child("channel")
        while not ch.empty() and len(names) < self.cfg.n_channels:
            names.append(ch.child_value("label") or f"ch{len(names)}")
            ch = ch.next_sibling("channel")
        return names if len(names) == self.cfg.n_channels else []

    def _refresh_correction(self, *, first: bool = False) -> None:
        now = time.monotonic()
        if self._inlet is None or now < self._next_correction_s:
            return
        self._next_correction_s = now + 1.0
        # On failure keep the previous estimate; a lost stream is handled by the next pull.
        with contextlib.suppress(pylsl.util.TimeoutError, pylsl.util.LostError):
            self._correction_s = float(self._inlet.time_correction(timeout=1.0 if first else 0.0))

    def _drop_inlet(self) -> None:
        if self._inlet is not None:
            try:
                self._inlet.close_stream()
            except Exception as err:  # closing a dead inlet must not hide the original problem
                log.debug("lsl_close_failed", error=str(err))
        self._inlet = None

    def _close(self) -> None:
        self._drop_inlet()
        self._resolver = None

    # --- data ------------------------------------------------------------------------------------------------------
    def pump(self, ring: RingBuffer, timeout_s: float = 0.0) -> int:
        if not self._is_open:
            return 0
        if self._inlet is None:
            self._try_reconnect()
            if self._inlet is None:
                if timeout_s > 0:
                    time.sleep(min(timeout_s, self.reconnect_interval_s))
                self._update_stale()
                return 0
        moved = 0
        wait = max(0.0, timeout_s)
        buf = self._buf
        assert buf is not None
        offset = self._correction_s + self._mono_offset_s
        while True:
            try:
                data, ts = self._inlet.pull_chunk(timeout=wait, max_samples=self.max_chunk_samples, dest_obj=buf,
                                                  min_samples=1, as_numpy=True)
            except pylsl.util.LostError:
                self._lose("the LSL outlet went away")
                break
            n = len(ts)
            if n == 0:
                break
            if self._first_lsl_ts is None:
                self._first_lsl_ts = float(ts[0])
            self._newest_lsl_ts = float(ts[-1])
            ring.write(data, ts + offset)
            moved += n
            wait = 0.0
            if n < self.max_chunk_samples:
                break
        if moved:
            self._last_data_mono_s = time.monotonic()
            if self._stale_reason is not None:
                if self._stale_reason.startswith("no samples for"):
                    log.info("lsl_source_recovered", stream=self._selector())
                self._stale_reason = None
            self._refresh_correction()
        else:
            self._update_stale()
            if self._stale_reason is not None:
                self._try_reconnect()
        return moved

    def _update_stale(self) -> None:
        now = time.monotonic()
        since = self._last_data_mono_s if self._last_data_mono_s is not None else self._opened_mono_s
        age_ms = (now - since) * 1e3
        if self._last_data_mono_s is None:
            if self._stale_reason is None:
                self._stale_reason = "no samples received yet"
            return
        if age_ms > self.cfg.stale_after_ms and (
                self._stale_reason is None or self._stale_reason.startswith("no samples for")):
            if self._stale_reason is None:
                log.warning("lsl_source_stale", stream=self._selector(), age_ms=round(age_ms, 1))
            self._stale_reason = f"no samples for {age_ms:.0f} ms from LSL stream {self._selector()}"

    def _lose(self, why: str) -> None:
        log.warning("lsl_stream_lost", stream=self._selector(), reason=why)
        if self._inlet_uid is not None:
            self._lost_uids.add(self._inlet_uid)
        self._drop_inlet()
        self._stale_reason = f"no samples for a while: {why}; re-resolving {self._selector()}"

    def _try_reconnect(self) -> None:
        """Look (without blocking for long) for a matching outlet other than the current one and switch to it."""
        now = time.monotonic()
        if self._resolver is None or now < self._next_reconnect_s:
            return
        self._next_reconnect_s = now + self.reconnect_interval_s
        candidates = [i for i in self._matches(self._resolver.results()) if i.uid() != self._inlet_uid]
        if not candidates:
            return
        info = candidates[0]
        try:
            self._check(info)
        except SourceError as err:
            # A mismatching stream under the same name is not ours; keep waiting for the right one.
            log.warning("lsl_candidate_refused", error=str(err))
            self._lost_uids.add(info.uid())
            return
        old_uid = self._inlet_uid
        self._drop_inlet()
        if self._connect(info, timeout_s=self.connect_timeout_s, keep_pending=True):
            self.reconnects += 1
            log.info("lsl_source_reconnected", stream=describe_stream(info), previous_uid=old_uid)
        else:
            self._inlet_uid = old_uid
