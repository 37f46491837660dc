"""Small loop listeners for the tests: collect decision records, or call a function after each tick."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from neurostimd.listeners import BaseListener, DecisionEvent, LoopView, TickStats


class DecisionLog(BaseListener):
    """Appends each decision's decisions.jsonl record to `out`."""

    def __init__(self, out: list[dict[str, Any]]) -> None:
        self.out = out

    def on_decision(self, decision: DecisionEvent) -> None:
        self.out.append(decision.record)


class OnTick(BaseListener):
    """Calls `fn(stats)` after each tick of run()."""

    def __init__(self, fn: Callable[[TickStats], Any]) -> None:
        self.fn = fn

    def on_tick(self, stats: TickStats, loop: LoopView) -> None:
        self.fn(stats)
