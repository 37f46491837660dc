"""Clocks that tests move by hand, for audit logs whose records span hours or days in milliseconds of test time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neurostimd.outputs.audit import AuditLog

T0_WALL = 1_800_000_000.0  # 2027-01-15, Unix seconds
ON = {"frequency_hz": 130.0, "amplitude_ma": 2.0, "pulse_width_us": 90.0}


class Clocks:
    """A wall clock and a monotonic clock that advance together, unless a test steps the wall clock alone."""

    def __init__(self, wall_s: float = T0_WALL, mono_ns: int = 10**12) -> None:
        self.wall, self.mono = wall_s, mono_ns

    def wall_s(self) -> float:
        return self.wall

    def mono_ns(self) -> int:
        return self.mono

    def advance(self, s: float) -> None:
        self.wall += s
        self.mono += round(s * 1e9)

    def step_wall(self, s: float) -> None:
        """An NTP step or an RTC reset: the wall clock jumps, the monotonic clock does not."""
        self.wall += s

    def reboot(self) -> None:
        """A new boot: the monotonic clock starts again near zero; the wall clock goes on."""
        self.mono = 5 * 10**9

    def open(self, path: Path, *, boot_id: str | None = "boot-A", rotate_mb: float = 4.0, **kw: Any) -> AuditLog:
        return AuditLog(path, durable=False, rotate_mb=rotate_mb, boot_id=boot_id, wall_s=self.wall_s,
                        mono_ns=self.mono_ns, **kw)


def startup(log: AuditLog, *, checkpoint_ms: float = 1000.0, watchdog_ms: float = 250.0,
            exchange_ms: float = 300.0) -> None:
    """What the daemon writes at start: `startup` (boot, checkpoint interval) and `board_ready` (the watchdog)."""
    log.write("startup", boot_id=log.boot_id, checkpoint_ms=checkpoint_ms)
    log.write("board_ready", board_watchdog_ms=watchdog_ms, exchange_ms=exchange_ms)


def command(log: AuditLog, applied: dict[str, float] | None, *, ack: bool = True, **kw: Any) -> int:
    """A command and its outcome, as the loop writes them; returns the command's seq."""
    rec = log.write("stim_command" if applied else "stim_stop", applied=applied)
    log.write("stim_ack", durable=False, command_seq=rec["seq"], ack=ack, **kw)
    return int(rec["seq"])
