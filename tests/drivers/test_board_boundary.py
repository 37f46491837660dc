"""What the serial driver checks in what the board sends (issue 10, items 2–7): its INFO, its limits and dead-man
timer, a reconnected board against the first one, the type of every reply, the sample counter, and a read that keeps
up with the stream. The driver runs over an in-memory link to the simulated board's own logic, on a virtual clock."""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest
from structlog.testing import capture_logs

from neurostimd.clock import VirtualClock
from neurostimd.drivers.errors import BadReply, BoardLost, BoardRefused, DriverError
from neurostimd.drivers.neurostim_board.codec import (
    Ack,
    Frame,
    FrameDecoder,
    Info,
    MsgType,
    Nak,
    NakReason,
    SampleFormat,
    Samples,
    encode,
)
from neurostimd.drivers.neurostim_board.driver import SerialBoardDriver
from neurostimd.drivers.transport import ByteLink, ManipulatedLink
from neurostimd.drivers.types import BoardLimits, StimParams
from neurostimd.firmware_sim.board import DEFAULT_LIMITS, Board
from neurostimd.firmware_sim.generator import SyntheticSource
from neurostimd.firmware_sim.inprocess import BoardLink

SAFE = StimParams(50.0, 2.0, 200.0)


def make_board(clock: VirtualClock, **kw: object) -> Board:
    n_ch = int(kw.pop("n_channels", 4))  # type: ignore[call-overload]
    rate = float(kw.pop("sample_rate_hz", 1000.0))  # type: ignore[arg-type]
    return Board(source=SyntheticSource(n_ch, rate, 0), block_size=10, start_ns=clock.now_ns(),
                 **kw)  # type: ignore[arg-type]


class Rig:
    """A driver whose link goes to `self.board` (swap it to plug in another board), with an optional wrapper."""

    def __init__(self, wrap: Callable[[ByteLink], ByteLink] | None = None, **board_kw: object) -> None:
        self.clock = VirtualClock(1_000_000_000)
        self.board = make_board(self.clock, **board_kw)
        self.wrap = wrap
        self.driver = SerialBoardDriver(link_factory=self._link, now_ns=self.clock.now_ns, ack_timeout_ms=50.0,
                                        reconnect_interval_ms=500.0)

    def _link(self) -> ByteLink:
        link: ByteLink = BoardLink(self.board, self.clock)
        return self.wrap(link) if self.wrap else link

    def run(self, seconds: float, step_s: float = 0.05) -> list:  # type: ignore[type-arg]
        out = []
        end = self.clock.now_ns() + int(seconds * 1e9)
        while self.clock.now_ns() < end:
            out += self.driver.read_samples(0.0)
            self.clock.advance(int(step_s * 1e9))
        return out


# --- item 4: limits ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "value"), [
    ("max_frequency_hz", 0.0), ("max_frequency_hz", math.nan), ("max_amplitude_ma", math.inf),
    ("min_pulse_width_us", -10.0), ("max_charge_per_phase_uc", 0.0), ("min_frequency_hz", 300.0),
])
def test_a_board_reporting_impossible_limits_is_refused_with_the_limit_named(name: str, value: float) -> None:
    """INFO limits must be finite, positive and ordered (min ≤ max): anything else is refused at the handshake with a
    message naming the limit, instead of crashing the gate (max_frequency_hz = 0 raised ZeroDivisionError)."""
    limits = BoardLimits(**{**DEFAULT_LIMITS.__dict__, name: value})
    rig = Rig(limits=limits)
    with pytest.raises(BoardRefused, match=name):
        rig.driver.open()
    assert not rig.driver.is_open
    assert not [e for e in rig.board.log.events if e["event"] == "stim_applied"]


@pytest.mark.parametrize(("watchdog_ms", "why"), [(0, "no dead-man timer"), (2**32 - 1, "longer than"),
                                                  (501, "longer than")])
def test_a_board_without_a_dead_man_timer_or_with_one_too_long_is_refused(watchdog_ms: int, why: str) -> None:
    """watchdog_ms = 0 (none) or above max_watchdog_ms (500 ms by default; 2^32 − 1 was accepted) is refused."""
    rig = Rig(watchdog_ms=watchdog_ms)
    with pytest.raises(BoardRefused, match=why):
        rig.driver.open()


def test_the_gate_refuses_impossible_board_limits_instead_of_crashing() -> None:
    """Defence in depth: the gate itself refuses board limits that are not usable, with a message, never a
    ZeroDivisionError at the first command."""
    from neurostimd.core.safety import SafetyConfig, SafetyGate
    from neurostimd.errors import SafetyViolation

    with pytest.raises(SafetyViolation, match="max_frequency_hz"):
        SafetyGate(SafetyConfig.model_validate({}), BoardLimits(**{**DEFAULT_LIMITS.__dict__, "max_frequency_hz": 0}))


# --- item 2: a reconnected board --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("other", "what"), [
    ({"sample_rate_hz": 2000.0}, "sample_rate_hz"),
    ({"uv_per_lsb": 19.5}, "uv_per_lsb"),
    ({"n_channels": 16}, "n_channels"),
    ({"sample_format": SampleFormat.FLOAT32}, "sample_format"),
    ({"watchdog_ms": 400}, "watchdog_ms"),
    ({"limits": BoardLimits(**{**DEFAULT_LIMITS.__dict__, "max_amplitude_ma": 10.0})}, "max_amplitude_ma"),
])
def test_a_reconnected_board_that_differs_is_refused_until_the_original_returns(other: dict[str, object],
                                                                                 what: str) -> None:
    """After the first handshake every reconnect is compared with it: a board at another rate, scale, width, format,
    dead-man timer or limits is refused (said once, in one error line naming the difference), reconnects back off,
    and the original board is accepted again when it returns."""
    rig = Rig()
    first = rig.board
    with rig.driver as d:
        assert rig.run(0.2)
        rig.board = make_board(rig.clock, **other)  # the port now leads to another board
        d._mark_lost(BoardLost("unplugged"))  # the link breaks, as when the cable is pulled
        with capture_logs() as logs:
            for _ in range(6):
                rig.clock.advance(6_000_000_000)
                with pytest.raises(BoardLost):
                    d.read_samples(0.0)
        refused = [e for e in logs if e["event"] == "board_refused"]
        assert len(refused) == 1 and what in refused[0]["reason"], refused
        assert d.lost and d.refusal_kind == "board" and what in (d.refusal or "")
        assert not [e for e in rig.board.log.events if e["event"] == "stim_applied"]
        rig.board = first
        rig.clock.advance(6_000_000_000)
        assert d.read_samples(0.05) is not None and not d.lost and d.refusal is None
        d.set_stimulation(SAFE)


def test_reconnect_attempts_back_off_up_to_the_maximum() -> None:
    """A board that keeps failing the handshake is tried again less and less often, up to the configured maximum."""
    rig = Rig()
    opens: list[int] = []
    real = rig._link

    def counting() -> ByteLink:
        opens.append(rig.clock.now_ns())
        return real()

    with rig.driver as d:
        rig.board = make_board(rig.clock, sample_rate_hz=2000.0)
        d._factory = counting
        d._mark_lost(BoardLost("unplugged"))
        for _ in range(400):  # 20 s in 50 ms steps
            rig.clock.advance(50_000_000)
            with contextlib.suppress(BoardLost):
                d.read_samples(0.0)
    gaps_ms = np.diff(opens) / 1e6
    assert list(np.round(gaps_ms[:4], -1)) == [1000, 2000, 4000, 5000]
    assert all(g <= 5050 for g in gaps_ms)


# --- item 7: replies ------------------------------------------------------------------------------------------------
def _rewrite_replies(change: Callable[[Frame], Frame]) -> Callable[[ByteLink], ByteLink]:
    """A link wrapper that passes each frame the board sends through `change`."""

    def wrap(link: ByteLink) -> ByteLink:
        dec = FrameDecoder()

        def on_read(data: bytes) -> list[bytes]:
            return [encode(change(f)) for f in dec.feed(data)]

        return ManipulatedLink(link, on_read=on_read)

    return wrap


@pytest.mark.parametrize("forged", ["info", "ack_of_other_type", "nak_of_other_type"])
def test_only_an_ack_of_the_commands_own_type_and_seq_is_success(forged: str) -> None:
    """A reply with the command's seq but another type — an INFO, an ACK of a HEARTBEAT, a NAK of another type — is
    BadReply (outcome unknown), never success (an INFO with the seq was taken as an ACK 20 times)."""
    limits = DEFAULT_LIMITS

    def change(f: Frame) -> Frame:
        if not (isinstance(f.msg, Ack) and f.msg.acked_type == MsgType.SET_STIM):
            return f
        if forged == "info":
            return Frame(f.seq, Info("x", "y", 4, 1000.0, SampleFormat.INT16, 0.195, limits))
        if forged == "ack_of_other_type":
            return Frame(f.seq, Ack(MsgType.HEARTBEAT))
        return Frame(f.seq, Nak(MsgType.STOP, NakReason.OUT_OF_LIMITS))

    rig = Rig(wrap=_rewrite_replies(change))
    with rig.driver as d:
        with pytest.raises(BadReply, match="SET_STIM"):
            d.set_stimulation(SAFE)
        assert d.counters.extra["bad_replies"] == 1
        d.stop()


def test_a_nak_of_the_commands_type_is_a_refusal_with_its_reason() -> None:
    """A NAK naming the command's own type is a refusal (DriverError with the reason), not a bad reply."""
    rig = Rig()
    with rig.driver as d, pytest.raises(DriverError) as exc:
        d.set_stimulation(StimParams(50.0, 20.0, 200.0))
    assert exc.value.reason == "out_of_limits" and not isinstance(exc.value, BadReply)


# --- item 5: the sample counter ---------------------------------------------------------------------------------------
def _inject_block_after(n_blocks: int, first_index: int) -> Callable[[ByteLink], ByteLink]:
    """A wrapper that slips one forged SAMPLES block (counter `first_index`) in after `n_blocks` real ones."""

    def wrap(link: ByteLink) -> ByteLink:
        dec = FrameDecoder()
        seen = [0]

        def on_read(data: bytes) -> list[bytes]:
            out = []
            for f in dec.feed(data):
                out.append(encode(f))
                if isinstance(f.msg, Samples):
                    seen[0] += 1
                    if seen[0] == n_blocks:
                        out.append(encode(Frame(0, Samples(first_index, f.msg.sample_format, f.msg.data))))
            return out

        return ManipulatedLink(link, on_read=on_read)

    return wrap


def test_a_counter_jump_is_followed_not_taken_for_duplicates_for_ever() -> None:
    """One block 10^12 ahead is a gap; the board's real blocks after it are still delivered (they were all dropped as
    duplicates, stale for the rest of the run)."""
    rig = Rig(wrap=_inject_block_after(20, 10**12))
    with rig.driver as d:
        blocks = rig.run(1.0)
    idx = [b.first_index for b in blocks]
    assert 10**12 in idx
    after = idx[idx.index(10**12) + 1:]
    assert len(after) >= 50 and all(b - a == 10 for a, b in itertools.pairwise(after))
    assert d.counters.extra.get("counter_resyncs", 0) >= 1 and d.counters.sample_gaps >= 2


def test_a_board_that_restarts_is_seen_as_a_reset_and_runs_nothing() -> None:
    """A board reboot (its counter back near 0, its session gone) is noticed without any command: the driver
    counts a reset, opens a new session, and the board runs nothing (the host must ramp from zero)."""
    rig = Rig()
    with rig.driver as d:
        d.set_stimulation(SAFE)
        rig.run(0.5)
        epoch = d.session_epoch
        rig.board.reboot(rig.clock.now_ns())
        blocks = rig.run(0.5)
        assert d.resets == 1 and d.session_epoch == epoch + 1
        assert not rig.board.stimulating and not d.status().stimulating
        assert blocks and blocks[-1].first_index < 1000  # following the restarted counter
        d.set_stimulation(SAFE)  # the new session is the driver's own
        assert rig.board.stimulating


def test_a_foreign_nak_read_off_the_port_does_not_count_as_a_reset() -> None:
    """A NAK bad_session the driver did not earn (another process's, read off the shared port) costs one STATUS
    round trip and is not mistaken for a board reset."""
    rig = Rig()

    def wrap(link: ByteLink) -> ByteLink:
        sent = [False]

        def on_read(data: bytes) -> list[bytes]:
            if not sent[0] and rig.driver.session_epoch == 2 and rig.driver._session_sent >= 3:
                sent[0] = True  # once the new session has sent a few requests
                foreign_seq = (rig.driver._seq - 1) % 65536  # a seq that could be one of ours
                return [data, encode(Frame(foreign_seq, Nak(MsgType.HEARTBEAT, NakReason.BAD_SESSION)))]
            return [data]

        return ManipulatedLink(link, on_read=on_read)

    with rig.driver as d:
        rig.wrap = wrap
        d._mark_lost(BoardLost("replug"))
        rig.clock.advance(1_000_000_000)
        rig.run(0.3)
        assert d.resets == 0 and d.counters.extra.get("session_checks_ok") == 1


# --- item 6: draining the link ----------------------------------------------------------------------------------------
class TrickleLink(ByteLink):
    """At most 4095 bytes per read, as a pty hands them out."""

    def __init__(self, inner: ByteLink) -> None:
        self.inner = inner
        self._buf = bytearray()

    def write(self, data: bytes) -> None:
        self.inner.write(data)

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        if not self._buf:
            self._buf += self.inner.read(1 << 20, timeout_s)
        out = bytes(self._buf[:min(max_bytes, 4095)])
        del self._buf[:len(out)]
        return out

    def close(self) -> None:
        self.inner.close()


def test_one_read_drains_the_link_not_just_4kb() -> None:
    """A float32 board at 32 ch × 1 kHz (128 KB/s) read once per 50 ms tick through 4 KB reads delivers every sample
    (the reader took at most 4 095 bytes per tick, ~82 KB/s, and flickered between stale and stimulating)."""
    rig = Rig(wrap=TrickleLink, n_channels=32, sample_format=SampleFormat.FLOAT32)
    with rig.driver:
        blocks = rig.run(3.0)
    n = sum(len(b.data) for b in blocks)
    assert n >= 2900, f"{n} samples of 3000 in 3 s"
    assert all(b.first_index == a.first_index + 10 for a, b in itertools.pairwise(blocks))


def test_a_session_that_expired_while_the_host_was_silent_is_not_a_board_reset() -> None:
    """The host sends nothing for longer than the dead-man timeout (a slow start-up: the model and an LSL source
    load): the board ends the session, as it should; the driver renews it and counts an expiry, not a reset (every
    start logged a board reset that did not happen)."""
    rig = Rig()
    with rig.driver as d:
        rig.clock.advance(500_000_000)  # 500 ms of silence against a 250 ms timer
        st = d.status()
        assert not st.stimulating
        assert d.resets == 0 and d.counters.extra.get("session_expiries") == 1 and d.session_epoch == 2
        rig.run(1.0)  # heartbeats again: the renewed session holds
        rig.board.reboot(rig.clock.now_ns())
        rig.run(0.5)
        assert d.resets == 1, "a reboot while the host was talking is still a reset"


def test_heartbeat_refusals_are_recognised_after_any_number_of_requests() -> None:
    """A NAK bad_session of a heartbeat is taken as the session's loss however many sequence numbers the session has
    used (past 32 768 the old check ignored them for half of every 65 536)."""
    rig = Rig()
    with rig.driver as d:
        d._seq = 40_000  # as after an hour of heartbeats
        d._session_sent = 40_000
        rig.run(0.3)
        rig.board.reboot(rig.clock.now_ns())
        rig.run(0.3)
        assert d.resets == 1


def test_a_float32_board_must_report_one_microvolt_per_unit() -> None:
    """float32 samples are µV on the wire: a board that says otherwise (volts, uv_per_lsb = 1e6) is refused
    instead of being read a million times too small."""
    from neurostimd.drivers.types import BoardInfo

    info = BoardInfo("x", "y", 2, 4, 1000.0, "float32", 1e6, DEFAULT_LIMITS)
    assert any("uv_per_lsb" in p for p in info.problems())
    assert not BoardInfo("x", "y", 2, 4, 1000.0, "float32", 1.0, DEFAULT_LIMITS).problems()


def test_a_board_that_reboots_into_other_settings_is_refused_and_none_of_its_samples_delivered() -> None:
    """A board that loses the session and comes back with other settings (here 100x the µV per count) is refused at
    the re-handshake like at a reconnect: BYE, no command, and no sample of it reaches the caller."""
    rig = Rig()
    with rig.driver as d:
        rig.run(0.3)
        rig.board.reboot(rig.clock.now_ns())
        rig.board.uv_per_lsb = 19.5
        got = []
        for _ in range(10):
            rig.clock.advance(50_000_000)
            with contextlib.suppress(BoardLost):
                got += d.read_samples(0.0)
        assert d.lost and d.refusal_kind == "board" and "uv_per_lsb" in (d.refusal or "")
        assert not got, f"{len(got)} blocks of the refused board were delivered"
        assert any(e["event"] == "session_closed" for e in rig.board.log.events)
