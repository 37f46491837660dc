"""Byte links the board driver runs over: a serial port (pyserial; a pty path works the same), an in-memory pipe
pair, and a wrapper that passes every chunk through a manipulator function for fault injection.

A link moves bytes, nothing more: framing lives in the device's codec (e.g. neurostim_board.codec), retries in the
driver. A link whose far end has gone (port unplugged, simulator exited, pipe severed) raises BoardLost from read()
and write()."""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import os
import select
import stat
import termios
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

import serial

from neurostimd.drivers.errors import BoardLost, DriverError, PortBusy, PortInvalid

# Fault injection hook: takes the bytes of one write (or one read) and returns the chunks to pass on instead
# (split: several chunks; drop: []; duplicate: the chunk twice; corrupt / garbage: altered or extra bytes).
Manipulator = Callable[[bytes], list[bytes]]


class ByteLink(ABC):
    """A bidirectional byte stream to a board."""

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Send all of `data`; BoardLost if the far end is gone."""

    @abstractmethod
    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        """Whatever is available (at most max_bytes), waiting up to timeout_s for the first byte; b"" on timeout."""

    @abstractmethod
    def close(self) -> None:
        """Release the link; idempotent."""

    def __enter__(self) -> ByteLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def port_holders(port: str) -> list[str]:
    """Best effort: "pid N (command)" for every other process that has `port` open (from /proc; processes this
    user may not inspect are not listed)."""
    try:
        target = os.path.realpath(port)
    except OSError:
        return []
    out = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.path.realpath(f"/proc/{pid}/fd/{fd}") == target for fd in fds):
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    cmd = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
                out.append(f"pid {pid} ({cmd[:80]})")
        except OSError:
            continue
    return out


def _check_char_device(port: str) -> None:
    """A serial port is a character device (a pty link may be a symlink to one); anything else is refused before
    pyserial touches it — a FIFO or a regular file at [device] port is a misconfiguration, not a board."""
    try:
        st = os.stat(port)
    except FileNotFoundError as err:
        raise BoardLost(f"serial port {port} does not exist; check [device] port (or --port) and that the board "
                        f"(or neurostimd-sim) is connected") from err
    except OSError as err:
        raise BoardLost(f"cannot open serial port {port}: {err}") from err
    if not stat.S_ISCHR(st.st_mode):
        raise PortInvalid(f"{port} is not a serial port (not a character device); check [device] port")


class SerialLink(ByteLink):
    """A serial port through pyserial (raw mode, 8N1). Waits with select() on the port's descriptor, so a read with a
    timeout never spins and never reconfigures the port.

    The port is opened exclusively (by default): an advisory lock (pyserial's `exclusive`, flock) that any
    cooperating opener respects, and TIOCEXCL, with which the kernel refuses further opens of the tty to processes
    without CAP_SYS_ADMIN. A port already held raises PortBusy. Root can still open it: the protocol's session token
    is what keeps such a process from commanding the board."""

    def __init__(self, port: str, baudrate: int = 2_000_000, *, write_timeout_s: float = 1.0,
                 exclusive: bool = True) -> None:
        self.port = port
        _check_char_device(port)
        try:
            self._ser: serial.Serial | None = serial.Serial(port, baudrate, timeout=0, write_timeout=write_timeout_s,
                                                            exclusive=exclusive or None)
        except (serial.SerialException, OSError, ValueError) as err:
            if getattr(err, "errno", None) in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EBUSY):
                holders = port_holders(port)
                raise PortBusy(f"serial port {port} is held by another process "
                               f"({', '.join(holders) if holders else 'not visible to this user'}); a board must "
                               f"have one host: stop the other program (another neurostimd, a serial monitor) and "
                               f"start again") from err
            raise BoardLost(f"cannot open serial port {port}: {err}; check the path and that the board (or "
                            "neurostimd-sim) is running") from err
        if exclusive:
            try:
                fcntl.ioctl(self._ser.fileno(), termios.TIOCEXCL)
            except OSError as err:  # not a tty after all: pyserial would have failed first; be explicit
                self.close()
                raise PortInvalid(f"{port}: cannot make the port exclusive ({err}); is it a serial port?") from err
        # bytes queued before we opened belong to no one (an earlier host's session): start clean
        with contextlib.suppress(serial.SerialException, OSError):
            self._ser.reset_input_buffer()

    def _port(self) -> serial.Serial:
        if self._ser is None:
            raise DriverError(f"serial link {self.port} is closed")
        return self._ser

    def _lost(self, what: str, err: BaseException) -> BoardLost:
        self.close()
        return BoardLost(f"serial port {self.port} {what}: {err}; the board was unplugged or the simulator exited")

    def write(self, data: bytes) -> None:
        ser = self._port()
        try:
            ser.write(data)
        except (serial.SerialException, OSError) as err:  # SerialTimeoutException is a SerialException
            raise self._lost("write failed", err) from err

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        ser = self._port()
        try:
            if timeout_s > 0 and not ser.in_waiting:
                ready, _, _ = select.select([ser.fileno()], [], [], timeout_s)
                if not ready:
                    return b""
            return bytes(ser.read(max_bytes))
        except (serial.SerialException, OSError, TypeError) as err:
            # TypeError: pyserial's read on a descriptor closed under it
            raise self._lost("read failed", err) from err

    def close(self) -> None:
        if self._ser is not None:
            ser, self._ser = self._ser, None
            # closing a port that already vanished: nothing left to release
            with contextlib.suppress(serial.SerialException, OSError):
                ser.close()


class _PipeEnd:
    """One direction of a PipeLink pair: a byte buffer with a condition to wait on."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.cond = threading.Condition()
        self.closed = False


class PipeLink(ByteLink):
    """One end of an in-memory byte pipe. Use PipeLink.pair() to get both ends; safe across threads."""

    def __init__(self, rx: _PipeEnd, tx: _PipeEnd, name: str = "pipe") -> None:
        self._rx = rx
        self._tx = tx
        self.name = name
        self._closed = False

    @classmethod
    def pair(cls) -> tuple[PipeLink, PipeLink]:
        a_to_b, b_to_a = _PipeEnd(), _PipeEnd()
        return cls(b_to_a, a_to_b, "pipe-a"), cls(a_to_b, b_to_a, "pipe-b")

    def write(self, data: bytes) -> None:
        if self._closed:
            raise DriverError(f"{self.name} is closed")
        with self._tx.cond:
            if self._tx.closed:
                raise BoardLost(f"{self.name}: the far end of the pipe has closed")
            self._tx.buf += data
            self._tx.cond.notify_all()

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        if self._closed:
            raise DriverError(f"{self.name} is closed")
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._rx.cond:
            while not self._rx.buf:
                if self._rx.closed:
                    raise BoardLost(f"{self.name}: the far end of the pipe has closed")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return b""
                self._rx.cond.wait(remaining)
            out = bytes(self._rx.buf[:max_bytes])
            del self._rx.buf[:max_bytes]
            return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for end in (self._rx, self._tx):
            with end.cond:
                end.closed = True
                end.cond.notify_all()


class ManipulatedLink(ByteLink):
    """Wraps a link and passes each write (and each read) through a Manipulator: fault injection with no special
    case in the driver. Chunks a read manipulator returns are handed out one per read() call, so a split really
    arrives in pieces."""

    def __init__(self, inner: ByteLink, *, on_write: Manipulator | None = None,
                 on_read: Manipulator | None = None) -> None:
        self.inner = inner
        self.on_write = on_write
        self.on_read = on_read
        self._pending: collections.deque[bytes] = collections.deque()

    def write(self, data: bytes) -> None:
        chunks = self.on_write(data) if self.on_write is not None else [data]
        for chunk in chunks:
            if chunk:
                self.inner.write(chunk)

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        if not self._pending:
            data = self.inner.read(max_bytes, timeout_s)
            if not data:
                return b""
            chunks = self.on_read(data) if self.on_read is not None else [data]
            self._pending.extend(c for c in chunks if c)
            if not self._pending:
                return b""
        chunk = self._pending.popleft()
        if len(chunk) > max_bytes:
            self._pending.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        return chunk

    def close(self) -> None:
        self._pending.clear()
        self.inner.close()
