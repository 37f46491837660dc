"""The audit log: one JSON object per line, written and fsync'd before the command it records goes to the board.

Append-only and tamper-evident: every record carries `prev`, the sha256 of the previous record's line, so an edited,
deleted, inserted or reordered record breaks the chain (`neurostimd audit verify`). The active file is rotated by
size into numbered segments that are never deleted; each new segment starts with an `audit_segment` record holding a
bounded summary of the trailing 24 h of stimulation, so that opening the log reads the active segment alone, once,
line by line. A crash can leave a torn last line; the next record starts on a fresh line and names the torn bytes.
`seq` increases by one per record across restarts and segments. docs/audit-log.md has the format and the rules.

A command's line is written before the send, so its `ack` is null there; the outcome follows in a `stim_ack` record
whose `command_seq` is the command's `seq`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from neurostimd.drivers.errors import DriverError
from neurostimd.drivers.types import StimParams
from neurostimd.errors import NeurostimError
from neurostimd.safe_io import UnsafePath, open_regular, read_regular

log = structlog.get_logger("neurostimd.outputs.audit")

EVENTS = ("stim_command", "stim_stop", "stim_ack", "fault", "fault_cleared", "state_change", "config_reload",
          "startup", "shutdown", "board_ready", "model_loaded", "dose_checkpoint", "audit_segment", "audit_resumed",
          "board_mismatch", "board_stopped", "output_failed", "realtime")

GENESIS = "0" * 64  # `prev` of the very first record of a log
SEGMENT_DIGITS = 6  # rotated segments are <name>.000001, <name>.000002, …
BIN_S = 60  # the dose summary counts stimulated seconds per minute
DAY_S = 86_400.0
_BIN_NS = BIN_S * 1_000_000_000
_DAY_NS = 86_400 * 1_000_000_000
# A 24 h window overlaps at most 1441 one-minute bins of one boot; twice that leaves room for a reboot within the
# day. Past it, bins of the same boot are merged (sum, latest times): coarser, never less.
MAX_BINS = 2 * 1441
# Recovery's bound after a record when a session's log did not say what the board's watchdog was (a daemon that
# never finished its handshake commands nothing, so this only covers damaged logs).
UNKNOWN_WATCHDOG_MS = 1000.0
MAX_TORN_NOTED = 16  # torn lines named one by one in the next record; any beyond are only counted
_MAX_PENDING = 16  # commands awaiting their outcome that recovery keeps (the loop has one in flight at a time)
_READ_CHUNK = 1 << 16
KERNEL_BOOT_ID = "kernel"  # AuditLog(boot_id=...) default: read the running kernel's boot id
_BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


class AuditError(NeurostimError):
    """The audit log cannot be written; without it no command may be sent."""


def board_timing(driver: Any) -> dict[str, Any]:
    """What dose recovery needs to know about the board link, for `board_ready` and `dose_checkpoint` records: the
    board's dead-man timeout, and the longest exchange the driver may have with it after a check
    (`Driver.max_exchange_ms`: ack timeout × tries for the neurostim board), during which frames reach the board
    with no new record written."""
    if driver is None:
        return {"board_watchdog_ms": None, "exchange_ms": 0.0}
    try:
        watchdog_ms: float | None = float(driver.info().limits.watchdog_ms)
    except DriverError:
        watchdog_ms = None
    return {"board_watchdog_ms": watchdog_ms, "exchange_ms": float(driver.max_exchange_ms)}


def read_boot_id() -> str | None:
    """The running kernel's boot id (it changes at every boot), or None where the kernel does not say."""
    try:
        raw = read_regular(_BOOT_ID_PATH, what="boot id")
    except (OSError, UnsafePath):
        return None
    text = (raw or b"").decode("ascii", "replace").strip()
    return text or None


def line_hash(line: bytes) -> str:
    """The chain's hash of one line: sha256 hex of its bytes, without the newline."""
    return hashlib.sha256(line).hexdigest()


def _jsonable(v: Any) -> Any:
    # Strict JSON has no NaN/Infinity; they are written as strings so that every line stays parseable by any reader.
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple | set | frozenset):
        return [_jsonable(x) for x in v]
    if isinstance(v, StimParams):
        return v.as_dict()
    if isinstance(v, Path):
        return str(v)
    if hasattr(v, "tolist") and callable(v.tolist):  # numpy scalars and arrays
        return _jsonable(v.tolist())
    return v


def _record(line: bytes) -> dict[str, Any] | None:
    """The record on one line, or None when the line is not a whole JSON object (torn, corrupt, blank)."""
    if not line.strip():
        return None
    try:
        rec = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None
    return rec if isinstance(rec, dict) else None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


# --- reading ----------------------------------------------------------------------------------------------------------
@dataclass
class AuditContents:
    """What `read_audit` found: the whole records, and the 1-based numbers of lines that were not (torn, corrupt)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)

    @property
    def torn_tail(self) -> bool:
        """The last line is not a whole record (what a crash mid-write leaves)."""
        return bool(self.bad_lines) and self.bad_lines[-1] == self.n_lines

    n_lines: int = 0


def read_audit(path: str | Path) -> AuditContents:
    """Every whole record of one file of the log (the active one unless a segment is named), in order; torn or corrupt
    lines are skipped and reported in `bad_lines`. Reads the file whole: for tools and tests, not for start-up.
    FileNotFoundError without a log; UnsafePath if the path is not a regular file."""
    raw = read_regular(path, what="audit log")
    if raw is None:
        raise FileNotFoundError(errno.ENOENT, "no audit log", str(path))
    return parse_audit(raw)


def parse_audit(raw: bytes) -> AuditContents:
    """The records of an audit log's bytes (see read_audit)."""
    out = AuditContents()
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out.n_lines = len(lines)
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        rec = _record(line)
        if rec is None:
            out.bad_lines.append(i)
        else:
            out.records.append(rec)
    return out


def _iter_lines(fd: int) -> Iterator[tuple[bytes, bool]]:
    """(line without its newline, whether a newline ended it), reading `fd` 64 KiB at a time: memory stays at the
    longest line, whatever the file's size."""
    buf = b""
    while True:
        chunk = os.read(fd, _READ_CHUNK)
        if not chunk:
            break
        buf += chunk
        start = 0
        while (i := buf.find(b"\n", start)) >= 0:
            yield buf[start:i], True
            start = i + 1
        buf = buf[start:]
    if buf:
        yield buf, False


@contextlib.contextmanager
def _lines_of(path: Path) -> Iterator[Iterator[tuple[bytes, bool]]]:
    fd = open_regular(path, os.O_RDONLY, what="audit log")
    try:
        yield _iter_lines(fd)
    finally:
        os.close(fd)


def segment_path(active: str | Path, number: int) -> Path:
    """The name a rotated segment of `active` gets: <name>.<number, 6 digits>."""
    p = Path(active)
    return p.with_name(f"{p.name}.{number:0{SEGMENT_DIGITS}d}")


def segments(active: str | Path) -> list[tuple[int, Path]]:
    """The rotated segments of the log whose active file is `active`, oldest first."""
    p = Path(active)
    pattern = re.compile(re.escape(p.name) + r"\.(\d{" + str(SEGMENT_DIGITS) + r",})")
    try:
        names = os.listdir(p.parent)
    except FileNotFoundError:
        return []
    return sorted((int(m.group(1)), p.parent / n) for n in names if (m := pattern.fullmatch(n)))


def log_files(active: str | Path) -> list[Path]:
    """Every file of the log in order: the rotated segments, then the active file (when it exists)."""
    p = Path(active)
    files = [f for _, f in segments(p)]
    if os.path.lexists(p):
        files.append(p)
    return files


def iter_records(active: str | Path) -> Iterator[dict[str, Any]]:
    """Every whole record of the log, across its segments, streaming (offline tools; start-up reads only the active
    file)."""
    for f in log_files(active):
        with _lines_of(f) as lines:
            for line, _ in lines:
                rec = _record(line)
                if rec is not None:
                    yield rec


def remove_log(active: str | Path) -> None:
    """Delete a log that is to be written afresh (replay, evaluation): the active file and its segments. Never used on
    the daemon's log."""
    for f in log_files(active):
        f.unlink(missing_ok=True)


# --- the hash chain ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChainBreak:
    """Where a chain stops being one, and what that means."""

    file: str
    line: int
    seq: int | None
    problem: str  # prev_mismatch, seq_gap, missing_prev, not_a_record, torn_mismatch, segment_link, missing_segment
    detail: str

    def __str__(self) -> str:
        seq = "" if self.seq is None else f" (seq {self.seq})"
        return f"{self.file} line {self.line}{seq}: {self.detail}"


@dataclass(frozen=True)
class _BadLine:
    file: str
    line: int
    sha256: str
    nbytes: int


class _Chain:
    """Follows the chain line by line: each record's `prev` against the hash of the record before it, `seq` one
    more than the one before, and every line that is not a record acknowledged (as torn) by the next record.

    Records before the first one with `prev` were written before the chain existed: they are counted, not judged."""

    def __init__(self, *, trust_first: bool = False) -> None:
        self.head: str | None = None  # hash of the last whole record
        self.last_seq: int | None = None
        self.chained = False
        self.records = 0
        self.legacy_records = 0
        self.bad: list[_BadLine] = []  # lines since the last record that were not records
        self.torn: list[tuple[_BadLine, int | None]] = []  # acknowledged torn lines, with the acknowledging seq
        self.legacy_bad: list[_BadLine] = []
        self.breaks: list[ChainBreak] = []
        # Reading one segment alone: its first record links to a file not read; take its prev and seq as given.
        self._trust_first = trust_first

    def _break(self, file: str, line: int, seq: int | None, problem: str, detail: str) -> None:
        self.breaks.append(ChainBreak(file, line, seq, problem, detail))

    def line(self, file: str, lineno: int, raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
        """Take one line; return its record (None if it is not one) and the record's hash."""
        rec = _record(raw)
        if rec is None:
            self.bad.append(_BadLine(file, lineno, line_hash(raw), len(raw)))
            return None, None
        h = line_hash(raw)
        seq = _int(rec.get("seq"))
        first, self._trust_first = self._trust_first, False
        if "prev" in rec or self.chained:
            self._judge(file, lineno, rec, seq, first)
            self.chained = True
        else:
            self.legacy_records += 1
            self.legacy_bad.extend(self.bad)
        self.bad = []
        self.head = h
        self.last_seq = seq if seq is not None else self.last_seq
        self.records += 1
        return rec, h

    def _judge(self, file: str, lineno: int, rec: dict[str, Any], seq: int | None, first: bool) -> None:
        if "prev" not in rec:
            self._break(file, lineno, seq, "missing_prev", "a record without `prev` inside the chain: it was "
                        "inserted, or written by something other than neurostimd")
        elif not first and rec["prev"] != (self.head or GENESIS):
            what = "the record before it" if self.head else "the start of the log (64 zeros)"
            self._break(file, lineno, seq, "prev_mismatch", f"`prev` does not match the sha256 of {what}: a record "
                        "before this one was edited, deleted or moved, or this one was inserted")
        if not first and (seq is None or seq != (-1 if self.last_seq is None else self.last_seq) + 1):
            self._break(file, lineno, seq, "seq_gap", f"seq {seq} follows seq {self.last_seq}: records are missing, "
                        "inserted or out of order")
        noted = rec.get("torn_lines")
        noted = noted if isinstance(noted, list) else []
        hashes = [n.get("sha256") if isinstance(n, dict) else None for n in noted]
        more = _int(rec.get("torn_lines_more")) or 0
        if self.bad:
            expected = [b.sha256 for b in self.bad[:MAX_TORN_NOTED]]
            if hashes != expected or more != len(self.bad) - len(expected):
                b = self.bad[0]
                self._break(b.file, b.line, None, "not_a_record", "this line is not a whole record and the next "
                            "record does not name it as torn by a crash: it was edited or damaged")
            else:
                self.torn.extend((b, seq) for b in self.bad)
        elif hashes:
            self._break(file, lineno, seq, "torn_mismatch", "this record names torn lines that are not before it: "
                        "lines were removed")


# --- the dose ---------------------------------------------------------------------------------------------------------
_T = tuple[int | None, float]  # a record's time: (t_mono_ns or None, t_wall as Unix seconds)


def _wall(rec: dict[str, Any]) -> float | None:
    try:
        return datetime.fromisoformat(str(rec["t_wall"])).timestamp()
    except (KeyError, ValueError):
        return None


def _dur_s(a: _T, b: _T) -> float:
    # Within a boot the monotonic clock is the truth; the wall clock only where a time has no monotonic part.
    if a[0] is not None and b[0] is not None:
        return (b[0] - a[0]) / 1e9
    return b[1] - a[1]


def _plus(t: _T, ms: float) -> _T:
    return (None if t[0] is None else t[0] + math.ceil(ms * 1e6), t[1] + ms / 1000.0)


def _ceil_ms(x: float) -> int:
    return math.ceil(x * 1000.0 - 1e-9)


@dataclass
class _Bin:
    boot: str | None  # the boot the stimulation happened in (None: unknown; binned on the wall clock)
    key: int  # minute number on the monotonic clock of that boot (on the wall clock when the boot is unknown)
    mono_end_ns: int | None  # the latest stimulation counted in it, both clocks: the window test uses one of them
    wall_end_s: float
    stim_s: float


@dataclass(frozen=True)
class DoseRecovery:
    """The stimulation of the trailing 24 h as a log accounts it, at a given moment.

    `open_s`: of `daily_stim_s`, what a stimulation the log leaves running adds (a crash: counted up to the last
    record plus the checkpoint interval plus the board's watchdog). `clock_back_s`: how far the log's newest record
    is ahead of the wall clock now (0 unless the clock went back)."""

    daily_stim_s: float
    open_s: float
    clock_back_s: float
    last_record_wall_s: float | None


class DoseTracker:
    """Stimulation time from audit records fed one at a time, kept as ≤ MAX_BINS minute bins of the trailing day.

    On from a command with parameters (from its record, as soon as its ACK or its timeout is recorded: the board may
    run it from the send) until a confirmed stop or a `shutdown` (plus the board's watchdog if the stop was not
    confirmed). A session that ends without either (a crash) counts on through its last record + `checkpoint_ms` +
    `exchange_ms` + the board's watchdog, capped at the next `startup` of the same boot; a restart within that bound
    stays on until the new session's first confirmed stop (its handshake may have kept the board's watchdog alive).
    Durations come from the monotonic clock; the window test uses it within the boot of `recovery()`'s caller and the
    wall clock across boots. Records written before this version carry no bounds: for them the bound is 0, as the
    old rule was."""

    def __init__(self, on_piece: Callable[[str | None, _T, _T], None] | None = None) -> None:
        self._bins: deque[_Bin] = deque()
        self._by_key: dict[tuple[str | None, int], _Bin] = {}
        self._on_piece = on_piece
        self.boot: str | None = None
        self.new_format = False
        self.checkpoint_ms = 0.0
        self.exchange_ms = 0.0
        self.watchdog_ms: float | None = None
        self.on = False
        self._pending: dict[int, tuple[bool, _T]] = {}
        self.last: _T | None = None

    # --- feeding ---------------------------------------------------------------------------------------------------
    def feed(self, rec: dict[str, Any]) -> None:
        wall = _wall(rec)
        if wall is None:
            return  # a record without a time cannot be placed (only a damaged one)
        t: _T = (_int(rec.get("t_mono_ns")), wall)
        ev = rec.get("event")
        if ev == "startup":
            self._restart(t, rec)
            return
        if ev == "audit_resumed" and not self.on:
            newest = next(reversed(self._pending.values()), None)
            if newest is not None and newest[0]:
                # a command with parameters whose outcome the log could not record (it went down at the ACK): the
                # board may have run it from then on
                self.on = True
        if ev == "audit_resumed" and self.on:
            # nothing but STOP went out while the log was down; stimulation ended at the first one the board ACKed
            stopped = rec.get("stopped_at")
            if isinstance(stopped, dict) and (sw := _wall(stopped)) is not None:
                self._advance((_int(stopped.get("t_mono_ns")), sw))
                self.on = False
        self._advance(t)
        if ev in ("stim_command", "stim_stop") and (seq := _int(rec.get("seq"))) is not None \
                and rec.get("shadow") is not True:  # a shadow command never reaches the board
            self._pending[seq] = (rec.get("applied") is not None, t)
            while len(self._pending) > _MAX_PENDING:
                del self._pending[next(iter(self._pending))]
        elif ev == "stim_ack":
            cs = _int(rec.get("command_seq"))
            sent = self._pending.pop(cs, None) if cs is not None else None
            if sent is not None:
                on_cmd, t_cmd = sent
                confirmed = rec.get("ack") is True
                # An unanswered command may be running on the board; an unanswered stop may not have stopped it.
                if on_cmd and (confirmed or rec.get("reply") == "timeout") and not self.on:
                    self._piece(t_cmd, t)
                    self.on = True
                elif not on_cmd and confirmed:
                    self.on = False
        elif ev == "shutdown":
            start = self._open_start()
            if start is not None and self.last is not None:
                # the host closed its link before this record: the board stops within its watchdog at the latest
                self._piece(start, _plus(self.last, self._watchdog_bound_ms()))
            self.on = False
            self._pending.clear()
        elif ev == "audit_resumed":
            self._pending.clear()
        elif ev == "board_stopped":
            self.on = False  # the board's own STATUS says it runs nothing (its watchdog, a fault, its limits)
        elif ev == "board_mismatch" and rec.get("running") is not None:
            self.on = True  # the board runs something the host never sent: it counts until a confirmed stop
        elif ev in ("board_ready", "dose_checkpoint"):
            self._take_bounds(rec)

    def _advance(self, t: _T) -> None:
        if self.on and self.last is not None:
            self._piece(self.last, t)
        self.last = t

    def _open_start(self) -> _T | None:
        """Where a stimulation the records leave open counts from: the last record while on, or the newest command
        with parameters whose outcome is not recorded (it may have reached the board)."""
        if self.on:
            return self.last
        newest = next(reversed(self._pending.values()), None)
        return newest[1] if newest is not None and newest[0] else None

    def _watchdog_bound_ms(self) -> float:
        if self.watchdog_ms is not None:
            return self.watchdog_ms
        return UNKNOWN_WATCHDOG_MS if self.new_format else 0.0

    def bound_ms(self) -> float:
        """How long after a session's last record the board may have stimulated if the host died just after it."""
        if not self.new_format and self.watchdog_ms is None:
            return 0.0  # a log from before checkpoints: the old rule (on up to the last record)
        return self.checkpoint_ms + self.exchange_ms + self._watchdog_bound_ms()

    def _restart(self, t: _T, rec: dict[str, Any]) -> None:
        start = self._open_start()
        boot = rec.get("boot_id") if isinstance(rec.get("boot_id"), str) else None
        if start is not None and self.last is not None:
            end = _plus(self.last, self.bound_ms())
            if boot is not None and boot == self.boot and t[0] is not None and end[0] is not None and t[0] < end[0]:
                # Back within the bound: the board may still be running when the new host's HELLO revives its
                # watchdog, so it stays on until the new session's first confirmed stop.
                self._piece(start, t)
                self.on = True
            else:
                self._piece(start, end)
                self.on = False
        self._pending.clear()
        self.boot = boot
        self.new_format = "checkpoint_ms" in rec
        self.checkpoint_ms = _num(rec.get("checkpoint_ms")) or 0.0
        self.exchange_ms = 0.0
        self.watchdog_ms = None
        self._take_bounds(rec)
        self.last = t

    def _take_bounds(self, rec: dict[str, Any]) -> None:
        if (v := _num(rec.get("checkpoint_ms"))) is not None:
            self.checkpoint_ms = v
        if (v := _num(rec.get("exchange_ms"))) is not None:
            self.exchange_ms = v
        if (v := _num(rec.get("board_watchdog_ms"))) is not None:
            self.watchdog_ms = v

    def _piece(self, a: _T, b: _T) -> None:
        dur = _dur_s(a, b)
        if dur <= 0:
            return
        if self._on_piece is not None:
            self._on_piece(self.boot, a, b)
        boot = self.boot if b[0] is not None else None
        # The whole piece goes into the bin of its end: a bin stays in the window as long as its latest second does.
        key = (boot, b[0] // _BIN_NS) if boot is not None and b[0] is not None else (None, math.floor(b[1] / BIN_S))
        bin_ = self._by_key.get(key)
        if bin_ is None:
            self._prune(b)
            bin_ = _Bin(boot, key[1], b[0], b[1], 0.0)
            self._bins.append(bin_)
            self._by_key[key] = bin_
            if len(self._bins) > MAX_BINS:
                self._merge_oldest()
        bin_.stim_s += dur
        if b[0] is not None and (bin_.mono_end_ns is None or b[0] > bin_.mono_end_ns):
            bin_.mono_end_ns = b[0]
        bin_.wall_end_s = max(bin_.wall_end_s, b[1])

    # --- the window --------------------------------------------------------------------------------------------------
    @staticmethod
    def _in_window(b: _Bin, now: _T, boot: str | None) -> bool:
        if boot is not None and b.boot == boot and now[0] is not None and b.mono_end_ns is not None:
            return b.mono_end_ns >= now[0] - _DAY_NS
        # across boots only the wall clock compares; a bin ahead of it (the clock went back) stays in, whole
        return b.wall_end_s >= now[1] - DAY_S

    def _prune(self, now: _T) -> None:
        if any(not self._in_window(b, now, self.boot) for b in self._bins):
            keep = [b for b in self._bins if self._in_window(b, now, self.boot)]
            self._bins = deque(keep)
            self._by_key = {(b.boot, b.key): b for b in keep}

    def _merge_oldest(self) -> None:
        items = list(self._bins)
        for i in range(len(items) - 1):
            a, b = items[i], items[i + 1]
            if a.boot == b.boot:
                b.stim_s += a.stim_s
                b.wall_end_s = max(a.wall_end_s, b.wall_end_s)
                if a.mono_end_ns is not None and (b.mono_end_ns is None or a.mono_end_ns > b.mono_end_ns):
                    b.mono_end_ns = a.mono_end_ns
                del items[i]
                del self._by_key[(a.boot, a.key)]
                self._bins = deque(items)
                return

    def recovery(self, now: _T, boot: str | None) -> DoseRecovery:
        """The trailing-24 h stimulation at `now` as seen from `boot`: whole bins that reach into the window, plus a
        stimulation left open, counted to its bound (no further than `now` within the same boot)."""
        total = sum(b.stim_s for b in self._bins if self._in_window(b, now, boot))
        open_s = 0.0
        start = self._open_start()
        if start is not None and self.last is not None:
            end = _plus(self.last, self.bound_ms())
            if boot is not None and boot == self.boot and end[0] is not None and now[0] is not None:
                end = (min(end[0], now[0]), end[1])
            # counted like a bin: whole, as long as its end is in the window
            if self._in_window(_Bin(self.boot, 0, end[0], end[1], 0.0), now, boot):
                open_s = max(0.0, _dur_s(start, end))
        back = 0.0 if self.last is None else max(0.0, self.last[1] - now[1])
        return DoseRecovery(daily_stim_s=total + open_s, open_s=open_s, clock_back_s=back,
                            last_record_wall_s=None if self.last is None else self.last[1])

    # --- the summary in an audit_segment record ----------------------------------------------------------------------
    def summary(self, now: _T) -> dict[str, Any]:
        """`dose` and `dose_state` of an `audit_segment` record: the bins still in the window at `now` (times and
        seconds rounded up to the millisecond), and the open session's state."""
        self._prune(now)
        boots: list[str | None] = []
        for b in self._bins:
            if b.boot not in boots:
                boots.append(b.boot)
        bins = [[boots.index(b.boot), b.key, None if b.mono_end_ns is None else -(-b.mono_end_ns // 1_000_000),
                 _ceil_ms(b.wall_end_s), _ceil_ms(b.stim_s)] for b in self._bins]
        state = {
            "boot_id": self.boot, "new_format": self.new_format, "checkpoint_ms": self.checkpoint_ms,
            "exchange_ms": self.exchange_ms, "board_watchdog_ms": self.watchdog_ms, "on": self.on,
            "pending": [[seq, on, t[0], t[1]] for seq, (on, t) in self._pending.items()],
            "last": None if self.last is None else [self.last[0], self.last[1]],
        }
        return {"dose": {"bin_s": BIN_S, "boots": boots, "bins": bins}, "dose_state": state}

    @classmethod
    def from_summary(cls, rec: dict[str, Any]) -> DoseTracker:
        """A tracker that continues from an `audit_segment` record's summary. ValueError if it is malformed (a
        field missing, of the wrong type, or a number that is not finite: json reads NaN and 1e400)."""

        def num(v: Any) -> float:
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"{v!r} is not a finite number")
            return float(v)

        def whole(v: Any) -> int:
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{v!r} is not an integer")
            return v

        try:
            dose, st = rec["dose"], rec["dose_state"]
            if dose["bin_s"] != BIN_S:
                raise ValueError(f"bins of {dose['bin_s']} s, expected {BIN_S}")
            boots = list(dose["boots"])
            tr = cls()
            for bi, key, mono_ms, wall_ms, stim_ms in dose["bins"]:
                stim_s = num(stim_ms) / 1000.0
                if stim_s < 0:
                    raise ValueError(f"negative stimulation time {stim_ms!r}")
                b = _Bin(boots[whole(bi)], whole(key), None if mono_ms is None else whole(mono_ms) * 1_000_000,
                         num(wall_ms) / 1000.0, stim_s)
                tr._bins.append(b)
                tr._by_key[(b.boot, b.key)] = b
            tr.boot = st["boot_id"]
            tr.new_format = bool(st["new_format"])
            tr.checkpoint_ms = num(st["checkpoint_ms"])
            tr.exchange_ms = num(st["exchange_ms"])
            tr.watchdog_ms = None if st["board_watchdog_ms"] is None else num(st["board_watchdog_ms"])
            tr.on = bool(st["on"])
            for seq, on, mono, wall in st["pending"]:
                tr._pending[whole(seq)] = (bool(on), (None if mono is None else whole(mono), num(wall)))
            last = st["last"]
            tr.last = None if last is None else (None if last[0] is None else whole(last[0]), num(last[1]))
        except (KeyError, TypeError, IndexError, OverflowError) as err:
            raise ValueError(f"malformed dose summary: {err!r}") from err
        return tr


def stimulation_intervals(records: Iterable[dict[str, Any]]) -> list[tuple[float, float]]:
    """Wall-clock (start, end) intervals during which the board may have been stimulating, from audit records, by
    the rules of DoseTracker (without its binning)."""
    out: list[list[float]] = []

    def piece(_boot: str | None, a: _T, b: _T) -> None:
        end = a[1] + _dur_s(a, b) if a[0] is not None and b[0] is not None else b[1]
        if out and out[-1][1] == a[1]:
            out[-1][1] = end
        else:
            out.append([a[1], end])

    tr = DoseTracker(on_piece=piece)
    for rec in records:
        tr.feed(rec)
    start = tr._open_start()
    if start is not None and tr.last is not None:
        tr._piece(start, _plus(tr.last, tr.bound_ms()))
    return [(a, b) for a, b in out]


def stimulated_s_since(path: str | Path, since_wall_s: float) -> float:
    """Seconds of stimulation recorded in the whole log (every segment, read in full) after `since_wall_s` (Unix
    time); 0 without a log. For tools and tests: the daemon takes the dose from AuditLog.recovered_daily_stim_s,
    which reads only the active segment."""
    total = 0.0
    for a, b in stimulation_intervals(iter_records(path)):
        total += max(0.0, b - max(a, since_wall_s))
    return total


# --- opening: one streaming pass over one file ----------------------------------------------------------------------
@dataclass
class _Scan:
    chain: _Chain
    tracker: DoseTracker
    needs_newline: bool = False
    header: dict[str, Any] | None = None
    header_bytes: int = 0
    size: int = 0


def _scan(path: Path) -> _Scan | None:
    """Read one file of the log once, line by line: the chain's head, the last seq, a torn tail, and the dose (from
    the file's `audit_segment` summary onwards). None when nothing is at the path."""
    try:
        fd = open_regular(path, os.O_RDONLY, what="audit log")
    except FileNotFoundError:
        return None
    chain = _Chain(trust_first=True)
    tracker: DoseTracker | None = None
    scan = _Scan(chain, DoseTracker())
    try:
        for lineno, (raw, terminated) in enumerate(_iter_lines(fd), start=1):
            scan.size += len(raw) + terminated
            scan.needs_newline = not terminated
            rec, _ = chain.line(path.name, lineno, raw)
            if rec is None:
                continue
            if tracker is None:
                if rec.get("event") == "audit_segment":
                    try:
                        tracker = DoseTracker.from_summary(rec)
                    except ValueError as err:
                        raise AuditError(f"the dose summary in {path} line {lineno} cannot be read ({err}); the "
                                         f"day's earlier dose is unknown, so the daemon will not start. Check the "
                                         f"log with `neurostimd audit verify {path}`") from err
                    scan.header, scan.header_bytes = rec, scan.size
                else:
                    tracker = scan.tracker
            tracker.feed(rec)
    finally:
        os.close(fd)
    if tracker is not None:
        scan.tracker = tracker
    return scan


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AuditLog:
    """Append-only, hash-chained JSON-lines audit log, rotated by size; `write` returns only after the line is on
    disk (fsync). Opening it reads the active file once, streaming; `recovered_daily_stim_s` is the day's dose."""

    def __init__(self, path: str | Path, *, durable: bool = True, rotate_mb: float = 4.0,
                 boot_id: str | None = KERNEL_BOOT_ID, wall_s: Callable[[], float] = time.time,
                 mono_ns: Callable[[], int] = time.monotonic_ns) -> None:
        """`durable=False` skips the fsync: only for replay and evaluation on a virtual clock, where the "board" is
        in memory and nothing reaches tissue; the daemon always writes durably. `rotate_mb`: the active file is
        rotated before it would pass this size (MB = 10^6 bytes). `boot_id`: the boot this process runs in (default:
        the kernel's; None for unknown). `wall_s` / `mono_ns`: the clocks the records carry (tests drive them)."""
        if not rotate_mb > 0:
            raise ValueError(f"rotate_mb must be > 0, got {rotate_mb}")
        self.path = Path(path)
        self.durable = durable
        self.rotate_bytes = int(rotate_mb * 1_000_000)
        self.boot_id = read_boot_id() if boot_id == KERNEL_BOOT_ID else boot_id
        self._wall_s = wall_s
        self._mono_ns = mono_ns
        self._lock = threading.Lock()
        self._fd = -1
        self._closed = False
        self._seq = 0
        self._head = GENESIS
        self._torn: list[dict[str, Any]] = []  # lines not whole since the last record: the next one names them
        self._torn_more = 0
        self._needs_newline = False
        self._size = 0
        self._header_size = 0  # bytes of this file's audit_segment record (a file holding only it never rotates)
        self._segment: int | None = None  # the number this file gets when rotated (None: not known yet)
        self._previous_file: str | None = None
        self._header_due = False
        self._last_durable_ns: int | None = None
        self._tracker = DoseTracker()
        self.findings: list[ChainBreak] = []  # chain problems seen while opening (the daemon logs them)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()
        except UnsafePath as err:
            raise AuditError(str(err)) from err
        except OSError as err:
            raise AuditError(f"cannot open audit log {self.path}: {err.strerror}; check that the folder exists and "
                             f"is writable by the daemon's user") from err
        except (ValueError, ArithmeticError) as err:  # damaged content the checks above did not name
            raise AuditError(f"audit log {self.path} cannot be read ({err}); the day's earlier dose is unknown, so "
                             f"the daemon will not start — check it with `neurostimd audit verify {self.path}`"
                             ) from err

    # --- opening ---------------------------------------------------------------------------------------------------
    def _open(self) -> None:
        active = _scan(self.path)
        scan, from_file = active, self.path
        if active is None or active.chain.records == 0:
            # No record in the active file (absent, empty, or only a torn line): a crash between a rotation's rename
            # and the new file's first record leaves this, so the log continues from its newest segment if any.
            segs = segments(self.path)
            if segs:
                number, from_file = segs[-1]
                scan = _scan(from_file)
                if scan is None:
                    raise FileNotFoundError(errno.ENOENT, "segment vanished while opening", str(from_file))
                self._segment, self._previous_file, self._header_due = number + 1, from_file.name, True
        if scan is not None:
            chain = scan.chain
            self._seq = 0 if chain.last_seq is None else chain.last_seq + 1
            self._head = chain.head or GENESIS
            self._tracker = scan.tracker
            self.findings = list(chain.breaks)
            self._note_torn([{"sha256": b.sha256, "bytes": b.nbytes} for b in chain.bad])
            if scan is not active and active is not None:  # torn lines before the new segment's first record
                self._note_torn([{"sha256": b.sha256, "bytes": b.nbytes} for b in active.chain.bad])
            if active is not None:
                self._needs_newline = active.needs_newline
            if not self._header_due:
                self._header_size = scan.header_bytes
                if scan.header is not None:
                    self._segment = _int(scan.header.get("segment"))
        for b in self.findings:
            log.error("audit_chain_broken", file=str(from_file), line=b.line, seq=b.seq, problem=b.problem,
                      detail=b.detail, hint=f"neurostimd audit verify {self.path}")
        self._open_active(fresh=False)
        if self._header_due:
            self._append_header()

    def _open_active(self, *, fresh: bool) -> None:
        self._fd = open_regular(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640, what="audit log")
        self._size = os.fstat(self._fd).st_size
        if fresh and self._size:
            os.close(self._fd)
            self._fd = -1
            raise AuditError(f"audit log {self.path} appeared with content while a new segment was being started; "
                             f"does another process write this log? Stop it, then start again")

    def _note_torn(self, torn: list[dict[str, Any]]) -> None:
        for t in torn:
            if len(self._torn) < MAX_TORN_NOTED:
                self._torn.append(t)
            else:
                self._torn_more += 1

    # --- writing ---------------------------------------------------------------------------------------------------
    @property
    def next_seq(self) -> int:
        return self._seq

    @property
    def head(self) -> tuple[str, int, str]:
        """(file, seq, sha256) of the last record written or found: the chain head the journal keeps a copy of."""
        return self.path.name, self._seq - 1, self._head

    def since_durable_ns(self) -> int | None:
        """Nanoseconds since this log last wrote a durable record (None: none yet)."""
        return None if self._last_durable_ns is None else self._mono_ns() - self._last_durable_ns

    def clock_now(self) -> tuple[str, int]:
        """(t_wall, t_mono_ns) now on this log's clocks, as a record written now would carry them."""
        return datetime.fromtimestamp(self._wall_s(), UTC).isoformat(timespec="microseconds"), self._mono_ns()

    def _build(self, event: str, fields: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        wall, mono = self.clock_now()
        rec: dict[str, Any] = {
            "event": event,
            "seq": self._seq,
            "t_wall": wall,
            "t_mono_ns": mono,
            "prev": self._head,
        }
        if self._torn:
            rec["torn_lines"] = list(self._torn)
            if self._torn_more:
                rec["torn_lines_more"] = self._torn_more
        for k, v in fields.items():
            if k not in rec:
                rec[k] = _jsonable(v)
        line = json.dumps(rec, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return rec, line.encode("utf-8")

    def _commit(self, rec: dict[str, Any], data: bytes) -> None:
        self._head = line_hash(data)
        self._seq += 1
        self._torn, self._torn_more = [], 0
        self._tracker.feed(rec)

    def _append(self, rec: dict[str, Any], data: bytes, durable: bool) -> None:
        """Append one line; on failure, account for what reached the file (a whole record, or a torn fragment the
        next record names) and raise AuditError."""
        prefix = b"\n" if self._needs_newline else b""
        buf = memoryview(prefix + data + b"\n")
        done = 0
        try:
            while done < len(buf):
                done += os.write(self._fd, buf[done:])
        except OSError as err:
            self._size += done
            got = done - len(prefix) if done >= len(prefix) else 0
            if done >= len(prefix):
                self._needs_newline = False
            if got >= len(data):
                self._commit(rec, data)  # the record is in the file; only its newline is missing
                self._needs_newline = True
            elif got > 0:
                self._needs_newline = True
                self._note_torn([{"sha256": line_hash(data[:got]), "bytes": got}])
            raise AuditError(f"cannot write audit log {self.path}: {err.strerror}; stimulation must stop until the "
                             f"log is writable") from err
        self._size += len(buf)
        self._needs_newline = False
        self._commit(rec, data)
        if durable:
            if self.durable:
                try:
                    os.fsync(self._fd)
                except OSError as err:
                    raise AuditError(f"audit log {self.path}: record seq {rec['seq']} was written but is not on "
                                     f"disk (fsync: {err.strerror}); stimulation must stop until the log is "
                                     f"writable") from err
            self._last_durable_ns = rec["t_mono_ns"]

    def _append_header(self) -> None:
        """The first record of a new segment: its number, its predecessor, and the dose summary."""
        wall, mono = self._wall_s(), self._mono_ns()
        fields = {"segment": self._segment, "previous_file": self._previous_file, "boot_id": self.boot_id,
                  **self._tracker.summary((mono, wall))}
        rec, data = self._build("audit_segment", fields)
        # Continue from the summary exactly as a reader of this file will (its times are rounded up to the ms).
        exact = self._tracker
        self._tracker = DoseTracker.from_summary(rec)
        try:
            self._append(rec, data, durable=True)
        finally:
            if self._seq > rec["seq"]:  # in the file (even if its fsync failed): the segment has its first record
                self._header_size = len(data) + 1
                self._header_due = False
            else:
                self._tracker = exact
        if self.durable:
            _fsync_dir(self.path.parent)

    def _rotate(self) -> None:
        number = self._segment
        if number is None or os.path.lexists(segment_path(self.path, number)):
            # Never overwrite a segment: take the number after the highest one present.
            if number is not None:
                log.warning("audit_segment_exists", file=str(segment_path(self.path, number)),
                            detail="taking the next free number")
            number = max((n for n, _ in segments(self.path)), default=0) + 1
        target = segment_path(self.path, number)
        if self.durable:
            os.fsync(self._fd)
        os.rename(self.path, target)
        os.close(self._fd)
        self._fd = -1
        self._segment, self._previous_file, self._header_due = number + 1, target.name, True
        log.info("audit_chain_head", file=target.name, seq=self._seq - 1, hash=self._head, reason="rotation")
        if self.durable:
            _fsync_dir(self.path.parent)
        self._open_active(fresh=True)
        self._append_header()

    def write(self, event: str, *, durable: bool = True, **fields: Any) -> dict[str, Any]:
        """Append one record (adds `seq`, `t_wall`, `t_mono_ns`, `prev`), fsync it, and return it. `durable=False`
        leaves the fsync to the next durable record (for a record nothing waits on, such as an ACK outcome)."""
        with self._lock:
            if self._closed:
                raise AuditError(f"audit log {self.path} is closed; no command may be sent without it")
            try:
                if self._fd < 0:  # a rotation renamed the file and could not start the next one: try again
                    self._open_active(fresh=True)
                if self._header_due:
                    self._append_header()
                rec, data = self._build(event, fields)
                if self._size > self._header_size and self._size + len(data) + 1 > self.rotate_bytes:
                    self._rotate()
                    rec, data = self._build(event, fields)
                self._append(rec, data, durable)
            except UnsafePath as err:
                raise AuditError(str(err)) from err
            except AuditError:
                raise
            except OSError as err:
                raise AuditError(f"cannot write audit log {self.path}: {err.strerror}; stimulation must stop until "
                                 f"the log is writable") from err
            return rec

    # --- the dose ----------------------------------------------------------------------------------------------------
    def dose_recovery(self, now_wall_s: float | None = None, now_mono_ns: int | None = None) -> DoseRecovery:
        """The trailing-24 h stimulation this log accounts for at `now` (default: the log's clocks). Right after
        opening, that is what earlier runs delivered, a crashed one counted to its bound."""
        with self._lock:
            now: _T = (self._mono_ns() if now_mono_ns is None else now_mono_ns,
                       self._wall_s() if now_wall_s is None else now_wall_s)
            return self._tracker.recovery(now, self.boot_id)

    def recovered_daily_stim_s(self, now_wall_s: float | None = None, now_mono_ns: int | None = None) -> float:
        """Seconds of stimulation in the trailing 24 h by this log (see dose_recovery)."""
        return self.dose_recovery(now_wall_s, now_mono_ns).daily_stim_s

    # --- closing ---------------------------------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._fd >= 0:
                if self.durable:
                    with contextlib.suppress(OSError):
                        os.fsync(self._fd)  # a last non-durable record (an ACK outcome) reaches the disk too
                os.close(self._fd)
                self._fd = -1
            if self._seq > 0:
                log.info("audit_chain_head", file=self.path.name, seq=self._seq - 1, hash=self._head, reason="close")

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- verify ---------------------------------------------------------------------------------------------------------
@dataclass
class VerifyReport:
    """What `verify` found over every file of a log."""

    path: str
    ok: bool = True
    files: list[dict[str, Any]] = field(default_factory=list)
    records: int = 0
    legacy_records: int = 0
    head: dict[str, Any] | None = None
    torn: list[dict[str, Any]] = field(default_factory=list)
    torn_tail: list[dict[str, Any]] = field(default_factory=list)
    unjudged_lines: list[dict[str, Any]] = field(default_factory=list)
    expected_heads: list[dict[str, Any]] = field(default_factory=list)
    broken: dict[str, Any] | None = None


def _active_in(path: Path) -> Path:
    """The active file a verify PATH names: the file itself (a segment's name stands for its log), or the one audit
    log in a folder."""
    pattern = re.compile(r"(.+)\.\d{" + str(SEGMENT_DIGITS) + r",}")
    if not path.is_dir():
        m = pattern.fullmatch(path.name)
        return path.with_name(m.group(1)) if m else path
    names = os.listdir(path)
    with_segments = {m.group(1) for n in names if (m := pattern.fullmatch(n))}
    if "audit.jsonl" in names or "audit.jsonl" in with_segments:
        return path / "audit.jsonl"
    if len(with_segments) == 1:
        return path / with_segments.pop()
    raise FileNotFoundError(errno.ENOENT, "no audit.jsonl (nor one log with rotated segments) in this folder; name "
                            "the active file instead", str(path))


def verify(path: str | Path, expect: Iterable[tuple[int, str]] = ()) -> VerifyReport:
    """Walk every segment of the log in order, then the active file, streaming; check the chain, seq continuity and
    the links between segments; stop at the first break. `expect`: (seq, sha256) pairs that must match (chain heads
    copied from the journal's `audit_chain_head` lines)."""
    active = _active_in(Path(path))
    files = log_files(active)
    report = VerifyReport(path=str(active))
    if not files:
        raise FileNotFoundError(errno.ENOENT, "no audit log here", str(active))
    wanted = dict(expect)
    chain = _Chain()
    numbers = {f: n for n, f in segments(active)}
    for i, f in enumerate(files):
        info: dict[str, Any] = {"file": f.name, "records": 0, "first_seq": None, "last_seq": None, "sha256": None}
        report.files.append(info)
        seen_first = False
        with _lines_of(f) as lines:
            for lineno, (raw, _terminated) in enumerate(lines, start=1):
                n_breaks = len(chain.breaks)
                rec, h = chain.line(f.name, lineno, raw)
                if rec is not None:
                    info["records"] += 1
                    info["first_seq"] = rec.get("seq") if info["first_seq"] is None else info["first_seq"]
                    info["last_seq"], info["sha256"] = rec.get("seq"), h
                    if not seen_first:
                        seen_first = True
                        _check_link(chain, f, lineno, rec, files[i - 1] if i else None,
                                    numbers.get(f, (max(numbers.values(), default=0) + 1)))
                    seq = _int(rec.get("seq"))
                    if seq is not None and seq in wanted and wanted.pop(seq) != h:
                        chain._break(f.name, lineno, seq, "head_mismatch", "this record's sha256 differs from the "
                                     "chain head given for its seq: the log was rewritten after that head was taken")
                if len(chain.breaks) > n_breaks:
                    report.broken = asdict(chain.breaks[n_breaks])
                    break
        if report.broken is None and not seen_first and f != active:
            chain._break(f.name, 1, None, "segment_link", "a rotated segment without a single record")
            report.broken = asdict(chain.breaks[-1])
        if report.broken is not None:
            break
    if report.broken is None and wanted:
        seq = min(wanted)
        report.broken = asdict(ChainBreak(active.name, 0, seq, "head_mismatch", f"no record with seq {seq} in the "
                                          "log: the records the journal's chain head names are gone"))
    report.ok = report.broken is None
    report.records = chain.records
    report.legacy_records = chain.legacy_records
    report.torn = [{"file": b.file, "line": b.line, "acknowledged_by_seq": s} for b, s in chain.torn]
    report.torn_tail = [{"file": b.file, "line": b.line} for b in chain.bad] if report.ok else []
    report.unjudged_lines = [{"file": b.file, "line": b.line} for b in chain.legacy_bad]
    if chain.head is not None:
        report.head = {"file": report.files[-1]["file"], "seq": chain.last_seq, "sha256": chain.head}
    return report


def _check_link(chain: _Chain, f: Path, lineno: int, rec: dict[str, Any], before: Path | None, number: int) -> None:
    """A file's first record against the file before it: an `audit_segment` record naming it, with the right
    number (its `prev` was checked by the chain)."""
    is_header = rec.get("event") == "audit_segment"
    seq = _int(rec.get("seq"))
    if before is None:
        if is_header and rec.get("previous_file"):
            chain._break(f.name, lineno, seq, "missing_segment", f"this segment continues {rec['previous_file']}, "
                         "which is not here: earlier records were removed (or archived elsewhere)")
        return
    if not is_header:
        chain._break(f.name, lineno, seq, "segment_link", f"a file after {before.name} must start with an "
                     "audit_segment record; this one does not: the file was replaced or its start removed")
    elif rec.get("previous_file") != before.name:
        chain._break(f.name, lineno, seq, "missing_segment", f"this segment continues {rec.get('previous_file')}, "
                     f"but the file before it is {before.name}: a segment is missing or was renamed")
    elif rec.get("segment") != number:
        chain._break(f.name, lineno, seq, "segment_link", f"this file says it is segment {rec.get('segment')}, its "
                     f"name says {number}: segments were renamed")
