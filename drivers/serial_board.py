"""The serial board driver: the host side of the board protocol over any ByteLink.

No background threads: every byte is moved in the caller's thread. read_samples() reads the link, decodes, queues
SAMPLES and sends a HEARTBEAT when heartbeat_ms have passed since the last frame sent; commands write and then pump
the link until their ACK. If the caller's loop hangs, heartbeats stop and the board's dead-man timer stops
stimulation, which is the point: a heartbeat thread would keep a hung daemon looking alive.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

import numpy as np
import structlog

from drivers.base import BoardInfo, BoardStatus, Driver, DriverCounters, SampleBlock, StimParams, register_driver
from drivers.errors import BoardLost, DriverError, DriverTimeout
from drivers.links import ByteLink, SerialLink
from drivers.protocol import (
    SEQ_MODULO,
    Ack,
    Frame,
    FrameDecoder,
    Heartbeat,
    Hello,
    Info,
    Message,
    MsgType,
    Nak,
    SampleFormat,
    Samples,
    SetStim,
    Status,
    StatusReq,
    Stop,
    encode,
)

log = structlog.get_logger(__name__)

LinkFactory = Callable[[], ByteLink]
_REPLY_TYPES = (MsgType.INFO, MsgType.ACK, MsgType.NAK, MsgType.STATUS)
_READ_CHUNK = 1 << 16
_MAX_DRAIN_READS = 16  # reads without waiting after the first, per pump: bounds the time one pump can take


@register_driver("serial")
class SerialBoardDriver(Driver):
    """A stimulator board on a serial port (or on any ByteLink a factory makes).

    Give either `port` (opened with pyserial at `baudrate`) or `link_factory` (called on open and on every
    reconnect). `now_ns` is the clock for timeouts and heartbeats (time.monotonic_ns unless a virtual clock drives
    the link). Not thread-safe: one thread owns the driver.
    """

    def __init__(self, port: str | None = None, baudrate: int = 2_000_000, ack_timeout_ms: float = 100.0,
                 retries: int = 2, heartbeat_ms: float = 100.0, reconnect_interval_ms: float = 500.0, *,
                 link_factory: LinkFactory | None = None, now_ns: Callable[[], int] = time.monotonic_ns,
                 max_queued_blocks: int = 10_000) -> None:
        super().__init__()
        if link_factory is None and not port:
            raise DriverError("SerialBoardDriver needs a port (e.g. /dev/ttyACM0, or the PTY path neurostimd-sim "
                              "prints) or a link_factory")
        if ack_timeout_ms <= 0 or heartbeat_ms <= 0 or reconnect_interval_ms <= 0 or retries < 0:
            raise DriverError("ack_timeout_ms, heartbeat_ms and reconnect_interval_ms must be positive and retries "
                              f"non-negative; got {ack_timeout_ms}, {heartbeat_ms}, {reconnect_interval_ms}, "
                              f"{retries}")
        self.port = port
        self.baudrate = baudrate
        self.ack_timeout_ns = int(ack_timeout_ms * 1e6)
        self.retries = int(retries)
        self.heartbeat_ns = int(heartbeat_ms * 1e6)
        self.reconnect_interval_ns = int(reconnect_interval_ms * 1e6)
        self._factory: LinkFactory = link_factory or (lambda: SerialLink(port or "", baudrate))
        self._now_ns = now_ns
        self._link: ByteLink | None = None
        self._decoder = FrameDecoder()
        self._counters = DriverCounters()
        self._info: BoardInfo | None = None
        self._seq = 0
        self._replies: dict[int, Frame] = {}
        self._awaiting: int | None = None  # seq of the request whose reply _transact is waiting for
        self._queue: collections.deque[SampleBlock] = collections.deque()
        self._max_queued = max_queued_blocks
        self._expected_index: int | None = None
        self._last_tx_ns = 0
        self._lost = False
        self._last_attempt_ns: int | None = None

    # --- Driver ----------------------------------------------------------------------------------------------------
    def _open(self) -> None:
        self._last_attempt_ns = self._now_ns()
        self._connect()

    def _close(self) -> None:
        self._drop_link()
        self._lost = False
        self._queue.clear()

    def info(self) -> BoardInfo:
        self._require_open()
        if self._info is None:  # only after a failed reconnect: the board we knew is gone
            raise BoardLost("the board's INFO is unknown until it reconnects")
        return self._info

    def set_stimulation(self, params: StimParams) -> None:
        self._require_open()
        self._transact(SetStim(params))

    def stop(self) -> None:
        self._require_open()
        self._transact(Stop())

    def status(self) -> BoardStatus:
        self._require_open()
        reply = self._transact(StatusReq())
        if not isinstance(reply.msg, Status):
            raise DriverError(f"board answered STATUS_REQ with {reply.type.name}")
        return reply.msg.board_status()

    def read_samples(self, timeout_s: float = 0.0) -> list[SampleBlock]:
        self._require_open()
        self._ensure_link()
        deadline = self._now_ns() + int(max(0.0, timeout_s) * 1e9)
        while True:
            self._maybe_heartbeat()
            now = self._now_ns()
            wait_ns = 0 if self._queue else max(0, deadline - now)
            # wake in time for the next heartbeat even while waiting for samples
            wait_ns = min(wait_ns, max(0, self._last_tx_ns + self.heartbeat_ns - now))
            self._pump(wait_ns / 1e9)
            if self._queue or self._now_ns() >= deadline:
                break
        out = list(self._queue)
        self._queue.clear()
        return out

    @property
    def counters(self) -> DriverCounters:
        c = self._counters
        c.frames_ok = self._decoder.frames_ok
        c.bad_frames = self._decoder.bad_frames
        c.bytes_discarded = self._decoder.bytes_discarded
        return c

    # --- connection ------------------------------------------------------------------------------------------------
    @property
    def lost(self) -> bool:
        """True between losing the board and the next successful reconnect."""
        return self._lost

    def reconnect(self) -> bool:
        """Try to reach the board again (open the link, handshake). Attempts are at least reconnect_interval_ms
        apart; returns True when the board is (again) connected."""
        self._require_open()
        if not self._lost:
            return True
        now = self._now_ns()
        if self._last_attempt_ns is not None and now - self._last_attempt_ns < self.reconnect_interval_ns:
            return False
        self._last_attempt_ns = now
        try:
            self._connect()
        except DriverError as err:
            log.info("board_reconnect_failed", port=self.port, error=str(err))
            return False
        self._counters.reconnects += 1
        log.warning("board_reconnected", port=self.port, device_id=self._info.device_id if self._info else None)
        return True

    def _connect(self) -> None:
        self._link = self._factory()
        self._decoder.reset()
        self._replies.clear()
        self._expected_index = None  # a restarted board starts its counter again; the reconnect is counted
        try:
            reply = self._transact(Hello())
        except DriverError:
            self._drop_link()
            raise
        if not isinstance(reply.msg, Info):
            self._drop_link()
            raise DriverError(f"board answered HELLO with {reply.type.name}, not INFO; is this a neurostimd board?")
        self._info = reply.msg.board_info()
        self._lost = False
        log.info("board_handshake", port=self.port, device_id=self._info.device_id,
                 firmware=self._info.firmware_version, n_channels=self._info.n_channels,
                 sample_rate_hz=self._info.sample_rate_hz, limits=self._info.limits.__dict__)

    def _drop_link(self) -> None:
        if self._link is not None:
            link, self._link = self._link, None
            link.close()

    def _mark_lost(self, err: BoardLost) -> None:
        if not self._lost:
            log.warning("board_lost", port=self.port, error=str(err))
            self._counters.extra["board_lost"] = self._counters.extra.get("board_lost", 0) + 1
        self._lost = True
        self._drop_link()

    def _ensure_link(self) -> ByteLink:
        if self._link is not None and not self._lost:
            return self._link
        if not self.reconnect() or self._link is None:
            raise BoardLost(f"the board on {self.port or 'its link'} is lost; reconnect attempts every "
                            f"{self.reconnect_interval_ns / 1e6:.0f} ms")
        return self._link

    # --- frames ----------------------------------------------------------------------------------------------------
    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (self._seq + 1) % SEQ_MODULO
        return seq

    def _write(self, data: bytes) -> None:
        link = self._link
        if link is None:
            raise BoardLost("no link to the board")
        try:
            link.write(data)
        except BoardLost as err:
            self._mark_lost(err)
            raise
        self._last_tx_ns = self._now_ns()

    def _transact(self, msg: Message) -> Frame:
        """Send a request; return the board's reply. Retries with the same seq (the board de-duplicates)."""
        if not isinstance(msg, Hello):
            self._ensure_link()
        seq = self._next_seq()
        data = encode(Frame(seq, msg))
        self._replies.clear()
        self._awaiting = seq
        try:
            return self._send_and_wait(msg, seq, data)
        finally:
            self._awaiting = None

    def _send_and_wait(self, msg: Message, seq: int, data: bytes) -> Frame:
        for attempt in range(self.retries + 1):
            if attempt:
                self._counters.retries += 1
                log.info("board_command_retry", command=msg.TYPE.name, seq=seq, attempt=attempt)
            self._write(data)
            deadline = self._now_ns() + self.ack_timeout_ns
            while True:
                reply = self._replies.pop(seq, None)
                if reply is not None:
                    return self._check_reply(msg, reply)
                remaining = deadline - self._now_ns()
                if remaining <= 0:
                    break
                self._pump(remaining / 1e9)
        self._counters.timeouts += 1
        raise DriverTimeout(f"board did not answer {msg.TYPE.name} (seq {seq}) within "
                            f"{self.ack_timeout_ns / 1e6:.0f} ms after {self.retries + 1} tries; check the link")

    def _check_reply(self, msg: Message, reply: Frame) -> Frame:
        if isinstance(reply.msg, Nak):
            self._counters.naks += 1
            reason = reply.msg.reason.label
            raise DriverError(f"board refused {msg.TYPE.name}: {reason}", reason=reason)
        if isinstance(reply.msg, Ack) and reply.msg.acked_type != msg.TYPE:
            raise DriverError(f"board acknowledged message type {reply.msg.acked_type} for a {msg.TYPE.name}")
        return reply

    def _maybe_heartbeat(self) -> None:
        if self._now_ns() - self._last_tx_ns >= self.heartbeat_ns:
            self._write(encode(Frame(self._next_seq(), Heartbeat())))

    def _pump(self, timeout_s: float) -> None:
        """Read what the link has (waiting up to timeout_s for the first bytes) and dispatch the frames."""
        link = self._link
        if link is None:
            raise BoardLost("no link to the board")
        try:
            data = link.read(_READ_CHUNK, timeout_s)
            for _ in range(_MAX_DRAIN_READS):
                if not data or len(data) < _READ_CHUNK:
                    break
                more = link.read(_READ_CHUNK, 0.0)
                if not more:
                    break
                data += more
        except BoardLost as err:
            self._mark_lost(err)
            raise
        if not data:
            return
        t_recv_ns = self._now_ns()
        for frame in self._decoder.feed(data):
            if frame.type in _REPLY_TYPES:
                if frame.seq == self._awaiting:
                    self._replies[frame.seq] = frame
                # else: a heartbeat's ACK, or a late answer to a request already given up on — nothing to do

            elif isinstance(frame.msg, Samples):
                self._enqueue(frame.msg, t_recv_ns)
            else:
                self._bump("unexpected_frames")

    def _bump(self, name: str) -> None:
        self._counters.extra[name] = self._counters.extra.get(name, 0) + 1

    def _enqueue(self, s: Samples, t_recv_ns: int) -> None:
        info = self._info
        if info is None:
            self._bump("blocks_before_handshake")  # cannot scale them without INFO
            return
        n, ch = s.data.shape
        if ch != info.n_channels or s.sample_format.label != info.sample_format:
            self._bump("blocks_mismatched")
            log.warning("board_samples_mismatch", n_channels=ch, expected=info.n_channels,
                        sample_format=s.sample_format.label)
            return
        if self._expected_index is not None:
            if s.first_index < self._expected_index:
                self._bump("blocks_duplicate")  # a repeated frame: those samples were delivered already
                return
            if s.first_index > self._expected_index:
                self._counters.sample_gaps += 1
        self._expected_index = s.first_index + n
        if s.sample_format is SampleFormat.INT16:
            data = s.data.astype(np.float32) * np.float32(info.uv_per_lsb)
        else:
            data = np.array(s.data, dtype=np.float32)
        if len(self._queue) >= self._max_queued:
            self._queue.popleft()
            self._bump("blocks_dropped")  # nobody is reading: keep the newest
        self._queue.append(SampleBlock(first_index=s.first_index, data=data, t_recv_ns=t_recv_ns))
