"""The Pulse Pal driver: one output channel of a Sanworks Pulse Pal (firmware 21 or 22) over any ByteLink.

The device outputs volts into a stimulus isolator: an amplitude in mA is converted through the isolator's gain (mA
per V), and the isolator's maximum current and the device's ±10 V bound the amplitude. Times are 50 µs cycles,
rounded to the nearest cycle (ties to even); `plan(params)` says what the device will actually deliver, and after
set_stimulation `delivered` holds it (the caller should gate and audit that, not the request).

Dead-man without a device watchdog: the device never stops on its own when the host dies, so the driver programs a
FINITE train of whole periods no longer than `deadman_ms` and re-arms it from service() at every tick. A re-arm is
one write (train delay, stop, trigger) timed so that the stop lands between pulses and the new train's first pulse
falls where the old train's next pulse would have: stimulation goes on while service() runs and stops within
deadman_ms once it stops. Every message goes out in one write (a partial message locks the device until its joystick is
clicked), every confirm byte the protocol sends is read, and any other byte is a BadReply. Not thread-safe.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import structlog

from neurostimd.drivers.base import Capability, Driver
from neurostimd.drivers.errors import BadReply, BoardLost, BoardRefused, DriverError, DriverTimeout, ProtocolError
from neurostimd.drivers.pulsepal import codec as c
from neurostimd.drivers.pulsepal.codec import Param
from neurostimd.drivers.transport import ByteLink, SerialLink
from neurostimd.drivers.types import BoardInfo, BoardLimits, BoardStatus, DriverCounters, StimParams

log = structlog.get_logger(__name__)

LinkFactory = Callable[[], ByteLink]
# Opening a port at these rates erases (1200, Arduino Due) or reboots (134, Teensy) the board.
FORBIDDEN_BAUDS = frozenset({1200, 134})
CYCLE_NS = c.CYCLE_US * 1000
# The stop of a re-arm lands at least this long after a pulse ended and before the next one starts...
_MARGIN_NS = 2 * CYCLE_NS
# The longest the driver waits inside service() for a pulse to end before re-arming (else it tries next tick).
_MAX_ALIGN_WAIT_NS = 10_000_000
# ... and, where the inter-pulse interval allows, this long: the link jitter it tolerates without cutting a pulse.
_GUARD_NS = 3_000_000


def shortest_train_ms(deadman_ms: float) -> float:
    """The shortest train the driver programs for `deadman_ms`: one period of the longest, which is half of
    deadman_ms less the re-arm delay's slack (see PulsePalDriver.plan)."""
    cycles = int(deadman_ms * 1000) // c.CYCLE_US
    return (cycles - c.MIN_CYCLES - 2) // 2 * c.CYCLE_US / 1000


@dataclass(frozen=True)
class Plan:
    """What the device will run for a request: its parameters in cycles and DAC codes, and the delivered values."""

    phase_cycles: int
    gap_cycles: int
    interpulse_cycles: int
    train_cycles: int
    phase1_code: int  # cathodic first: phase 1 negative, phase 2 positive
    phase2_code: int
    delivered: StimParams

    @property
    def period_cycles(self) -> int:
        return 2 * self.phase_cycles + self.gap_cycles + self.interpulse_cycles

    def device_params(self) -> dict[int, int]:
        return {Param.BIPHASIC: 1, Param.PHASE1_DURATION: self.phase_cycles, Param.INTERPHASE: self.gap_cycles,
                Param.PHASE2_DURATION: self.phase_cycles, Param.INTERPULSE: self.interpulse_cycles,
                Param.TRAIN_DURATION: self.train_cycles, Param.PHASE1_VOLTAGE: self.phase1_code,
                Param.PHASE2_VOLTAGE: self.phase2_code}


class PulsePalDriver(Driver):
    """One output channel (1-4) of a Pulse Pal on a serial port (or on any ByteLink a factory makes).

    `isolator_ma_per_v` is the stimulus isolator's gain and `isolator_max_ma` its maximum current (both required:
    without them an amplitude in mA means nothing). `now_ns`/`sleep_ns` are the clock the re-arm timing runs on.
    The device reports nothing about what it plays: status() is the driver's own account (what it armed and until
    when), checked only in that the device answers."""

    kind: ClassVar[str] = "pulsepal"
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    protocol_version: ClassVar[int | None] = None  # info().protocol_version is the firmware version (21 or 22)

    def __init__(self, port: str | None = None, *, isolator_ma_per_v: float, isolator_max_ma: float,
                 channel: int = 1, deadman_ms: float = 250.0, baudrate: int = 115_200,
                 reply_timeout_ms: float = 200.0, link_factory: LinkFactory | None = None,
                 now_ns: Callable[[], int] = time.monotonic_ns,
                 sleep_ns: Callable[[int], None] = lambda ns: time.sleep(ns / 1e9)) -> None:
        super().__init__()
        if link_factory is None and not port:
            raise DriverError("PulsePalDriver needs a port (e.g. /dev/ttyACM0, or the PTY path the simulator prints) "
                              "or a link_factory")
        if baudrate in FORBIDDEN_BAUDS:
            raise DriverError(f"baudrate {baudrate} is refused: opening a Pulse Pal's port at 1200 baud erases an "
                              f"Arduino Due and at 134 baud reboots a Teensy; use any other rate (USB ignores it)")
        for name, v in (("isolator_ma_per_v", isolator_ma_per_v), ("isolator_max_ma", isolator_max_ma),
                        ("deadman_ms", deadman_ms), ("reply_timeout_ms", reply_timeout_ms)):
            if not (math.isfinite(v) and v > 0):
                raise DriverError(f"{name} = {v!r} must be a positive number")
        if not 1 <= channel <= c.N_OUTPUTS:
            raise DriverError(f"channel {channel} is not a Pulse Pal output (1-4)")
        self.port = port
        self.gain = float(isolator_ma_per_v)
        self.isolator_max_ma = float(isolator_max_ma)
        self.channel = channel
        self.mask = 1 << (channel - 1)
        self.deadman_cycles = int(deadman_ms * 1000) // c.CYCLE_US
        if self.deadman_cycles < 4 * c.MIN_CYCLES * 2 + c.MIN_CYCLES + 2:
            raise DriverError(f"deadman_ms = {deadman_ms} is shorter than two of the shortest pulse periods and the "
                              f"re-arm's slack (1 ms); use 100-500 ms")
        self.reply_timeout_ns = int(reply_timeout_ms * 1e6)
        self._factory: LinkFactory = link_factory or (lambda: SerialLink(port or "", baudrate))
        self._now_ns = now_ns
        self._sleep_ns = sleep_ns
        self._link: ByteLink | None = None
        self._counters = DriverCounters()
        self._info: BoardInfo | None = None
        self._pinned: BoardInfo | None = None
        self.firmware = 0
        self.hardware: c.HardwareInfo | None = None
        self._programmed: dict[int, int] = {}  # what the device holds for our channel (as far as we wrote it)
        self._plan: Plan | None = None  # the train being re-armed; None while stopped
        self._train_start_ns = 0  # when (on our clock) the current train's first pulse starts
        # one-way host -> device: half the shortest of the recent round trips (a minimum is steady where a mean would
        # move with every scheduling spike, and each move of the estimate shifts a re-armed pulse)
        self._half_rtts: collections.deque[int] = collections.deque(maxlen=32)
        self._lost = False
        self._refusal: str | None = None
        self._epoch = 0
        self.delivered: StimParams | None = None

    # --- limits and mapping ----------------------------------------------------------------------------------------
    @property
    def max_amplitude_ma(self) -> float:
        return min(self.isolator_max_ma, c.MAX_VOLTS * self.gain)

    def limits(self) -> BoardLimits:
        """The device's limits for this driver's dead-man train: two periods must fit in deadman_ms (the lowest
        frequency: one period of train plus up to one period of re-arm delay), phases are at least 2 cycles, the
        amplitude is bounded by ±10 V through the isolator and by the isolator's own maximum."""
        longest_period = (self.deadman_cycles - c.MIN_CYCLES - 2) // 2
        max_pw_us = (longest_period - 1 - c.MIN_CYCLES) // 2 * c.CYCLE_US  # two phases, a gap, an interval
        return BoardLimits(min_frequency_hz=1e6 / (longest_period * c.CYCLE_US),
                           max_frequency_hz=1e6 / (4 * c.MIN_CYCLES * c.CYCLE_US),
                           max_amplitude_ma=self.max_amplitude_ma, min_pulse_width_us=float(c.MIN_CYCLES * c.CYCLE_US),
                           max_pulse_width_us=float(max_pw_us),
                           max_charge_per_phase_uc=self.max_amplitude_ma * max_pw_us / 1000.0,
                           watchdog_ms=int(self.deadman_cycles * c.CYCLE_US / 1000))

    def shortest_train_ms(self) -> float:
        """The dead-man train at the lowest frequency (one period, of two that fit in deadman_ms): the loop must
        call service() twice within it (a tick and a late one)."""
        return shortest_train_ms(self.deadman_cycles * c.CYCLE_US / 1000)

    def deliverable(self, params: StimParams) -> StimParams:
        """What the device runs for `params` (`plan(params).delivered`): whole 50 µs cycles, the DAC's volt steps
        through the isolator's gain. DriverError when it cannot run them at all."""
        return self.plan(params).delivered

    def plan(self, params: StimParams) -> Plan:
        """The device parameters for `params` and what they deliver (`.delivered`: what a gate should check before
        sending, and an audit record after); DriverError(reason="out_of_limits") naming the problem when the device
        cannot run it safely. Sends nothing and counts nothing."""
        def refuse(why: str) -> DriverError:
            return DriverError(f"the Pulse Pal cannot deliver {params}: {why}", reason="out_of_limits")

        vals = (params.frequency_hz, params.amplitude_ma, params.pulse_width_us, params.interphase_gap_us)
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in vals):
            raise refuse("a value is not a finite number")
        if params.frequency_hz <= 0 or params.pulse_width_us <= 0 or params.interphase_gap_us < 0:
            raise refuse("frequency and pulse width must be positive and the inter-phase gap not negative")
        if not 0 <= params.amplitude_ma <= self.max_amplitude_ma:
            raise refuse(f"amplitude {params.amplitude_ma} mA is outside 0-{self.max_amplitude_ma:g} mA (isolator "
                         f"{self.gain:g} mA/V, at most {self.isolator_max_ma:g} mA and ±10 V)")
        # the phase and the amplitude round toward less charge (the controller refuses a rounding that adds any); the
        # gap and the period to the nearest cycle
        phase = c.us_to_cycles_down(params.pulse_width_us)
        gap = c.us_to_cycles(params.interphase_gap_us)
        period = c.us_to_cycles(1e6 / params.frequency_hz)
        interpulse = period - 2 * phase - gap
        if phase < c.MIN_CYCLES:
            raise refuse(f"a phase of {params.pulse_width_us} µs is {phase} cycle(s); the shortest is "
                         f"{c.MIN_CYCLES} ({c.MIN_CYCLES * c.CYCLE_US} µs)")
        if gap < 1:
            raise refuse(f"an inter-phase gap of {params.interphase_gap_us} µs is 0 cycles, which leaves the "
                         f"output stuck; the shortest is {c.CYCLE_US} µs")
        if interpulse < c.MIN_CYCLES:
            raise refuse(f"two phases and the gap ({2 * phase + gap} cycles) leave less than {c.MIN_CYCLES} cycles "
                         f"of a {period}-cycle period")
        # a re-arm may delay the new train by up to a period (to keep the pulse grid): train and delay fit deadman_ms
        n = (self.deadman_cycles - period - c.MIN_CYCLES - 2) // period
        if n < 1:
            raise refuse(f"two periods ({2 * period * c.CYCLE_US} µs) do not fit in the dead-man train "
                         f"({self.deadman_cycles * c.CYCLE_US} µs): the lowest frequency is "
                         f"{self.limits().min_frequency_hz:.3g} Hz")
        volts = params.amplitude_ma / self.gain
        # what the DAC makes, honestly: below half a step (0.15 mV) that is more than asked, which the controller
        # refuses (a STOP instead)
        p1, p2, delivered_v = c.biphasic_codes(volts)
        delivered_ma = delivered_v * self.gain
        delivered = StimParams(frequency_hz=1e6 / (period * c.CYCLE_US), amplitude_ma=delivered_ma,
                               pulse_width_us=float(phase * c.CYCLE_US),
                               interphase_gap_us=float(gap * c.CYCLE_US))
        return Plan(phase, gap, interpulse, n * period, p1, p2, delivered)

    # --- link ------------------------------------------------------------------------------------------------------
    def _drop_link(self) -> None:
        if self._link is not None:
            link, self._link = self._link, None
            link.close()

    def _write(self, data: bytes) -> None:
        """One message (or several whole ones) in ONE write."""
        if self._link is None:
            raise BoardLost("the Pulse Pal link is down; reconnect() first")
        try:
            self._link.write(data)
        except BoardLost:
            self._went_lost()
            raise

    def _went_lost(self) -> None:
        self._lost = True
        self._plan = None
        self._drop_link()

    def _read_exact(self, n: int, what: str) -> bytes:
        if self._link is None:
            raise BoardLost("the Pulse Pal link is down; reconnect() first")
        buf = bytearray()
        deadline = self._now_ns() + self.reply_timeout_ns
        try:
            while len(buf) < n:
                left = deadline - self._now_ns()
                if left <= 0:
                    self._counters.timeouts += 1
                    raise DriverTimeout(f"the Pulse Pal did not answer {what} within "
                                        f"{self.reply_timeout_ns / 1e6:g} ms ({len(buf)} of {n} bytes: "
                                        f"{bytes(buf).hex(' ') or 'none'}); check the cable and that it is on")
                buf += self._link.read(n - len(buf), left / 1e9)
        except BoardLost:
            self._went_lost()
            raise
        return bytes(buf)

    def _drain(self) -> None:
        """Anything the device sent that no request asked for is a bad reply: the pairing of confirms is lost."""
        if self._link is None:
            return
        try:
            extra = self._link.read(4096, 0.0)
        except BoardLost:
            self._went_lost()
            raise
        if extra:
            self._counters.bad_frames += 1
            self._counters.bytes_discarded += len(extra)
            raise BadReply(f"the Pulse Pal sent {len(extra)} byte(s) nobody asked for ({extra[:16].hex(' ')}); "
                           f"its confirms can no longer be paired with requests: reconnect or restart it")

    def _confirmed(self, data: bytes, n_confirms: int, what: str) -> None:
        """Write `data` (whole messages) and read the n confirm bytes they get; 0 is a refusal."""
        self._drain()
        t0 = self._now_ns()
        self._write(data)
        reply = self._read_exact(n_confirms, what) if n_confirms else b""
        if n_confirms:
            self._half_rtts.append((self._now_ns() - t0) // 2)
        for b in reply:
            try:
                ok = c.decode_confirm(bytes((b,)))
            except ProtocolError as err:
                self._counters.bad_frames += 1
                raise BadReply(f"the Pulse Pal answered {what} with {reply.hex(' ')}: {err}") from err
            if not ok:
                self._counters.naks += 1
                raise DriverError(f"the Pulse Pal refused {what} (confirm byte 0: a channel, code or value out of "
                                  f"range for this device)", reason="rejected")
        self._counters.frames_ok += n_confirms

    def _set_params(self, values: dict[int, int], what: str) -> None:
        """Write the parameters that differ from what the device holds, all in one write, and read their confirms."""
        todo = {k: v for k, v in values.items() if self._programmed.get(k) != v}
        if not todo:
            return
        data = b"".join(c.encode_set_param(k, self.channel, v) for k, v in todo.items())
        self._programmed = {k: v for k, v in self._programmed.items() if k not in todo}  # unknown until confirmed
        self._confirmed(data, len(todo), what)
        self._programmed.update(todo)

    def _stop_bytes(self) -> bytes:
        return c.encode_stop_channels(self.mask) if self.firmware >= 22 else c.encode_stop_all()

    # --- lifecycle -------------------------------------------------------------------------------------------------
    def _connect(self) -> None:
        self._link = self._factory()
        self._programmed = {}
        self._plan = None
        try:
            stale = self._link.read(4096, 0.05)  # bytes queued before we opened belong to no one
            self._counters.bytes_discarded += len(stale)
            t0 = self._now_ns()
            self._write(c.encode_handshake())
            try:
                fw = c.decode_handshake(self._read_exact(c.HANDSHAKE_REPLY_LEN, "the handshake"))
            except ProtocolError as err:
                raise BoardRefused(f"the device on {self.port or 'the link'} is not a Pulse Pal: {err}") from err
            self._half_rtts.append((self._now_ns() - t0) // 2)
            if fw not in c.SUPPORTED_FIRMWARE:
                raise BoardRefused(f"Pulse Pal firmware {fw} is not supported (21 or 22; <20 is a Pulse Pal 1 with "
                                   f"8-bit outputs, 2 a Bpod analog module): update it with Sanworks' updater")
            self.firmware = fw
            hw_version = 2
            if fw >= 22:
                self._write(c.encode_hardware_info())
                try:
                    self.hardware = c.decode_hardware_info(self._read_exact(c.HARDWARE_INFO_LEN, "op 94"))
                except ProtocolError as err:
                    raise BoardRefused(f"the Pulse Pal's hardware info is malformed: {err}") from err
                if self.hardware.cycle_us != c.CYCLE_US:
                    raise BoardRefused(f"the Pulse Pal's timer runs at {self.hardware.cycle_us} µs cycles; this "
                                       f"driver counts {c.CYCLE_US} µs")
                hw_version = self.hardware.hardware_version
            # nothing plays, nothing but this driver starts our channel: stop, no continuous loop, no TTL links
            safe: dict[int, int] = {Param.LINK_TRIGGER1: 0, Param.LINK_TRIGGER2: 0}
            data = self._stop_bytes() + c.encode_client_name("NSTIMD")
            n = 0
            if fw >= 22:
                safe[Param.CONTINUOUS] = 0
            else:
                data += c.encode_continuous(self.channel, False)
                n += 1
            self._confirmed(data, n, "the reset of continuous mode")
            self._set_params(safe, "the trigger links")
        except (DriverError, OSError):
            self._drop_link()
            raise
        info = BoardInfo(device_id=f"pulsepal{hw_version}:{self.port or 'link'}", firmware_version=str(fw),
                         protocol_version=fw, n_channels=0, sample_rate_hz=0.0, sample_format="none",
                         uv_per_lsb=1.0, limits=self.limits())
        if self._pinned is not None and self._pinned.firmware_version != info.firmware_version:
            self._drop_link()
            self._refusal = (f"the Pulse Pal now runs firmware {fw}, not {self._pinned.firmware_version} as when "
                             f"the loop started")
            raise BoardRefused(self._refusal)
        self._pinned = self._pinned or info
        self._info = info
        self._refusal = None
        self._lost = False
        self._epoch += 1

    def _open(self) -> None:
        self._connect()

    def _close(self) -> None:
        if self._link is not None:
            try:
                self.stop()
            except DriverError as err:
                log.warning("pulsepal_stop_unanswered", port=self.port, error=str(err),
                            detail="the train ends by itself within deadman_ms")
        self._drop_link()
        self._lost = False

    # --- Driver ----------------------------------------------------------------------------------------------------
    def info(self) -> BoardInfo:
        self._require_open()
        if self._info is None:
            raise BoardLost("the Pulse Pal's identity is unknown until it reconnects")
        return self._info

    def set_stimulation(self, params: StimParams) -> None:
        """Program `params` (as `plan` rounds them) and arm the train; `delivered` then holds what the device runs.
        A running train takes the new shape at its next pulse and is re-armed on the same pulse grid."""
        self._require_open()
        try:
            plan = self.plan(params)
        except DriverError:
            self._counters.naks += 1
            raise
        old = self._plan
        running = old is not None and self._now_ns() < self._train_end_ns(old)
        if running and plan == old:
            return  # already armed; service() keeps it going
        self._set_params(plan.device_params(), "the stimulation parameters")
        self.delivered = plan.delivered
        if running and old is not None:
            self._plan = plan
            self._rearm(old)
        else:
            self._plan = plan
            self._arm_fresh()

    def _train_end_ns(self, plan: Plan) -> int:
        return self._train_start_ns + plan.train_cycles * CYCLE_NS

    def _arm_fresh(self) -> None:
        assert self._plan is not None
        delay = c.MIN_CYCLES
        self._programmed.pop(Param.TRAIN_DELAY, None)
        t = self._now_ns()
        self._confirmed(c.encode_set_param(Param.TRAIN_DELAY, self.channel, delay) + self._stop_bytes()
                        + c.encode_trigger(self.mask), 1, "the arming (train delay, stop, trigger)")
        self._programmed[Param.TRAIN_DELAY] = delay
        self._train_start_ns = t + self._latency() + (1 + delay) * CYCLE_NS
        self._count("arms")

    def _rearm(self, grid: Plan) -> None:
        """Restart the train so that its first pulse lands on the running train's next pulse (`grid` is the plan
        that train runs). The stop must land between pulses (a stop that lands in a pulse cuts it) with room on both
        sides for the link's jitter, which moves both this write and the grid the last re-arm set: _GUARD_NS, or a
        third of the inter-pulse interval when that is shorter, after a pulse ends and before the next begins. The
        driver waits up to _MAX_ALIGN_WAIT_NS for that window, else leaves the re-arm to the next tick. One write:
        the train delay that puts the new first pulse on the grid, the stop and the trigger; one confirm."""
        assert self._plan is not None
        period = grid.period_cycles * CYCLE_NS
        pulse = (2 * grid.phase_cycles + grid.gap_cycles) * CYCLE_NS
        room = max(_MARGIN_NS, min(_GUARD_NS, (period - pulse) // 3))
        land = self._now_ns() + self._latency()
        if land >= self._train_start_ns:
            last = self._train_start_ns + (land - self._train_start_ns) // period * period  # the last pulse start
            opens, closes = last + pulse + room, last + period - room
            if not opens <= land <= closes:
                wait = (opens if land < opens else opens + period) - land
                if wait > _MAX_ALIGN_WAIT_NS:
                    self._count("rearm_deferred")
                    return
                self._sleep_ns(wait)
                land = self._now_ns() + self._latency()
        nxt = self._train_start_ns
        if land >= nxt:
            nxt += -(-(land - nxt) // period) * period
        delay = round((nxt - land) / CYCLE_NS) - 1
        if delay < c.MIN_CYCLES:
            nxt += period
            delay = round((nxt - land) / CYCLE_NS) - 1
        self._programmed.pop(Param.TRAIN_DELAY, None)
        self._confirmed(c.encode_set_param(Param.TRAIN_DELAY, self.channel, delay) + self._stop_bytes()
                        + c.encode_trigger(self.mask), 1, "the re-arm (train delay, stop, trigger)")
        self._programmed[Param.TRAIN_DELAY] = delay
        self._train_start_ns = nxt
        self._count("rearms")

    def _latency(self) -> int:
        return min(self._half_rtts, default=500_000)

    def _count(self, name: str) -> None:
        self._counters.extra[name] = self._counters.extra.get(name, 0) + 1

    def stop(self) -> None:
        """The device's own stop (op 98 on fw 22, op 80 on fw 21), which it never confirms; a handshake in the same
        write proves it was read and run (replies come in order)."""
        self._require_open()
        self._plan = None
        self.delivered = None
        self._drain()
        self._write(self._stop_bytes() + c.encode_handshake())
        reply = self._read_exact(c.HANDSHAKE_REPLY_LEN, "the stop (and the handshake after it)")
        try:
            fw = c.decode_handshake(reply)
        except ProtocolError as err:
            self._counters.bad_frames += 1
            raise BadReply(f"the Pulse Pal answered its stop with {reply.hex(' ')}: {err}") from err
        if fw != self.firmware:
            raise BadReply(f"the Pulse Pal reports firmware {fw} after its stop, not {self.firmware}")
        self._counters.frames_ok += 1

    def status(self) -> BoardStatus:
        """The driver's account of the device (it reports nothing about what it plays): stimulating while the train
        this driver armed has not run out, with the delivered parameters. Reads the link: anything the device sent
        unasked is a BadReply."""
        self._require_open()
        self._drain()
        on = self._plan is not None and self._now_ns() < self._train_end_ns(self._plan)
        return BoardStatus(stimulating=on, params=self.delivered if on else None, impedance_ohm=None, fault_flags=0)

    def service(self, now_ns: int) -> None:
        """Drain the link and re-arm the train (at most once a period): each tick restarts a full train on the same
        pulse grid, so the device stops one train (at most deadman_ms) after the last tick. A train that already
        ran out stays off (the host was silent longer than that)."""
        self._require_open()
        # a lost link: try again when the back-off allows; a new session arms nothing (the loop sends anew)
        if (self._link is None or self._lost) and not self._reconnect_when_due(now_ns):
            return
        self._drain()
        plan = self._plan
        if plan is None:
            return
        end = self._train_end_ns(plan)
        if now_ns >= end:
            self._plan = None
            self.delivered = None
            self._count("trains_ran_out")
            return
        if now_ns - self._train_start_ns >= plan.period_cycles * CYCLE_NS:
            self._rearm(plan)

    @property
    def counters(self) -> DriverCounters:
        return self._counters

    @property
    def max_exchange_ms(self) -> float:
        return self.reply_timeout_ns / 1e6 + _MAX_ALIGN_WAIT_NS / 1e6

    @property
    def lost(self) -> bool:
        return self._lost

    def reconnect(self) -> bool:
        self._require_open()
        if not self._lost and self._link is not None:
            return True
        try:
            self._connect()
        except DriverError as err:
            log.info("pulsepal_reconnect_failed", port=self.port, error=str(err))
            return False
        return True

    @property
    def refusal(self) -> str | None:
        return self._refusal

    @property
    def refusal_kind(self) -> str | None:
        return "board" if self._refusal else None

    @property
    def session_epoch(self) -> int:
        return self._epoch
