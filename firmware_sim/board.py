"""The simulated board's logic, as firmware would run it: protocol endpoint, device-side hard limits, dead-man timer,
sample pacing and the event log. No I/O except the event log file, no clock of its own: the caller passes the time
(`now_ns`) into every call, so the same logic runs behind a pty (firmware_sim.__main__) and in memory on a virtual
clock (firmware_sim.inprocess).

feed(bytes, now_ns) -> bytes     the board's replies to what the host sent
advance(now_ns) -> bytes         SAMPLES frames now due, after the watchdog check (sent only while a session is
                                 live: from an accepted HELLO until the dead-man timer trips)
next_wakeup_ns()                 when advance() next has something to do

Sessions (protocol version 2): HELLO opens a session under the host's token (or resumes it, same token); while it
is live only requests carrying that token are obeyed and re-arm the dead-man timer — another process on the port
gets NAK busy for its HELLO and NAK bad_session for its commands. The session ends when the dead-man timer trips,
which has stopped any stimulation, so a new session always starts on a board that runs nothing.
"""

from __future__ import annotations

import collections
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import structlog

from neurostimd.drivers.neurostim_board.codec import (
    SEQ_MODULO,
    Ack,
    Bye,
    FaultFlag,
    Frame,
    FrameDecoder,
    Heartbeat,
    Hello,
    HostRequest,
    Info,
    Message,
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
from neurostimd.drivers.types import BoardLimits, StimParams
from neurostimd.firmware_sim.generator import SampleSource

log = structlog.get_logger(__name__)

FIRMWARE_VERSION = "sim-0.2.0"  # protocol version 2
DEFAULT_LIMITS = BoardLimits(min_frequency_hz=1.0, max_frequency_hz=250.0, max_amplitude_ma=6.0,
                             min_pulse_width_us=10.0, max_pulse_width_us=1000.0, max_charge_per_phase_uc=3.0,
                             watchdog_ms=250)
MAX_INTERPHASE_GAP_US = 1000.0
DEFAULT_COMPLIANCE_V = 15.0
HIGH_IMPEDANCE_OHM = 50_000.0  # above this the electrode counts as open
# A board's FIFO holds about this much: after a longer stall samples are dropped (the host sees a counter jump),
# rather than flooding the line with a backlog.
MAX_BACKLOG_S = 1.0
# Latched fault flags an accepted SET_STIM or STOP clears (docs/protocol.md, STATUS): all but `internal`, which holds
# until the fault is cleared; high_impedance is set again at the next measurement if the electrode is still open.
_CLEARED_BY_COMMAND = FaultFlag.WATCHDOG_TRIP | FaultFlag.LIMIT_STOP | FaultFlag.HIGH_IMPEDANCE
# float32 on the wire rounds the host's values; a limit is not "exceeded" by that rounding
_REL_TOL = 1e-6


class EventLog:
    """The board's event log: JSON lines (event, t_mono_ns, fields), flushed per line; the recent events are also
    kept in memory for in-process inspection."""

    def __init__(self, path: str | Path | None = None, *, keep: int = 10_000) -> None:
        self.path = Path(path) if path is not None else None
        self._fh: IO[str] | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", encoding="utf-8")
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)

    def write(self, event: str, t_mono_ns: int, **fields: Any) -> None:
        rec = {"event": event, "t_mono_ns": int(t_mono_ns), **fields}
        self.events.append(rec)
        if self.path is not None:
            if self._fh is None:  # reopened after close(): append, never truncate
                self._fh = self.path.open("a", encoding="utf-8")
            self._fh.write(json.dumps(rec) + "\n")
            # flushed per line: a reader (or a test) sees each event as soon as it happened, and a killed process
            # loses nothing it had written
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


@dataclass
class BoardCounters:
    frames_ok: int = 0
    bad_frames: int = 0
    bytes_discarded: int = 0
    naks: int = 0
    foreign_requests: int = 0  # requests refused for another session's token (busy, bad_session)
    sessions: int = 0
    duplicates: int = 0
    blocks_sent: int = 0
    samples_dropped: int = 0
    watchdog_trips: int = 0


def check_limits(p: StimParams, limits: BoardLimits, impedance_ohm: float | None,
                 compliance_v: float) -> str | None:
    """The name of the first device-side limit `p` breaks, or None when the board may apply it."""
    vals = (p.frequency_hz, p.amplitude_ma, p.pulse_width_us, p.interphase_gap_us)
    if not all(math.isfinite(v) for v in vals):
        return "not_finite"
    hi = 1 + _REL_TOL
    if not limits.min_frequency_hz / hi <= p.frequency_hz <= limits.max_frequency_hz * hi:
        return "frequency"
    if not 0.0 <= p.amplitude_ma <= limits.max_amplitude_ma * hi:
        return "amplitude"
    if not limits.min_pulse_width_us / hi <= p.pulse_width_us <= limits.max_pulse_width_us * hi:
        return "pulse_width"
    if not 0.0 <= p.interphase_gap_us <= MAX_INTERPHASE_GAP_US:
        return "interphase_gap"
    if p.amplitude_ma * p.pulse_width_us / 1000.0 > limits.max_charge_per_phase_uc * hi:
        return "charge_per_phase"
    if 2 * p.pulse_width_us + p.interphase_gap_us >= 1e6 / p.frequency_hz:
        return "pulse_fits_period"
    if impedance_ohm is not None and p.amplitude_ma / 1000.0 * impedance_ohm > compliance_v * hi:
        return "compliance"
    return None


class Board:
    """One simulated stimulator board. Every method takes the current monotonic time in ns from the caller."""

    def __init__(self, *, source: SampleSource | None = None, n_channels: int = 32, sample_rate_hz: float = 1000.0,
                 block_size: int = 10, sample_format: SampleFormat | str = SampleFormat.INT16,
                 uv_per_lsb: float = 0.195, watchdog_ms: int = 250, limits: BoardLimits | None = None,
                 impedance_ohm: float | None = None, compliance_v: float = DEFAULT_COMPLIANCE_V,
                 device_id: str = "neurostimd-sim", event_log: EventLog | None = None,
                 stream_samples: bool = True, start_ns: int = 0, check_session: bool = True,
                 pace_rate_hz: float | None = None) -> None:
        """`check_session=False` emulates firmware that ignores the session token (any HELLO opens a session, any
        token is obeyed): only for testing what the host does against such a board. `pace_rate_hz` paces the
        samples at another rate than the INFO declares (a board whose clock is wrong), for testing the host's rate
        check. `limits.watchdog_ms == 0` emulates a board without a dead-man timer."""
        if source is not None:
            n_channels, sample_rate_hz = source.n_channels, source.sample_rate_hz
        if n_channels <= 0 or sample_rate_hz <= 0 or block_size <= 0:
            raise ValueError(f"need positive channels, rate and block size; got {n_channels}, {sample_rate_hz}, "
                             f"{block_size}")
        if watchdog_ms < 0:
            raise ValueError(f"watchdog_ms must be positive (or 0 for no dead-man timer), got {watchdog_ms}")
        fmt = SampleFormat.from_label(sample_format) if isinstance(sample_format, str) else sample_format
        self.source = source
        self.n_channels = int(n_channels)
        self.sample_rate_hz = float(sample_rate_hz)
        self.block_size = int(block_size)
        self.sample_format = fmt
        self.uv_per_lsb = float(uv_per_lsb) if fmt is SampleFormat.INT16 else 1.0
        # watchdog_ms sets the dead-man timeout whatever `limits` says (so callers vary one without the other)
        self.limits = BoardLimits(**{**(limits if limits is not None else DEFAULT_LIMITS).__dict__,
                                     "watchdog_ms": int(watchdog_ms)})
        # 0: no dead-man timer at all (an emulated unsafe board; the host refuses it)
        self.watchdog_ns = int(self.limits.watchdog_ms) * 1_000_000 or None
        self.check_session = check_session
        self.pace_rate_hz = float(pace_rate_hz) if pace_rate_hz else self.sample_rate_hz
        if not self.pace_rate_hz > 0:
            raise ValueError(f"pace_rate_hz must be positive, got {pace_rate_hz}")
        self.impedance_ohm = impedance_ohm
        self.compliance_v = compliance_v
        self.device_id = device_id
        self.log = event_log if event_log is not None else EventLog(None)
        self.stream_samples = stream_samples and source is not None
        self.counters = BoardCounters()

        self.stimulating = False
        self.params: StimParams | None = None
        self.fault_flags = 0
        self.fault_active = False
        self._decoder = FrameDecoder()
        self._host_alive = False  # a session is live: its last request came within the dead-man timeout
        self._session: bytes | None = None  # the live session's token
        self._last_rx_ns = start_ns
        self._last_cmd: tuple[int, int] | None = None  # (seq, type) of the last state-changing command
        self._last_reply = b""
        self._tx_seq = 0
        self._t0_ns = start_ns
        self.sample_counter = 0  # index of the next sample the ADC will produce

    # --- what the host sees ----------------------------------------------------------------------------------------
    def info(self) -> Info:
        return Info(device_id=self.device_id, firmware_version=FIRMWARE_VERSION, n_channels=self.n_channels,
                    sample_rate_hz=self.sample_rate_hz, sample_format=self.sample_format,
                    uv_per_lsb=self.uv_per_lsb, limits=self.limits)

    def status(self) -> Status:
        return Status(stimulating=self.stimulating, params=self.params if self.stimulating else None,
                      impedance_ohm=self.impedance_ohm, fault_flags=self.fault_flags)

    @property
    def state(self) -> int | None:
        """The plant's state when the source is synthetic, else None."""
        return self.source.state if self.source is not None else None

    # --- the byte interface ----------------------------------------------------------------------------------------
    def feed(self, data: bytes, now_ns: int) -> bytes:
        """Process bytes from the host; return the reply bytes."""
        self._check_watchdog(now_ns)
        frames = self._decoder.feed(data)
        out = bytearray()
        for err in self._decoder.errors:
            self.counters.bad_frames += 1
            self.counters.bytes_discarded += err.consumed
            if err.seq is not None and err.msg_type is not None:
                # the CRC was good, so this is the host talking: say which request was not understood
                reason = NakReason.UNSUPPORTED if err.reason in ("unknown_type", "bad_version") \
                    else NakReason.BAD_FRAME
                out += self._reply(err.seq, Nak(err.msg_type & 0xFF, reason))
        for frame in frames:
            self.counters.frames_ok += 1
            out += self._handle(frame, now_ns)
        return bytes(out)

    def advance(self, now_ns: int) -> bytes:
        """Run the dead-man check and return the SAMPLES frames due by now_ns."""
        self._check_watchdog(now_ns)
        if not self.stream_samples or self.source is None:
            return b""
        out = bytearray()
        due = self._block_due_ns(self.sample_counter + self.block_size)
        if now_ns - due > MAX_BACKLOG_S * 1e9:
            # the FIFO overflowed during a stall: the ADC kept counting, all but the last FIFO-full are gone
            behind = int((now_ns - self._t0_ns) * self.pace_rate_hz / 1e9) - self.sample_counter
            fifo = int(MAX_BACKLOG_S * self.pace_rate_hz)
            skip = max(0, (behind - fifo) // self.block_size * self.block_size)
            self.counters.samples_dropped += skip
            self.sample_counter += skip
            self.source.read(skip, self.params if self.stimulating else None)  # the tissue did not pause
            log.warning("sim_samples_dropped", samples=skip)
            due = self._block_due_ns(self.sample_counter + self.block_size)
        while due <= now_ns:
            block = self.source.read(self.block_size, self.params if self.stimulating else None)
            if len(block) == 0:  # a recording that ended without --loop: the board goes quiet
                self.stream_samples = False
                log.info("sim_signal_ended", samples=self.sample_counter)
                break
            if self._host_alive:
                out += self._send(Samples(self.sample_counter, self.sample_format, self._to_wire(block)))
                self.counters.blocks_sent += 1
            # else: nobody is listening; the ADC (and the tissue) run on, the samples are not sent. A host that
            # comes back sees the counter jump: a gap, which is the truth.
            self.sample_counter += len(block)
            due = self._block_due_ns(self.sample_counter + self.block_size)
        return bytes(out)

    def next_wakeup_ns(self) -> int | None:
        """The next time advance() has work: a block due or the dead-man deadline; None when neither."""
        times = []
        if self.stream_samples:
            times.append(self._block_due_ns(self.sample_counter + self.block_size))
        if self._host_alive and self.watchdog_ns is not None:
            times.append(self._last_rx_ns + self.watchdog_ns)
        return min(times) if times else None

    def reboot(self, now_ns: int) -> None:
        """The board restarts (its reset button, a brown-out): stimulation off, the session and the duplicate filter
        forgotten, the sample counter back at 0, latched faults cleared."""
        if self.stimulating:
            self._stim_off(now_ns, "shutdown")
        self.log.write("board_reset", now_ns, samples_before=self.sample_counter)
        self._host_alive = False
        self._session = None
        self._last_cmd = None
        self._decoder.reset()
        self.fault_flags = 0
        self.fault_active = False
        self.sample_counter = 0
        self._t0_ns = now_ns
        self._tx_seq = 0

    # --- events from outside the protocol -------------------------------------------------------------------------
    def shutdown(self, now_ns: int) -> None:
        """The board is switched off: stop stimulating (logged with reason "shutdown")."""
        if self.stimulating:
            self._stim_off(now_ns, "shutdown")

    def set_impedance(self, impedance_ohm: float | None, now_ns: int) -> None:
        """A new electrode impedance measurement; a running stimulation that now breaks compliance is stopped."""
        self.impedance_ohm = impedance_ohm
        if impedance_ohm is not None and impedance_ohm > HIGH_IMPEDANCE_OHM:
            self.fault_flags |= FaultFlag.HIGH_IMPEDANCE
        if self.stimulating and self.params is not None:
            rule = check_limits(self.params, self.limits, impedance_ohm, self.compliance_v)
            if rule is not None:
                self.fault_flags |= FaultFlag.LIMIT_STOP
                self._stim_off(now_ns, "limit", rule=rule)

    def inject_fault(self, now_ns: int) -> None:
        """An internal fault: stimulation stops and SET_STIM is refused (NAK fault) until clear_fault()."""
        self.fault_active = True
        self.fault_flags |= FaultFlag.INTERNAL
        if self.stimulating:
            self._stim_off(now_ns, "fault")

    def clear_fault(self) -> None:
        self.fault_active = False
        self.fault_flags &= ~FaultFlag.INTERNAL

    # --- internals -------------------------------------------------------------------------------------------------
    def _block_due_ns(self, n_samples_done: int) -> int:
        # absolute schedule from t0: no drift however the calls are spaced
        return self._t0_ns + round(n_samples_done * 1e9 / self.pace_rate_hz)

    def _to_wire(self, block: np.ndarray) -> np.ndarray:
        if self.sample_format is SampleFormat.FLOAT32:
            return np.asarray(block, dtype=np.float32)
        counts = np.rint(np.asarray(block, dtype=np.float64) / self.uv_per_lsb)
        return np.clip(counts, -32768, 32767).astype(np.int16)  # the ADC saturates, it does not wrap

    def _send(self, msg: Message) -> bytes:
        seq = self._tx_seq
        self._tx_seq = (self._tx_seq + 1) % SEQ_MODULO
        return encode(Frame(seq, msg))

    @staticmethod
    def _reply(seq: int, msg: Message) -> bytes:
        return encode(Frame(seq, msg))

    def _check_watchdog(self, now_ns: int) -> None:
        if not self._host_alive or self.watchdog_ns is None or now_ns < self._last_rx_ns + self.watchdog_ns:
            return
        self._host_alive = False  # the session ends with it: the next host must HELLO again
        silent_ms = (now_ns - self._last_rx_ns) / 1e6
        self.counters.watchdog_trips += 1
        self.log.write("watchdog_trip", now_ns, silent_ms=round(silent_ms, 3), watchdog_ms=self.limits.watchdog_ms,
                       stimulating=self.stimulating)
        if self.stimulating:
            self.fault_flags |= FaultFlag.WATCHDOG_TRIP
            self._stim_off(now_ns, "watchdog", silent_ms=round(silent_ms, 3))

    def _stim_off(self, now_ns: int, reason: str, **fields: Any) -> None:
        self.stimulating = False
        self.params = None
        self.log.write("stim_off", now_ns, reason=reason, **fields)

    def _refuse(self, frame: Frame, reason: NakReason, now_ns: int) -> bytes:
        """A request of another session (or of none): answered, not obeyed, and the dead-man timer not re-armed —
        a second process on the port can neither command the board nor keep a dead host's stimulation alive."""
        self.counters.naks += 1
        self.counters.foreign_requests += 1
        if isinstance(frame.msg, SetStim | Stop | Hello):
            self.log.write("command_refused", now_ns, reason=reason.label, command=frame.type.name,
                           **(frame.msg.params.as_dict() if isinstance(frame.msg, SetStim) else {}))
        return self._reply(frame.seq, Nak(int(frame.type), reason))

    def _handle(self, frame: Frame, now_ns: int) -> bytes:
        msg = frame.msg
        if not isinstance(msg, HostRequest):  # a board → host type sent to the board: not a request
            self.counters.naks += 1
            return self._reply(frame.seq, Nak(int(msg.TYPE), NakReason.UNSUPPORTED))
        live = self._host_alive and self._session is not None
        if isinstance(msg, Hello):
            if live and msg.token != self._session and self.check_session:
                return self._refuse(frame, NakReason.BUSY, now_ns)
            if not live or msg.token != self._session:
                # A new session. The old one (if any) ended by the dead-man timer, which stopped stimulation, so
                # the new host starts on a board that runs nothing; sequence numbers start over.
                self._session = msg.token
                self._last_cmd = None
                self.counters.sessions += 1
                self.log.write("session_open", now_ns, sessions=self.counters.sessions)
            self._last_rx_ns = now_ns
            self._host_alive = True
            return self._reply(frame.seq, self.info())
        if self.check_session and (not live or msg.token != self._session):
            return self._refuse(frame, NakReason.BAD_SESSION, now_ns)
        self._last_rx_ns = now_ns
        self._host_alive = True
        if isinstance(msg, Bye):
            # the host closes its session: nothing will feed the dead-man timer, so stop now rather than later
            if self.stimulating:
                self._stim_off(now_ns, "host_stop")
            self._host_alive = False
            self._session = None
            self.log.write("session_closed", now_ns)
            return self._reply(frame.seq, Ack(MsgType.BYE))
        if isinstance(msg, Heartbeat):
            return self._reply(frame.seq, Ack(MsgType.HEARTBEAT))
        if isinstance(msg, StatusReq):
            return self._reply(frame.seq, self.status())
        if isinstance(msg, SetStim | Stop):
            key = (frame.seq, int(msg.TYPE))
            if key == self._last_cmd:
                # a retry of a command already handled: same answer, no second effect
                self.counters.duplicates += 1
                return self._last_reply
            reply = self._set_stim(frame.seq, msg.params, now_ns) if isinstance(msg, SetStim) \
                else self._stop(frame.seq, now_ns)
            self._last_cmd, self._last_reply = key, reply
            return reply
        self.counters.naks += 1  # not reached: every HostRequest type is handled above
        return self._reply(frame.seq, Nak(int(msg.TYPE), NakReason.UNSUPPORTED))

    def _set_stim(self, seq: int, p: StimParams, now_ns: int) -> bytes:
        if self.fault_active:
            self.counters.naks += 1
            self.log.write("command_refused", now_ns, reason="fault", **p.as_dict())
            return self._reply(seq, Nak(MsgType.SET_STIM, NakReason.FAULT))
        rule = check_limits(p, self.limits, self.impedance_ohm, self.compliance_v)
        if rule is not None:
            # the running stimulation (if any) was within limits and stays as it was
            self.counters.naks += 1
            self.log.write("command_refused", now_ns, reason="out_of_limits", rule=rule, **p.as_dict())
            return self._reply(seq, Nak(MsgType.SET_STIM, NakReason.OUT_OF_LIMITS))
        self.stimulating = True
        self.params = p
        self._clear_latched()
        self.log.write("stim_applied", now_ns, **p.as_dict(), interphase_gap_us=float(p.interphase_gap_us))
        return self._reply(seq, Ack(MsgType.SET_STIM))

    def _clear_latched(self) -> None:
        self.fault_flags &= ~_CLEARED_BY_COMMAND
        if self.impedance_ohm is not None and self.impedance_ohm > HIGH_IMPEDANCE_OHM:
            self.fault_flags |= FaultFlag.HIGH_IMPEDANCE  # still open: the condition, not only the event

    def _stop(self, seq: int, now_ns: int) -> bytes:
        if self.stimulating:
            self._stim_off(now_ns, "host_stop")
        self._clear_latched()
        return self._reply(seq, Ack(MsgType.STOP))
