"""Samples from an amplifier through BrainFlow (`[source] kind = "brainflow"`): any board BrainFlow supports, its
synthetic board, a playback file or a streaming board, chosen by `board_id` and BrainFlow's input params.

What is delivered is BrainFlow's channel list of one kind (get_eeg_channels, get_emg_channels, ...) for the board, in
µV: BrainFlow documents µV for its EXG channels ("Units of Measure", https://brainflow.readthedocs.io/en/stable/
DataFormatDesc.html) and states no unit for the others, which are refused. The board's description
(BoardShim.get_board_descr) gives the rows, the rate and the EEG names, and is checked against the config at open.

Sample counter: the package-number row (a counter that wraps at `package_modulus`, 256) is unwrapped into the ring's
sample counter, so a dropped package is a gap in the ring. A step the counter cannot tell apart (a whole wrap lost, a
session restarted) is sized from BrainFlow's timestamps. Boards whose package number counts packets of several
samples (or stays 0) are read with `gap_detection = "timestamps"`: gaps are then steps in BrainFlow's timestamps.

Timestamps: BrainFlow's timestamp row (Unix seconds, for many boards stamped on the PC on arrival) is moved onto
time.monotonic() and smoothed along the counter by the board source's CounterClockMap, so arrival jitter does not
look like clock jumps; no stamp is later than its arrival. A streaming board fed from another host needs that host's
clock in step with this one's (NTP): its stamps are that host's Unix time.

Staleness and reconnect: no samples for `stale_after_ms` makes the source stale; after `reconnect_after_ms` (or a
BrainFlowError) the session is released and prepared again in a background thread, with back-off, so that the loop's
tick never waits for a board that takes seconds to connect. pump() never raises.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import structlog
from brainflow.board_shim import BoardIds, BoardShim, BrainFlowError, BrainFlowInputParams, LogLevels

from neurostimd.core.ringbuffer import RingBuffer
from neurostimd.core.stream_checks import MontageError, gap_threshold_s, pick_channels
from neurostimd.errors import SourceError
from neurostimd.sources.base import Source
from neurostimd.sources.board import CounterClockMap

if TYPE_CHECKING:
    from neurostimd.sources.settings import BrainFlowParams, BrainFlowSourceConfig

log = structlog.get_logger(__name__)

# The kinds whose unit BrainFlow states (µV, "For EXG channels BrainFlow returns uV wherever possible").
UV_KINDS = frozenset({"eeg", "emg", "ecg", "eog", "exg"})
# Boards that carry another board's data: their layout and rate are those of params.master_board.
_CARRIERS = {BoardIds.PLAYBACK_FILE_BOARD.value: "PLAYBACK_FILE_BOARD",
             BoardIds.STREAMING_BOARD.value: "STREAMING_BOARD"}
# close() waits at most this long for a reconnect in progress and the release of the session (BrainFlow's streaming
# board takes up to 5 s to release a session that receives nothing); the rest finishes in the background.
_CLOSE_S = 2.0


def board_name(board_id: int) -> str:
    try:
        return BoardIds(board_id).name
    except ValueError:
        return str(board_id)


def resolve_board_id(value: int | str, *, what: str = "[source] board_id") -> int:
    """A BrainFlow board id from an integer or a BoardIds name (any case); SourceError naming a few known ones."""
    if isinstance(value, str):
        key = value.strip().upper()
        try:
            return int(BoardIds[key].value)
        except KeyError:
            near = [b.name for b in BoardIds if key.split("_")[0] in b.name][:8] or \
                ["SYNTHETIC_BOARD", "CYTON_BOARD", "GANGLION_BOARD", "MUSE_2_BOARD", "UNICORN_BOARD"]
            raise SourceError(f"{what} = {value!r} is not a BrainFlow board name (BoardIds); for example "
                              f"{', '.join(near)}. Check the board's BrainFlow page for its id") from None
    known = {int(b.value) for b in BoardIds}
    if int(value) not in known:
        raise SourceError(f"{what} = {value} is not a board id this BrainFlow ({BoardShim.get_version()}) knows; "
                          f"use a BoardIds name such as \"SYNTHETIC_BOARD\", or update BrainFlow")
    return int(value)


def input_params(p: BrainFlowParams) -> BrainFlowInputParams:
    """BrainFlow's input params from the config's (paths as strings, the master board as an id)."""
    out = BrainFlowInputParams()
    for k in ("serial_port", "mac_address", "ip_address", "ip_address_aux", "ip_address_anc", "ip_port",
              "ip_port_aux", "ip_port_anc", "ip_protocol", "other_info", "timeout", "serial_number"):
        setattr(out, k, getattr(p, k))
    for k in ("file", "file_aux", "file_anc"):
        v = getattr(p, k)
        setattr(out, k, "" if v is None else str(v))
    if p.master_board is not None:
        out.master_board = resolve_board_id(p.master_board, what="[source.params] master_board")
    return out


class BrainFlowSource(Source):
    """A BrainFlow board session as a sample source."""

    kind = "brainflow"

    def __init__(self, cfg: BrainFlowSourceConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.board_id = -100  # resolved at open
        self.layout_board_id = -100  # the board whose description applies (the master of a playback/streaming one)
        self._params: BrainFlowInputParams | None = None
        # One BoardShim for the source's life: BrainFlow keys sessions by board and params, and a BoardShim's
        # finaliser releases the session of its key, so a dropped second object would end the live session.
        self._shim: Any = None
        self._live = False  # the session streams and pump() may read it (False while the worker reconnects)
        self._rows: npt.NDArray[np.intp] = np.zeros(0, dtype=np.intp)  # offered channel i = board row _rows[i]
        self._take: npt.NDArray[np.intp] = np.zeros(0, dtype=np.intp)  # delivered column j = board row _take[j]
        self._names: list[str] | None = None  # offered channels' names
        self._pkg_row = 0
        self._ts_row = 0
        self._rate_hz = float(cfg.sample_rate_hz)
        self._period_s = 1.0 / self._rate_hz
        self._gap_s = gap_threshold_s(self._rate_hz, cfg.timestamp_jitter_ms / 1000.0)
        self._modulus = int(cfg.package_modulus)
        self._map: CounterClockMap | None = None
        self._counter: int | None = None  # ring counter of the last sample written
        self._last_pkg: int | None = None
        self._last_ts_unix: float | None = None
        self._first_counter: int | None = None
        self._mono_minus_unix_s = 0.0
        self._next_clock_check_s = 0.0
        self._last_data_mono_s = 0.0
        self._opened_mono_s = 0.0
        self._restarted = False  # the next sample is the first of a new session: size the step from timestamps
        # reconnecting
        self._worker: threading.Thread | None = None
        self._ready = False  # the worker prepared the session again
        self._pending_error: str | None = None
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._backoff_s = cfg.reconnect_interval_ms / 1000.0
        self._next_attempt_s = 0.0
        self.reconnects = 0
        self.gaps_seen = 0
        self.missing_packages = 0
        self.bad_chunks = 0

    # --- description -----------------------------------------------------------------------------------------------
    def _offered_channels(self) -> int:
        return int(self._rows.shape[0]) if self._rows.size else (
            len(self.cfg.channels) if self.cfg.channels is not None else self.cfg.n_channels)

    def _offered_names(self) -> list[str] | None:
        return None if self._names is None else list(self._names)

    def _order_changed(self) -> None:
        self._take = self._rows if self._order is None else self._rows[self._order]

    @property
    def sample_rate_hz(self) -> float:
        return self._rate_hz

    @property
    def t_data_s(self) -> float | None:
        if self._counter is None or self._first_counter is None:
            return None
        return (self._counter - self._first_counter) / self._rate_hz

    def _what(self) -> str:
        return f"BrainFlow board {board_name(self.board_id)} ({self.board_id})"

    # --- opening ---------------------------------------------------------------------------------------------------
    def _describe(self) -> None:
        """Check the board's description against the config and choose the rows; SourceError saying what to do."""
        cfg = self.cfg
        self.board_id = resolve_board_id(cfg.board_id)
        self._params = input_params(cfg.params)
        self.layout_board_id = self.board_id
        if self.board_id in _CARRIERS:
            if cfg.params.master_board is None:
                raise SourceError(f"[source] board_id = {_CARRIERS[self.board_id]} carries another board's data: set "
                                  f"[source.params] master_board to the board that recorded or streams it (e.g. "
                                  f"\"SYNTHETIC_BOARD\", \"CYTON_BOARD\")")
            self.layout_board_id = int(self._params.master_board)
        if self.board_id == BoardIds.PLAYBACK_FILE_BOARD.value:
            f = cfg.params.file
            if f is None or not f.is_file():
                shown = repr(str(f)) if f is not None else "(not set)"
                raise SourceError(f"[source.params] file = {shown}: a PLAYBACK_FILE_BOARD plays "
                                  f"a file written by BrainFlow (DataFilter.write_file or a file:// streamer); set "
                                  f"file to one that exists")
        try:
            descr = BoardShim.get_board_descr(self.layout_board_id)
        except BrainFlowError as err:
            raise SourceError(f"BrainFlow has no description of board {board_name(self.layout_board_id)} "
                              f"({self.layout_board_id}): {err}; check [source] board_id") from err
        kind = cfg.channel_kind
        where = f"{self._what()}" + (f" (layout of {board_name(self.layout_board_id)})"
                                     if self.layout_board_id != self.board_id else "")
        have = sorted(k[:-len("_channels")] for k, v in descr.items() if k.endswith("_channels") and v)
        rows = list(descr.get(f"{kind}_channels") or [])
        if not rows:
            raise SourceError(f"{where} has no {kind} channels (it has: {', '.join(have) or 'none'}); set "
                              f"[source] channel_kind to one of those it has")
        if kind not in UV_KINDS:
            raise SourceError(f"{where}: BrainFlow states no unit for its {kind} channels (µV is documented for "
                              f"EXG channels only: {', '.join(sorted(UV_KINDS & set(have)))} here), so they cannot be "
                              f"read as µV; set [source] channel_kind to an EXG kind")
        rate = float(descr.get("sampling_rate", 0))
        problems = []
        if len(rows) != cfg.n_channels:
            problems.append(f"it has {len(rows)} {kind} channels but [source] n_channels = {cfg.n_channels}")
        if abs(rate - cfg.sample_rate_hz) > 1e-6 * cfg.sample_rate_hz:
            problems.append(f"its sampling rate is {rate:g} Hz but [source] sample_rate_hz = {cfg.sample_rate_hz:g}")
        if "package_num_channel" not in descr or "timestamp_channel" not in descr:
            problems.append("its description has no package-number or timestamp row, which gap detection needs")
        if problems:
            raise SourceError(f"{where} does not match the config: {'; '.join(problems)}. Fix [source] in the config "
                              f"to what the board is, or choose another board")
        names: list[str] | None = None
        if kind == "eeg" and descr.get("eeg_names"):
            listed = [n.strip() for n in str(descr["eeg_names"]).split(",")]
            names = listed if len(listed) == len(rows) and all(listed) else None
        row_arr = np.asarray(rows, dtype=np.intp)
        if cfg.channels is not None:
            if names is None:
                raise SourceError(f"[source] channels picks channels by name, but BrainFlow names no {kind} channels "
                                  f"of {where}; remove channels from the config (all {len(rows)} are delivered)")
            try:
                pick = pick_channels(cfg.channels, names)
            except MontageError as err:
                raise SourceError(f"[source] channels does not fit {where} ({err}); its {kind} channels are "
                                  f"{names}") from err
            row_arr, names = row_arr[pick], [names[i] for i in pick]
        self._rows = row_arr
        self._names = names
        self._order = None
        self._take = row_arr
        self._pkg_row = int(descr["package_num_channel"])
        self._ts_row = int(descr["timestamp_channel"])
        self._rate_hz = rate
        self._period_s = 1.0 / rate
        self._gap_s = gap_threshold_s(rate, cfg.timestamp_jitter_ms / 1000.0)

    def _start_session(self, shim: Any) -> None:
        """Prepare the board's session and start it streaming; BrainFlowError when the board cannot be reached."""
        try:
            shim.prepare_session()
            shim.start_stream(self.cfg.buffer_samples)
        except BrainFlowError:
            self._release(shim)
            raise

    @staticmethod
    def _release(shim: Any) -> None:
        try:
            if shim.is_prepared():
                shim.release_session()
        except BrainFlowError as err:  # releasing a dead session must not hide why it died
            log.debug("brainflow_release_failed", error=str(err))

    def _open(self) -> None:
        self._describe()
        # BrainFlow's own log (stderr) at warnings and above: at info it prints the input params at every prepare.
        BoardShim.set_log_level(LogLevels.LEVEL_WARN.value)
        self._shim = BoardShim(self.board_id, self._params)
        try:
            self._start_session(self._shim)
        except BrainFlowError as err:
            self._shim = None
            hint = ("" if self.board_id == BoardIds.SYNTHETIC_BOARD.value else
                    " Check that the board is on and that [source.params] (serial_port, mac_address, ip_address, "
                    "...) are what its BrainFlow page asks for; a serial port needs read/write permission (group "
                    "dialout).")
            raise SourceError(f"{self._what()} could not be started: {err}.{hint}") from err
        self._map = CounterClockMap(self._rate_hz)
        self._counter = None
        self._last_pkg = None
        self._last_ts_unix = None
        self._first_counter = None
        self._restarted = False
        self._measure_clock()
        self._opened_mono_s = self._last_data_mono_s = time.monotonic()
        self._live = True
        self._ready = False
        self._backoff_s = self.cfg.reconnect_interval_ms / 1000.0
        self._next_attempt_s = 0.0
        self._closing.clear()
        self._stale_reason = "no samples received yet"
        log.info("brainflow_source_open", board=board_name(self.board_id), board_id=self.board_id,
                 layout=board_name(self.layout_board_id), channel_kind=self.cfg.channel_kind,
                 channels=self.channel_names, rate_hz=self._rate_hz, version=BoardShim.get_version())

    def _close(self) -> None:
        self._closing.set()
        worker, shim = self._worker, self._shim
        self._worker, self._shim = None, None
        self._live = self._ready = False

        def finish() -> None:
            if worker is not None:
                worker.join()
            if shim is not None:
                self._release(shim)

        closer = threading.Thread(target=finish, name="brainflow-close", daemon=True)
        closer.start()
        closer.join(timeout=_CLOSE_S)
        if closer.is_alive():
            log.warning("brainflow_release_slow", board=board_name(self.board_id), waited_s=_CLOSE_S,
                        detail="BrainFlow is still releasing the session; it finishes in the background")

    # --- clocks ----------------------------------------------------------------------------------------------------
    def _measure_clock(self) -> None:
        """time.monotonic() minus time.time() (BrainFlow stamps Unix seconds), the tightest of a few reads; measured
        again every second, so that a step of the wall clock moves new stamps and this offset alike."""
        best: tuple[float, float] | None = None
        for _ in range(3):
            a = time.monotonic()
            w = time.time()
            c = time.monotonic()
            if best is None or c - a < best[0]:
                best = (c - a, (a + c) / 2 - w)
        assert best is not None
        self._mono_minus_unix_s = best[1]
        self._next_clock_check_s = time.monotonic() + 1.0

    # --- data ------------------------------------------------------------------------------------------------------
    def pump(self, ring: RingBuffer, timeout_s: float = 0.0) -> int:
        if not self._is_open:
            return 0
        self._adopt_pending()
        if not self._live:
            self._maybe_reconnect(time.monotonic())
            if timeout_s > 0:
                time.sleep(min(timeout_s, 0.05))
            self._update_stale(time.monotonic())
            return 0
        deadline = time.monotonic() + max(0.0, timeout_s)
        moved = 0
        while True:
            try:
                data = self._shim.get_board_data()
            except BrainFlowError as err:
                self._lose(f"BrainFlow failed: {err}")
                return moved
            if data.ndim == 2 and data.shape[1]:
                moved += self._write(ring, data)
            if moved or time.monotonic() >= deadline:
                break
            time.sleep(min(0.002, max(0.0, deadline - time.monotonic())))
        now = time.monotonic()
        if now >= self._next_clock_check_s:
            self._measure_clock()
        if moved:
            self._last_data_mono_s = now
            if self._stale_reason is not None:
                if self._stale_reason.startswith("no samples for"):
                    log.info("brainflow_source_recovered", board=board_name(self.board_id))
                self._stale_reason = None
            self._backoff_s = self.cfg.reconnect_interval_ms / 1000.0
            self._next_attempt_s = 0.0
        else:
            self._update_stale(now)
            if (now - self._last_data_mono_s) * 1e3 > self.cfg.reconnect_after_ms:
                self._lose(f"no samples for {(now - self._last_data_mono_s) * 1e3:.0f} ms")
        return moved

    def _write(self, ring: RingBuffer, data: npt.NDArray[np.float64]) -> int:
        """One chunk from BrainFlow: its ring counters (from the package numbers, or the timestamps), its stamps on
        the monotonic clock, one ring write per contiguous run. A chunk that cannot be read (too few rows, non-numbers
        in the counter or the time) is dropped and counted, never raised."""
        if data.shape[0] <= max(int(self._take.max()), self._pkg_row, self._ts_row):
            self._bad(f"a chunk of {data.shape[0]} rows, the board's layout has more")
            return 0
        pkg_f = data[self._pkg_row]
        ts_unix = data[self._ts_row]
        by_packages = self.cfg.gap_detection == "package_num"
        if not (np.all(np.isfinite(ts_unix)) and (not by_packages or np.all(np.isfinite(pkg_f)))):
            self._bad("non-finite package numbers or timestamps")
            return 0
        pkg = np.rint(pkg_f).astype(np.int64) % self._modulus if by_packages else np.zeros(ts_unix.shape, np.int64)
        counters, keep = self._counters_by_packages(pkg, ts_unix) if by_packages else self._counters_by_time(ts_unix)
        self._restarted = False
        if not keep.all():
            self.bad_chunks += 1
            log.warning("brainflow_duplicate_packages", board=board_name(self.board_id), n=int((~keep).sum()))
            counters, ts_unix, data, pkg = counters[keep], ts_unix[keep], data[:, keep], pkg[keep]
        n = int(counters.shape[0])
        if n == 0:
            return 0
        self._last_pkg = int(pkg[-1])
        self._last_ts_unix = float(ts_unix[-1])
        self._counter = int(counters[-1])
        if self._first_counter is None:
            self._first_counter = int(counters[0])
        x = np.ascontiguousarray(data[self._take].T, dtype=np.float32)  # BrainFlow's µV
        mono = ts_unix + self._mono_minus_unix_s
        now = time.monotonic()
        cuts = np.flatnonzero(np.diff(counters) != 1) + 1
        assert self._map is not None
        for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), n], strict=True):
            run_c = counters[a:b]
            # the least-delayed stamp of the run says where its last sample is on the monotonic clock (never later
            # than now: a board whose clock runs ahead must not make old data look fresh)
            t_last = min(now, float(np.min(mono[a:b] - (run_c - run_c[-1]) * self._period_s)))
            ts = self._map.stamp(int(run_c[0]), b - a, t_last)
            ring.write(x[a:b], ts, first_index=int(run_c[0]))
        if cuts.size:
            self.gaps_seen += int(cuts.size)
        return n

    def _counters_by_packages(self, pkg: npt.NDArray[np.int64], ts_unix: npt.NDArray[np.float64]
                              ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Ring counters from the package numbers (and which samples to keep: a repeated package is dropped)."""
        n = pkg.shape[0]
        m = self._modulus
        keep = np.ones(n, dtype=bool)
        prev_pkg, prev_ts, c = self._last_pkg, self._last_ts_unix, self._counter
        if c is not None and not self._restarted and prev_pkg is not None and \
                (int(pkg[0]) - prev_pkg) % m == 1 and bool(np.all(np.diff(pkg) % m == 1)):
            return c + 1 + np.arange(n, dtype=np.int64), keep  # the common case: every package in turn
        counters = np.empty(n, dtype=np.int64)
        restarted = self._restarted
        for i in range(n):  # rare path: a drop, a wrap of another size, a restart, the first chunk
            p, t = int(pkg[i]), float(ts_unix[i])
            if c is None:
                c = 0
            elif restarted or prev_pkg is None or prev_ts is None:
                c += self._steps_by_time(t - prev_ts if prev_ts is not None else 0.0)
                restarted = False
            else:
                step = self._step(p, prev_pkg, t - prev_ts)
                if step == 0:  # the same package again: drop the copy
                    keep[i] = False
                    counters[i] = c
                    continue
                c += step
            counters[i] = c
            prev_pkg, prev_ts = p, t
        return counters, keep

    def _counters_by_time(self, ts_unix: npt.NDArray[np.float64]
                          ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Ring counters from the timestamps alone: a step above 1.5 periods (+ timestamp_jitter_ms) is a gap of the
        samples it spans; shorter or backward steps count one sample."""
        n = ts_unix.shape[0]
        prev_ts, c = self._last_ts_unix, self._counter
        steps = np.diff(ts_unix, prepend=prev_ts if prev_ts is not None else ts_unix[0])
        inc = np.ones(n, dtype=np.int64)
        gap = steps > self._gap_s
        if gap.any():
            inc[gap] = np.maximum(1, np.rint(steps[gap] * self._rate_hz).astype(np.int64))
        if c is None:
            inc[0] = 0
            c = 0
        counters = c + np.cumsum(inc)
        self.missing_packages += int(np.maximum(inc - 1, 0).sum())
        return counters, np.ones(n, dtype=bool)

    def _steps_by_time(self, dt_s: float) -> int:
        """How many sample periods a step between sessions spans (at least one)."""
        return max(1, round(dt_s * self._rate_hz)) if np.isfinite(dt_s) else 1

    def _step(self, pkg: int, prev_pkg: int, dt_s: float) -> int:
        """How far the ring counter moves from the previous package to this one (1: the next package)."""
        m = self._modulus
        d = (pkg - prev_pkg) % m
        by_time = round(dt_s * self._rate_hz) if np.isfinite(dt_s) else d
        if d == 0 and dt_s <= self._gap_s:
            return 0  # the same package again
        if pkg == 0 and d != 1 and dt_s <= self._gap_s:
            return 1  # a counter that wraps below the modulus, back at 0 on time
        if d == 0:
            d = m
        # a whole wrap (or more) lost shows only in the timestamps: the count congruent to the counter nearest them
        if by_time > d + m // 2:
            d += m * round((by_time - d) / m)
        if d > 1:
            self.missing_packages += d - 1
        return d

    def _bad(self, why: str) -> None:
        self.bad_chunks += 1
        log.warning("brainflow_chunk_refused", board=board_name(self.board_id), reason=why)

    def _update_stale(self, now: float) -> None:
        age_ms = (now - self._last_data_mono_s) * 1e3
        if self._counter is None and self._live:
            if self._stale_reason is None:
                self._stale_reason = "no samples received yet"
            return
        if age_ms > self.cfg.stale_after_ms and (
                self._stale_reason is None or self._stale_reason.startswith(("no samples", "reconnecting"))):
            if self._stale_reason is None:
                log.warning("brainflow_source_stale", board=board_name(self.board_id), age_ms=round(age_ms, 1))
            if self._live:
                self._stale_reason = f"no samples for {age_ms:.0f} ms from {self._what()}"

    # --- reconnecting ----------------------------------------------------------------------------------------------
    def _lose(self, why: str) -> None:
        """Stop reading the session; the worker releases it and prepares it again, with back-off."""
        log.warning("brainflow_board_lost", board=board_name(self.board_id), reason=why)
        self._live = False
        self._restarted = True
        self._stale_reason = f"reconnecting to {self._what()}: {why}"
        self._maybe_reconnect(time.monotonic(), lost=True)

    def _maybe_reconnect(self, now: float, *, lost: bool = False) -> None:
        """Start the worker when none runs and an attempt is due (at once after a loss, unless the back-off says
        otherwise; the back-off doubles per attempt up to reconnect_max_interval_ms and is reset by data)."""
        if self._worker is not None and self._worker.is_alive():
            return
        due = max(now, self._next_attempt_s)
        if not lost and due > now:
            return
        self._next_attempt_s = due + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, self.cfg.reconnect_max_interval_ms / 1000.0)
        self._worker = threading.Thread(target=self._reconnect, args=(self._shim, due), name="brainflow-reconnect",
                                        daemon=True)
        self._worker.start()

    def _reconnect(self, shim: Any, due_mono_s: float) -> None:
        """Worker: release the lost session, wait until due, prepare it again and tell pump()."""
        self._release(shim)
        if self._closing.wait(max(0.0, due_mono_s - time.monotonic())):
            return
        try:
            self._start_session(shim)
        except BrainFlowError as err:
            with self._lock:
                self._pending_error = str(err)
            return
        with self._lock:
            self._ready, self._pending_error = True, None

    def _adopt_pending(self) -> None:
        if self._live:
            return
        with self._lock:
            ready, err = self._ready, self._pending_error
            self._ready, self._pending_error = False, None
        if err is not None:
            log.warning("brainflow_reconnect_failed", board=board_name(self.board_id), error=err,
                        next_attempt_in_s=round(max(0.0, self._next_attempt_s - time.monotonic()), 2))
            self._stale_reason = f"reconnecting to {self._what()}: {err}"
        if not ready:
            return
        self._live = True
        self._last_data_mono_s = time.monotonic()  # the new session gets its own reconnect_after_ms
        self.reconnects += 1
        self._stale_reason = "no samples for a while: reconnected, waiting for the first sample"
        log.info("brainflow_source_reconnected", board=board_name(self.board_id), reconnects=self.reconnects)
