"""Clocks for the loop: the real monotonic clock, and a virtual clock for replay that jumps instead of sleeping.

Everything that waits goes through a Clock, so the same loop code runs in real time and as fast as possible."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ns(self) -> int:
        """Monotonic time in nanoseconds."""

    def sleep_until(self, deadline_ns: int) -> None:
        """Return at (or, on a real clock, shortly after) deadline_ns."""


class MonotonicClock:
    """time.monotonic_ns(), with sleeps to an absolute deadline (a short spin at the end for low jitter)."""

    def __init__(self, spin_ns: int = 200_000) -> None:
        self.spin_ns = spin_ns

    def now_ns(self) -> int:
        return time.monotonic_ns()

    def sleep_until(self, deadline_ns: int) -> None:
        while True:
            remaining = deadline_ns - time.monotonic_ns()
            if remaining <= 0:
                return
            if remaining > self.spin_ns:
                time.sleep((remaining - self.spin_ns) / 1e9)
            # else spin: the last fraction of a millisecond is not left to the scheduler


class VirtualClock:
    """A clock that only moves when told to: sleep_until jumps to the deadline at once."""

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns

    def now_ns(self) -> int:
        return self._now

    def sleep_until(self, deadline_ns: int) -> None:
        if deadline_ns > self._now:
            self._now = deadline_ns

    def advance(self, dt_ns: int) -> None:
        if dt_ns < 0:
            raise ValueError("a virtual clock does not go backwards")
        self._now += dt_ns


class ScaledClock:
    """Monotonic time run N times faster: replay at xN sees recording time while the wall clock moves 1/N as far."""

    def __init__(self, speed: float, spin_ns: int = 200_000) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._origin = time.monotonic_ns()
        self._real = MonotonicClock(spin_ns)

    def now_ns(self) -> int:
        return int((time.monotonic_ns() - self._origin) * self.speed)

    def sleep_until(self, deadline_ns: int) -> None:
        self._real.sleep_until(self._origin + int(deadline_ns / self.speed))
