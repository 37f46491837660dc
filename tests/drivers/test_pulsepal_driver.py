"""The Pulse Pal driver against the simulated firmware over an in-memory link, on a virtual clock."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from neurostimd.clock import VirtualClock
from neurostimd.drivers.errors import BadReply, BoardRefused, DriverError, DriverTimeout
from neurostimd.drivers.pulsepal import codec as c
from neurostimd.drivers.pulsepal.driver import PulsePalDriver
from neurostimd.drivers.transport import ByteLink, ManipulatedLink
from neurostimd.drivers.types import StimParams
from neurostimd.firmware_sim.pulsepal.device import CYCLE_NS, PulsePal
from neurostimd.firmware_sim.pulsepal.inprocess import PulsePalLink

MS = 1_000_000
P = StimParams(frequency_hz=130.0, amplitude_ma=1.0, pulse_width_us=200.0, interphase_gap_us=50.0)


class Rig:
    def __init__(self, fw: int = 22, *, latency_ns: Any = 0, gain: float = 0.5, max_ma: float = 4.0,
                 wrap=None) -> None:  # type: ignore[no-untyped-def]
        self.clock = VirtualClock(1_000 * MS)
        self.dev = PulsePal(fw, start_ns=0)
        self.writes: list[bytes] = []
        self.partial_after_write: list[bool] = []

        def factory() -> ByteLink:
            link: ByteLink = PulsePalLink(self.dev, self.clock, latency_ns=latency_ns)
            rig = self

            class Recording(ByteLink):
                def write(self, data: bytes) -> None:
                    rig.writes.append(data)
                    link.write(data)
                    rig.partial_after_write.append(bool(rig.dev._msg))

                def read(self, max_bytes: int, timeout_s: float) -> bytes:
                    return link.read(max_bytes, timeout_s)

                def close(self) -> None:
                    link.close()

            inner: ByteLink = Recording()
            return wrap(inner) if wrap else inner

        self.driver = PulsePalDriver(isolator_ma_per_v=gain, isolator_max_ma=max_ma, link_factory=factory,
                                     now_ns=self.clock.now_ns, sleep_ns=self.clock.advance)

    def events(self, name: str) -> list[dict]:
        return [e for e in self.dev.events.events if e["event"] == name]

    def run(self, ms: int, tick_ms: int = 50) -> None:
        for _ in range(ms // tick_ms):
            self.clock.advance(tick_ms * MS)
            self.driver.service(self.clock.now_ns())


@pytest.mark.parametrize("fw", [21, 22])
def test_open_identifies_the_firmware_and_reports_limits(fw: int) -> None:
    rig = Rig(fw)
    with rig.driver as d:
        info = d.info()
        assert info.protocol_version == fw and info.firmware_version == str(fw) and info.n_channels == 0
        lim = info.limits
        assert lim.watchdog_ms == 250 and lim.min_frequency_hz == pytest.approx(1e6 / (2498 * 50))
        assert lim.max_amplitude_ma == 4.0 and lim.min_pulse_width_us == 100.0 and lim.problems() == []
        assert rig.dev.channels[0].params.continuous == 0 and rig.dev.links[0][0] == 0 and rig.dev.links[1][0] == 0
    assert PulsePalDriver(isolator_ma_per_v=0.2, isolator_max_ma=10.0, link_factory=lambda: Rig().driver._factory()
                          ).max_amplitude_ma == pytest.approx(2.0)  # ±10 V through 0.2 mA/V


class _Scripted(ByteLink):
    def __init__(self, reply: bytes) -> None:
        self.reply = bytearray(reply)
        self.sent = False

    def write(self, data: bytes) -> None:
        self.sent = True

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        if not self.sent:
            return b""
        out = bytes(self.reply[:max_bytes])
        del self.reply[:max_bytes]
        return out

    def close(self) -> None:
        pass


@pytest.mark.parametrize("reply,match", [(b"K\x14\x00\x00\x00", "firmware 20 is not supported"),
                                         (b"K\x02\x00\x00\x00", "firmware 2 is not supported"),
                                         (b"XYZAB", "not a Pulse Pal")])
def test_a_device_it_cannot_drive_is_refused(reply: bytes, match: str) -> None:
    d = PulsePalDriver(isolator_ma_per_v=1.0, isolator_max_ma=1.0, link_factory=lambda: _Scripted(reply))
    with pytest.raises(BoardRefused, match=match):
        d.open()
    assert not d.is_open


def test_a_silent_device_times_out() -> None:
    d = PulsePalDriver(isolator_ma_per_v=1.0, isolator_max_ma=1.0, link_factory=lambda: _Scripted(b""),
                       reply_timeout_ms=20)
    with pytest.raises(DriverTimeout, match="handshake"):
        d.open()


@pytest.mark.parametrize("baud", [1200, 134])
def test_the_erase_and_reboot_bauds_are_refused(baud: int) -> None:
    with pytest.raises(DriverError, match=f"baudrate {baud} is refused"):
        PulsePalDriver("/dev/ttyACM0", baudrate=baud, isolator_ma_per_v=1.0, isolator_max_ma=1.0)


def test_set_stimulation_maps_to_cycles_and_volts_and_reports_what_is_delivered() -> None:
    """130 Hz is 154 cycles (129.87 Hz); 200 µs is 4 cycles; 1 mA through 0.5 mA/V is 2 V, cathodic first; the
    train is whole periods within deadman_ms."""
    rig = Rig()
    with rig.driver as d:
        plan = d.plan(P)
        assert (plan.phase_cycles, plan.gap_cycles, plan.period_cycles) == (4, 1, 154)
        assert plan.train_cycles == 31 * 154 and plan.train_cycles + 154 + 4 <= 5000
        d.set_stimulation(P)
        p = rig.dev.channels[0].params
        assert (p.phase1, p.interphase, p.phase2, p.interpulse, p.biphasic) == (4, 1, 4, 145, 1)
        assert p.train_duration == 31 * 154
        assert c.code_to_volts(p.phase1_v) == pytest.approx(-2.0, abs=2e-4)
        assert c.code_to_volts(p.phase2_v) == pytest.approx(2.0, abs=2e-4)
        assert d.delivered is not None and d.delivered.frequency_hz == pytest.approx(1e6 / 7700)
        assert d.delivered.amplitude_ma == pytest.approx(1.0, abs=1e-4)
        st = d.status()
        assert st.stimulating and st.params == d.delivered
        applied = rig.events("stim_applied")[-1]
        assert applied["channel"] == 1 and applied["biphasic"] and applied["pulse_width_us"] == 200
        assert applied["interphase_us"] == 50 and applied["amplitude_v"] == pytest.approx(-2.0, abs=2e-4)


@pytest.mark.parametrize("params,why", [
    (StimParams(130.0, 1.0, 60.0, 50.0), "shortest is 2"),  # 1 cycle
    (StimParams(130.0, 1.0, 200.0, 20.0), "0 cycles"),
    (StimParams(130.0, 4.5, 200.0, 50.0), "outside 0-4 mA"),
    (StimParams(7.9, 1.0, 200.0, 50.0), "do not fit in the dead-man train"),
    (StimParams(2400.0, 1.0, 200.0, 50.0), "leave less than 2 cycles"),
    (StimParams(float("nan"), 1.0, 200.0, 50.0), "finite"),
])
def test_what_the_device_cannot_run_safely_is_refused_before_sending(params: StimParams, why: str) -> None:
    rig = Rig()
    with rig.driver as d:
        sent = len(rig.writes)
        with pytest.raises(DriverError, match=why) as exc:
            d.set_stimulation(params)
        assert exc.value.reason == "out_of_limits" and len(rig.writes) == sent and d.counters.naks == 1


def _intervals(dev: PulsePal) -> list[int]:
    return [b - a for a, b in itertools.pairwise(dev.pulses[0])]


@pytest.mark.parametrize("latency_us", [0, 300, 1000])
def test_service_rearms_without_a_gap_and_silence_stops_within_deadman(latency_us: int) -> None:
    """Ticks of 50 ms for 3 s: every interval between pulses is the period to within one cycle (the re-arm lands
    on the running train's pulse grid), no pulse is cut; once service() stops, the train ends within deadman_ms."""
    rig = Rig(latency_ns=latency_us * 1000)
    with rig.driver as d:
        d.set_stimulation(P)
        rig.run(3000)
        assert d.counters.extra["rearms"] >= 20
        period = 154 * CYCLE_NS
        iv = _intervals(rig.dev)
        assert len(iv) > 380 and max(abs(x - period) for x in iv) <= CYCLE_NS, sorted(set(iv))
        assert not any(e["cut_pulse"] for e in rig.events("stim_off") + rig.events("train_restarted"))
        assert len(rig.events("stim_applied")) == 1, "a re-arm with the same parameters is not a new setting"
        last_service = rig.clock.now_ns()
        rig.clock.advance(400 * MS)
        rig.dev.advance(rig.clock.now_ns())
        off = rig.events("stim_off")[-1]
        # within deadman_ms of the last re-arm reaching the device (the link's latency after the last service())
        assert off["reason"] == "train_end" and off["t_mono_ns"] - last_service <= 250 * MS + latency_us * 1000
        assert not d.status().stimulating
        d.service(rig.clock.now_ns())
        assert d.counters.extra["trains_ran_out"] == 1 and not rig.dev.channels[0].playing


def test_rearms_under_link_jitter_never_cut_a_pulse() -> None:
    """Each write reaches the device 0.1-2.2 ms after it was sent (seeded jitter): the re-arm's stop still lands
    between pulses (its window ends a third of the 7.25 ms inter-pulse interval before the next pulse), and the
    grid moves by at most the jitter."""
    rng = random.Random(7)
    rig = Rig(latency_ns=lambda: rng.randrange(100_000, 2_200_000))
    with rig.driver as d:
        d.set_stimulation(P)
        rig.run(5000, tick_ms=37)
        assert d.counters.extra["rearms"] >= 30
    restarts = rig.events("train_restarted")
    assert len(restarts) >= 30 and not any(e["cut_pulse"] for e in restarts)
    assert len([e for e in rig.events("stim_off") if e["reason"] == "host_stop"]) == 1  # close()'s stop
    iv = _intervals(rig.dev)
    assert max(abs(x - 154 * CYCLE_NS) for x in iv) <= 2_100_000 + CYCLE_NS


def test_a_new_setting_while_running_keeps_the_pulse_grid() -> None:
    rig = Rig()
    with rig.driver as d:
        d.set_stimulation(P)
        rig.run(500)
        d.set_stimulation(StimParams(130.0, 2.0, 200.0, 50.0))
        rig.run(500)
        iv = _intervals(rig.dev)
        assert max(abs(x - 154 * CYCLE_NS) for x in iv) <= CYCLE_NS
        assert rig.events("stim_applied")[-1]["amplitude_v"] == pytest.approx(-4.0, abs=3e-4)


@pytest.mark.parametrize("fw,stop_op", [(22, 98), (21, 80)])
def test_stop_uses_the_devices_stop_and_proves_it_was_read(fw: int, stop_op: int) -> None:
    rig = Rig(fw)
    with rig.driver as d:
        d.set_stimulation(P)
        rig.run(100)
        d.stop()
        assert rig.writes[-1][:2] == bytes((213, stop_op)) and rig.writes[-1][-2:] == c.encode_handshake()
        assert rig.events("stim_off")[-1]["reason"] == "host_stop" and not rig.dev.channels[0].playing
        assert not d.status().stimulating and d.delivered is None


def test_every_write_is_whole_messages() -> None:
    """No write leaves the firmware in the middle of a message (a partial one locks it until a joystick click)."""
    rig = Rig()
    with rig.driver as d:
        d.set_stimulation(P)
        rig.run(1000)
        d.set_stimulation(StimParams(50.0, 0.5, 300.0, 100.0))
        rig.run(500)
        d.stop()
    assert rig.writes and not any(rig.partial_after_write)


def test_an_unasked_byte_is_a_bad_reply() -> None:
    """fw 21's stray confirm (e.g. of an op 82 another client sent) must not be paired with a later request."""
    rig = Rig(21)
    with rig.driver as d:
        d._link.write(c.encode_continuous(2, False))  # type: ignore[union-attr]  # a confirm nobody will read
        with pytest.raises(BadReply, match="nobody asked for"):
            d.status()
        assert d.counters.bad_frames == 1


def test_a_refused_write_is_a_driver_error_with_its_reason() -> None:
    """A confirm byte of 0 (here: the channel byte corrupted on the way) is a refusal, named as such."""
    def corrupt(data: bytes) -> list[bytes]:
        if data[:2] == bytes((213, 74)) and len(data) > 20:  # the batch of stimulation parameters
            return [data[:3] + b"\x05" + data[4:]]
        return [data]

    rig = Rig(wrap=lambda link: ManipulatedLink(link, on_write=corrupt))
    with rig.driver as d:
        with pytest.raises(DriverError, match="refused") as exc:
            d.set_stimulation(P)
        assert exc.value.reason == "rejected"


def test_a_message_cut_in_transit_ends_in_a_timeout_not_a_hang() -> None:
    """A write that loses its tail sends the firmware into COMM. FAILURE; the driver times out and says so."""
    cut = {"on": False}

    def drop_tail(data: bytes) -> list[bytes]:
        return [data[:3]] if cut["on"] else [data]

    rig = Rig(wrap=lambda link: ManipulatedLink(link, on_write=drop_tail))
    with rig.driver as d:
        cut["on"] = True
        with pytest.raises(DriverTimeout, match="did not answer"):
            d.set_stimulation(P)
        rig.clock.advance(200 * MS)
        rig.dev.advance(rig.clock.now_ns())
        assert rig.dev.comm_failure
        cut["on"] = False


def test_a_lost_link_is_reported_and_reconnect_handshakes_again() -> None:
    """A link that vanishes mid-run (BoardLost) leaves the driver lost and stimulation unknown; reconnect() opens a
    new link, identifies the device again and starts a new session (nothing armed)."""
    from neurostimd.drivers.errors import BoardLost

    gone = {"on": False}

    def vanish(data: bytes) -> list[bytes]:
        if gone["on"]:
            raise BoardLost("the port vanished")
        return [data]

    rig = Rig(wrap=lambda link: ManipulatedLink(link, on_write=vanish))
    with rig.driver as d:
        d.set_stimulation(P)
        epoch = d.session_epoch
        gone["on"] = True
        rig.clock.advance(60 * MS)
        with pytest.raises(BoardLost):
            d.service(rig.clock.now_ns())
        assert d.lost and not d.status().stimulating
        assert d.reconnect() is False and d.lost
        gone["on"] = False
        assert d.reconnect() is True and not d.lost and d.session_epoch == epoch + 1
        assert d.info().protocol_version == 22 and not d.status().stimulating


def test_plan_previews_without_sending_or_counting() -> None:
    rig = Rig()
    with rig.driver as d:
        sent = len(rig.writes)
        assert d.plan(P).delivered.pulse_width_us == 200.0
        with pytest.raises(DriverError, match="outside 0-4 mA"):
            d.plan(StimParams(130.0, 40.0, 200.0, 50.0))
        assert len(rig.writes) == sent and d.counters.naks == 0


def test_deliverable_is_what_the_device_will_run_for_the_controller() -> None:
    """Driver.deliverable (what the controller checks, sends and audits) is the plan's delivered values: 130 Hz is
    a 7700 µs period (154 cycles of 50 µs), 129.87 Hz; and a request the device cannot run raises, which the
    controller refuses."""
    rig = Rig()
    with rig.driver as d:
        got = d.deliverable(StimParams(130.0, P.amplitude_ma, 200.0, 50.0))
        assert got == d.plan(StimParams(130.0, P.amplitude_ma, 200.0, 50.0)).delivered
        assert got.frequency_hz == pytest.approx(1e6 / (154 * 50.0)) and got.pulse_width_us == 200.0
        with pytest.raises(DriverError):
            d.deliverable(StimParams(130.0, 40.0, 200.0, 50.0))


@pytest.mark.parametrize("deadman_ms", [1.0, 100.0, 250.0, 500.0])
def test_the_reported_limits_are_what_plan_accepts(deadman_ms: float) -> None:
    """info()'s limits are the corners the driver can really program: the lowest frequency with the widest pulse
    and the highest frequency with the narrowest one plan; a step beyond each is refused."""
    d = PulsePalDriver("/dev/null", isolator_ma_per_v=1.0, isolator_max_ma=2.0, deadman_ms=deadman_ms)
    lim = d.limits()
    assert lim.problems() == []
    d.plan(StimParams(lim.min_frequency_hz, lim.max_amplitude_ma, lim.max_pulse_width_us, 50.0))
    d.plan(StimParams(lim.max_frequency_hz, 0.1, lim.min_pulse_width_us, 50.0))
    for beyond in (StimParams(lim.min_frequency_hz * 0.9, 0.1, 100.0, 50.0),
                   StimParams(lim.min_frequency_hz, 0.1, lim.max_pulse_width_us + 50, 50.0),
                   StimParams(lim.max_frequency_hz, 0.1, lim.min_pulse_width_us - 50, 50.0)):
        with pytest.raises(DriverError):
            d.plan(beyond)


def test_service_reconnects_a_lost_link_with_back_off() -> None:
    """The loop never calls reconnect(): service() does, at once after the loss and then when its back-off allows
    (1 s after a failure, doubling up to 5 s), so a Pulse Pal that comes back is used again, in a new session that
    runs nothing."""
    from neurostimd.drivers.errors import BoardLost

    gone = {"on": False}
    attempts = {"n": 0}

    def vanish(data: bytes) -> list[bytes]:
        if gone["on"]:
            attempts["n"] += 1
            raise BoardLost("the port vanished")
        return [data]

    rig = Rig(wrap=lambda link: ManipulatedLink(link, on_write=vanish))
    with rig.driver as d:
        d.set_stimulation(P)
        epoch = d.session_epoch
        gone["on"] = True
        rig.clock.advance(60 * MS)
        with pytest.raises(BoardLost):
            d.service(rig.clock.now_ns())
        assert d.lost
        rig.clock.advance(50 * MS)
        before = attempts["n"]
        d.service(rig.clock.now_ns())  # the first tick after the loss tries at once, and fails
        assert d.lost and attempts["n"] == before + 1
        for _ in range(15):  # the next 0.75 s: no attempt (back-off 1 s)
            rig.clock.advance(50 * MS)
            d.service(rig.clock.now_ns())
        assert attempts["n"] == before + 1 and d.lost
        gone["on"] = False
        rig.clock.advance(300 * MS)
        d.service(rig.clock.now_ns())  # 1.05 s after the failed attempt: the device is back
        assert not d.lost and d.session_epoch == epoch + 1 and not d.status().stimulating
