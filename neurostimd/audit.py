"""The audit log: one JSON object per line, written and fsync'd before the command it records goes to the board.

Append-only: earlier lines are never rewritten. A crash can leave a torn last line; reopening the log starts the next
record on a fresh line, and `read_audit` skips (and reports) lines that are not whole JSON objects. `seq` increases
by one per record and continues across restarts of the same file.

A command's line is written before the send, so its `ack` is null there; the outcome follows in a `stim_ack` record
whose `command_seq` is the command's `seq`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drivers.base import StimParams
from neurostimd.errors import NeurostimError
from neurostimd.safe_io import UnsafePath, open_regular, read_regular

EVENTS = ("stim_command", "stim_stop", "stim_ack", "fault", "fault_cleared", "state_change", "config_reload",
          "startup", "shutdown")


class AuditError(NeurostimError):
    """The audit log cannot be written; without it no command may be sent."""


def params_dict(p: StimParams | None) -> dict[str, float] | None:
    """`{frequency_hz, amplitude_ma, pulse_width_us}` of DESIGN.md, or None for no stimulation."""
    return None if p is None else p.as_dict()


def command_fields(*, state: int | None, confidence: float | None, requested: StimParams | None,
                   result: Any, t_data_s: float | None, **extra: Any) -> dict[str, Any]:
    """The fields of a `stim_command` / `stim_stop` record, from the gate's result (`GateResult`)."""
    return {
        "state": state,
        "confidence": confidence,
        "requested": params_dict(requested),
        "applied": params_dict(result.applied),
        "limited_by": list(result.limited_by),
        "refused": bool(result.refused),
        "t_data_s": t_data_s,
        "ack": None,  # pending: the outcome is the follow-up stim_ack record
        **extra,
    }


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
    """Every whole record of the log, in order; torn or corrupt lines are skipped and reported in `bad_lines`.
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
        try:
            rec = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            out.bad_lines.append(i)
            continue
        if isinstance(rec, dict):
            out.records.append(rec)
        else:
            out.bad_lines.append(i)
    return out


class AuditLog:
    """Append-only JSON-lines audit log; `write` returns only after the line is on disk (fsync)."""

    def __init__(self, path: str | Path, *, durable: bool = True) -> None:
        """`durable=False` skips the fsync: only for replay and evaluation on a virtual clock, where the "board" is
        in memory and nothing reaches tissue; the daemon always writes durably."""
        self.path = Path(path)
        self.durable = durable
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            needs_newline, last_seq = self._scan_existing()
            self._fd = open_regular(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640, what="audit log")
        except UnsafePath as err:
            raise AuditError(str(err)) from err
        except OSError as err:
            raise AuditError(f"cannot open audit log {self.path}: {err.strerror}; check that the folder exists and "
                             f"is writable by the daemon's user") from err
        self._seq = last_seq + 1
        if needs_newline:
            # A crash left a torn last line: start on a fresh line so the next record is not glued onto it.
            self._write_bytes(b"\n")

    def _scan_existing(self) -> tuple[bool, int]:
        raw = read_regular(self.path, what="audit log")
        if not raw:
            return False, -1
        contents = parse_audit(raw)
        seqs = [r["seq"] for r in contents.records if isinstance(r.get("seq"), int)]
        return not raw.endswith(b"\n"), max(seqs, default=-1)

    @property
    def next_seq(self) -> int:
        return self._seq

    def _write_bytes(self, data: bytes, durable: bool = True) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        if self.durable and durable:
            os.fsync(self._fd)

    def write(self, event: str, *, durable: bool = True, **fields: Any) -> dict[str, Any]:
        """Append one record (adds `seq`, `t_wall`, `t_mono_ns`), fsync it, and return it. `durable=False` leaves
        the fsync to the next durable record (for a record nothing waits on, such as an ACK outcome)."""
        with self._lock:
            if self._fd < 0:
                raise AuditError(f"audit log {self.path} is closed; no command may be sent without it")
            rec: dict[str, Any] = {
                "event": event,
                "seq": self._seq,
                "t_wall": datetime.now(UTC).isoformat(timespec="microseconds"),
                "t_mono_ns": time.monotonic_ns(),
            }
            for k, v in fields.items():
                if k not in rec:
                    rec[k] = _jsonable(v)
            line = json.dumps(rec, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n"
            try:
                self._write_bytes(line.encode("utf-8"), durable)
            except OSError as err:
                raise AuditError(f"cannot write audit log {self.path}: {err.strerror}; stimulation must stop "
                                 f"until the log is writable") from err
            self._seq += 1
            return rec

    def write_command(self, *, state: int | None, confidence: float | None, requested: StimParams | None,
                      result: Any, t_data_s: float | None, **extra: Any) -> dict[str, Any]:
        """The `stim_command` record (or `stim_stop` when the gate's result sends nothing), before the send."""
        event = "stim_stop" if result.applied is None else "stim_command"
        return self.write(event, **command_fields(state=state, confidence=confidence, requested=requested,
                                                  result=result, t_data_s=t_data_s, **extra))

    def write_ack(self, command_seq: int, ack: bool, **extra: Any) -> dict[str, Any]:
        """The outcome of the command recorded as `command_seq`: ack True, or False (NAK, timeout, board lost)."""
        return self.write("stim_ack", command_seq=command_seq, ack=bool(ack), **extra)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                if self.durable:
                    with contextlib.suppress(OSError):
                        os.fsync(self._fd)  # a last non-durable record (an ACK outcome) reaches the disk too
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wall(rec: dict[str, Any]) -> float | None:
    try:
        return datetime.fromisoformat(str(rec["t_wall"])).timestamp()
    except (KeyError, ValueError):
        return None


def stimulation_intervals(records: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """Wall-clock (start, end) intervals during which the board confirmed it was stimulating, from audit records.

    A stimulation is on from the ACK of a command with parameters (or its timeout: the board may be running it) until
    the ACK of a stop, a `shutdown`, or — after a crash — the last record before the next `startup` (the board's
    dead-man timer stops it within its timeout)."""
    pending: dict[int, bool] = {}
    out: list[tuple[float, float]] = []
    on_since: float | None = None
    last_t: float | None = None
    for rec in records:
        t = _wall(rec)
        ev = rec.get("event")
        if ev == "startup" and on_since is not None and last_t is not None:
            out.append((on_since, last_t))
            on_since = None
        if t is None:
            continue
        if ev in ("stim_command", "stim_stop") and isinstance(rec.get("seq"), int):
            pending[rec["seq"]] = rec.get("applied") is not None
        elif ev == "stim_ack" and rec.get("command_seq") in pending and (
                rec.get("ack") is True or rec.get("reply") == "timeout"):
            # An unanswered command may be running on the board: counted as sent (the dose errs on the safe side).
            on = pending.pop(rec["command_seq"])
            if on and on_since is None:
                on_since = t
            elif not on and on_since is not None:
                out.append((on_since, t))
                on_since = None
        elif ev == "shutdown" and on_since is not None:
            out.append((on_since, t))
            on_since = None
        last_t = t
    if on_since is not None and last_t is not None:
        out.append((on_since, last_t))
    return out


def stimulated_s_since(path: str | Path, since_wall_s: float) -> float:
    """Seconds of confirmed stimulation recorded in the audit log after `since_wall_s` (Unix time); 0 without a log.

    The daemon passes the last 24 h of this to the gate, so the daily dose survives restarts."""
    try:
        contents = read_audit(path)
    except FileNotFoundError:
        return 0.0
    total = 0.0
    for a, b in stimulation_intervals(contents.records):
        total += max(0.0, b - max(a, since_wall_s))
    return total
