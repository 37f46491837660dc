"""sd_notify spoken over a real AF_UNIX datagram socket set as NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from neurostimd.service.notify import SystemdNotifier


def _socket(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2.0)
    return s, path


def test_ready_status_watchdog_stopping(tmp_path: Path) -> None:
    """Each notification arrives on the socket as the assignments systemd expects."""
    s, path = _socket(tmp_path)
    n = SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())})
    try:
        assert n.enabled and n.watchdog_interval_s == 1.0
        assert n.ready("state=0")
        assert s.recv(4096) == b"READY=1\nSTATUS=state=0"
        assert n.watchdog()
        assert s.recv(4096) == b"WATCHDOG=1"
        assert n.stopping()
        assert s.recv(4096) == b"STOPPING=1"
    finally:
        n.close()
        s.close()


def test_abstract_namespace_socket() -> None:
    """An '@' address reaches a socket in the abstract namespace."""
    name = f"neurostimd-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(b"\0" + name.encode())
    s.settimeout(2.0)
    n = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
    try:
        assert n.status("hello")
        assert s.recv(4096) == b"STATUS=hello"
    finally:
        n.close()
        s.close()


def test_without_systemd_is_a_no_op() -> None:
    """Outside systemd notifications are dropped and the watchdog is off."""
    n = SystemdNotifier({})
    assert not n.enabled and not n.ready() and n.watchdog_interval_s is None


def test_watchdog_for_another_pid_is_ignored() -> None:
    """WATCHDOG_USEC meant for a different process does not enable ours."""
    n = SystemdNotifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert n.watchdog_interval_s is None


def test_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    """A manager socket that went away never crashes the daemon."""
    n = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.ready() is False
    n.close()


def test_a_reader_that_never_reads_cannot_block_the_loop(tmp_path: Path) -> None:
    """With the manager's queue full, notifications are dropped at once instead of blocking the caller."""
    import time

    s, path = _socket(tmp_path)
    n = SystemdNotifier({"NOTIFY_SOCKET": path})
    try:
        t0 = time.monotonic()
        results = [n.status(f"tick {i}") for i in range(500)]
        assert time.monotonic() - t0 < 2.0
        assert results[0] is True and results[-1] is False  # the queue filled up and later messages were dropped
        assert s.recv(4096) == b"STATUS=tick 0"
    finally:
        n.close()
        s.close()
