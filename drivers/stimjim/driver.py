"""The StimJim driver: the Driver ABC over a ByteLink speaking the text line protocol (drivers/stimjim/codec.py),
for the Teensy firmware (stimjimPulser.ino since ea7d0de) and the RP2354B rewrite, told apart by their replies.

The device has no watchdog, reports no limits and streams nothing. So:
- the limits are configured (amplitude at most ±3.33 mA: the Teensy firmware does not clamp, its DAC code wraps and
  the polarity flips), and `watchdog_ms` in info() is `deadman_ms`, the length of the trains this driver programs;
- every train is FINITE (at most deadman_ms, whole pulses) and service(now_ns) re-arms it once it is half spent, so
  stimulation goes on while the host calls service() and stops within deadman_ms when the host dies; a restart
  pulses at once, so a re-arm is written only between half a period after a pulse and a guard before the next one
  (no pulse pair closer than half a period while the write's latency stays under that guard); where the window
  cannot be met before the train would run out, the re-arm is written off the window (`rearm_off_window`);
- a running train is never edited in place (the Teensy's timer reads the slot live and can cut a biphasic pulse):
  a new train is defined in the idle one of two slots and then started, which restarts the engine.
Every reply is read and classified; a line that is not the expected answer or a known asynchronous report (a train
end and its summary, a boot banner) is a BadReply.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import ClassVar

from neurostimd.drivers.base import Capability, Driver
from neurostimd.drivers.errors import BadReply, BoardLost, BoardRefused, DriverError, DriverTimeout
from neurostimd.drivers.stimjim.codec import (
    CANCEL,
    INT16_MAX,
    INT16_MIN,
    PRINT_OFFSETS,
    Banner,
    Blank,
    Cancelled,
    ChannelTerminated,
    DumpDuration,
    DumpHeader,
    DumpMode,
    DumpPeriod,
    DumpRule,
    DumpStage,
    DumpStageHeader,
    Firmware,
    Invalid,
    LineDecoder,
    Mode,
    Rejected,
    Reply,
    RpDefined,
    RpOffsets,
    Stage,
    Started,
    Stopped,
    Summary,
    TeensyOffsets,
    TrainComplete,
    TrainDef,
    Warning_,
    dac_code,
    encode_start,
    encode_stop,
    encode_train,
    parse_line,
)
from neurostimd.drivers.transport import ByteLink, SerialLink
from neurostimd.drivers.types import BoardInfo, BoardLimits, BoardStatus, DriverCounters, StimParams

LinkFactory = Callable[[], ByteLink]
FORBIDDEN_BAUDS = (134, 1200)  # Teensy: 134 reboots into the bootloader; 1200 erases/reboots these boards
MAX_AMPLITUDE_MA = 3.33
MIN_PHASE_US = 20  # README: "pulse width down to 0.02 ms"; the RP2354B warns below 20 µs
MAX_PULSE_WIDTH_US = 5000
MAX_FREQUENCY_HZ = 1000.0
# A re-arm is written in the window [P/2, P - guard] of a period P after the last pulse, guard = min(P/4, _GUARD_NS):
# the room it leaves before the next pulse is what the write's latency (the pty, the host's scheduler) may take
# without the restart landing just after that pulse (a pulse pair closer than P/2).
_GUARD_NS = 4_000_000
# The longest service() waits for that window: a short wait at any call (past it a later call tries again), a long
# one when the next call might come after the train's end. When even that cannot reach the window (a long period,
# a caller whose calls keep landing at the same phase), the re-arm is written at once, off the window, rather than
# letting the train run out (stimulation would stop without the host asking): counted as `rearm_off_window`.
_SHORT_WAIT_NS = 1_000_000
_MAX_ALIGN_WAIT_NS = 20_000_000
# Reports the device prints on its own; swallowed (and acted on) wherever they arrive. The offsets are part of the
# boot banner (the RP2354B prints it when the host connects, which can cross the driver's own D).
_ASYNC = (Blank, Banner, TrainComplete, ChannelTerminated, Summary, TeensyOffsets, RpOffsets)


def _floor(x: float) -> int:
    """Whole units, rounded down (a float that is a whole number but for its last bits counts as that number)."""
    return math.floor(x + 1e-9)


def _round(x: float) -> int:
    """Half away from zero: the period and the inter-phase gap (amplitude and pulse width round down, `_floor`)."""
    return math.floor(abs(x) + 0.5) * (1 if x >= 0 else -1)


class StimJimDriver(Driver):
    """A StimJim on `port` (or over `link_factory`'s link). `channel` (1 or 2) is the output driven, in current
    mode; the other is grounded. `now_ns` is the clock for timeouts and for what status() infers."""

    kind: ClassVar[str] = "stimjim"
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    protocol_version: ClassVar[int | None] = None  # the text protocol has no version; info() reports 0

    def __init__(self, port: str | None = None, *, baudrate: int = 115200, channel: int = 1,
                 deadman_ms: int = 250, max_amplitude_ma: float = MAX_AMPLITUDE_MA, slots: tuple[int, int] = (98, 99),
                 reply_timeout_ms: float = 250.0, link_factory: LinkFactory | None = None,
                 now_ns: Callable[[], int] = time.monotonic_ns,
                 sleep_ns: Callable[[int], None] = lambda ns: time.sleep(ns / 1e9)) -> None:
        super().__init__()
        if baudrate in FORBIDDEN_BAUDS:
            raise DriverError(f"baud rate {baudrate} is refused: on a Teensy-based StimJim {baudrate} baud reboots "
                              f"or erases the board; use 115200 (the device ignores the rate)")
        if link_factory is None and not port:
            raise DriverError("StimJimDriver needs a port (e.g. /dev/ttyACM0, or the pty the simulator prints)")
        if channel not in (1, 2):
            raise DriverError(f"channel {channel!r}: the StimJim has channels 1 and 2")
        if not 0 < deadman_ms <= 10_000:
            raise DriverError(f"deadman_ms = {deadman_ms!r}: a train length in ms, 1..10000")
        if not 0 < max_amplitude_ma <= MAX_AMPLITUDE_MA:
            raise DriverError(f"max_amplitude_ma = {max_amplitude_ma!r}: at most {MAX_AMPLITUDE_MA} mA (past it the "
                              f"firmware's DAC code wraps and the polarity flips)")
        if len(set(slots)) != 2 or not all(0 <= s < 100 for s in slots):
            raise DriverError(f"slots {slots!r}: two different train slots in 0..99")
        self.port = port
        self._where = port or "its link"
        self._rp_version = "unknown"
        self.channel = channel
        self.deadman_ms = int(deadman_ms)
        self.max_amplitude_ma = float(max_amplitude_ma)
        self.slots = slots
        self.reply_timeout_ns = int(reply_timeout_ms * 1e6)
        self._factory: LinkFactory = link_factory or (lambda: SerialLink(port or "", baudrate))
        self._now_ns = now_ns
        self._sleep_ns = sleep_ns
        self._link: ByteLink | None = None
        self._decoder = LineDecoder()
        self._lines: deque[Reply] = deque()
        self._counters = DriverCounters()
        self._info: BoardInfo | None = None
        self.firmware: Firmware | None = None
        self._current_offsets = (0, 0)
        self._epoch = 0
        self._lost = False
        self._refusal: str | None = None
        # what runs: the slot started last, the delivered parameters, when it was armed and when it ends (host clock)
        self._active_slot: int | None = None
        self._delivered: StimParams | None = None
        self._train: TrainDef | None = None
        self._armed_ns = 0
        self._ends_ns = 0
        self._phase_ref_ns = 0  # the host's best estimate of the running train's first pulse
        self._device_running = False  # the device's own word: a start confirmed and no end reported since
        self._last_service_ns: int | None = None

    # --- lifecycle --------------------------------------------------------------------------------------------
    def _open(self) -> None:
        self._connect()

    def _close(self) -> None:
        try:
            if self._link is not None and not self._lost:
                self._stop_all()
        except DriverError:
            pass  # closing anyway; the train ends by itself within deadman_ms
        finally:
            self._drop_link()

    def _drop_link(self) -> None:
        if self._link is not None:
            self._link.close()
        self._link = None
        self._clear_run()

    def _clear_run(self) -> None:
        self._active_slot = None
        self._delivered = None
        self._train = None
        self._device_running = False

    def _connect(self) -> None:
        self._decoder = LineDecoder()
        self._lines.clear()
        was_lost = self._lost
        self._link = self._factory()
        self._lost = False
        try:
            firmware, offsets = self._identify()
            if self.firmware is not None and firmware != self.firmware:
                raise BoardRefused(f"the StimJim on {self._where} now runs the {firmware} firmware, not the "
                                   f"{self.firmware} one this loop started with; restart neurostimd")
            self.firmware = firmware
            self._current_offsets = offsets
            self._stop_all()
        except BaseException:
            self._drop_link()
            self._lost = was_lost
            raise
        self._epoch += 1
        self._refusal = None
        self._info = self._make_info()

    def _identify(self) -> tuple[Firmware, tuple[int, int]]:
        """Send `D` and tell the firmware from its answer; the calibration current offsets it prints."""
        self._write(PRINT_OFFSETS)
        teensy: dict[str, tuple[float, float]] = {}
        rp: dict[int, RpOffsets] = {}
        version: str | None = None
        deadline = self._now_ns() + 2 * self.reply_timeout_ns
        while len(teensy) < 4 and len(rp) < 2:
            line = self._next_line(deadline, "D (print offsets)")
            if isinstance(line, TeensyOffsets) and not rp:
                teensy[line.which] = line.values
            elif isinstance(line, RpOffsets) and not teensy:
                rp[line.channel] = line
            elif isinstance(line, Banner | Blank | Summary | TrainComplete | ChannelTerminated):
                version = line.version if isinstance(line, Banner) and line.version else version
            else:
                raise BoardRefused(f"the device on {self._where} answered {line.text!r} to D; it is not a StimJim "
                                   f"this driver knows (Teensy stimjimPulser or RP2354B firmware)")
        if teensy:
            if set(teensy) != {"adc25", "adc10", "current", "voltage"}:
                raise BadReply(f"StimJim D reply incomplete: {sorted(teensy)}")
            c = teensy["current"]
            return "teensy", (int(c[0]), int(c[1]))
        self._rp_version = version or "unknown"
        return "rp2354b", (rp[0].current, rp[1].current)

    def _make_info(self) -> BoardInfo:
        fw = "stimjimPulser (Teensy 3.5)" if self.firmware == "teensy" else \
            f"RP2354B {self._rp_version}"
        limits = BoardLimits(min_frequency_hz=math.ceil(1e6 / (self.deadman_ms * 1000) * 1000) / 1000,
                             max_frequency_hz=MAX_FREQUENCY_HZ, max_amplitude_ma=self.max_amplitude_ma,
                             min_pulse_width_us=float(MIN_PHASE_US), max_pulse_width_us=float(MAX_PULSE_WIDTH_US),
                             max_charge_per_phase_uc=self.max_amplitude_ma * MAX_PULSE_WIDTH_US / 1000.0,
                             watchdog_ms=self.deadman_ms)
        return BoardInfo(device_id=f"stimjim@{self.port or 'link'}", firmware_version=fw, protocol_version=0,
                         n_channels=0, sample_rate_hz=0.0, sample_format="none", uv_per_lsb=1.0, limits=limits)

    # --- the Driver API ---------------------------------------------------------------------------------------
    def info(self) -> BoardInfo:
        self._require_open()
        assert self._info is not None  # set by _connect
        return self._info

    @property
    def last_delivered(self) -> StimParams | None:
        """What the device delivers now (after rounding to its µs / µA), None when nothing runs: what the gate
        should check and the audit record, rather than the request."""
        return self._delivered if self._running_now() else None

    def deliverable(self, params: StimParams) -> StimParams:
        """What the StimJim runs for `params` (whole µs and µA: `map_params(params)[1]`); DriverError when it
        cannot run them at all."""
        return self.map_params(params)[1]

    def map_params(self, params: StimParams) -> tuple[TrainDef, StimParams]:
        """The train `params` becomes (slot 0 as a placeholder) and what it delivers; DriverError with reason
        "out_of_limits" when the device cannot deliver it safely."""
        vals = (params.frequency_hz, params.amplitude_ma, params.pulse_width_us, params.interphase_gap_us)
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in vals):
            self._refuse(f"{params} has a value that is not a finite number")
        lim = self.info().limits
        if not lim.min_frequency_hz <= params.frequency_hz <= lim.max_frequency_hz:
            self._refuse(f"frequency {params.frequency_hz:g} Hz is outside {lim.min_frequency_hz:g}.."
                         f"{lim.max_frequency_hz:g} Hz (a train of whole periods must fit in deadman_ms = "
                         f"{self.deadman_ms})")
        if not 0 < params.amplitude_ma <= self.max_amplitude_ma:
            self._refuse(f"amplitude {params.amplitude_ma:g} mA is outside 0..{self.max_amplitude_ma:g} mA (the "
                         f"firmware does not clamp: past ±3.33 mA its DAC code wraps and the polarity flips)")
        period = _round(1e6 / params.frequency_hz)
        # amplitude and pulse width round DOWN (never more charge than the gate let through: the controller refuses a
        # rounding that adds charge); the period to the nearest µs
        amp_ua = _floor(params.amplitude_ma * 1000.0)
        pw = _floor(params.pulse_width_us)
        gap = _round(params.interphase_gap_us)
        if not MIN_PHASE_US <= pw <= MAX_PULSE_WIDTH_US or gap < 0 or (0 < gap < 1):
            self._refuse(f"pulse width {params.pulse_width_us:g} µs is outside {MIN_PHASE_US}..{MAX_PULSE_WIDTH_US}"
                         f" µs or the gap {params.interphase_gap_us:g} µs is negative")
        if 2 * pw + gap + MIN_PHASE_US > period:
            self._refuse(f"two {pw} µs phases and a {gap} µs gap do not fit in the {period} µs period with "
                         f"{MIN_PHASE_US} µs to spare")
        ch = self.channel - 1
        off = self._current_offsets[ch]
        for a in (-amp_ua, amp_ua):
            code = dac_code(a, Mode.CURRENT, off)
            if not INT16_MIN <= code <= INT16_MAX:
                self._refuse(f"{a} µA needs DAC code {code} with this board's offset {off}: it would wrap")
        n = (self.deadman_ms * 1000) // period
        duration = (n - 1) * period + 1 if self.firmware == "teensy" else n * period  # n whole pulses either way

        def st(a: int, d: int) -> Stage:
            return Stage(a, 0, d) if ch == 0 else Stage(0, a, d)

        stages = (st(-amp_ua, pw),) + ((st(0, gap),) if gap else ()) + (st(amp_ua, pw),)
        modes = (Mode.CURRENT, Mode.GROUNDED) if ch == 0 else (Mode.GROUNDED, Mode.CURRENT)
        train = TrainDef(0, modes[0], modes[1], period, duration, stages)
        delivered = StimParams(frequency_hz=1e6 / period, amplitude_ma=amp_ua / 1000.0, pulse_width_us=float(pw),
                               interphase_gap_us=float(gap))
        return train, delivered

    def set_stimulation(self, params: StimParams) -> None:
        """Define the train in the idle slot, then start it (the running one is never edited); returns once the
        device echoed the definition as sent and confirmed the start."""
        self._require_open()
        self._drain()
        train, delivered = self.map_params(params)
        slot = self.slots[1] if self._active_slot == self.slots[0] else self.slots[0]
        train = TrainDef(slot, train.mode0, train.mode1, train.period_us, train.duration_us, train.stages)
        self._define(train)
        self._train = train
        self._start(slot)
        self._delivered = delivered

    def stop(self) -> None:
        """The device's own stop (Teensy: T-1 and U-1, each confirmed; RP2354B: X, confirmed)."""
        self._require_open()
        self._stop_all()

    def status(self) -> BoardStatus:
        """What the driver knows: the device reports no state, only starts, stops and train ends, so
        `stimulating` is "a start was confirmed, no end was reported, and the train's own length has not passed";
        `params` is what it delivers. Impedance is not measured."""
        self._require_open()
        self._drain()
        p = self.last_delivered
        return BoardStatus(stimulating=p is not None, params=p, impedance_ohm=None, fault_flags=0)

    def service(self, now_ns: int) -> None:
        """Drain the replies; re-arm the running train once half of it is spent, or earlier when the next call (as
        far off as the last) might come after its end, in the window after a pulse that keeps the shortened interval
        within [P/2, P - guard] (see _rearm). The caller must call more often than once per train length (which is
        above deadman_ms / 2). A train that ran out, because service() came too late or the window could not be met,
        stays off: only set_stimulation starts one again. A lost link is reconnected from here, backing off between
        attempts (the device is identified again; a new session runs nothing)."""
        self._require_open()
        if (self._link is None or self._lost) and not self._reconnect_when_due(now_ns):
            return
        self._drain()
        gap = now_ns - self._last_service_ns if self._last_service_ns is not None else 0
        self._last_service_ns = now_ns
        if self._active_slot is None or self._delivered is None:
            return
        if not self._running_now(now_ns):
            self._counters.extra["trains_ran_out"] = self._counters.extra.get("trains_ran_out", 0) + 1
            self._clear_run()
            return
        # A restart pulses at once, so the interval before it is the time since the last pulse: re-arm once half
        # the train is spent, or earlier when the next call, as far apart as the last two, might come too late.
        assert self._train is not None
        elapsed = now_ns - self._armed_ns
        length = self._ends_ns - self._armed_ns
        urgent = elapsed + 2 * gap >= length
        if elapsed >= length // 2 or urgent:
            self._rearm(_MAX_ALIGN_WAIT_NS if urgent else _SHORT_WAIT_NS, urgent=urgent)

    def _rearm(self, max_wait_ns: int, *, urgent: bool = False) -> None:
        """Restart the running train in the window [P/2, P - guard] after its last pulse, on the clock as it reads
        now (not the tick's time, which the drain has aged): at once when in it, after a sleep of at most
        `max_wait_ns` when it opens within that, else not (a later call tries again) — unless `urgent` (the next
        call may come after the train's end): then at once, off the window. In the window the shortened interval
        is at least P/2, and a start (on the RP2354B: its cancel) late by up to the guard still lands before the
        next pulse."""
        assert self._train is not None and self._active_slot is not None
        period = self._train.period_us * 1000
        opens, closes = period // 2, period - min(period // 4, _GUARD_NS)
        now = self._now_ns()
        if now >= self._ends_ns:
            return  # ran out meanwhile: service() reports it at the next call
        phase = (now - self._phase_ref_ns) % period
        if not opens <= phase <= closes:
            wait = opens - phase if phase < opens else period - phase + opens
            reachable = wait <= max_wait_ns and now + wait <= self._ends_ns - period + closes
            if reachable:
                self._sleep_ns(wait)
                now = self._now_ns()
                phase = (now - self._phase_ref_ns) % period
                reachable = opens <= phase <= closes and now < self._ends_ns  # else slept too long (the scheduler)
            if not reachable:
                if not urgent or now >= self._ends_ns:
                    self._counters.extra["rearm_deferred"] = self._counters.extra.get("rearm_deferred", 0) + 1
                    return
                self._counters.extra["rearm_off_window"] = self._counters.extra.get("rearm_off_window", 0) + 1
        self._start(self._active_slot)
        self._counters.extra["rearms"] = self._counters.extra.get("rearms", 0) + 1

    @property
    def counters(self) -> DriverCounters:
        return self._counters

    @property
    def max_exchange_ms(self) -> float:
        # the longest exchange: a re-arm on the RP2354B (cancel, its end report, start), each waiting a reply, after
        # the longest wait for the re-arm's window
        return 3 * self.reply_timeout_ns / 1e6 + _MAX_ALIGN_WAIT_NS / 1e6

    @property
    def lost(self) -> bool:
        return self._lost

    @property
    def refusal(self) -> str | None:
        return self._refusal

    @property
    def refusal_kind(self) -> str | None:
        return "board" if self._refusal else None

    @property
    def session_epoch(self) -> int:
        return self._epoch

    def reconnect(self) -> bool:
        self._require_open()
        if not self._lost:
            return True
        try:
            self._connect()
        except BoardRefused as err:
            self._refusal = str(err)
            return False
        except DriverError:
            return False
        self._counters.reconnects += 1
        return True

    # --- exchanges --------------------------------------------------------------------------------------------
    def _refuse(self, why: str) -> None:
        self._counters.naks += 1
        raise DriverError(f"StimJim: {why}; nothing was sent", reason="out_of_limits")

    def _running_now(self, now_ns: int | None = None) -> bool:
        now = self._now_ns() if now_ns is None else now_ns
        return self._delivered is not None and self._device_running and now < self._ends_ns

    def _define(self, train: TrainDef) -> None:
        self._write(encode_train(train))
        what = f"S (define slot {train.slot})"
        deadline = self._now_ns() + self.reply_timeout_ns
        if self.firmware == "teensy":
            got: dict[str, object] = {"stages": []}
            rules = 0
            while rules < 2:
                line = self._expect(deadline, what, DumpRule, DumpHeader, DumpMode, DumpPeriod, DumpDuration,
                                    DumpStageHeader, DumpStage)
                if isinstance(line, DumpRule):
                    rules += 1
                elif isinstance(line, DumpHeader):
                    got["slot"] = line.slot
                elif isinstance(line, DumpMode):
                    got[f"mode{line.channel}"] = line.mode
                elif isinstance(line, DumpPeriod):
                    got["period"] = line.period_us
                elif isinstance(line, DumpDuration):
                    got["duration"] = line.duration_us
                elif isinstance(line, DumpStage):
                    got["stages"].append(line.stage)  # type: ignore[attr-defined]
            want = {"stages": list(train.stages), "slot": train.slot, "mode0": int(train.mode0),
                    "mode1": int(train.mode1), "period": train.period_us, "duration": train.duration_us}
        else:
            head = self._expect(deadline, what, RpDefined, Warning_)
            while isinstance(head, Warning_):
                head = self._expect(deadline, what, RpDefined, Warning_)
            assert isinstance(head, RpDefined)
            stages = [self._expect(deadline, what, DumpStage) for _ in range(head.n_stages)]
            got = {"slot": head.slot, "modes": head.mode_bits, "period": head.period_us, "pulses": head.n_pulses,
                   "stages": [s.stage for s in stages if isinstance(s, DumpStage)]}
            want = {"slot": train.slot, "modes": (1 << train.mode0, 1 << train.mode1), "period": train.period_us,
                    "pulses": train.duration_us // train.period_us, "stages": list(train.stages)}
        if got != want:
            self._counters.bad_frames += 1
            raise BadReply(f"the StimJim stored another train than sent to slot {train.slot}: echoed {got}, sent "
                           f"{want}; nothing was started")

    def _start(self, slot: int) -> None:
        """Start `slot` on engine T, restarting what runs (the RP2354B refuses a start while busy: cancel first)."""
        if self.firmware == "rp2354b" and self._device_running:
            self._cancel_rp(wait_end=True)
        self._write(encode_start("T", slot))
        sent_ns = self._now_ns()
        line = self._expect(sent_ns + self.reply_timeout_ns, f"T{slot}", Started)
        got_ns = self._now_ns()
        assert isinstance(line, Started)
        if line.slot != slot or line.engine not in ("T", None):
            raise BadReply(f"the StimJim started {line.text!r} when asked for T{slot}")
        assert self._train is not None
        n = self._train.duration_us // self._train.period_us + (self.firmware == "teensy")
        self._active_slot = slot
        self._device_running = True
        self._armed_ns = sent_ns
        self._ends_ns = sent_ns + n * self._train.period_us * 1000
        # the device started (and pulsed) between the write and its reply: the re-arm's phase counts from midway,
        # which halves the error a late read on either side (the pty, the scheduler) puts into it
        self._phase_ref_ns = sent_ns + (got_ns - sent_ns) // 2

    def _cancel_rp(self, *, wait_end: bool) -> None:
        running = self._device_running
        self._write(CANCEL)
        deadline = self._now_ns() + self.reply_timeout_ns
        self._expect(deadline, "X (cancel)", Cancelled)
        if wait_end and running:
            while self._device_running:  # cleared by the channel's end report
                self._handle(self._next_line(self._now_ns() + self.reply_timeout_ns, "the end report after X"),
                             "the end report after X")

    def _stop_all(self) -> None:
        if self.firmware == "teensy":
            self._write(encode_stop("T") + encode_stop("U"))  # one write
            deadline = self._now_ns() + self.reply_timeout_ns
            for engine in ("T", "U"):
                what = f"{engine}-1 (stop)"
                got: Reply | None = None
                while got is None:
                    line = self._next_line(deadline, what)
                    if isinstance(line, Invalid):
                        raise BoardRefused(f"the StimJim answered {line.text!r} to {engine}-1: its Teensy firmware "
                                           f"predates the stop command (ea7d0de, 2020-10-09); update it")
                    got = self._handle(line, what, Stopped)
                if not isinstance(got, Stopped) or got.engine != engine:
                    raise BadReply(f"the StimJim answered {got.text!r} to {engine}-1")
        else:
            self._cancel_rp(wait_end=False)
        self._clear_run()

    # --- lines ------------------------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        link = self._ensure_link()
        try:
            link.write(data)
        except BoardLost:
            self._mark_lost()
            raise

    def _ensure_link(self) -> ByteLink:
        if self._lost or self._link is None:
            raise BoardLost(f"the StimJim on {self._where} is unreachable; reconnect() first")
        return self._link

    def _mark_lost(self) -> None:
        self._lost = True
        if self._link is not None:
            self._link.close()
        self._link = None
        self._clear_run()

    def _pump(self, timeout_s: float) -> None:
        link = self._ensure_link()
        try:
            data = link.read(65536, timeout_s)
        except BoardLost:
            self._mark_lost()
            raise
        for text in self._decoder.feed(data):
            self._lines.append(parse_line(text))
        if self._decoder.overlong:
            self._counters.bytes_discarded += self._decoder.max_line * self._decoder.overlong
            self._decoder.overlong = 0
            raise BadReply(f"the StimJim on {self._where} sent a line over {self._decoder.max_line} bytes long")

    def _next_line(self, deadline_ns: int, what: str) -> Reply:
        while not self._lines:
            left = deadline_ns - self._now_ns()
            if left <= 0:
                self._counters.timeouts += 1
                raise DriverTimeout(f"the StimJim on {self._where} did not answer {what} within "
                                    f"{self.reply_timeout_ns / 1e6:g} ms; check the cable and that it is powered")
            self._pump(min(left / 1e9, 0.05))
        return self._lines.popleft()

    def _handle(self, line: Reply, what: str, *expected: type[Reply]) -> Reply | None:
        """`line` if it is one of `expected`; None for an asynchronous report (acted on); BadReply otherwise."""
        if expected and isinstance(line, expected):
            self._counters.frames_ok += 1
            return line
        if isinstance(line, _ASYNC):
            self._counters.frames_ok += 1
            if isinstance(line, TrainComplete | ChannelTerminated):
                self._device_running = False
            return None
        self._counters.bad_frames += 1
        if isinstance(line, Invalid | Rejected):
            self._counters.naks += 1
        raise BadReply(f"the StimJim on {self._where} answered {line.text!r} while the driver waited for {what}")

    def _expect(self, deadline_ns: int, what: str, *expected: type[Reply]) -> Reply:
        while True:
            got = self._handle(self._next_line(deadline_ns, what), what, *expected)
            if got is not None:
                return got

    def _drain(self) -> None:
        """Read and act on whatever the device said on its own; anything else is a BadReply."""
        self._pump(0.0)
        while self._lines:
            self._handle(self._lines.popleft(), "nothing (an unsolicited line)")
