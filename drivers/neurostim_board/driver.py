"""The serial board driver: the host side of the board protocol over any ByteLink.

No background threads: every byte is moved in the caller's thread. service() (once per tick) and read_samples() read
the link, decode, queue SAMPLES and send a HEARTBEAT when heartbeat_ms have passed since the last frame sent;
commands write and then pump the link until their reply. If the caller's loop hangs, heartbeats stop and the board's
dead-man timer stops stimulation, which is the point: a heartbeat thread would keep a hung daemon looking alive.

What comes back from the board is checked, not trusted: its INFO (impossible limits, a missing or too long dead-man
timer, and after a reconnect any difference from the board the caller was built for are refused), every reply's type
(only an ACK of the request's own type and seq is success), and the sample counter (a jump is followed, a restart
near 0 is a board reset). Commands carry this driver's random session token (protocol version 2), so the board obeys
no other process on the port.
"""

from __future__ import annotations

import collections
import secrets
import time
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import structlog

from neurostimd.drivers.base import Capability, Driver
from neurostimd.drivers.errors import BadReply, BoardLost, BoardRefused, DriverError, DriverTimeout, PortBusy
from neurostimd.drivers.neurostim_board.codec import (
    PROTOCOL_VERSION,
    SEQ_MODULO,
    SESSION_TOKEN_SIZE,
    Ack,
    Bye,
    Frame,
    FrameDecoder,
    Heartbeat,
    Hello,
    HostRequest,
    Info,
    MsgType,
    Nak,
    NakReason,
    SampleFormat,
    Samples,
    SetStim,
    Status,
    StatusReq,
    Stop,
    encode,
)
from neurostimd.drivers.transport import ByteLink, SerialLink
from neurostimd.drivers.types import BoardInfo, BoardStatus, DriverCounters, SampleBlock, StimParams

log = structlog.get_logger(__name__)

LinkFactory = Callable[[], ByteLink]
_REPLY_TYPES = (MsgType.INFO, MsgType.ACK, MsgType.NAK, MsgType.STATUS)
# The one reply type that means success for each request (a NAK is a refusal; anything else is a bad reply).
_SUCCESS = {MsgType.HELLO: MsgType.INFO, MsgType.STATUS_REQ: MsgType.STATUS, MsgType.SET_STIM: MsgType.ACK,
            MsgType.STOP: MsgType.ACK, MsgType.HEARTBEAT: MsgType.ACK, MsgType.BYE: MsgType.ACK}
_READ_CHUNK = 1 << 16
# One pump reads until the link is empty, for at most this long: the budget is time, not bytes (a float32 board at
# 32 ch x 1 kHz sends 128 KB/s, and a pty hands out at most ~4 KB per read).
_DRAIN_BUDGET_NS = 5_000_000
# A fast stream outruns the pty's small buffer between two ticks: once a pump has read this much, an empty read
# waits up to _LINGER_S for the board to refill the buffer before the pump ends (slow streams never wait).
_LINGER_AFTER_BYTES = 8192
_LINGER_S = 0.0003
# A SAMPLES counter that goes back by more than this many seconds of samples is not a duplicate but a restarted
# counter (a board reset when it lands near 0) or a jump the host must follow.
_DUPLICATE_WINDOW_S = 1.0
# This many blocks in a row that disagree with INFO (channels, format) and the link is dropped: the board is not
# sending what it said it would, and a fresh handshake is the way to find out what it is.
_MAX_MISMATCHED_BLOCKS = 20


class SerialBoardDriver(Driver):
    """A stimulator board on a serial port (or on any ByteLink a factory makes).

    Give either `port` (opened exclusively with pyserial at `baudrate`) or `link_factory` (called on open and on
    every reconnect). `now_ns` is the clock for timeouts and heartbeats (time.monotonic_ns unless a virtual clock
    drives the link). `max_watchdog_ms`: a board whose dead-man timeout is longer (or that has none) is refused.
    Reconnect attempts back off from reconnect_interval_ms, doubling up to reconnect_max_interval_ms. Not
    thread-safe: one thread owns the driver.
    """

    capabilities: ClassVar[frozenset[Capability]] = frozenset({"samples"})
    protocol_version: ClassVar[int | None] = PROTOCOL_VERSION

    def __init__(self, port: str | None = None, baudrate: int = 2_000_000, ack_timeout_ms: float = 100.0,
                 retries: int = 2, heartbeat_ms: float = 100.0, reconnect_interval_ms: float = 500.0, *,
                 link_factory: LinkFactory | None = None, now_ns: Callable[[], int] = time.monotonic_ns,
                 max_queued_blocks: int = 10_000, max_watchdog_ms: float = 500.0,
                 reconnect_max_interval_ms: float = 5000.0) -> None:
        super().__init__()
        if link_factory is None and not port:
            raise DriverError("SerialBoardDriver needs a port (e.g. /dev/ttyACM0, or the PTY path neurostimd-sim "
                              "prints) or a link_factory")
        if ack_timeout_ms <= 0 or heartbeat_ms <= 0 or reconnect_interval_ms <= 0 or retries < 0 \
                or max_watchdog_ms <= 0 or reconnect_max_interval_ms < reconnect_interval_ms:
            raise DriverError("ack_timeout_ms, heartbeat_ms, reconnect_interval_ms and max_watchdog_ms must be "
                              "positive, retries non-negative and reconnect_max_interval_ms at least "
                              f"reconnect_interval_ms; got {ack_timeout_ms}, {heartbeat_ms}, {reconnect_interval_ms}, "
                              f"{max_watchdog_ms}, {retries}, {reconnect_max_interval_ms}")
        self.port = port
        self.baudrate = baudrate
        self.ack_timeout_ns = int(ack_timeout_ms * 1e6)
        self.retries = int(retries)
        self.heartbeat_ns = int(heartbeat_ms * 1e6)
        self.reconnect_interval_ns = int(reconnect_interval_ms * 1e6)
        self.reconnect_max_interval_ns = int(reconnect_max_interval_ms * 1e6)
        self.max_watchdog_ms = float(max_watchdog_ms)
        self._factory: LinkFactory = link_factory or (lambda: SerialLink(port or "", baudrate))
        self._now_ns = now_ns
        self._link: ByteLink | None = None
        self._decoder = FrameDecoder()
        self._counters = DriverCounters()
        # A secret of this driver's life: the board obeys only requests that carry it. Kept across reconnects, so a
        # quick reconnect resumes the session; never logged, never sent back by the board.
        self._token = secrets.token_bytes(SESSION_TOKEN_SIZE)
        self._info: BoardInfo | None = None
        self._pinned: BoardInfo | None = None  # the board of the first handshake: every reconnect must match it
        self._seq = 0
        self._replies: dict[int, Frame] = {}
        self._awaiting: int | None = None  # seq of the request whose reply _transact is waiting for
        self._queue: collections.deque[SampleBlock] = collections.deque()
        self._held = 0  # blocks queued when the last service() ended: dropped by the next one if still unread
        self._read_since_service = False
        self._max_queued = max_queued_blocks
        self._expected_index: int | None = None
        self._mismatched_run = 0
        self._last_tx_ns = 0
        self._lost = False
        self._session_lost = False  # the board said our session is gone (it reset, or its watchdog expired)
        self._refusal: str | None = None
        self._refusal_kind: str | None = None
        self._last_attempt_ns: int | None = None
        self._backoff_ns = self.reconnect_interval_ns
        self._epoch = 0
        self._resets = 0
        self._session_sent = 0  # sequence numbers used since then
        self._went_silent = False  # this host left a gap longer than the board's dead-man timeout in this session
        self._handshaking = False

    # --- Driver ----------------------------------------------------------------------------------------------------
    def _open(self) -> None:
        self._last_attempt_ns = self._now_ns()
        self._connect()

    def _close(self) -> None:
        if self._link is not None and not self._lost:
            self._say_bye()
        self._drop_link()
        self._lost = False
        self._queue.clear()
        self._held = 0

    def _say_bye(self) -> None:
        """End the session, so that the next host need not wait for the dead-man timer (best effort)."""
        try:
            self._transact_once(Bye(self._token))
        except DriverError as err:
            log.info("board_bye_unanswered", port=self.port, error=str(err),
                     detail="the board's dead-man timer ends the session")

    def info(self) -> BoardInfo:
        self._require_open()
        if self._info is None:  # only after a failed reconnect: the board we knew is gone
            raise BoardLost("the board's INFO is unknown until it reconnects")
        return self._info

    def set_stimulation(self, params: StimParams) -> None:
        self._require_open()
        # Never re-sent on a fresh session: a board that lost our session runs nothing, and the caller's ramp must
        # start again from zero rather than from what the old session ran (see _transact).
        self._transact(SetStim(self._token, params))

    def stop(self) -> None:
        self._require_open()
        self._transact(Stop(self._token), resend_on_new_session=True)

    def status(self) -> BoardStatus:
        self._require_open()
        reply = self._transact(StatusReq(self._token), resend_on_new_session=True)
        assert isinstance(reply.msg, Status)  # _check_reply accepts nothing else for STATUS_REQ
        return reply.msg.board_status()

    @property
    def max_exchange_ms(self) -> float:
        return self.ack_timeout_ns * (self.retries + 1) / 1e6

    def service(self, now_ns: int) -> None:
        """The per-tick upkeep, unless read_samples() did it since the last call: a heartbeat when due, one drain
        of the link (its time budget), a lost session renewed. Timing follows the driver's own clock. Samples
        stay queued for read_samples(); those still unread at the next service() are dropped (nobody reads them:
        the loop's samples come from another source)."""
        self._require_open()
        if self._read_since_service:
            self._read_since_service = False
            return
        for _ in range(min(self._held, len(self._queue))):
            self._queue.popleft()
        self._serve(0.0)
        self._held = len(self._queue)

    def read_samples(self, timeout_s: float = 0.0) -> list[SampleBlock]:
        """Every block received since the last call. Does the upkeep of service() itself (so a caller that only
        reads keeps the board alive), waiting up to timeout_s, heartbeats included, for the first block."""
        self._require_open()
        self._read_since_service = True  # this tick's upkeep is done here, or failed here
        self._serve(timeout_s)
        self._held = 0
        out = list(self._queue)
        self._queue.clear()
        return out

    def _serve(self, timeout_s: float) -> None:
        """Heartbeats, reading and session checks until a block is queued or timeout_s is over (one pass at 0)."""
        self._ensure_link()
        deadline = self._now_ns() + int(max(0.0, timeout_s) * 1e9)
        while True:
            self._maybe_heartbeat()
            now = self._now_ns()
            wait_ns = 0 if self._queue else max(0, deadline - now)
            # wake in time for the next heartbeat even while waiting for samples
            wait_ns = min(wait_ns, max(0, self._last_tx_ns + self.heartbeat_ns - now))
            self._pump(wait_ns / 1e9)
            if self._session_lost:
                self._check_session()
            if self._queue or self._now_ns() >= deadline:
                break

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
        """True between losing the board (or refusing the one that answered) and the next good handshake."""
        return self._lost

    @property
    def refusal(self) -> str | None:
        """Why the last reconnect was refused — the board that answered has impossible INFO or is not the board of
        the first handshake, or another host holds the port or the board's session — until a good handshake; None
        otherwise."""
        return self._refusal

    @property
    def refusal_kind(self) -> str | None:
        """"board" (BoardRefused: not the board the loop was built for) or "port" (PortBusy: another host), with
        `refusal`; None otherwise."""
        return self._refusal_kind

    @property
    def session_epoch(self) -> int:
        """Counts the sessions opened with the board (handshakes): whenever it changes, the board may run anything
        from nothing to the last command, and the caller must assume it knows neither."""
        return self._epoch

    @property
    def resets(self) -> int:
        """How many times the board lost this driver's session while connected (it restarted, or its dead-man timer
        expired): each time the board stopped by itself and runs nothing."""
        return self._resets

    def reconnect(self) -> bool:
        """Try to reach the board again (open the link, handshake). Attempts back off from reconnect_interval_ms,
        doubling after each failure up to reconnect_max_interval_ms; returns True when the board is connected."""
        self._require_open()
        if not self._lost:
            return True
        now = self._now_ns()
        if self._last_attempt_ns is not None and now - self._last_attempt_ns < self._backoff_ns:
            return False
        self._last_attempt_ns = now
        try:
            self._connect()
        except DriverError as err:
            self._backoff_ns = min(2 * self._backoff_ns, self.reconnect_max_interval_ns)
            if isinstance(err, BoardRefused | PortBusy):
                self._refuse(err)
            else:
                log.info("board_reconnect_failed", port=self.port, error=str(err),
                         next_attempt_ms=round(self._backoff_ns / 1e6))
            return False
        self._backoff_ns = self.reconnect_interval_ns
        self._counters.reconnects += 1
        log.warning("board_reconnected", port=self.port, device_id=self._info.device_id if self._info else None)
        return True

    def _refuse(self, err: BoardRefused | PortBusy) -> None:
        why = str(err)
        if why != self._refusal:  # said once per distinct reason, not once per attempt
            log.error("board_refused", port=self.port, reason=why, next_attempt_ms=round(self._backoff_ns / 1e6),
                      detail="no stimulation until the board the loop was built for is back")
        self._refusal = why
        self._refusal_kind = "board" if isinstance(err, BoardRefused) else "port"

    def _connect(self) -> None:
        # Samples that arrive before this board's INFO is accepted cannot be interpreted (it may be another board).
        self._handshaking = True
        self._link = self._factory()
        self._decoder.reset()
        self._replies.clear()
        self._expected_index = None  # a restarted board starts its counter again; the reconnect is counted
        self._mismatched_run = 0
        try:
            info = self._handshake()
        except DriverError:
            self._drop_link()
            self._lost = True
            raise
        self._info = info
        self._handshaking = False
        if self._pinned is None:
            self._pinned = info
        self._lost = False
        self._session_lost = False
        self._refusal = None
        self._refusal_kind = None
        self._epoch += 1
        log.info("board_handshake", port=self.port, device_id=info.device_id, firmware=info.firmware_version,
                 n_channels=info.n_channels, sample_rate_hz=info.sample_rate_hz, limits=info.limits.__dict__)

    def _hello(self) -> Frame:
        """HELLO, waiting out another host's session: a board that answers busy is still in the session of a host
        that went away without BYE (its dead-man timer ends it within max_watchdog_ms)."""
        deadline = self._now_ns() + int(self.max_watchdog_ms * 1e6) + self.ack_timeout_ns
        while True:
            try:
                return self._transact(Hello(self._token))
            except DriverError as err:
                if err.reason != NakReason.BUSY.label or self._now_ns() >= deadline:
                    if err.reason == NakReason.BUSY.label:
                        raise PortBusy(f"the board on {self.port or 'the link'} is in another host's session, "
                                       f"which did not end within {self.max_watchdog_ms:g} ms (another program is "
                                       f"commanding it); stop that program and start again") from err
                    raise
                self._pump(min(0.02, max(0.0, (deadline - self._now_ns()) / 1e9)))

    def _check_info(self, info: BoardInfo) -> None:
        """BoardRefused unless INFO is usable and, after the first handshake, the same board (settings and limits)."""
        problems = info.problems()
        wd = info.limits.watchdog_ms
        if isinstance(wd, int) and wd > self.max_watchdog_ms:
            problems.append(f"its dead-man timer is {wd} ms, longer than [device] max_watchdog_ms = "
                            f"{self.max_watchdog_ms:g} ms (after the host dies it would stimulate that long)")
        if problems:
            raise BoardRefused(f"board {info.device_id!r} reports unusable settings: {'; '.join(problems)}; fix the "
                               f"board's firmware or configuration — the host will not command it")
        if self._pinned is not None:
            diff = self._pinned.differences(info)
            if diff:
                raise BoardRefused(f"the board now on {self.port or 'the link'} ({info.device_id!r}) is not the one "
                                   f"the loop was built for ({self._pinned.device_id!r}): {'; '.join(diff)}. "
                                   f"Reconnect the original board, or restart the daemon for this one")
            if info.device_id != self._pinned.device_id:
                log.warning("board_identity_changed", previous=self._pinned.device_id, now=info.device_id,
                            detail="same settings and limits: accepted")

    def _check_session(self) -> None:
        """Something suggested the board lost our session (a refusal of a heartbeat, a sample counter back near 0):
        ask for STATUS in it. An answer means the session lives (the hint was, e.g., another process's NAK read off
        the shared port); NAK bad_session means it is gone, and it is renewed."""
        self._session_lost = False
        try:
            self._transact_once(StatusReq(self._token))
        except DriverError as err:
            if err.reason != NakReason.BAD_SESSION.label:
                raise
            self._renew_session()
            return
        self._bump("session_checks_ok")

    def _renew_session(self) -> None:
        """The board told us our session is gone: it stopped by itself and runs nothing. Handshake again so that the
        caller can command it. A session that expired because this host itself was silent longer than the dead-man
        timeout (a slow start-up, a stalled loop) is an expiry; any other loss is a board reset, counted in
        `resets`."""
        self._session_lost = False
        self._expected_index = None
        if self._went_silent:
            self._counters.extra["session_expiries"] = self._counters.extra.get("session_expiries", 0) + 1
            log.info("board_session_expired", port=self.port,
                     detail="the host sent nothing for longer than the board's dead-man timeout (it stopped by "
                            "itself, as it should); handshaking again")
        else:
            self._resets += 1
            log.warning("board_session_lost", port=self.port, resets=self._resets,
                        detail="the board restarted or dropped the session: it runs nothing; handshaking again")
        self._handshaking = True  # samples of a rebooted board mean nothing until its INFO is accepted
        try:
            info = self._handshake()
        except BoardLost:
            self._queue.clear()
            raise
        except DriverError as err:
            self._queue.clear()
            self._mark_lost(BoardLost(str(err)))
            if isinstance(err, BoardRefused | PortBusy):
                self._refuse(err)
            return
        finally:
            self._handshaking = False
        self._info = info
        self._epoch += 1

    def _handshake(self) -> BoardInfo:
        """Open a session (HELLO) and return the board's INFO once it passes _check_info; a board that does not is
        sent BYE (we will not command it: its session ends at once) and BoardRefused raised."""
        self._start_session()
        reply = self._hello()
        assert isinstance(reply.msg, Info)  # _check_reply accepts nothing else for HELLO
        info = reply.msg.board_info()
        try:
            self._check_info(info)
        except BoardRefused:
            self._say_bye()
            raise
        return info

    def _start_session(self) -> None:
        """Bookkeeping for a new session, before its HELLO: no sequence number sent in it yet, no silence yet (the
        HELLO itself may come after a long one, which is the old session's, not this one's)."""
        self._session_sent = 0
        self._went_silent = False
        self._last_tx_ns = 0

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
            why = f": {self._refusal}" if self._refusal else ""
            raise BoardLost(f"the board on {self.port or 'its link'} is lost{why}; reconnecting (next attempt in "
                            f"{self._backoff_ns / 1e6:.0f} ms at most)")
        return self._link

    # --- frames ----------------------------------------------------------------------------------------------------
    def _in_this_session(self, seq: int) -> bool:
        """Whether `seq` is one of the last sequence numbers sent in the current session (at most half the range:
        beyond that a number is ambiguous). A late refusal of a request from before the session says nothing about
        the session we have now."""
        back = (self._seq - 1 - seq) % SEQ_MODULO
        return back < min(self._session_sent, SEQ_MODULO // 2)

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (self._seq + 1) % SEQ_MODULO
        self._session_sent += 1
        return seq

    def _write(self, data: bytes) -> None:
        link = self._link
        if link is None:
            raise BoardLost("no link to the board")
        now = self._now_ns()
        info = self._info
        if info is not None and self._last_tx_ns and now - self._last_tx_ns > info.limits.watchdog_ms * 1_000_000:
            self._went_silent = True  # the board's timer has ended the session by now: our doing, not a reset
        try:
            link.write(data)
        except BoardLost as err:
            self._mark_lost(err)
            raise
        self._last_tx_ns = self._now_ns()

    def _transact(self, msg: HostRequest, *, resend_on_new_session: bool = False) -> Frame:
        """Send a request; return the board's success reply (see _check_reply). Retries with the same seq (the board
        de-duplicates). A NAK bad_session means the board lost our session: it is renewed at once, and the request
        is sent again in the new session only if `resend_on_new_session` (STOP and STATUS_REQ, which are harmless
        to repeat); otherwise DriverError(reason="bad_session")."""
        if not isinstance(msg, Hello):
            self._ensure_link()
        try:
            return self._transact_once(msg)
        except DriverError as err:
            if err.reason != NakReason.BAD_SESSION.label or isinstance(msg, Hello):
                raise
            self._renew_session()
            if not resend_on_new_session or self._lost:
                raise
            return self._transact_once(msg)

    def _transact_once(self, msg: HostRequest) -> Frame:
        seq = self._next_seq()
        data = encode(Frame(seq, msg))
        self._replies.clear()
        self._awaiting = seq
        try:
            return self._send_and_wait(msg, seq, data)
        finally:
            self._awaiting = None

    def _send_and_wait(self, msg: HostRequest, seq: int, data: bytes) -> Frame:
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

    def _check_reply(self, msg: HostRequest, reply: Frame) -> Frame:
        """The reply if it is the request's one success type (and an ACK names the request's type); a NAK of the
        request's type is DriverError(reason); anything else with the request's seq is BadReply — the board's
        outcome is then unknown, never counted as success."""
        if isinstance(reply.msg, Nak) and reply.msg.acked_type == msg.TYPE:
            self._counters.naks += 1
            reason = reply.msg.reason.label
            raise DriverError(f"board refused {msg.TYPE.name}: {reason}", reason=reason)
        ok = reply.type == _SUCCESS[msg.TYPE] and (not isinstance(reply.msg, Ack) or reply.msg.acked_type == msg.TYPE)
        if not ok:
            self._bump("bad_replies")
            what = reply.type.name + (f" of type {reply.msg.acked_type}" if isinstance(reply.msg, Ack | Nak) else "")
            raise BadReply(f"board answered {msg.TYPE.name} (seq {reply.seq}) with {what}, not "
                           f"{_SUCCESS[msg.TYPE].name}; whether it ran the request is unknown")
        return reply

    def _maybe_heartbeat(self) -> None:
        if self._now_ns() - self._last_tx_ns >= self.heartbeat_ns:
            self._write(encode(Frame(self._next_seq(), Heartbeat(self._token))))

    def _pump(self, timeout_s: float) -> None:
        """Read what the link has (waiting up to timeout_s for the first bytes), until it is empty or the drain
        budget is spent, and dispatch the frames."""
        link = self._link
        if link is None:
            raise BoardLost("no link to the board")
        try:
            chunks = [link.read(_READ_CHUNK, timeout_s)]
            total = len(chunks[0])
            if total:
                budget_end = time.perf_counter_ns() + _DRAIN_BUDGET_NS
                while time.perf_counter_ns() < budget_end:
                    more = link.read(_READ_CHUNK, 0.0)
                    if not more and total >= _LINGER_AFTER_BYTES:
                        more = link.read(_READ_CHUNK, _LINGER_S)
                    if not more:
                        break
                    chunks.append(more)
                    total += len(more)
                else:
                    self._bump("drain_budget_spent")  # more is waiting: the next pump takes it
        except BoardLost as err:
            self._mark_lost(err)
            raise
        data = b"".join(chunks)
        if not data:
            return
        t_recv_ns = self._now_ns()
        for frame in self._decoder.feed(data):
            if frame.type in _REPLY_TYPES:
                if frame.seq == self._awaiting:
                    self._replies[frame.seq] = frame
                elif isinstance(frame.msg, Nak) and frame.msg.reason is NakReason.BAD_SESSION \
                        and self._in_this_session(frame.seq):
                    # a heartbeat (not awaited) refused: the board no longer knows our session
                    self._session_lost = True
                # else: a heartbeat's ACK, or a late answer to a request already given up on — nothing to do
            elif isinstance(frame.msg, Samples):
                self._enqueue(frame.msg, t_recv_ns)
            else:
                self._bump("unexpected_frames")

    def _bump(self, name: str) -> None:
        self._counters.extra[name] = self._counters.extra.get(name, 0) + 1

    def _enqueue(self, s: Samples, t_recv_ns: int) -> None:
        info = self._info
        if info is None or self._handshaking:
            self._bump("blocks_before_handshake")  # cannot scale them without this board's INFO
            return
        n, ch = s.data.shape
        if ch != info.n_channels or s.sample_format.label != info.sample_format:
            self._bump("blocks_mismatched")
            self._mismatched_run += 1
            if self._mismatched_run == 1:  # once per run of them, not once per block
                log.error("board_samples_mismatch", n_channels=ch, expected=info.n_channels,
                          sample_format=s.sample_format.label, expected_format=info.sample_format)
            if self._mismatched_run >= _MAX_MISMATCHED_BLOCKS:
                self._mark_lost(BoardLost(f"the board sent {self._mismatched_run} blocks that disagree with its "
                                          f"INFO ({ch} channels {s.sample_format.label}, INFO says "
                                          f"{info.n_channels} {info.sample_format}); handshaking again"))
            return
        self._mismatched_run = 0
        if self._expected_index is not None and s.first_index != self._expected_index:
            behind = self._expected_index - s.first_index
            if 0 < behind <= _DUPLICATE_WINDOW_S * info.sample_rate_hz:
                self._bump("blocks_duplicate")  # a repeated frame: those samples were delivered already
                return
            # A gap (samples the host will never see), or a counter that jumped or went back further than any
            # duplicate: follow the board's counter from here (the ring flags the discontinuity).
            self._counters.sample_gaps += 1
            if behind > 0:
                self._bump("counter_resyncs")
                if s.first_index < _DUPLICATE_WINDOW_S * info.sample_rate_hz:
                    # back near 0: the board restarted and lost our session; it stopped by itself
                    log.warning("board_counter_restarted", first_index=s.first_index, expected=self._expected_index)
                    self._session_lost = True
                else:
                    log.warning("board_counter_jumped", first_index=s.first_index, expected=self._expected_index)
            elif -behind > 60 * info.sample_rate_hz:
                self._bump("counter_resyncs")
                log.warning("board_counter_jumped", first_index=s.first_index, expected=self._expected_index)
        self._expected_index = s.first_index + n
        if s.sample_format is SampleFormat.INT16:
            data = s.data.astype(np.float32) * np.float32(info.uv_per_lsb)
        else:
            data = np.array(s.data, dtype=np.float32)
        if len(self._queue) >= self._max_queued:
            self._queue.popleft()
            self._bump("blocks_dropped")  # nobody is reading: keep the newest
        self._queue.append(SampleBlock(first_index=s.first_index, data=data, t_recv_ns=t_recv_ns))
