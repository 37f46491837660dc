"""Each stimulator's rounding never delivers more charge than it was asked for: the amplitude and the pulse width
round down (the controller refuses a rounding that adds charge, so a driver that rounded them to the nearest step
would have half its commands refused), and what it delivers rounds to itself (a command sent again as delivered is
the same command)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from neurostimd.drivers.errors import DriverError
from neurostimd.drivers.types import StimParams
from tests.drivers.test_pulsepal_driver import Rig
from tests.drivers.test_stimjim_driver import make

SLACK = 1e-9

requests = st.builds(StimParams, frequency_hz=st.floats(20.0, 130.0), amplitude_ma=st.floats(0.01, 3.3),
                     pulse_width_us=st.floats(60.0, 400.0), interphase_gap_us=st.floats(50.0, 100.0))


def _check(deliverable, p: StimParams) -> None:  # type: ignore[no-untyped-def]
    try:
        got = deliverable(p)
    except DriverError:
        return  # a request the device cannot run at all: the controller refuses it
    assert got.amplitude_ma <= p.amplitude_ma + SLACK and got.pulse_width_us <= p.pulse_width_us + SLACK, (p, got)
    assert deliverable(got) == got


@settings(max_examples=300, deadline=None)
@given(requests)
def test_pulsepal_never_rounds_charge_up(p: StimParams) -> None:
    rig = Rig(gain=1.0, max_ma=5.0)
    with rig.driver as d:
        _check(d.deliverable, p)


@settings(max_examples=300, deadline=None)
@given(requests)
def test_stimjim_never_rounds_charge_up(p: StimParams) -> None:
    drv, _, _ = make()
    with drv:
        _check(drv.deliverable, p)
