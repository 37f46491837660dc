"""Fault injection through the link manipulator hook: the serial driver over an in-memory link to the simulated
board's logic, on a virtual clock, with frames split, dropped, duplicated, corrupted, buried in garbage, and a port
that vanishes and comes back."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import pytest

from neurostimd.clock import VirtualClock
from neurostimd.drivers.errors import BoardLost, DriverTimeout, ProtocolError
from neurostimd.drivers.neurostim_board.codec import Ack, Frame, MsgType, SetStim, decode
from neurostimd.drivers.neurostim_board.driver import SerialBoardDriver
from neurostimd.drivers.transport import ByteLink, ManipulatedLink, Manipulator, PipeLink
from neurostimd.drivers.types import StimParams
from neurostimd.firmware_sim.board import Board
from neurostimd.firmware_sim.generator import SyntheticSource
from neurostimd.firmware_sim.inprocess import BoardLink

SAFE = StimParams(50.0, 2.0, 200.0)


def frames_in(data: bytes) -> list[tuple[bytes, Frame | None]]:
    """Split wire bytes at delimiters into (chunk with its delimiters, decoded frame or None)."""
    out = []
    for part in data.split(b"\x00"):
        if not part:
            continue
        chunk = b"\x00" + part + b"\x00"
        try:
            _, frame = decode(chunk[1:])
        except ProtocolError:  # a chunk a manipulator already mangled: pass it on as it is
            frame = None
        out.append((chunk, frame))
    return out


class Rig:
    """Driver + board + clock, with manipulators on the host's writes and reads."""

    def __init__(self, on_write: Manipulator | None = None, on_read: Manipulator | None = None,
                 link_wrapper: Callable[[ByteLink], ByteLink] | None = None, **driver_kw: object) -> None:
        self.clock = VirtualClock(1_000_000_000)
        self.board = Board(source=SyntheticSource(4, 1000.0, 0), block_size=10, start_ns=self.clock.now_ns())

        def factory() -> ByteLink:
            link: ByteLink = ManipulatedLink(BoardLink(self.board, self.clock), on_write=on_write, on_read=on_read)
            return link_wrapper(link) if link_wrapper else link

        kw = {"ack_timeout_ms": 50.0, "retries": 3, **driver_kw}
        self.driver = SerialBoardDriver(link_factory=factory, now_ns=self.clock.now_ns, **kw)  # type: ignore[arg-type]

    def applied(self) -> int:
        return sum(1 for e in self.board.log.events if e["event"] == "stim_applied")

    def blocks(self, seconds: float) -> list:  # type: ignore[type-arg]
        out = []
        end = self.clock.now_ns() + int(seconds * 1e9)
        while self.clock.now_ns() < end:
            out += self.driver.read_samples(0.02)
        return out


def consecutive(blocks: list) -> bool:  # type: ignore[type-arg]
    return all(b.first_index == a.first_index + len(a.data) for a, b in itertools.pairwise(blocks))


def test_frames_split_into_tiny_chunks_still_work() -> None:
    """Frames arriving a few bytes at a time in both directions decode without loss or error."""
    rng = random.Random(1)

    def split(b: bytes) -> list[bytes]:
        out, i = [], 0
        while i < len(b):
            n = rng.randint(1, 7)
            out.append(b[i:i + n])
            i += n
        return out

    rig = Rig(on_write=split, on_read=split)
    with rig.driver as d:
        d.set_stimulation(SAFE)
        assert d.status().stimulating
        blocks = rig.blocks(0.5)
        d.stop()
    assert len(blocks) >= 45 and consecutive(blocks)
    assert d.counters.bad_frames == 0 and d.counters.retries == 0


def test_dropped_command_is_retried_and_applied_once() -> None:
    """A SET_STIM lost on the way is re-sent with the same seq after the ACK timeout and applied exactly once."""
    seen: set[int] = set()

    def drop_first_set_stim(b: bytes) -> list[bytes]:
        out = []
        for chunk, f in frames_in(b):
            if f is not None and f.type == MsgType.SET_STIM and f.seq not in seen:
                seen.add(f.seq)
                continue
            out.append(chunk)
        return out

    rig = Rig(on_write=drop_first_set_stim)
    with rig.driver as d:
        d.set_stimulation(SAFE)
        assert d.counters.retries == 1
        assert rig.applied() == 1


def test_lost_ack_makes_a_retry_that_the_board_deduplicates() -> None:
    """When the ACK is lost the retry carries the same seq; the board answers again without applying twice."""
    dropped: list[int] = []

    def drop_first_ack(b: bytes) -> list[bytes]:
        out = []
        for chunk, f in frames_in(b):
            if f is not None and isinstance(f.msg, Ack) and f.msg.acked_type == MsgType.SET_STIM and not dropped:
                dropped.append(f.seq)
                continue
            out.append(chunk)
        return out

    rig = Rig(on_read=drop_first_ack)
    with rig.driver as d:
        d.set_stimulation(SAFE)
        assert dropped and d.counters.retries == 1
        assert rig.board.counters.duplicates == 1
        assert rig.applied() == 1


def test_duplicated_frames_are_harmless() -> None:
    """Every frame sent twice: commands apply once, repeated sample blocks are dropped, no gap is reported."""
    rig = Rig(on_write=lambda b: [b, b], on_read=lambda b: [b, b])
    with rig.driver as d:
        d.set_stimulation(SAFE)
        d.set_stimulation(StimParams(20.0, 1.0, 100.0))
        d.stop()
        blocks = rig.blocks(0.3)
    assert rig.applied() == 2
    assert rig.board.counters.duplicates >= 3
    assert consecutive(blocks) and d.counters.sample_gaps == 0
    assert d.counters.extra.get("blocks_duplicate", 0) > 0


def test_corrupted_frames_are_counted_and_recovered_from() -> None:
    """Corrupted bytes in both directions: commands succeed through retries, bad frames and sample gaps are
    counted, and nothing raises."""
    rng = random.Random(3)
    n_writes = [0]

    def corrupt_every_third_write(b: bytes) -> list[bytes]:
        n_writes[0] += 1
        if n_writes[0] % 3:
            return [b]
        m = bytearray(b)
        m[len(m) // 2] ^= 0x5A
        return [bytes(m)]

    def corrupt_some_reads(b: bytes) -> list[bytes]:
        out = []
        for chunk, _ in frames_in(b):
            if rng.random() < 0.1:
                m = bytearray(chunk)
                m[rng.randrange(1, len(m) - 1)] ^= 0x01 << rng.randrange(8)
                chunk = bytes(m)
            out.append(chunk)
        return out

    rig = Rig(on_write=corrupt_every_third_write, on_read=corrupt_some_reads, retries=5)
    with rig.driver as d:
        for i in range(5):
            d.set_stimulation(StimParams(20.0 + i, 1.0, 100.0))
            d.stop()
        blocks = rig.blocks(1.0)
    assert rig.board.counters.bad_frames > 0
    assert d.counters.bad_frames > 0 and d.counters.sample_gaps > 0
    assert len(blocks) > 50
    assert rig.applied() == 5


def test_garbage_between_frames_is_skipped() -> None:
    """Random garbage (delimiters included) between frames in both directions costs nothing but discarded bytes."""
    rng = random.Random(4)

    def with_garbage(b: bytes) -> list[bytes]:
        return [rng.randbytes(rng.randint(1, 40)), b]

    rig = Rig(on_write=with_garbage, on_read=with_garbage)
    with rig.driver as d:
        d.set_stimulation(SAFE)
        assert d.status().stimulating
        d.stop()
        blocks = rig.blocks(0.5)
    assert consecutive(blocks) and d.counters.sample_gaps == 0
    assert d.counters.bytes_discarded > 0 and rig.board.counters.bytes_discarded > 0
    assert rig.applied() == 1


def test_no_answer_raises_driver_timeout_after_bounded_retries() -> None:
    """When every command is lost, set_stimulation raises DriverTimeout (a TimeoutError) after retries + 1 tries."""
    block = [False]

    def maybe_drop(b: bytes) -> list[bytes]:
        return [] if block[0] else [b]

    rig = Rig(on_write=maybe_drop, retries=2)
    with rig.driver as d:
        block[0] = True
        with pytest.raises(DriverTimeout) as exc:
            d.set_stimulation(SAFE)
        assert isinstance(exc.value, TimeoutError)
        assert d.counters.timeouts == 1 and d.counters.retries == 2
        block[0] = False
        d.set_stimulation(SAFE)  # the link is fine again: so is the driver
    assert rig.applied() == 1


class Plug:
    """A port that can be unplugged: its links and its factory raise BoardLost while it is out."""

    def __init__(self) -> None:
        self.connected = True
        self.opens = 0

    def wrap(self, inner: ByteLink) -> ByteLink:
        self.opens += 1
        if not self.connected:
            raise BoardLost("port is unplugged")
        plug = self

        class Unpluggable(ByteLink):
            def write(self, data: bytes) -> None:
                if not plug.connected:
                    raise BoardLost("port vanished")
                inner.write(data)

            def read(self, max_bytes: int, timeout_s: float) -> bytes:
                if not plug.connected:
                    raise BoardLost("port vanished")
                return inner.read(max_bytes, timeout_s)

            def close(self) -> None:
                inner.close()

        return Unpluggable()


def test_vanished_port_raises_board_lost_and_reconnects_when_it_returns() -> None:
    """An unplugged port raises BoardLost from calls, reconnect attempts are rate-limited and back off (the interval
    doubles after a failed attempt), and once the port is back the next call re-handshakes and carries on."""
    plug = Plug()
    rig = Rig(link_wrapper=plug.wrap, reconnect_interval_ms=500.0)
    with rig.driver as d:
        assert rig.blocks(0.1)
        plug.connected = False
        with pytest.raises(BoardLost):
            d.read_samples(0.05)
        assert d.lost
        opens = plug.opens
        with pytest.raises(BoardLost):
            d.status()  # within the reconnect interval: no new attempt
        assert plug.opens == opens
        rig.clock.advance(600_000_000)
        with pytest.raises(BoardLost):
            d.status()  # an attempt, but the port is still gone
        assert plug.opens == opens + 1
        plug.connected = True
        assert d.reconnect() is False  # rate-limited again
        rig.clock.advance(600_000_000)
        assert d.reconnect() is False  # backed off: 1000 ms after the failed attempt, not 500
        assert plug.opens == opens + 1
        rig.clock.advance(500_000_000)
        blocks = d.read_samples(0.05)  # reconnects by itself
        assert blocks and not d.lost
        assert d.counters.reconnects == 1 and d.counters.extra["board_lost"] == 1
        assert d.info().n_channels == 4
        d.set_stimulation(SAFE)


def test_heartbeats_keep_the_board_alive_only_while_the_caller_pumps() -> None:
    """read_samples sends heartbeats so an idle host keeps the dead-man timer armed; when the caller stops calling
    (a hung loop), no heartbeat goes out and the board stops stimulating by itself."""
    rig = Rig(heartbeat_ms=100.0)
    with rig.driver as d:
        d.set_stimulation(SAFE)
        rig.blocks(2.0)
        assert not any(e["event"] == "watchdog_trip" for e in rig.board.log.events)
        assert rig.board.stimulating
        rig.clock.advance(400_000_000)  # the loop hangs for 400 ms: the driver sends nothing
        d.read_samples(0.0)
        offs = [e for e in rig.board.log.events if e["event"] == "stim_off"]
        assert offs and offs[0]["reason"] == "watchdog"
        st = d.status()
        assert not st.stimulating and "watchdog_trip" in st.fault_names


def test_pipe_link_pair_moves_bytes_and_reports_a_closed_peer() -> None:
    """PipeLink ends exchange bytes, time out with b"" when idle, and raise BoardLost once the peer closed."""
    a, b = PipeLink.pair()
    a.write(b"abc")
    assert b.read(2, 0.1) == b"ab" and b.read(10, 0.1) == b"c"
    assert b.read(10, 0.01) == b""
    b.close()
    with pytest.raises(BoardLost):
        a.write(b"x")
    with pytest.raises(BoardLost):
        a.read(1, 0.01)
    a.close()


def test_driver_over_pipe_times_out_when_nobody_answers() -> None:
    """A driver on a pipe whose far end never answers fails the handshake with DriverTimeout and stays closed."""
    a, b = PipeLink.pair()
    d = SerialBoardDriver(link_factory=lambda: a, ack_timeout_ms=20.0, retries=1)
    with pytest.raises(DriverTimeout, match="HELLO"):
        d.open()
    assert not d.is_open
    assert b.read(4096, 0.1).count(b"\x00") >= 4  # two HELLO frames, each with two delimiters
    b.close()


def test_set_stim_frames_are_what_the_board_sees() -> None:
    """The bytes the driver writes for set_stimulation decode to a SET_STIM carrying the requested parameters."""
    sent: list[Frame] = []

    def spy(b: bytes) -> list[bytes]:
        sent.extend(f for _, f in frames_in(b) if f is not None)
        return [b]

    rig = Rig(on_write=spy)
    with rig.driver as d:
        d.set_stimulation(SAFE)
    stim = [f.msg for f in sent if isinstance(f.msg, SetStim)]
    assert [m.params for m in stim] == [SAFE]
    tokens = {getattr(f.msg, "token", None) for f in sent}
    assert len(tokens) == 1 and len(tokens.pop() or b"") == 8, "every request carries the one session token"
