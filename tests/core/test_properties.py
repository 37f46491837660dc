"""Property tests: over generated configs, stimulation tables, classifier outputs, data health and board replies, no
command the controller emits breaks a limit, the ramp, the charge rules, the period rule or the dose, whatever the
control law (table, dual_threshold, proportional), every data or board fault puts the safe state in force at the same
decision, and low confidence holds what runs (never more) for at most hold_max_s.

The limits are re-checked here with the formulas written out again (not the gate's own helpers), so an error in the
gate's arithmetic cannot hide behind the same error in the check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from neurostimd.core.controller import ControlInputs, Controller
from neurostimd.core.faults import BoardReply
from neurostimd.core.laws import DualThresholdConfig, ProportionalConfig
from neurostimd.core.policy import PolicyConfig
from neurostimd.core.safety import RAMP_DT_CAP_S, SafetyConfig
from neurostimd.core.stimtable import StateStim, StimTable, notebook_table
from neurostimd.drivers.types import BoardLimits, StimParams

REL = 1e-9  # floating-point slack of the re-check; every limit is otherwise exact
STALE_AFTER_MS = 250.0


class _Bits:
    """Decodes drawn bytes into bounded values, one byte each (0 → low end, 255 → high end exactly; past the end 0).

    Hypothesis draws one byte string per example instead of dozens of floats: generating 10 000 examples stays fast
    on a loaded machine, and shrinking the bytes toward zero still walks every value toward its low end.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        b = self.data[self.pos] if self.pos < len(self.data) else 0
        self.pos += 1
        return b

    def u(self) -> float:
        return self.byte() / 255.0

    def f(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.u()

    def pick(self, options: tuple[Any, ...]) -> Any:
        return options[self.byte() % len(options)]


def make_safety_config(b: _Bits) -> SafetyConfig:
    area = b.f(0.005, 2.0)
    min_f = b.f(0.5, 20.0)
    max_f = b.f(min_f, 2000.0)
    min_pw = b.f(10.0, 100.0)
    max_pw = b.f(min_pw, 1000.0)
    ipg = b.f(0.0, 200.0)
    session = b.f(1.0, 60.0)
    k_max, min_a, max_a = b.f(0.5, 1.85), b.pick((0.0, 0.0, 0.1)), b.f(0.2, 12.0)
    q_max, d_max = b.f(0.05, 5.0), b.f(1.0, 40.0)
    c: dict[str, Any] = {
        "electrode_area_cm2": area, "k_max": k_max, "min_frequency_hz": min_f, "max_frequency_hz": max_f,
        "min_amplitude_ma": min_a, "max_amplitude_ma": max_a, "min_pulse_width_us": min_pw,
        "max_pulse_width_us": max_pw, "interphase_gap_us": ipg, "ramp_ma_per_s": b.f(0.05, 20.0),
        "max_charge_per_phase_uc": q_max, "max_charge_density_uc_cm2": d_max, "compliance_v_max": b.f(1.0, 20.0),
        "max_session_stim_s": session, "max_daily_stim_s": b.f(session, 120.0),
        "recovery_clean_ms": b.f(0.0, 1500.0), "ramp_down_ma_per_s": b.pick((None, None, 0.5, 5.0)),
        "on_fault": {"hold_max_s": b.pick((10.0, 0.5, 2.0))},
    }
    pw, f, frac = b.f(min_pw, max_pw), b.f(min_f, max_f), b.u()
    if b.pick((False, True)):
        # A fallback inside the envelope, computed here from the rules as written (not by the gate).
        cap_ma = min(max_a, q_max * 1000 / pw, d_max * area * 1000 / pw, math.sqrt(area * 10 ** k_max) * 1000 / pw)
        amp = frac * cap_ma * 0.99
        if 2 * pw + ipg < 0.99e6 / f and amp >= min_a:
            c["safe_state"] = "fallback"
            c["fallback"] = {"frequency_hz": f, "amplitude_ma": amp, "pulse_width_us": pw}
    return SafetyConfig.model_validate(c)


def make_table(b: _Bits) -> StimTable:
    wild = [StateStim(state=i, name=f"s{i}", frequency_hz=b.f(0.2, 3000.0), amplitude_ma=b.f(0.0, 20.0),
                      pulse_width_us=b.f(5.0, 2000.0), duration_min=b.pick((None, 0.005, 0.02))) for i in range(3)]
    return notebook_table() if b.pick((True, False)) else StimTable(states=wild)


def make_board_limits(b: _Bits) -> BoardLimits | None:
    bl = BoardLimits(min_frequency_hz=b.f(0.5, 5.0), max_frequency_hz=b.f(50.0, 500.0),
                     max_amplitude_ma=b.f(0.5, 10.0), min_pulse_width_us=b.f(10.0, 60.0),
                     max_pulse_width_us=b.f(100.0, 1000.0), max_charge_per_phase_uc=b.f(0.1, 5.0), watchdog_ms=250)
    return None if b.pick((True, False)) else bl


def make_policy(b: _Bits) -> PolicyConfig | DualThresholdConfig | ProportionalConfig:
    kind = b.pick(("table", "table", "dual_threshold", "proportional"))
    threshold = b.pick((0.6, 0.3, 0.9))
    if kind == "dual_threshold":
        lower = b.f(0.0, 1.0)
        lo_ma = b.f(0.0, 12.0)
        return DualThresholdConfig.model_validate({
            "confidence_threshold": threshold, "biomarker": b.pick(("p:0", "p:1", "p:2")), "lower": lower,
            "upper": b.f(lower, 1.0), "amplitude_low_ma": lo_ma, "amplitude_high_ma": b.f(lo_ma, 20.0),
            "frequency_hz": b.f(0.2, 3000.0), "pulse_width_us": b.f(5.0, 2000.0), "onset_ms": b.pick((0.0, 100.0)),
            "termination_ms": b.pick((0.0, 100.0)), "blanking_ms": b.pick((0.0, 200.0)),
            "averaging_ms": b.pick((0.0, 150.0)), "initial": b.pick(("low", "high"))})
    if kind == "proportional":
        out = b.pick(("amplitude", "frequency"))
        lo = b.f(0.0, 5.0) if out == "amplitude" else b.f(0.2, 100.0)
        return ProportionalConfig.model_validate({
            "confidence_threshold": threshold, "biomarker": b.pick(("p:0", "p:1", "p:2")), "output": out,
            "setpoint": b.f(0.0, 1.0), "kp": b.f(0.01, 50.0), "ti_s": b.pick((0.2, None, 2.0)),
            "update_ms": b.pick((50.0, 20.0, 200.0)), "output_min": lo,
            "output_max": b.f(lo, 20.0 if out == "amplitude" else 3000.0) + 0.01,
            "frequency_hz": b.f(0.2, 3000.0), "amplitude_ma": b.f(0.01, 20.0), "pulse_width_us": b.f(5.0, 2000.0)})
    return PolicyConfig.model_validate({
        "confidence_threshold": threshold, "onset_ms": b.pick((0.0, 100.0)),
        "termination_ms": b.pick((0.0, 100.0)), "blanking_ms": b.pick((0.0, 200.0)),
        "use_state_durations": b.pick((False, True)), "low_confidence": b.pick(("hold", "unknown"))})


# One decision: (dt_s, classifier class (None = no output, -1 = NaN output), its confidence, data age in ms (None =
# no data), window quality flag, the board's reply to this decision's command, impedance in Ω). One byte each,
# 0 = the first choice.
CHOICES: tuple[tuple[Any, ...], ...] = (
    (0.05, 0.0, 0.01, 0.2, 1.0, 3.0),
    (0, 1, 2, None, -1),
    (0.95, 0.7, 0.35),
    (5.0, 400.0, None),
    (None, None, None, "nan", "flatline", "saturation", "gap"),
    ("ack", "ack", "ack", "nak", "timeout", "lost"),
    (None, None, 500.0, 2000.0, 20_000.0, math.inf, math.nan),
)
HEADER_BYTES = 64  # config, table, board limits, policy (unused bytes read as 0)
MAX_STEPS = 16
cases = st.binary(min_size=HEADER_BYTES, max_size=HEADER_BYTES + MAX_STEPS * len(CHOICES))


@dataclass
class Case:
    cfg: SafetyConfig
    table: StimTable
    pol: PolicyConfig | DualThresholdConfig | ProportionalConfig
    bl: BoardLimits | None
    steps: list[tuple[Any, ...]]


def decode_case(data: bytes) -> Case:
    head = _Bits(data[:HEADER_BYTES])
    cfg, table, bl, pol = make_safety_config(head), make_table(head), make_board_limits(head), make_policy(head)
    assert head.pos <= HEADER_BYTES
    tail = _Bits(data[HEADER_BYTES:])
    n_steps = max(1, (len(data) - HEADER_BYTES) // len(CHOICES))
    steps = [tuple(tail.pick(options) for options in CHOICES) for _ in range(n_steps)]
    return Case(cfg, table, pol, bl, steps)


def _within_static_limits(a: StimParams, c: SafetyConfig, bl: BoardLimits | None, z: float | None) -> list[str]:
    bad = []
    f, i_ma, pw, ipg = a.frequency_hz, a.amplitude_ma, a.pulse_width_us, a.interphase_gap_us
    if not (c.min_frequency_hz <= f <= c.max_frequency_hz):
        bad.append("frequency")
    if not (0.0 <= i_ma <= c.max_amplitude_ma):
        bad.append("amplitude")
    if not (c.min_pulse_width_us <= pw <= c.max_pulse_width_us):
        bad.append("pulse_width")
    if ipg != c.interphase_gap_us:
        bad.append("interphase_gap")
    if not (2 * pw + ipg < 1e6 / f):
        bad.append("period")
    q = i_ma * pw / 1000
    if q > c.max_charge_per_phase_uc * (1 + REL):
        bad.append("charge_per_phase")
    if q / c.electrode_area_cm2 > c.max_charge_density_uc_cm2 * (1 + REL):
        bad.append("charge_density")
    if q > 0 and 2 * math.log10(q) - math.log10(c.electrode_area_cm2) > c.k_max + REL:
        bad.append("shannon_k")
    if z is not None and not math.isnan(z) and z >= 0:
        volts = (math.inf if i_ma > 0 else 0.0) if math.isinf(z) else i_ma * z / 1000
        if volts > c.compliance_v_max * (1 + REL):
            bad.append("compliance")
    if bl is not None and not (bl.min_frequency_hz <= f <= bl.max_frequency_hz and i_ma <= bl.max_amplitude_ma
                               and bl.min_pulse_width_us <= pw <= bl.max_pulse_width_us
                               and q <= bl.max_charge_per_phase_uc * (1 + REL)):
        bad.append("board_limit")
    return bad


@dataclass
class _Board:
    """What the test knows the board may be running: the lowest and highest possible amplitude."""

    lo_ma: float = 0.0
    hi_ma: float = 0.0


@pytest.mark.slow  # ~20 s of CPU: 10 000 generated sequences (the floor)
@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=cases)
def test_no_emitted_command_leaves_the_envelope(data: bytes) -> None:
    """Whatever the classifier, config and board do, each command is in the envelope, ramps, respects the dose,
    and a faulty decision (or one before clean recovery) sends only the safe state."""
    case = decode_case(data)
    try:
        _run_case(case)
    except AssertionError:
        note(f"decoded case: {case!r}")
        raise


def _run_case(case: Case) -> None:
    cfg, table, pol, bl = case.cfg, case.table, case.pol, case.bl
    ctl = Controller(pol.build(table), cfg, stale_after_ms=STALE_AFTER_MS, board_limits=bl)
    board = _Board()
    t = 0.0
    t_prev: float | None = None
    on_time_s = 0.0  # time the board may have been stimulating (test's own count)
    clean_since: float | None = None
    hold_since: float | None = None
    recovered = False
    last_reply: BoardReply | None = None
    board_ok = True
    for dt, cls, conf, age, flag, reply, z in case.steps:
        if t_prev is not None:
            t += dt
            if board.hi_ma > 0:
                on_time_s += dt
        if cls is None:
            probs = None
        elif cls == -1:
            probs = np.array([np.nan, 0.5, 0.5])
        else:
            probs = np.full(3, (1 - conf) / 2)
            probs[cls] = conf
        inputs = ControlInputs(probs=probs, data_age_ms=age, quality_flags=() if flag is None else (flag,),
                               board_ok=board_ok, last_reply=last_reply, impedance_ohm=z, t_data_s=t)
        cmd = ctl.step(t, inputs)
        a = cmd.applied

        # Issue 14: low confidence (or no classifier opinion) holds what runs once recovered — for at most
        # hold_max_s, then the safe state; while recovering it counts as not clean. Data and board faults: at once.
        unsure = probs is None or cls == -1 or conf < pol.confidence_threshold
        data_fault = (age is None or age > STALE_AFTER_MS or flag is not None or not board_ok
                      or last_reply in ("nak", "timeout"))
        holding = False
        if data_fault or (unsure and not recovered):
            clean_since, hold_since, recovered = None, None, False
        elif unsure:
            hold_since = t if hold_since is None else hold_since
            if t - hold_since >= cfg.on_fault.hold_max_s - 1e-9:  # the monitor's slack for summed tick times
                clean_since, hold_since, recovered = None, None, False
            else:
                holding = True
        else:
            hold_since = None
            clean_since = t if clean_since is None else clean_since
            # recovery is judged at clean decisions, with the monitor's own comparison (the same floats)
            recovered = recovered or (t - clean_since) >= cfg.recovery_clean_ms / 1000.0
        must_be_safe = not holding and (
            data_fault or unsure or clean_since is None or (t - clean_since) < cfg.recovery_clean_ms / 1000 - 1e-12)
        if holding:
            assert cmd.fault.mode == "hold" and not cmd.fault.active, cmd.fault
            # a hold asks for what the board runs: never more amplitude than it may be running
            assert a is None or a.amplitude_ma <= board.hi_ma + 1e-9, (a, board)
        if must_be_safe:
            assert cmd.fault.active
            if cfg.safe_state == "off" or cfg.fallback is None:
                assert a is None, f"fault {cmd.fault.faults} but sent {a}"
            elif a is not None:
                fb = cfg.fallback
                # The fallback itself, or less of it where the board's own limits are tighter than the config's.
                assert a.frequency_hz <= fb.frequency_hz and a.pulse_width_us <= fb.pulse_width_us
                assert a.amplitude_ma <= fb.amplitude_ma

        if a is not None:
            assert not _within_static_limits(a, cfg, bl, z), (a, _within_static_limits(a, cfg, bl, z))
            req = cmd.requested
            assert req is not None
            assert a.frequency_hz <= req.frequency_hz and a.pulse_width_us <= req.pulse_width_us
            # the gate never gives more than asked — except a slow ramp down, never above what may be running
            assert a.amplitude_ma <= req.amplitude_ma or (
                cfg.ramp_down_ma_per_s is not None and a.amplitude_ma <= board.lo_ma + 1e-9), (a, req, board)
            credit_s = 0.0 if t_prev is None else min(RAMP_DT_CAP_S, t - t_prev)
            assert a.amplitude_ma <= board.lo_ma + cfg.ramp_up_rate_ma_per_s * credit_s + 1e-9, "ramp broken"
            if a.amplitude_ma > 0:
                assert on_time_s < cfg.max_session_stim_s + 1e-9, "session dose exceeded"
        t_prev = t

        # The board's answer to this command, as the loop would record it.
        new_ma = 0.0 if a is None else a.amplitude_ma
        board_ok = reply != "lost"
        if reply == "ack":
            board.lo_ma = board.hi_ma = new_ma
        elif reply in ("timeout", "lost"):
            board.lo_ma, board.hi_ma = min(board.lo_ma, new_ma), max(board.hi_ma, new_ma)
        ctl.commit(t, a, acked=reply == "ack")
        replies: dict[str, BoardReply | None] = {"ack": "ack", "nak": "nak", "timeout": "timeout", "lost": None}
        last_reply = replies[reply]
