"""The systemd notification protocol (sd_notify), spoken directly over the AF_UNIX datagram socket named by
$NOTIFY_SOCKET, so the daemon needs no libsystemd. Outside systemd every call is a cheap no-op."""

from __future__ import annotations

import os
import socket


class SystemdNotifier:
    """Sends READY=1, STATUS=, WATCHDOG=1 and STOPPING=1 to the service manager."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        self._addr: str | bytes | None = None
        if addr:
            # A leading '@' names a socket in the abstract namespace.
            self._addr = b"\0" + addr[1:].encode() if addr.startswith("@") else addr
        self._sock: socket.socket | None = None
        self.watchdog_interval_s = self._watchdog_interval(env)

    @staticmethod
    def _watchdog_interval(env: dict[str, str]) -> float | None:
        """Half of WATCHDOG_USEC (as sd_watchdog_enabled advises), if the watchdog is meant for this process."""
        usec = env.get("WATCHDOG_USEC")
        if not usec:
            return None
        pid = env.get("WATCHDOG_PID")
        if pid and pid.isdigit() and int(pid) != os.getpid():
            return None
        try:
            value = int(usec)
        except ValueError:
            return None
        return value / 1e6 / 2 if value > 0 else None

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    def notify(self, *assignments: str) -> bool:
        """Send newline-separated assignments; False (never an exception) when there is no manager to tell."""
        if self._addr is None:
            return False
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Never block the loop on the manager: a full queue (a busy or stuck reader) drops the message.
            self._sock.setblocking(False)
        try:
            self._sock.sendto("\n".join(assignments).encode(), self._addr)
        except OSError:  # BlockingIOError included
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        return self.notify("RELOADING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
