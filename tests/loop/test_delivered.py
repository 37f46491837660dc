"""The loop sends, audits and commits what the device delivers: a driver that rounds (here the virtual board taught
to count 70 µs cycles) gets the rounded parameters, the audit log records them as `applied`, and the STATUS
cross-check agrees with them."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from neurostimd.config import Config
from neurostimd.core.safety import RULE_DEVICE_ROUNDING
from neurostimd.drivers.types import StimParams
from neurostimd.firmware_sim.inprocess import VirtualBoardDriver
from neurostimd.outputs.audit import read_audit
from tests.loops import board_loop


class CycleBoard(VirtualBoardDriver):
    """The virtual board, with times in whole 70 µs cycles (the pulse width rounded down; the table's widths are
    multiples of 50, so each needs rounding)."""

    def deliverable(self, params: StimParams) -> StimParams:
        return replace(params, pulse_width_us=70.0 * math.floor(params.pulse_width_us / 70.0 + 1e-9))


def test_the_board_runs_and_the_audit_records_the_delivered_values(cfg: Config, bundle: Any, tmp_path: Path) -> None:
    loop, drv, audit, _ = board_loop(cfg, bundle, tmp_path, driver_class=CycleBoard)
    try:
        loop.run(should_stop=lambda: False, duration_s=20.0)
    finally:
        audit.close()
        drv.close()
    recs = read_audit(tmp_path / "audit.jsonl").records
    sent = [r for r in recs if r["event"] == "stim_command"]
    assert sent, "the loop stimulated"
    for r in sent:
        assert r["applied"]["pulse_width_us"] % 70.0 == 0.0
        if r["requested"]["pulse_width_us"] % 70.0:
            assert RULE_DEVICE_ROUNDING in r["limited_by"]
    assert any(RULE_DEVICE_ROUNDING in r["limited_by"] for r in sent), "the table has widths that need rounding"
    board = [e for e in drv.event_log.events if e["event"] == "stim_applied"]
    assert board and all(e["pulse_width_us"] % 70.0 == 0.0 for e in board)
    assert not any(r["event"] == "fault" and "board_params_mismatch" in r["faults"] for r in recs)
