"""Samples from a Lab Streaming Layer stream: chosen by name / type / source_id / hostname, checked against the config
(channel count, rate, format, channel units and labels), pinned to the one stream chosen, pulled in chunks straight
into numpy, scaled to µV, and stamped on the local monotonic clock. Gaps are found on the stream's own timestamps. A
vanished outlet makes the source stale; a background resolver keeps looking, and the source reconnects only to the
same stream (same source_id and host, or the same uid) unless the config allows other outlets."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pylsl
import structlog

from neurostimd.core.ringbuffer import RingBuffer
from neurostimd.core.stream_checks import MontageError, gap_threshold_s, missing_in_step, normal_name, pick_channels
from neurostimd.core.units import UnitError, scales_to_uv
from neurostimd.errors import SourceError
from neurostimd.sources.base import Source

if TYPE_CHECKING:
    from neurostimd.sources.settings import LslSourceConfig

log = structlog.get_logger(__name__)

_FORMAT_NAMES = {pylsl.cf_float32: "float32", pylsl.cf_double64: "double64", pylsl.cf_string: "string",
                 pylsl.cf_int32: "int32", pylsl.cf_int16: "int16", pylsl.cf_int8: "int8", pylsl.cf_int64: "int64"}
# After the first matching stream is seen at start, keep listening this long for others (which would make the
# choice ambiguous) before choosing.
SETTLE_S = 0.5
# Time-correction changes up to this are slewed in (at most a quarter period per chunk) so that they never look like a
# clock jump; larger ones (a first estimate, another host's clock) are applied at once and flagged by the ring.
SLEW_LIMIT_S = 0.01
INFO_TIMEOUT_S = 0.02  # per attempt, reading a reconnected stream's description (its channels and units)
VERIFY_GIVE_UP_S = 2.0  # a reconnected outlet that does not describe itself within this long is dropped
# A lost outlet's uid is not reconnected to for this long: the resolver lists a dead outlet for up to forget_after
# (2 s); one still listed after that answers its queries, i.e. is alive (the connection broke, not the outlet).
LOST_UID_HOLD_S = 4.0


def describe_stream(info: pylsl.StreamInfo) -> str:
    """One line naming a stream the way a user would look for it."""
    return (f"name={info.name()!r} type={info.type()!r} source_id={info.source_id()!r} "
            f"channels={info.channel_count()} rate={info.nominal_srate():g} Hz "
            f"format={_FORMAT_NAMES.get(info.channel_format(), info.channel_format())} host={info.hostname()!r}")


@dataclass(frozen=True)
class StreamIdentity:
    """What pins a stream: the source is built for this one and reconnects only to it."""

    name: str
    type: str
    source_id: str
    hostname: str
    uid: str
    n_channels: int
    rate_hz: float
    format: str

    @classmethod
    def of(cls, info: pylsl.StreamInfo) -> StreamIdentity:
        return cls(info.name(), info.type(), info.source_id(), info.hostname(), info.uid(), info.channel_count(),
                   float(info.nominal_srate()), _FORMAT_NAMES.get(info.channel_format(), str(info.channel_format())))

    @property
    def key(self) -> tuple[str, ...]:
        """Streams with one key are one stream: a restarted outlet keeps its source_id and host (its uid changes);
        without a source_id, nothing but the uid tells two outlets apart."""
        return ("source_id", self.source_id, self.hostname) if self.source_id else ("uid", self.uid)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "source_id": self.source_id, "hostname": self.hostname,
                "uid": self.uid, "n_channels": self.n_channels, "rate_hz": self.rate_hz, "format": self.format}


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


@dataclass(frozen=True)
class _Description:
    """What a stream's full info says about its channels."""

    labels: list[str] | None  # None when some channel has no label
    scales: npt.NDArray[np.float64]  # µV per stream unit, per stream channel
    units: list[str | None]


class LslSource(Source):
    """An LSL inlet as a sample source.

    Units: each channel's declared unit (`desc/channels/channel/unit`; neurostimd.core.units) gives a preallocated µV
    factor; a missing or unknown unit is refused at open unless `[source] units` states it. Channels: labels
    (`desc/channels/channel/label`) are the declared names; `[source] channels` picks from a wider stream.

    Timestamps: gaps are found on the stream's own stamps (a step above 1.5 periods + `timestamp_jitter_ms`), and
    the ring gets a sample counter that jumps by the missing samples. Stamps + the inlet's time_correction
    (refreshed every second, slewed in) land on the LSL local clock, then a measured offset moves them to
    time.monotonic() seconds.
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
        self._inlet_created_at = 0.0  # created_at of the outlet the inlet is on
        self._verified = False  # the current inlet's description was checked against the pinned stream's
        self.identity: StreamIdentity | None = None
        self._desc: _Description | None = None
        self._refused: dict[str, str] = {}  # uid -> why (each logged once)
        self._lost_at: dict[str, float] = {}  # uid -> when its connection was lost
        self._pending_since = 0.0
        self._buf: np.ndarray[Any, Any] | None = None
        self._sel: np.ndarray[Any, Any] | None = None  # selected channels, stream dtype
        self._out: npt.NDArray[np.float32] | None = None  # µV, what the ring gets
        self._steps = np.zeros(self.max_chunk_samples, dtype=np.float64)
        self._pick: npt.NDArray[np.intp] | None = None  # [source] channels, as stream columns
        self._take: npt.NDArray[np.intp] | None = None  # delivered column j = stream column _take[j]
        self._scale: npt.NDArray[np.float64] = np.ones(cfg.n_channels)  # per delivered column
        self._direct = True  # float32 stream, all channels in order, factor 1: the pulled chunk goes to the ring
        self._period_s = 1.0 / cfg.sample_rate_hz
        self._gap_s = gap_threshold_s(cfg.sample_rate_hz, cfg.timestamp_jitter_ms / 1000.0)
        self._counter = 0  # next virtual sample index
        self._last_raw_ts: float | None = None
        self._correction_s = 0.0
        self._applied_offset_s: float | None = None
        self._next_correction_s = 0.0
        self._mono_offset_s = 0.0
        self._last_data_mono_s: float | None = None
        self._opened_mono_s = 0.0
        self._next_reconnect_s = 0.0
        self._first_lsl_ts: float | None = None
        self._newest_lsl_ts: float | None = None
        self.reconnects = 0
        self.gaps_seen = 0

    # --- description -----------------------------------------------------------------------------------------------
    def _offered_channels(self) -> int:
        return int(self._pick.shape[0]) if self._pick is not None else self.cfg.n_channels

    def _offered_names(self) -> list[str] | None:
        if self._desc is None or self._desc.labels is None:
            return None
        labels = self._desc.labels
        return [labels[i] for i in self._pick] if self._pick is not None else list(labels)

    def _order_changed(self) -> None:
        self._rebuild_selection()

    @property
    def sample_rate_hz(self) -> float:
        return self.cfg.sample_rate_hz

    @property
    def timestamp_tolerance_s(self) -> float:
        # The stamps are the outlet's sample clock, with time-correction changes slewed in: half a period, plus the
        # jitter the config allows for outlets that stamp at push time.
        return 0.5 * self._period_s + self.cfg.timestamp_jitter_ms / 1000.0

    @property
    def t_data_s(self) -> float | None:
        if self._first_lsl_ts is None or self._newest_lsl_ts is None:
            return None
        return self._newest_lsl_ts - self._first_lsl_ts

    # --- stream choice ---------------------------------------------------------------------------------------------
    def _selector(self) -> str:
        c = self.cfg
        parts = [f"{k}={v!r}" for k, v in (("name", c.name), ("type", c.type), ("source_id", c.source_id),
                                             ("hostname", c.hostname)) if v]
        return " ".join(parts)

    def _matches(self, infos: list[pylsl.StreamInfo]) -> list[pylsl.StreamInfo]:
        c = self.cfg
        found = [i for i in infos
                 if (c.name is None or i.name() == c.name) and (c.type is None or i.type() == c.type)
                 and (c.source_id is None or i.source_id() == c.source_id)
                 and (c.hostname is None or i.hostname() == c.hostname)]
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

    def _describe(self, full: pylsl.StreamInfo) -> _Description:
        """Labels and µV factors from a stream's full info; SourceError when its units cannot be known."""
        n = full.channel_count()
        labels: list[str] = []
        units: list[str | None] = []
        types: list[str | None] = []
        ch = full.desc().child("channels").child("channel")
        while not ch.empty() and len(labels) < n:
            labels.append(ch.child_value("label").strip())
            units.append(ch.child_value("unit") or None)
            types.append(ch.child_value("type") or None)
            ch = ch.next_sibling("channel")
        if len(labels) != n:  # no (or an incomplete) channel description
            labels, units, types = [""] * n, [None] * n, [None] * n
        try:
            scales = scales_to_uv(units, channel_types=types, stream_type=full.type(), configured=self.cfg.units,
                                  labels=labels, what=f"LSL stream {describe_stream(full)}")
        except UnitError as err:
            raise SourceError(str(err)) from err
        if self.cfg.units is not None and any(u is None for u in units):
            log.info("lsl_units_from_config", units=self.cfg.units, stream=describe_stream(full))
        return _Description(labels if all(labels) else None, scales, units)

    def _group_keys(self, infos: list[pylsl.StreamInfo]) -> dict[tuple[str, ...], list[pylsl.StreamInfo]]:
        groups: dict[tuple[str, ...], list[pylsl.StreamInfo]] = {}
        for i in infos:
            groups.setdefault(StreamIdentity.of(i).key, []).append(i)
        return groups

    # --- lifecycle -------------------------------------------------------------------------------------------------
    def _open(self) -> None:
        self._mono_offset_s = _mono_minus_lsl_s()
        self._resolver = pylsl.ContinuousResolver(forget_after=2.0)
        t_start = time.monotonic()
        deadline = t_start + self.cfg.resolve_timeout_s
        matches: list[pylsl.StreamInfo] = []
        seen: list[pylsl.StreamInfo] = []
        first_match_s: float | None = None
        while True:
            seen = self._resolver.results()
            matches = self._matches(seen)
            now = time.monotonic()
            if matches and first_match_s is None:
                first_match_s = now
            # One stream (perhaps with the lingering ghost of its own last run) after listening a little: choose.
            # Several: wait out the timeout, the resolver forgets outlets that stopped answering.
            if first_match_s is not None and len(self._group_keys(matches)) == 1 and now - first_match_s >= SETTLE_S:
                break
            if now >= deadline:
                break
            time.sleep(0.05)
        if not matches:
            self._resolver = None
            listing = "; ".join(describe_stream(i) for i in seen) or "none at all"
            raise SourceError(f"no LSL stream with {self._selector()} found within {self.cfg.resolve_timeout_s:g} s; "
                              f"streams seen: {listing}. Start the outlet, or fix [source] name/type/source_id.")
        groups = self._group_keys(matches)
        if len(groups) > 1:
            self._resolver = None
            listing = "; ".join(f"{describe_stream(i)} uid={i.uid()!r}" for i in matches)
            raise SourceError(f"{len(groups)} different LSL streams match {self._selector()} (still after "
                              f"{self.cfg.resolve_timeout_s:g} s): {listing}. Which one to read is ambiguous; set "
                              f"[source] source_id (or hostname) to choose one")
        chosen = matches[0]
        try:
            self._check(chosen)
            self._opened_mono_s = time.monotonic()
            timeout = max(1.0, self.cfg.resolve_timeout_s)
            if not self._connect(chosen, timeout_s=timeout):
                raise SourceError(f"LSL stream {describe_stream(chosen)} was found but would not open within "
                                  f"{timeout:g} s; check that the outlet is still running")
            try:
                full = self._inlet.info(timeout=timeout)
            except (pylsl.util.TimeoutError, pylsl.util.LostError) as err:
                raise SourceError(f"LSL stream {describe_stream(chosen)}: its description (channel labels and units) "
                                  f"could not be read within {timeout:g} s ({err}); check the outlet") from err
            self._desc = self._describe(full)
            self._pick_configured()
        except SourceError:
            self._drop_inlet()
            self._resolver = None
            raise
        self.identity = StreamIdentity.of(chosen)
        self._verified = True
        self._rebuild_selection()
        self._stale_reason = "no samples received yet"
        log.info("lsl_source_open", stream=describe_stream(chosen), identity=self.identity.as_dict(),
                 channels=self.channel_names, scale_uv=sorted({float(f) for f in self._scale}))

    def _pick_configured(self) -> None:
        names = self.cfg.channels
        if names is None:
            return
        assert self._desc is not None
        if self._desc.labels is None:
            raise SourceError(f"[source] channels picks channels by name, but LSL stream {self._selector()} does not "
                              f"label all its channels; remove channels from the config or label the outlet's "
                              f"channels")
        try:
            self._pick = pick_channels(names, self._desc.labels)
        except MontageError as err:
            raise SourceError(f"[source] channels does not fit LSL stream {self._selector()} ({err}); its channels "
                              f"are {self._desc.labels}") from err

    def _rebuild_selection(self) -> None:
        """The column index, µV factors and buffers for what is delivered (computed once, not per chunk)."""
        n_stream = self.cfg.n_channels
        base = self._pick if self._pick is not None else np.arange(n_stream, dtype=np.intp)
        take = base if self._order is None else base[self._order]
        scales = self._desc.scales if self._desc is not None else np.ones(n_stream)
        self._scale = np.ascontiguousarray(scales[take], dtype=np.float64)
        self._take = None if np.array_equal(take, np.arange(n_stream)) else np.ascontiguousarray(take)
        dtype = self._buf.dtype if self._buf is not None else np.dtype(np.float32)
        self._direct = self._take is None and bool(np.all(self._scale == 1.0)) and dtype == np.float32
        n_out = int(take.shape[0])
        self._sel = np.empty((self.max_chunk_samples, n_out), dtype=dtype) if self._take is not None else None
        self._out = np.empty((self.max_chunk_samples, n_out), dtype=np.float32)

    def _connect(self, info: pylsl.StreamInfo, *, timeout_s: float, keep_pending: bool = False) -> bool:
        """Open an inlet on `info`; False (and no inlet) when it does not open within timeout_s, unless
        keep_pending, in which case the inlet stays and liblsl finishes connecting in the background (so that a
        reconnect never holds up the caller's tick for more than timeout_s). liblsl's own recovery is off: it would
        move to whatever outlet carries the same source_id, and which outlet is ours is decided here."""
        inlet = pylsl.StreamInlet(info, max_buflen=self.max_buflen_s, max_chunklen=0, recover=False,
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
        self._inlet_created_at = float(info.created_at())
        dtype = inlet.np_dtype if inlet.np_dtype is not None else np.float32
        if self._buf is None or self._buf.dtype != dtype:
            self._buf = np.empty((self.max_chunk_samples, self.cfg.n_channels), dtype=dtype)
            if self._desc is not None:
                self._rebuild_selection()
        self._next_correction_s = 0.0
        self._applied_offset_s = None  # a new connection's correction applies at once
        self._refresh_correction(first=not keep_pending)
        return True

    def _refresh_correction(self, *, first: bool = False) -> None:
        now = time.monotonic()
        if self._inlet is None or now < self._next_correction_s:
            return
        self._next_correction_s = now + 1.0
        # On failure keep the previous estimate; a lost stream is handled by the next pull.
        with contextlib.suppress(pylsl.util.TimeoutError, pylsl.util.LostError):
            self._correction_s = float(self._inlet.time_correction(timeout=1.0 if first else 0.0))

    def _offset(self) -> float:
        """LSL stamp → monotonic seconds, moving toward the current correction by at most a quarter period per
        chunk (a small change never looks like a clock jump); a large change applies at once."""
        target = self._correction_s + self._mono_offset_s
        cur = self._applied_offset_s
        if cur is None or abs(target - cur) > SLEW_LIMIT_S:
            cur = target
        else:
            step = 0.25 * self._period_s
            cur += min(step, max(-step, target - cur))
        self._applied_offset_s = cur
        return cur

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
        if self._inlet is not None and not self._verified:
            self._verify_pending()
        if self._inlet is None or not self._verified:
            self._try_reconnect()
            if self._inlet is None or not self._verified:
                if timeout_s > 0:
                    time.sleep(min(timeout_s, self.reconnect_interval_s))
                self._update_stale()
                return 0
        moved = 0
        wait = max(0.0, timeout_s)
        buf = self._buf
        assert buf is not None
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
            self._write(ring, data, ts, n)
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

    def _write(self, ring: RingBuffer, data: npt.NDArray[Any], ts: npt.NDArray[np.float64], n: int) -> None:
        """Scale and select one pulled chunk into µV, find gaps on its raw stamps, and write it to the ring."""
        if self._first_lsl_ts is None:
            self._first_lsl_ts = float(ts[0])
        self._newest_lsl_ts = float(ts[-1])
        if self._direct:
            out = data
        else:
            assert self._out is not None
            src = data
            if self._take is not None:
                assert self._sel is not None
                np.take(data, self._take, axis=1, out=self._sel[:n], mode="clip")  # indices are valid: no buffering
                src = self._sel[:n]
            out = self._out[:n]
            np.multiply(src, self._scale, out=out, casting="unsafe")
        offset = self._offset()
        gap = self._gap_s
        last = self._last_raw_ts
        first_step = float(ts[0]) - last if last is not None else 0.0
        split = not first_step <= gap  # (NaN-safe)
        if n > 1:
            steps = self._steps[:n - 1]
            np.subtract(ts[1:], ts[:-1], out=steps)
            split = split or not float(steps.max()) <= gap
        self._last_raw_ts = float(ts[-1])
        if not split:
            ring.write(out, ts + offset, first_index=self._counter)
            self._counter += n
            return
        # Rare: the stream's own stamps skip samples. One write per contiguous run, the counter jumping over the hole.
        steps_all = np.concatenate(([first_step], np.diff(ts)))
        cuts = [i for i in np.flatnonzero(~(steps_all <= gap)).tolist() if i > 0 or last is not None]
        bounds = [*cuts, n]
        a = 0
        for b in bounds:
            if b > a:
                ring.write(out[a:b], ts[a:b] + offset, first_index=self._counter)
                self._counter += b - a
            if b < n:
                skipped = missing_in_step(float(steps_all[b]), self.cfg.sample_rate_hz)
                self._counter += skipped
                self.gaps_seen += 1
            a = b

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
            self._lost_at[self._inlet_uid] = time.monotonic()
        self._drop_inlet()
        self._verified = False
        self._stale_reason = f"no samples for a while: {why}; re-resolving {self._selector()}"

    # --- reconnecting ----------------------------------------------------------------------------------------------
    def _refuse(self, info: pylsl.StreamInfo, why: str) -> None:
        uid = info.uid()
        if uid in self._refused:
            return
        self._refused[uid] = why
        assert self.identity is not None
        log.warning("lsl_stream_refused", reason=why, pinned=self.identity.as_dict(),
                    candidate=StreamIdentity.of(info).as_dict(),
                    hint="set [source] allow_other_outlets = true to accept other outlets" if
                    "not the stream" in why else None)

    def _acceptable(self, info: pylsl.StreamInfo) -> bool:
        """May the source (re)connect to this candidate? Refusals are logged once per uid."""
        assert self.identity is not None
        if info.uid() in self._refused:
            return False
        cand = StreamIdentity.of(info)
        if cand.key != self.identity.key:
            if not self.cfg.allow_other_outlets:
                hint = "" if self.identity.source_id else (" (the chosen stream has no source_id, so only its own "
                                                            "uid is accepted)")
                self._refuse(info, f"not the stream this source was opened on{hint}")
                return False
            log.warning("lsl_other_outlet_accepted", pinned=self.identity.as_dict(), candidate=cand.as_dict(),
                        detail="[source] allow_other_outlets = true")
        try:
            self._check(info)
        except SourceError as err:
            self._refuse(info, str(err))
            return False
        return True

    def _try_reconnect(self) -> None:
        """Look (without blocking for long) for the pinned stream — the same outlet after a lost connection, or its
        restart — and connect to it. While the current inlet is alive but silent, only a newer outlet of the same
        stream (a restart) is taken; other outlets are refused and logged."""
        now = time.monotonic()
        if self._resolver is None or now < self._next_reconnect_s:
            return
        self._next_reconnect_s = now + self.reconnect_interval_s
        alive = self._inlet is not None
        for info in self._matches(self._resolver.results()):
            if alive and (info.uid() == self._inlet_uid or info.created_at() <= self._inlet_created_at):
                continue  # while the inlet lives, only a restart (a newer outlet) may replace it
            if now - self._lost_at.get(info.uid(), -LOST_UID_HOLD_S) < LOST_UID_HOLD_S:
                continue
            if not self._acceptable(info):
                continue
            old_uid = self._inlet_uid
            self._drop_inlet()
            if self._connect(info, timeout_s=self.connect_timeout_s, keep_pending=True):
                self._verified = False
                self._pending_since = time.monotonic()
                self._verify_pending()
                self.reconnects += 1
                log.info("lsl_source_reconnected", stream=describe_stream(info), previous_uid=old_uid,
                         verified=self._verified)
            else:
                self._inlet_uid = old_uid
            return

    def _verify_pending(self) -> None:
        """Before the first sample of a new connection: its channels and units must be the pinned stream's."""
        assert self._inlet is not None and self._desc is not None
        try:
            full = self._inlet.info(timeout=INFO_TIMEOUT_S)
        except pylsl.util.TimeoutError:
            if time.monotonic() - self._pending_since > VERIFY_GIVE_UP_S:
                self._lose("the reconnected outlet did not describe itself")
            return  # try again at the next pump; nothing is pulled meanwhile
        except pylsl.util.LostError:
            self._lose("the reconnected outlet went away")
            return
        try:
            desc = self._describe(full)
            if desc.labels != self._desc.labels and not (
                    desc.labels is not None and self._desc.labels is not None
                    and [normal_name(x) for x in desc.labels] == [normal_name(x) for x in self._desc.labels]):
                raise SourceError(f"its channels {desc.labels} are not {self._desc.labels}")
            if not np.allclose(desc.scales, self._desc.scales, rtol=1e-9, atol=0.0):
                raise SourceError(f"its channel units {desc.units} are not {self._desc.units}")
        except SourceError as err:
            self._refuse(full, f"its description differs from the stream this source was opened on: {err}")
            self._drop_inlet()
            self._verified = False
            return
        self._verified = True
