"""The serial driver's per-tick upkeep, service(now_ns): heartbeats, draining and session renewal without a reader,
once per tick with one (the loop reads the board source, then services the driver), and no pile of blocks nobody
reads. Over an in-memory link to the simulated board's logic, on a virtual clock."""

from __future__ import annotations

import itertools
from typing import Any

from neurostimd.clock import VirtualClock
from neurostimd.drivers.neurostim_board.driver import SerialBoardDriver
from neurostimd.drivers.transport import ByteLink
from neurostimd.drivers.types import SampleBlock, StimParams
from neurostimd.firmware_sim.board import Board
from neurostimd.firmware_sim.generator import SyntheticSource
from neurostimd.firmware_sim.inprocess import BoardLink

SAFE = StimParams(50.0, 2.0, 200.0)
TICK_NS = 50_000_000


class CountingLink(ByteLink):
    """Counts the reads the driver makes of the link."""

    def __init__(self, inner: ByteLink) -> None:
        self.inner = inner
        self.reads = 0

    def write(self, data: bytes) -> None:
        self.inner.write(data)

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        self.reads += 1
        return self.inner.read(max_bytes, timeout_s)

    def close(self) -> None:
        self.inner.close()


class Rig:
    def __init__(self, **driver_kw: object) -> None:
        self.clock = VirtualClock(1_000_000_000)
        self.board = Board(source=SyntheticSource(4, 1000.0, 0), block_size=10, start_ns=self.clock.now_ns())
        self.link: CountingLink | None = None
        self.driver = SerialBoardDriver(link_factory=self._link, now_ns=self.clock.now_ns, ack_timeout_ms=50.0,
                                        **driver_kw)  # type: ignore[arg-type]

    def _link(self) -> ByteLink:
        self.link = CountingLink(BoardLink(self.board, self.clock))
        return self.link

    def tick(self, n: int = 1, *, read: bool = False) -> list[SampleBlock]:
        """n loop ticks: the clock moves one cadence, then (read_samples, if `read`, and) service()."""
        out: list[SampleBlock] = []
        for _ in range(n):
            self.clock.advance(TICK_NS)
            if read:
                out += self.driver.read_samples(0.0)
            self.driver.service(self.clock.now_ns())
        return out

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.board.log.events if e["event"] == name]


def test_service_alone_feeds_the_dead_man_timer_and_only_while_called() -> None:
    """A caller that never reads samples (a replay or LSL source) keeps the board stimulating through service();
    when it stops calling, no heartbeat goes out and the board stops by itself."""
    rig = Rig(heartbeat_ms=100.0)
    with rig.driver as d:
        d.set_stimulation(SAFE)
        rig.tick(40)
        assert rig.board.stimulating and not rig.events("watchdog_trip")
        rig.clock.advance(400_000_000)  # the loop hangs for 400 ms
        d.service(rig.clock.now_ns())
        offs = rig.events("stim_off")
        assert offs and offs[0]["reason"] == "watchdog"


def test_blocks_nobody_reads_do_not_pile_up() -> None:
    """service() without a reader drains the link every tick but keeps only the latest drain's blocks: no growing
    queue, no blocks_dropped counted; a read after it gets the newest blocks, in order."""
    rig = Rig(max_queued_blocks=20)
    with rig.driver as d:
        rig.tick(200)  # 10 s: 1000 blocks through the link
        assert "blocks_dropped" not in d.counters.extra
        got = d.read_samples(0.0)
        assert 0 < len(got) <= 10
        assert all(b.first_index == a.first_index + len(a.data) for a, b in itertools.pairwise(got))
        assert got[-1].first_index + len(got[-1].data) == rig.board.sample_counter
        assert d.counters.sample_gaps == 0


def test_with_a_reader_the_link_is_read_once_per_tick() -> None:
    """The loop's board source reads, then the loop services: the tick's upkeep is read_samples' and service()
    reads the link no more (the drain budget stays one per tick); without a reader service() reads it."""
    rig = Rig()
    with rig.driver as d:
        link = rig.link
        assert link is not None
        rig.tick(5, read=True)
        before = link.reads
        for _ in range(20):
            rig.clock.advance(TICK_NS)
            d.read_samples(0.0)
            after_read = link.reads
            d.service(rig.clock.now_ns())
            assert link.reads == after_read, "service() read the link again in a tick read_samples served"
        per_tick_reading = (link.reads - before) / 20
        before = link.reads
        rig.tick(20)
        assert (link.reads - before) / 20 == per_tick_reading


def test_every_block_reaches_a_reader_that_services_too() -> None:
    """Blocks drained by service() wait for the next read_samples(): with service and reads in either order, none
    is lost or repeated."""
    rig = Rig()
    with rig.driver as d:
        blocks: list[SampleBlock] = []
        for k in range(100):
            rig.clock.advance(TICK_NS)
            if k % 3 == 0:
                d.service(rig.clock.now_ns())
                blocks += d.read_samples(0.0)
            else:
                blocks += d.read_samples(0.0)
                d.service(rig.clock.now_ns())
        assert all(b.first_index == a.first_index + len(a.data) for a, b in itertools.pairwise(blocks))
        assert blocks[-1].first_index + len(blocks[-1].data) - blocks[0].first_index >= 4900
        assert d.counters.sample_gaps == 0


def test_service_renews_a_session_the_board_lost() -> None:
    """A board that reboots under a caller that only services is found out (its counter back near 0, the
    heartbeat refused) and handshaken again: a reset and a new session, without a read."""
    rig = Rig()
    with rig.driver as d:
        rig.tick(6)
        epoch = d.session_epoch
        rig.board.reboot(rig.clock.now_ns())
        rig.tick(10)
        assert d.resets == 1 and d.session_epoch == epoch + 1 and not d.lost
