"""Log records to the systemd journal over its native protocol: one datagram per record to journald's socket, each
structlog key a journal field (EVENT=stim_command, FAULTS=..., PRIORITY from the level), so `journalctl -p warning
-u neurostimd` lists every warning and fault and `journalctl EVENT=fault` finds them by event
(https://systemd.io/JOURNAL_NATIVE_PROTOCOL/). Best effort and never blocking: a record the socket does not take at
once (journald busy, gone, or the record too big for one datagram) is counted and the record goes to stdout as a
JSON line instead, behind its `<N>` priority prefix (journald reads it on the service's stdout stream). The audit
log, not the journal, is the record of what was commanded."""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import sys
from typing import Any, TextIO

JOURNAL_SOCKET = "/run/systemd/journal/socket"
# syslog priorities (sd-daemon.h): what `journalctl -p` filters on
PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2, "exception": 3}
MAX_FIELD = 48 * 1024  # a longer value is cut (and says so): the record must fit one datagram
_KEY = re.compile(r"[^A-Z0-9_]")


def journal_key(name: str) -> str:
    """A structlog key as a journal field name: upper case, [A-Z0-9_] only, not starting with _ or a digit (those
    are journald's own), at most 64 characters."""
    key = _KEY.sub("_", name.upper()).lstrip("_")
    if not key or key[0].isdigit():
        key = "F_" + key
    return key[:64]


def _value(v: Any) -> bytes:
    text = v if isinstance(v, str) else json.dumps(v, default=str, separators=(",", ":"))
    raw = text.encode("utf-8", "replace")
    if len(raw) > MAX_FIELD:
        raw = raw[:MAX_FIELD] + b"...(cut)"
    return raw


def encode_record(event_dict: dict[str, Any], identifier: str = "neurostimd") -> bytes:
    """One journal entry in the native protocol: KEY=value lines, and the length-prefixed form for values with a
    newline. MESSAGE is the event with its fields as JSON, PRIORITY the level, EVENT the event name."""
    rec = dict(event_dict)
    event = str(rec.pop("event", ""))
    level = str(rec.pop("level", rec.pop("log_level", "info")))
    rec.pop("timestamp", None)  # the journal stamps each entry itself
    fields: list[tuple[str, bytes]] = [
        ("MESSAGE", (event + (" " + json.dumps(rec, default=str, separators=(",", ":")) if rec else "")).encode(
            "utf-8", "replace")),
        ("PRIORITY", str(PRIORITY.get(level, 6)).encode()),
        ("SYSLOG_IDENTIFIER", identifier.encode()),
        ("EVENT", event.encode("utf-8", "replace")),
    ]
    taken = {k for k, _ in fields}
    for k, v in rec.items():
        key = journal_key(str(k))
        if key in taken:
            key = f"F_{key}"[:64]
        taken.add(key)
        fields.append((key, _value(v)))
    out = bytearray()
    for key, val in fields:
        if len(val) > MAX_FIELD:
            val = val[:MAX_FIELD] + b"...(cut)"
        if b"\n" in val:
            out += key.encode() + b"\n" + struct.pack("<Q", len(val)) + val + b"\n"
        else:
            out += key.encode() + b"=" + val + b"\n"
    return bytes(out)


class JournalLogger:
    """A structlog logger whose `msg` takes the event dict (the last processor passes it through) and sends it to
    the journal; on any failure the record is printed to `fallback` as a JSON line."""

    def __init__(self, path: str = JOURNAL_SOCKET, fallback: TextIO | None = None) -> None:
        self.path = path
        self.fallback = fallback if fallback is not None else sys.stdout
        self.failed = 0  # records the journal did not take (written to the fallback instead)
        self._sock: socket.socket | None = None
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            s.setblocking(False)
            self._sock = s
        except OSError:
            self._sock = None

    def msg(self, event_dict: Any) -> None:
        if not isinstance(event_dict, dict):
            event_dict = {"event": str(event_dict)}
        if self._sock is not None:
            try:
                self._sock.sendto(encode_record(event_dict), self.path)
                return
            except OSError:
                self.failed += 1
        # with the sd-daemon priority prefix, which journald reads on a stdout stream: `-p warning` still sees it
        level = str(event_dict.get("level", "info"))
        print(f"<{PRIORITY.get(level, 6)}>" + json.dumps(event_dict, default=str), file=self.fallback, flush=True)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _pass_dict(_logger: Any, _name: str, event_dict: Any) -> Any:
    """The last processor: hand the event dict itself to JournalLogger (no rendering to text)."""
    return (event_dict,), {}


def journal_stream_is_stdout() -> bool:
    """systemd connected our stdout to the journal (JOURNAL_STREAM names its device:inode): journald is there."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in stream.split(":"))
        st = os.fstat(sys.stdout.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)
