"""The session recorder: raw samples, decisions and commands in an open, append-only format (raw little-endian
binary + JSON lines + a JSON sidecar; docs/recording-format.md) that survives SIGKILL losing at most one flush
interval. Recording never stalls the loop: calls only append to memory, a flush is a few os.write calls, and the
fdatasync on each flush interval runs in a thread beside the loop. `RecorderListener` records a loop's session."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from neurostimd.core.ringbuffer import Window
from neurostimd.listeners import BaseListener, CommandEvent, DecisionEvent
from neurostimd.safe_io import check_regular_or_absent, open_regular, real_directory
from neurostimd.sources.recordings import SESSION_FORMAT

log = structlog.get_logger(__name__)

FORMAT_VERSION = 1
_FILES = {"samples": "samples.f32", "timestamps": "timestamps.f64", "indices": "indices.i64",
          "decisions": "decisions.jsonl", "commands": "commands.jsonl"}


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "as_dict"):
        return o.as_dict()
    return str(o)


def _atomic_write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    check_regular_or_absent(path, what="session file")
    check_regular_or_absent(tmp, what="session file")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # a regular temporary file left by a crash
    fd = open_regular(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, what="session file")
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=2, default=_json_default)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Recorder:
    """Records one session into `dir` (created; must not hold a session already).

    Call record_* from the loop; the recorder flushes by itself once `flush_interval_ms` has passed since the last
    flush (checked on every call), and flush()/close() may be called at any time.
    """

    def __init__(
        self,
        dir: str | Path,
        n_channels: int,
        fs: float,
        channel_names: list[str] | None = None,
        flush_interval_ms: float = 500.0,
        *,
        extra_meta: dict[str, Any] | None = None,
    ) -> None:
        self.dir = Path(dir)
        self.n_channels = int(n_channels)
        self.fs = float(fs)
        self.channel_names = list(channel_names) if channel_names else [f"ch{i}" for i in range(self.n_channels)]
        if len(self.channel_names) != self.n_channels:
            raise ValueError(f"{len(self.channel_names)} channel names for {self.n_channels} channels")
        self.flush_interval_s = float(flush_interval_ms) / 1e3
        real_directory(self.dir, what="recording session folder")
        if any(os.path.lexists(self.dir / name) for name in ("session.json", *_FILES.values())):
            raise FileExistsError(f"{self.dir} already holds a session (or files of one); choose a new folder")
        self._meta: dict[str, Any] = {
            "format": SESSION_FORMAT,
            "format_version": FORMAT_VERSION,
            "n_channels": self.n_channels,
            "sample_rate_hz": self.fs,
            "channel_names": self.channel_names,
            "files": dict(_FILES),
            "sample_layout": "row-major (sample, channel), little-endian float32 µV",
            "started_wall": dt.datetime.now(dt.UTC).isoformat(),
            "started_mono_ns": time.monotonic_ns(),
            "flush_interval_ms": float(flush_interval_ms),
            "closed_cleanly": False,
            **(extra_meta or {}),
        }
        _atomic_write_json(self.dir / "session.json", self._meta)
        # O_EXCL on a folder just checked to hold none of them: a file (or link) planted meanwhile is refused
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL
        self._fds: dict[str, int] = {}
        try:
            for k, name in _FILES.items():
                self._fds[k] = open_regular(self.dir / name, flags, 0o644, what="recording file")
        except BaseException:
            for fd in self._fds.values():
                os.close(fd)
            raise
        self._pending: dict[str, list[bytes]] = {k: [] for k in _FILES}
        self._last_flush_s = time.monotonic()
        self._last_sync_s = self._last_flush_s
        self.samples_recorded = 0
        self.decisions_recorded = 0
        self.commands_recorded = 0
        self.write_errors = 0
        self._closed = False
        self._fd_lock = threading.Lock()
        self._sync_wanted = threading.Event()
        self._stop_sync = False
        self._syncer = threading.Thread(target=self._sync_worker, name="recorder-sync", daemon=True)
        self._syncer.start()
        log.info("recorder_open", dir=str(self.dir), n_channels=self.n_channels, fs=self.fs)

    # --- recording -------------------------------------------------------------------------------------------------
    def record_samples(self, window: Window) -> None:
        """Append a window's samples (use ring.since(last_end) windows so that every sample is recorded once)."""
        if self._closed or len(window) == 0:
            return
        data = np.ascontiguousarray(window.data, dtype="<f4")
        if data.ndim != 2 or data.shape[1] != self.n_channels:
            log.warning("recorder_block_refused", shape=list(data.shape), n_channels=self.n_channels)
            return
        self._pending["samples"].append(data.tobytes())
        self._pending["timestamps"].append(np.ascontiguousarray(window.timestamps, dtype="<f8").tobytes())
        self._pending["indices"].append(np.ascontiguousarray(window.indices, dtype="<i8").tobytes())
        self.samples_recorded += data.shape[0]
        self._maybe_flush()

    def record_decision(self, decision: dict[str, Any]) -> None:
        self._line("decisions", decision)
        self.decisions_recorded += 1

    def record_command(self, command: dict[str, Any]) -> None:
        self._line("commands", command)
        self.commands_recorded += 1

    def _line(self, key: str, obj: dict[str, Any]) -> None:
        if self._closed:
            return
        line = json.dumps(obj, default=_json_default, separators=(",", ":"), allow_nan=True) + "\n"
        self._pending[key].append(line.encode())
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush_s >= self.flush_interval_s:
            self.flush()

    # --- persistence -----------------------------------------------------------------------------------------------
    def flush(self, *, sync: bool | None = None) -> None:
        """Hand everything recorded so far to the OS (which keeps it through a SIGKILL of this process); fdatasync
        too when a flush interval has passed since the last sync (or when sync=True), for power loss."""
        if self._closed:
            return
        now = time.monotonic()
        # Samples first, then the index files: a reader trims all files to the shortest complete prefix.
        for key in ("samples", "timestamps", "indices", "decisions", "commands"):
            chunks = self._pending[key]
            if not chunks:
                continue
            buf = b"".join(chunks)
            chunks.clear()
            view = memoryview(buf)
            try:
                while view:
                    written = os.write(self._fds[key], view)
                    view = view[written:]
            except OSError as err:
                self.write_errors += 1
                log.error("recorder_write_failed", file=_FILES[key], error=str(err))
        self._last_flush_s = now
        if sync:
            self._sync_all()
            self._last_sync_s = now
        elif sync is None and now - self._last_sync_s >= self.flush_interval_s:
            # fdatasync can take milliseconds; the loop must not wait for it. A SIGKILL loses nothing os.write
            # has taken, so the sync (for power loss) runs beside the loop.
            self._sync_wanted.set()
            self._last_sync_s = now

    def _sync_all(self) -> None:
        for fd in self._fds.values():
            try:
                os.fdatasync(fd)
            except OSError as err:
                self.write_errors += 1
                log.error("recorder_sync_failed", error=str(err))

    def _sync_worker(self) -> None:
        while True:
            self._sync_wanted.wait()
            self._sync_wanted.clear()
            if self._stop_sync:
                return
            with self._fd_lock:
                if not self._closed:
                    self._sync_all()

    def close(self) -> None:
        """Flush, sync, close the files and mark the sidecar as cleanly closed. Idempotent."""
        if self._closed:
            return
        self._stop_sync = True
        self._sync_wanted.set()
        self._syncer.join(timeout=10)
        self.flush(sync=True)
        with self._fd_lock:
            self._closed = True
            for fd in self._fds.values():
                os.close(fd)
        self._meta.update({"closed_cleanly": True, "n_samples": self.samples_recorded,
                           "n_decisions": self.decisions_recorded, "n_commands": self.commands_recorded,
                           "stopped_wall": dt.datetime.now(dt.UTC).isoformat()})
        _atomic_write_json(self.dir / "session.json", self._meta)
        log.info("recorder_closed", dir=str(self.dir), n_samples=self.samples_recorded)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RecorderListener(BaseListener):
    """A Recorder as a loop listener: every new sample once, every decision (its decisions.jsonl line), and every
    command sent to the board with its outcome (`ack`, `t_ack_mono_ns`). `close()` closes the recorder."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def on_samples(self, window: Window) -> None:
        self.recorder.record_samples(window)

    def on_decision(self, decision: DecisionEvent) -> None:
        self.recorder.record_decision(decision.record)

    def on_command(self, command: CommandEvent) -> None:
        self.recorder.record_command({**command.record, "ack": command.acked, "t_ack_mono_ns": command.t_ack_mono_ns})

    def close(self) -> None:
        self.recorder.close()
