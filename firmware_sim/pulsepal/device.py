"""A model of the Pulse Pal firmware as a client observes it, with no I/O and no clock of its own (the caller passes
`now_ns` into every call), like firmware_sim.board.Board:

feed(bytes, now_ns) -> bytes     the device's replies to what the host sent
advance(now_ns) -> bytes         runs the timer up to now (pulses, train ends, the inter-byte timeout); no output
next_wakeup_ns()                 when advance() next has something to do
click(now_ns)                    the joystick: clears COMM. FAILURE (loading the default parameters), else stops all

What it reproduces (sanworks/PulsePal Firmware/PROTOCOL.md, fw 22; stimulators.md §1): the 213 op-menu framing (a
byte other than 213 where an op code is expected is dropped), the op table and confirm bytes per firmware (fw 21
confirms everything with 1 and validates nothing; fw 22 answers 0 to a bad channel, code or value and discards the
data), the 50 µs cycle engine (a trigger starts the next cycle; a trigger while a channel plays is ignored; a
parameter written while a train plays takes effect at the next pulse; the train duration is read at the trigger),
finite and continuous trains, bursts, stops, and the inter-byte timeout (100 ms on fw 22, 500 ms on fw 21) that
ends in COMM. FAILURE: timer stopped, DAC holding its last value, all input ignored until a joystick click. A phase
of 0 cycles leaves the output stuck at that phase's voltage until the train ends (forever in continuous mode).
Not modelled: custom trains are stored but not played; the settings file, screen, pins and DAC calibration ops.
A stop and a trigger of the same channel in one cycle (the driver's re-arm) are logged as
`train_restarted` (with `cut_pulse`), not as stim_off and stim_applied, unless the parameters changed. Pulse start
times are kept in memory (`pulses`), and with log_pulses logged as `pulse` events, so that timing
fidelity can be measured.
"""

from __future__ import annotations

import collections
import struct
from dataclasses import dataclass, replace
from typing import Any

from neurostimd.drivers.errors import ProtocolError
from neurostimd.drivers.pulsepal.codec import (
    ALL_PARAMS_LEN,
    CYCLE_US,
    HANDSHAKE_OK,
    N_OUTPUTS,
    OP_MENU,
    HardwareInfo,
    Op,
    Param,
    code_to_volts,
    param_size,
)
from neurostimd.firmware_sim.board import EventLog

CYCLE_NS = CYCLE_US * 1000
TIMEOUT_MS = {21: 500, 22: 100}
_FW22_ONLY = frozenset({Op.SET_PARAM_ALL, Op.PROGRAM_ALL, Op.READ_ALL, Op.HARDWARE_INFO, Op.CUSTOM_TRAIN,
                        Op.STOP_CHANNELS})
_TIMES = ("phase1", "interphase", "phase2", "interpulse", "burst_duration", "burst_interval", "train_duration",
          "train_delay")
_VOLTS = ("phase1_v", "phase2_v", "rest_v")
_BYTES = ("biphasic", "custom_id", "custom_target", "custom_loop")
_BY_CODE = {Param.BIPHASIC: "biphasic", Param.PHASE1_VOLTAGE: "phase1_v", Param.PHASE2_VOLTAGE: "phase2_v",
            Param.PHASE1_DURATION: "phase1", Param.INTERPHASE: "interphase", Param.PHASE2_DURATION: "phase2",
            Param.INTERPULSE: "interpulse", Param.BURST_DURATION: "burst_duration",
            Param.BURST_INTERVAL: "burst_interval", Param.TRAIN_DURATION: "train_duration",
            Param.TRAIN_DELAY: "train_delay", Param.CUSTOM_TRAIN_ID: "custom_id",
            Param.CUSTOM_TARGET: "custom_target", Param.CUSTOM_LOOP: "custom_loop", Param.RESTING_VOLTAGE: "rest_v",
            Param.CONTINUOUS: "continuous"}
_BINARY = frozenset({Param.BIPHASIC, Param.LINK_TRIGGER1, Param.LINK_TRIGGER2, Param.CUSTOM_TARGET,
                     Param.CUSTOM_LOOP, Param.CONTINUOUS})
# what a playing channel's output depends on: a change is logged as stim_applied
_SHAPE = frozenset({"biphasic", "phase1_v", "phase2_v", "phase1", "interphase", "phase2", "interpulse"})


@dataclass
class ChannelParams:
    """One output channel's parameters in the device's own units (cycles, DAC codes). Defaults: the firmware's."""

    phase1: int = 20
    interphase: int = 20
    phase2: int = 20
    interpulse: int = 200
    burst_duration: int = 0
    burst_interval: int = 0
    train_duration: int = 20_000
    train_delay: int = 0
    phase1_v: int = 49151  # +5 V
    phase2_v: int = 16384  # -5 V
    rest_v: int = 32768  # 0 V
    biphasic: int = 0
    custom_id: int = 0
    custom_target: int = 0
    custom_loop: int = 0
    continuous: int = 0

    def pulse_cycles(self) -> int:
        return self.phase1 + (self.interphase + self.phase2 if self.biphasic else 0)

    def period_cycles(self) -> int:
        return self.pulse_cycles() + self.interpulse

    def has_zero_phase(self) -> bool:
        return self.phase1 == 0 or (bool(self.biphasic) and (self.interphase == 0 or self.phase2 == 0))


@dataclass
class _Channel:
    params: ChannelParams
    playing: bool = False
    train_end: int = 0  # cycle the train ends (finite trains)
    train_start: int = 0
    next_pulse: int = 0
    last_pulse: int | None = None
    stuck: bool = False


@dataclass
class DeviceCounters:
    bytes_dropped: int = 0  # bytes where an op code was expected, or ignored during COMM. FAILURE
    messages: int = 0
    rejected: int = 0  # fw 22 confirm 0
    comm_failures: int = 0
    triggers_ignored: int = 0


class PulsePal:
    """The firmware of one Pulse Pal (firmware 21: Pulse Pal 2; firmware 22: Pulse Pal 2 or 3)."""

    def __init__(self, firmware: int = 22, *, hardware_version: int | None = None,
                 event_log: EventLog | None = None, start_ns: int = 0, keep_pulses: int = 100_000,
                 log_pulses: bool = False) -> None:
        if firmware not in TIMEOUT_MS:
            raise ValueError(f"firmware {firmware} is not modelled (21 or 22)")
        hw = hardware_version if hardware_version is not None else (3 if firmware == 22 else 2)
        if hw not in (2, 3) or (firmware == 21 and hw != 2):
            raise ValueError(f"hardware version {hw} with firmware {firmware}: fw 21 runs on Pulse Pal 2 only")
        self.firmware = firmware
        self.log_pulses = log_pulses
        self.hardware = HardwareInfo(hardware_version=hw, cycle_us=CYCLE_US, n_custom_trains=4 if hw == 3 else 2,
                                     max_pulses=10_000 if hw == 3 else 5000)
        self.events = event_log if event_log is not None else EventLog()
        self.start_ns = start_ns
        self.timeout_ns = TIMEOUT_MS[firmware] * 1_000_000
        self.counters = DeviceCounters()
        self.channels = [_Channel(ChannelParams()) for _ in range(N_OUTPUTS)]
        self.links = [[1, 1, 1, 1], [0, 0, 0, 0]]
        self.trigger_modes = [0, 0]
        self.custom_trains: dict[int, tuple[list[int], list[int]]] = {}
        self.client_name = ""
        self.comm_failure = False
        self.pulses = [collections.deque[int](maxlen=keep_pulses) for _ in range(N_OUTPUTS)]
        self._msg = bytearray()
        self._last_byte_ns = start_ns
        self._discard_quiet = False  # fw 22 after an unknown parameter code: drop input until 100 ms of quiet
        self._held_off: dict[int, tuple[int, bool]] = {}  # host stops of this feed(): (cycle, cut a pulse)
        self._last_applied: list[tuple[int, ...] | None] = [None] * N_OUTPUTS
        self._now = 0

    # --- time ------------------------------------------------------------------------------------------------------
    def _cycle(self, now_ns: int) -> int:
        return max(0, (now_ns - self.start_ns) // CYCLE_NS)

    def _ns(self, cycle: int) -> int:
        return self.start_ns + cycle * CYCLE_NS

    def advance(self, now_ns: int) -> bytes:
        if self._msg and not self.comm_failure and now_ns - self._last_byte_ns > self.timeout_ns:
            self._fail(self._last_byte_ns + self.timeout_ns)
        if not self.comm_failure:
            self._run_to(self._cycle(now_ns))
        return b""

    def next_wakeup_ns(self) -> int | None:
        out: list[int] = []
        if self._msg and not self.comm_failure:
            out.append(self._last_byte_ns + self.timeout_ns + 1)
        if not self.comm_failure:
            for ch in self.channels:
                if ch.playing:
                    if not ch.stuck:
                        out.append(self._ns(ch.next_pulse))
                    if not ch.params.continuous:
                        out.append(self._ns(ch.train_end))
        return min(out) if out else None

    def _run_to(self, now_c: int) -> None:
        for i, ch in enumerate(self.channels):
            while ch.playing:
                p = ch.params
                finite = not p.continuous
                if not ch.stuck and p.burst_duration > 0:
                    cyc = p.burst_duration + p.burst_interval
                    tau = ch.next_pulse - ch.train_start
                    if tau % cyc >= p.burst_duration:
                        ch.next_pulse = ch.train_start + (tau // cyc + 1) * cyc
                        continue
                # fw 22: a pulse starts only if it can end by the end of the train; fw 21 starts it and cuts it
                room = p.pulse_cycles() if self.firmware == 22 else 1
                if not ch.stuck and (not finite or ch.next_pulse + room <= ch.train_end) and ch.next_pulse <= now_c:
                    ch.last_pulse = ch.next_pulse
                    self.pulses[i].append(self._ns(ch.next_pulse))
                    if self.log_pulses:
                        self.events.write("pulse", self._ns(ch.next_pulse), channel=i + 1)
                    if p.has_zero_phase() or p.period_cycles() == 0:
                        ch.stuck = True
                        self.events.write("output_stuck", self._ns(ch.next_pulse), channel=i + 1,
                                          held_v=round(code_to_volts(p.phase1_v), 4),
                                          why="a phase of 0 cycles never ends")
                        continue
                    ch.next_pulse += p.period_cycles()
                    continue
                if finite and now_c >= ch.train_end:
                    self._off(i, ch.train_end, "train_end")
                break

    def _level(self, ch: _Channel, cycle: int) -> int:
        """The DAC code channel `ch` outputs at `cycle`."""
        p = ch.params
        if not ch.playing or ch.last_pulse is None:
            return p.rest_v
        if ch.stuck:
            return p.phase1_v
        t = cycle - ch.last_pulse
        if t < p.phase1:
            return p.phase1_v
        if p.biphasic and p.phase1 + p.interphase <= t < p.pulse_cycles():
            return p.phase2_v
        return p.rest_v

    def _off(self, i: int, cycle: int, reason: str, **extra: Any) -> None:
        ch = self.channels[i]
        if not ch.playing:
            return
        cut = self._level(ch, cycle) != ch.params.rest_v
        ch.playing = False
        ch.stuck = False
        if reason == "host_stop":  # logged when the message ends, unless a trigger in the same cycle restarts it
            self._held_off[i] = (cycle, cut)
            return
        self.events.write("stim_off", self._ns(cycle), channel=i + 1, reason=reason, cut_pulse=cut, **extra)

    def _flush_offs(self) -> None:
        for i, (cycle, cut) in sorted(self._held_off.items()):
            self.events.write("stim_off", self._ns(cycle), channel=i + 1, reason="host_stop", cut_pulse=cut)
        self._held_off.clear()

    def _shape(self, p: ChannelParams) -> tuple[int, ...]:
        return (*(getattr(p, n) for n in sorted(_SHAPE)), p.train_duration, p.continuous)

    def _applied(self, i: int, cycle: int) -> None:
        p = self.channels[i].params
        self._last_applied[i] = self._shape(p)
        period_us = p.period_cycles() * CYCLE_US
        self.events.write("stim_applied", self._ns(cycle), channel=i + 1,
                          frequency_hz=1e6 / period_us if period_us else None,
                          pulse_width_us=p.phase1 * CYCLE_US,
                          interphase_us=p.interphase * CYCLE_US if p.biphasic else 0,
                          biphasic=bool(p.biphasic), amplitude_v=round(code_to_volts(p.phase1_v), 4),
                          phase2_v=round(code_to_volts(p.phase2_v), 4) if p.biphasic else None,
                          continuous=bool(p.continuous),
                          train_ms=None if p.continuous else p.train_duration * CYCLE_US / 1000)

    def _trigger(self, mask: int, cycle: int) -> None:
        start = cycle + 1  # triggers are scheduled for the next cycle
        for i, ch in enumerate(self.channels):
            if not mask & (1 << i):
                continue
            if ch.playing:
                self.counters.triggers_ignored += 1  # normal mode: a trigger while playing is ignored
                continue
            p = ch.params
            ch.playing = True
            ch.stuck = False
            ch.last_pulse = None
            ch.train_start = start + p.train_delay
            ch.next_pulse = ch.train_start
            ch.train_end = ch.train_start + p.train_duration
            held = self._held_off.pop(i, None)
            if held is not None and held[0] == cycle:  # stopped and triggered in one cycle: a restart, not an off
                self.events.write("train_restarted", self._ns(cycle), channel=i + 1, cut_pulse=held[1],
                                  delay_us=p.train_delay * CYCLE_US)
                if self._last_applied[i] == self._shape(p):
                    continue
            elif held is not None:
                self._held_off[i] = held
            self._applied(i, start)

    def _stop(self, mask: int, cycle: int, reason: str) -> None:
        for i in range(N_OUTPUTS):
            if mask & (1 << i):
                self._off(i, cycle, reason)

    def _fail(self, at_ns: int) -> None:
        """COMM. FAILURE: the timer stops (the DAC holds what it output) until a joystick click."""
        cycle = self._cycle(at_ns)
        self._run_to(cycle)
        for i, ch in enumerate(self.channels):
            if ch.playing:
                held = code_to_volts(self._level(ch, cycle))
                self._off(i, cycle, "comm_failure", dac_held_v=round(held, 4))
        self.comm_failure = True
        self.counters.comm_failures += 1
        self._msg.clear()
        self.events.write("comm_failure", at_ns, waiting_for="joystick click")

    def click(self, now_ns: int) -> None:
        """The joystick: after COMM. FAILURE it loads the default parameters and resumes; otherwise it aborts all
        trains."""
        if self.comm_failure:
            self.comm_failure = False
            for ch in self.channels:
                ch.params = ChannelParams()
            self.links = [[1, 1, 1, 1], [0, 0, 0, 0]]
            self.trigger_modes = [0, 0]
            self._last_byte_ns = now_ns
            self.events.write("comm_restored", now_ns, defaults_loaded=True)
            return
        self.advance(now_ns)
        self._stop(0x0F, self._cycle(now_ns), "joystick")

    def shutdown(self, now_ns: int) -> None:
        self.advance(now_ns)
        self._stop(0x0F, self._cycle(now_ns), "shutdown")

    # --- the serial port -------------------------------------------------------------------------------------------
    def feed(self, data: bytes, now_ns: int) -> bytes:
        out = bytearray()
        self.advance(now_ns)
        for b in data:
            if self.comm_failure:
                self.counters.bytes_dropped += 1
                continue
            if self._discard_quiet:
                if now_ns - self._last_byte_ns < self.timeout_ns:
                    self._last_byte_ns = now_ns
                    self.counters.bytes_dropped += 1
                    continue
                self._discard_quiet = False
            if self._msg and now_ns - self._last_byte_ns > self.timeout_ns:
                self._fail(self._last_byte_ns + self.timeout_ns)
                self.counters.bytes_dropped += 1
                continue
            self._last_byte_ns = now_ns
            if not self._msg and b != OP_MENU:
                self.counters.bytes_dropped += 1
                continue
            self._msg.append(b)
            need = self._needed()
            if need is None or len(self._msg) < need:
                continue
            msg = bytes(self._msg)
            self._msg.clear()
            if need == 0:  # an op this firmware does not have: dropped
                self.counters.bytes_dropped += len(msg)
                continue
            self.counters.messages += 1
            out += self._execute(msg, self._cycle(now_ns), now_ns)
        self._flush_offs()
        return bytes(out)

    def _needed(self) -> int | None:
        """Total length of the message in self._msg (None: not known yet; 0: unknown op, drop it)."""
        m = self._msg
        if len(m) < 2:
            return None
        op = m[1]
        if self.firmware == 21 and op in _FW22_ONLY:
            return 0
        fixed: dict[int, int] = {Op.HANDSHAKE: 2, Op.STOP_ALL: 2, Op.DISCONNECT: 2, Op.READ_ALL: 2, Op.HARDWARE_INFO: 2,
                 Op.TRIGGER: 3, Op.STOP_CHANNELS: 3, Op.FIXED_VOLTAGE: 5, Op.CONTINUOUS: 4, Op.CLIENT_NAME: 8,
                 Op.PROGRAM_ALL_LEGACY: 2 + ALL_PARAMS_LEN, Op.PROGRAM_ALL: 2 + ALL_PARAMS_LEN + 4}
        if op in fixed:
            return fixed[op]
        if op in (Op.SET_PARAM, Op.SET_PARAM_ALL):
            if len(m) < 3:
                return None
            try:
                size = param_size(m[2])
            except ProtocolError:
                return 3  # an unknown code: executed (refused) as soon as it is seen
            if op == Op.SET_PARAM:
                return 4 + size
            return 3 + (2 if m[2] == Param.TRIGGER_MODE else N_OUTPUTS) * size
        if op == Op.MESSAGE:
            return None if len(m) < 3 else 3 + m[2]
        if op in (Op.CUSTOM_TRAIN_1, Op.CUSTOM_TRAIN_2, Op.CUSTOM_TRAIN):
            head = 7 if op == Op.CUSTOM_TRAIN else 6
            if len(m) < head:
                return None
            n = int.from_bytes(m[head - 4:head], "little")
            return head + 6 * n
        return 0

    def _confirm(self, ok: bool) -> bytes:
        if self.firmware == 21:
            return b"\x01"  # fw 21 validates nothing
        if not ok:
            self.counters.rejected += 1
        return b"\x01" if ok else b"\x00"

    def _valid_value(self, code: int, value: int) -> bool:
        if code in _BINARY:
            return value in (0, 1)
        if code == Param.CUSTOM_TRAIN_ID:
            return value <= self.hardware.n_custom_trains
        if code == Param.TRIGGER_MODE:
            return value <= (3 if self.hardware.hardware_version == 3 else 2)
        return True  # times and voltages: the firmware range-checks neither

    def _set(self, code: int, channel: int, value: int, cycle: int) -> bool:
        """Write one parameter; False when fw 22 would refuse it."""
        top = 2 if code == Param.TRIGGER_MODE else N_OUTPUTS
        if code == Param.CONTINUOUS and self.firmware == 21:
            return False  # fw 21 has no parameter 18 (its continuous mode is op 82)
        if not 1 <= channel <= top:
            if self.firmware == 21:
                self.events.write("fw21_out_of_bounds", self._ns(cycle), code=code, channel=channel)
            return False
        if not self._valid_value(code, value):
            return False
        if code == Param.TRIGGER_MODE:
            self.trigger_modes[channel - 1] = value
            return True
        if code in (Param.LINK_TRIGGER1, Param.LINK_TRIGGER2):
            self.links[code - Param.LINK_TRIGGER1][channel - 1] = value
            return True
        ch = self.channels[channel - 1]
        name = _BY_CODE[Param(code)]
        old = getattr(ch.params, name)
        setattr(ch.params, name, value)
        if name == "continuous" and old and not value and ch.playing:
            self._off(channel - 1, cycle, "continuous_off")
        if ch.playing and name in _SHAPE and old != value:
            self._applied(channel - 1, cycle)
        return True

    def _execute(self, msg: bytes, cycle: int, now_ns: int) -> bytes:
        op, data = msg[1], msg[2:]
        if op == Op.HANDSHAKE:
            return bytes((HANDSHAKE_OK,)) + self.firmware.to_bytes(4, "little")
        if op == Op.HARDWARE_INFO:
            return self.hardware.encode()
        if op == Op.SET_PARAM:
            code = data[0]
            if code not in Param._value2member_map_:
                if self.firmware == 22:
                    self._discard_quiet = True
                    return self._confirm(False)
                return b"\x01"
            value = int.from_bytes(data[2:], "little")
            return self._confirm(self._set(code, data[1], value, cycle))
        if op == Op.SET_PARAM_ALL:
            code = data[0]
            if code not in Param._value2member_map_:
                self._discard_quiet = True
                return self._confirm(False)
            size = param_size(code)
            values = [int.from_bytes(data[1 + k * size:1 + (k + 1) * size], "little")
                      for k in range((len(data) - 1) // size)]
            if not all(self._valid_value(code, v) for v in values):
                return self._confirm(False)
            for k, v in enumerate(values):
                self._set(code, k + 1, v, cycle)
            return self._confirm(True)
        if op == Op.TRIGGER:
            self._trigger(data[0] & 0x0F, cycle)
            return b""
        if op == Op.STOP_CHANNELS:
            self._stop(data[0], cycle, "host_stop")
            return b""
        if op == Op.STOP_ALL:
            self._stop(0x0F, cycle, "host_stop")
            return b""
        if op == Op.DISCONNECT:
            self._stop(0x0F, cycle, "disconnect")
            self.client_name = ""
            return b""
        if op == Op.CLIENT_NAME:
            self.client_name = data.decode("ascii", errors="replace")
            return b""
        if op == Op.MESSAGE:
            return b""
        if op == Op.CONTINUOUS:
            ch_no, state = data[0], data[1]
            ok = self._set(Param.CONTINUOUS, ch_no, state, cycle) if self.firmware == 22 else 1 <= ch_no <= 4
            if self.firmware == 21 and ok:
                self.channels[ch_no - 1].params.continuous = int(bool(state))
                if state:  # fw 21: enabling continuous mode also triggers (sanworks/PulsePal#5)
                    self._trigger(1 << (ch_no - 1), cycle)
            return self._confirm(ok)
        if op == Op.FIXED_VOLTAGE:
            ch_no = data[0]
            if not 1 <= ch_no <= N_OUTPUTS:
                return self._confirm(False)
            self._off(ch_no - 1, cycle, "fixed_voltage")
            self.events.write("fixed_voltage", now_ns, channel=ch_no,
                              volts=round(code_to_volts(int.from_bytes(data[1:3], "little")), 4))
            return self._confirm(True)
        if op in (Op.PROGRAM_ALL, Op.PROGRAM_ALL_LEGACY):
            return self._confirm(self._program_all(data, cycle, legacy=op == Op.PROGRAM_ALL_LEGACY))
        if op == Op.READ_ALL:
            return self._read_all()
        if op in (Op.CUSTOM_TRAIN_1, Op.CUSTOM_TRAIN_2, Op.CUSTOM_TRAIN):
            index = data[0] if op == Op.CUSTOM_TRAIN else op - Op.CUSTOM_TRAIN_1
            body = data[5:] if op == Op.CUSTOM_TRAIN else data[4:]
            n = len(body) // 6
            if index >= self.hardware.n_custom_trains or n > self.hardware.max_pulses:
                return self._confirm(False)
            times = list(struct.unpack(f"<{n}I", body[:4 * n]))
            volts = list(struct.unpack(f"<{n}H", body[4 * n:]))
            self.custom_trains[index] = (times, volts)
            return self._confirm(True)
        return b""

    def _program_all(self, data: bytes, cycle: int, *, legacy: bool) -> bool:
        new = [replace(ch.params) for ch in self.channels]
        if legacy:  # channel-major times and voltages
            for c in range(N_OUTPUTS):
                for k, name in enumerate(_TIMES):
                    setattr(new[c], name, int.from_bytes(data[c * 32 + k * 4:c * 32 + k * 4 + 4], "little"))
                for k, name in enumerate(_VOLTS):
                    off = 128 + c * 6 + k * 2
                    setattr(new[c], name, int.from_bytes(data[off:off + 2], "little"))
                for k, name in enumerate(_BYTES):
                    setattr(new[c], name, data[152 + c * 4 + k])
            tail = data[168:]
        else:  # parameter-major
            for k, name in enumerate(_TIMES):
                for c in range(N_OUTPUTS):
                    setattr(new[c], name, int.from_bytes(data[k * 16 + c * 4:k * 16 + c * 4 + 4], "little"))
            for k, name in enumerate(_VOLTS):
                for c in range(N_OUTPUTS):
                    off = 128 + k * 8 + c * 2
                    setattr(new[c], name, int.from_bytes(data[off:off + 2], "little"))
            for k, name in enumerate((*_BYTES, "continuous")):
                for c in range(N_OUTPUTS):
                    setattr(new[c], name, data[152 + k * 4 + c])
            tail = data[172:]
        links = [list(tail[0:4]), list(tail[4:8])]
        modes = list(tail[8:10])
        ok = (all(p.biphasic in (0, 1) and p.continuous in (0, 1) and p.custom_loop in (0, 1)
                  and p.custom_target in (0, 1) and p.custom_id <= self.hardware.n_custom_trains for p in new)
              and all(v in (0, 1) for row in links for v in row)
              and all(self._valid_value(Param.TRIGGER_MODE, m) for m in modes))
        if not ok and self.firmware == 22:
            return False
        for c, p in enumerate(new):
            ch = self.channels[c]
            changed = any(getattr(p, n) != getattr(ch.params, n) for n in _SHAPE)
            was_continuous = ch.params.continuous
            ch.params = p
            if ch.playing and was_continuous and not p.continuous:
                self._off(c, cycle, "continuous_off")
            elif ch.playing and changed:
                self._applied(c, cycle)
        self.links, self.trigger_modes = links, modes
        return True

    def _read_all(self) -> bytes:
        ps = [ch.params for ch in self.channels]
        out = bytearray()
        for name in _TIMES:
            out += struct.pack("<4I", *(getattr(p, name) for p in ps))
        for name in _VOLTS:
            out += struct.pack("<4H", *(getattr(p, name) for p in ps))
        for name in _BYTES:
            out += bytes(getattr(p, name) for p in ps)
        out += bytes(self.links[0] + self.links[1] + self.trigger_modes)
        assert len(out) == ALL_PARAMS_LEN
        return bytes(out)


__all__ = ["CYCLE_NS", "TIMEOUT_MS", "ChannelParams", "DeviceCounters", "PulsePal"]
