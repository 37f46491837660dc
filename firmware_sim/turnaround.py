"""How fast the simulated board answers: from the read that brought a host frame to the write that put its reply on
the line, in µs — the simulator's own share of every round trip the host measures, so that a benchmark can tell the
daemon's time from the simulator's."""

from __future__ import annotations

import collections
import math
from typing import Any


class Turnaround:
    """Byte accounting of a serve loop's transmit queue. `queued(n, t_read_ns)` when the board puts n bytes in the
    queue (with the read's time when they answer a host frame), `wrote(n, now_ns)` after each write to the line,
    `dropped(n)` when queued bytes are thrown away (a full queue, a reboot): a reply counts once its last byte is
    written; a dropped one is not counted."""

    def __init__(self, keep: int = 200_000) -> None:
        self._queued = 0
        self._written = 0
        self._waiting: collections.deque[tuple[int, int]] = collections.deque()  # (end offset, t_read_ns)
        self.samples_us: collections.deque[float] = collections.deque(maxlen=keep)
        self.replies = 0
        self.dropped_replies = 0

    def queued(self, n: int, t_read_ns: int | None = None) -> None:
        if n <= 0:
            return
        self._queued += n
        if t_read_ns is not None:
            self._waiting.append((self._queued, t_read_ns))

    def wrote(self, n: int, now_ns: int) -> None:
        self._written += n
        while self._waiting and self._waiting[0][0] <= self._written:
            _, t_read = self._waiting.popleft()
            self.samples_us.append((now_ns - t_read) / 1e3)
            self.replies += 1

    def dropped(self, n: int) -> None:
        self._written += n
        while self._waiting and self._waiting[0][0] <= self._written:
            self._waiting.popleft()
            self.dropped_replies += 1

    def summary(self) -> dict[str, Any]:
        """replies, p50 / p99 / max in µs (None without a reply), and the replies dropped unwritten."""
        xs = sorted(self.samples_us)

        def pct(q: float) -> float | None:
            if not xs:
                return None
            return round(xs[min(len(xs) - 1, max(0, math.ceil(q / 100 * len(xs)) - 1))], 1)

        return {"replies": self.replies, "p50_us": pct(50), "p99_us": pct(99),
                "max_us": round(xs[-1], 1) if xs else None, "dropped_replies": self.dropped_replies}
