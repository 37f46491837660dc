"""The StimJim's firmware as a client observes it, with the time passed in (no clock, no I/O but the event log).

feed(bytes, now_ns) -> bytes     the replies to what the host sent (lines end in `\\n`, `\\r` stripped)
advance(now_ns) -> bytes         what the timer engines print by now (train-end summaries), after running them
next_wakeup_ns()                 when advance() next has something to do

Two personalities, told apart by their replies (reference ../shared/reference/stimulators.md §2):
- "teensy" (stimjimPulser.ino, Teensy 3.5): sscanf-style parsing (partial parses change what they matched; a
  garbage index is 0), no amplitude clamp (the DAC code wraps at int16 and the polarity flips), 100 slots whose
  running train reads the slot live (an `S` to it edits the running train: logged as `running_train_edited`),
  two engines T and U whose period is fixed at start, a first pulse at once, pulses while `t - start < duration`,
  `T-1` / `U-1` stop (firmware since ea7d0de; `legacy_stop=True` is the older one, which answers
  "Invalid PulseTrain index."), commands wait for the pulse in progress (it runs in the timer interrupt).
- "rp2354b" (firmware/main.c v0.0.0): strict parsing with `Invalid <field>` replies, amplitude limits, the train
  copied at start, `duration // period` pulses, one stimulus at a time (a start while busy is rejected), `X`
  cancels after the pulse in progress; banner `StimJim v0.0.0` when the host connects.

Timing is at the firmware's own resolution, 1 µs: pulse k of a train started at t0 begins at t0 + k * period.
The event log: `stim_applied` (channel 1-based, frequency_hz, pulse_width_us of phase 1, interphase_us, biphasic,
amplitude_ua or amplitude_mv by mode, as the DAC delivers it) when a channel starts or changes output, `stim_off`
(reason train_end, host_stop, shutdown, reboot), `rearm` when a running train is restarted with the same output,
`pulse` per pulse with `log_pulses`, and the hazards `running_train_edited`, `dac_wrap`, `input_overrun`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from neurostimd.drivers.stimjim.codec import (
    INT16_MAX,
    INT16_MIN,
    MAX_LINE,
    MAX_STAGES,
    MICROAMPS_PER_DAC,
    MILLIVOLTS_PER_DAC,
    N_SLOTS,
    RP_MAX_MV,
    RP_MAX_STAGE_US,
    RP_MAX_UA,
    Mode,
    Stage,
    dac_code,
    wrap_int16,
)
from neurostimd.firmware_sim.board import EventLog

Personality = Literal["teensy", "rp2354b"]
RP_VERSION = "v0.0.0"
_U32 = 1 << 32
_MODE_NAMES = ("Voltage output", "Current output", "No output (high-Z)", "No output (grounded)")
_RULE = "-" * 34


@dataclass
class Slot:
    mode: list[int]
    period_us: int
    duration_us: int
    stages: list[Stage]


@dataclass
class Run:
    """A train running on an engine."""

    slot: int
    train: Slot  # the live slot (Teensy) or a copy (RP2354B)
    period_us: int  # fixed at start
    start_us: int
    n_max: int | None  # RP2354B: the pulse count; Teensy: None (runs while t - start < duration)
    k: int = 0  # pulses delivered
    busy_until_us: int = 0  # end of the pulse in progress
    measured: list[list[float]] = field(default_factory=list)


def _c_scan(s: str, fmt: str) -> list[int]:
    """sscanf's result for a format of %d / %u / %*d conversions and literal characters: the values assigned
    until the first mismatch (%u wraps negatives, as C does; values are kept to 32 bits)."""
    out: list[int] = []
    i = 0
    j = 0
    while j < len(fmt):
        if fmt[j] == "%":
            skip = fmt[j + 1] == "*"
            conv = fmt[j + 1 + skip:j + 3 + skip]
            j += 2 + skip + (conv == "lu")
            while i < len(s) and s[i] in " \t\n\v\f\r":
                i += 1
            k = i + (i < len(s) and s[i] in "+-")
            e = k
            while e < len(s) and s[e] in "0123456789":
                e += 1
            if e == k:
                return out
            v = int(s[i:e])
            i = e
            if not skip:
                unsigned = conv.startswith(("u", "l"))
                v = v % _U32 if unsigned else (v + (1 << 31)) % _U32 - (1 << 31)
                out.append(v)
        elif fmt[j].isspace():
            while i < len(s) and s[i] in " \t\n\v\f\r":
                i += 1
            j += 1
        else:
            if i >= len(s) or s[i] != fmt[j]:
                return out
            i += 1
            j += 1
    return out


def _atoi(s: str) -> int:
    v = _c_scan(s, "%d")
    return v[0] if v else 0


class StimJimDevice:
    """One StimJim. `offsets` are the calibration offsets (current, voltage) per channel that `D` prints and the
    DAC codes include."""

    def __init__(self, personality: Personality = "teensy", *, event_log: EventLog | None = None,
                 start_ns: int = 0, log_pulses: bool = False, legacy_stop: bool = False,
                 current_offsets: tuple[int, int] = (0, 0), voltage_offsets: tuple[int, int] = (0, 0)) -> None:
        if personality not in ("teensy", "rp2354b"):
            raise ValueError(f"unknown StimJim firmware {personality!r}: teensy or rp2354b")
        self.personality: Personality = personality
        self.events = event_log if event_log is not None else EventLog()
        self.log_pulses = log_pulses
        self.legacy_stop = legacy_stop
        self.current_offsets = current_offsets
        self.voltage_offsets = voltage_offsets
        self.start_ns = start_ns
        self._buf = bytearray()
        self.slots: list[Slot] = []
        self.runs: dict[str, Run] = {}
        self.output: list[dict[str, Any] | None] = [None, None]  # what each channel delivers (event fields)
        self.pulse_times_us: list[int] = []  # every pulse's start, in device µs (for timing measurements)
        self.counters: dict[str, int] = {"lines": 0, "invalid": 0, "rejected": 0, "overruns": 0}
        self._greeted = False
        self._reset_slots()

    # --- time -------------------------------------------------------------------------------------------------
    def _us(self, now_ns: int) -> int:
        return (now_ns - self.start_ns) // 1000

    def _ns(self, t_us: int) -> int:
        return self.start_ns + t_us * 1000

    def _reset_slots(self) -> None:
        self.slots = []
        for i in range(N_SLOTS):
            if self.personality == "teensy":  # stimjimPulser.ino setup(): ±1000 mV, slot 1 ±100 µA
                amp = 100 if i == 1 else 1000
                mode = 1 if i == 1 else 0
                self.slots.append(Slot([mode, mode], 10000, 10_000_000,
                                       [Stage(amp, -amp, 100), Stage(-amp, amp, 100)]))
            else:
                self.slots.append(Slot([3, 3], 10000, 10000, []))

    # --- the host's side --------------------------------------------------------------------------------------
    def connect(self, now_ns: int) -> bytes:
        """The host opened the port (DTR): the RP2354B firmware greets it once; the Teensy's banner went out at
        boot, to nobody."""
        if self.personality == "rp2354b" and not self._greeted:
            self._greeted = True
            return self._rp(f"StimJim {RP_VERSION}\n\n") + self._rp(self._rp_offsets())
        return b""

    def feed(self, data: bytes, now_ns: int) -> bytes:
        out = bytearray(self.advance(now_ns))
        if self.personality == "rp2354b" and not self._greeted:
            out += self.connect(now_ns)
        self._buf += data
        while True:
            i = self._buf.find(b"\n")
            if i < 0:
                break
            raw = bytes(self._buf[:i])
            del self._buf[:i + 1]
            self.counters["lines"] += 1
            out += self._line(raw.decode("latin-1").rstrip("\r"), now_ns)
        limit = MAX_LINE if self.personality == "teensy" else 1023
        if len(self._buf) > limit:
            # Teensy: comBuf overruns (undefined behaviour on hardware); RP2354B: the line is dropped
            self.counters["overruns"] += 1
            self.events.write("input_overrun", now_ns, bytes=len(self._buf))
            self._buf.clear()
        return bytes(out)

    def advance(self, now_ns: int) -> bytes:
        now = self._us(now_ns)
        out = bytearray()
        while True:
            due = [(self._next_event_us(r), name) for name, r in self.runs.items()]
            due = [d for d in due if d[0] <= now]
            if not due:
                break
            t, name = min(due)
            out += self._tick(name, t)
        return bytes(out)

    def next_wakeup_ns(self) -> int | None:
        if not self.runs:
            return None
        return self._ns(min(self._next_event_us(r) for r in self.runs.values()))

    def shutdown(self, now_ns: int) -> None:
        self.advance(now_ns)
        for name in list(self.runs):
            self._end(name, now_ns, "shutdown")

    def reboot(self, now_ns: int) -> None:
        """The reset button: trains stop, slots back to their defaults, the input line forgotten."""
        self.advance(now_ns)
        for name in list(self.runs):
            self._end(name, now_ns, "reboot")
        self._buf.clear()
        self._greeted = False
        self._reset_slots()

    # --- the engines ------------------------------------------------------------------------------------------
    def _next_event_us(self, r: Run) -> int:
        return r.start_us + r.k * r.period_us

    def _tick(self, name: str, t: int) -> bytes:
        """Engine `name`'s timer fires at device time t: a pulse, or the end of the train."""
        r = self.runs[name]
        if (r.n_max is not None and r.k >= r.n_max) or (r.n_max is None and t - r.start_us >= r.train.duration_us):
            return self._end(name, self._ns(t), "train_end")
        self._pulse(r, t)
        return b""

    def _pulse(self, r: Run, t: int) -> None:
        r.k += 1
        length = sum(s.duration_us for s in r.train.stages)
        r.busy_until_us = t + length
        self.pulse_times_us.append(t)
        if not r.measured:
            r.measured = [[0.0] * max(1, len(r.train.stages)) for _ in range(2)]
        for ch in (0, 1):
            for i, s in enumerate(r.train.stages[:len(r.measured[ch])]):
                r.measured[ch][i] += self._delivered(ch, r.train.mode[ch], (s.amp0, s.amp1)[ch])
        if self.log_pulses:
            self.events.write("pulse", self._ns(t), slot=r.slot, index=r.k - 1)

    def _delivered(self, ch: int, mode: int, amp: int) -> float:
        """The amplitude the DAC delivers for a stage amplitude (mV or µA), after truncation and the int16 store
        (Teensy: wraps; RP2354B: amplitudes were limited at parse)."""
        if mode > 1:
            return 0.0
        m = Mode(mode)
        off = (self.voltage_offsets if m == Mode.VOLTAGE else self.current_offsets)[ch]
        lsb = MILLIVOLTS_PER_DAC if m == Mode.VOLTAGE else MICROAMPS_PER_DAC
        code = dac_code(amp, m, off)
        code = wrap_int16(code) if self.personality == "teensy" else min(max(code, INT16_MIN), INT16_MAX)
        return (code - off) * lsb

    def _channel_output(self, train: Slot, period_us: int, ch: int) -> dict[str, Any] | None:
        """The event fields of what channel `ch` delivers in `train` (None: nothing)."""
        mode = train.mode[ch]
        amps = [(s.amp0, s.amp1)[ch] for s in train.stages]
        if mode > 1 or not any(amps):
            return None
        phases = [i for i, a in enumerate(amps) if a != 0]
        first = phases[0]
        second = phases[1] if len(phases) > 1 else None
        delivered = self._delivered(ch, mode, amps[first])
        biphasic = second is not None and (amps[second] > 0) != (amps[first] > 0)
        gap = sum(train.stages[i].duration_us for i in range(first + 1, second)) if second is not None else 0
        unit = "amplitude_mv" if mode == 0 else "amplitude_ua"
        return {"channel": ch + 1, "frequency_hz": 1e6 / period_us if period_us else 0.0,
                "pulse_width_us": train.stages[first].duration_us, "interphase_us": gap if biphasic else 0,
                "biphasic": biphasic, unit: round(abs(delivered), 1), "commanded": amps[first]}

    def _apply(self, r: Run, now_ns: int, restarted: bool) -> None:
        for ch in (0, 1):
            new = self._channel_output(r.train, r.period_us, ch)
            for st in r.train.stages:
                amp = (st.amp0, st.amp1)[ch]
                got = self._delivered(ch, r.train.mode[ch], amp)
                if r.train.mode[ch] <= 1 and abs(got - amp) > 1.0:  # more than the DAC's truncation
                    self.events.write("dac_wrap", now_ns, channel=ch + 1, commanded=amp, delivered=round(got, 1))
            if new is None:
                continue
            if new != self.output[ch]:
                self.output[ch] = new
                self.events.write("stim_applied", now_ns, slot=r.slot, **{k: v for k, v in new.items()
                                                                           if k != "commanded"})
            elif restarted:
                self.events.write("rearm", now_ns, channel=ch + 1, slot=r.slot)

    def _start(self, name: str, slot: int, now_ns: int) -> bytes:
        t = self._us(now_ns)
        old = self.runs.get(name)
        if old is not None:
            t = max(t, old.busy_until_us)  # the interrupt finishes its pulse before the main loop runs again
        src = self.slots[slot]
        if self.personality == "teensy":
            train = src
            n_max = None
        else:
            train = replace(src, mode=list(src.mode), stages=list(src.stages))
            n_max = src.duration_us // src.period_us if src.period_us else 0
        r = Run(slot=slot, train=train, period_us=train.period_us, start_us=t, n_max=n_max)
        self.runs[name] = r
        self._apply(r, self._ns(t), restarted=old is not None)
        out = bytearray()
        if self.personality == "teensy":
            out += self._tick(name, t)  # "intervalTimer starts with delay - we want to start with pulse!"
            out += self._teensy(f"\vStarted {name} train with parameters of PulseTrain {slot}\n")
        return bytes(out)

    def _end(self, name: str, now_ns: int, reason: str) -> bytes:
        r = self.runs.pop(name)
        for ch in (0, 1):
            if self.output[ch] is not None and not any(
                    self._channel_output(o.train, o.period_us, ch) for o in self.runs.values()):
                self.output[ch] = None
                self.events.write("stim_off", now_ns, channel=ch + 1, reason=reason, pulses=r.k)
        if reason != "train_end" and self.personality == "teensy":
            return b""  # a stopped or restarted Teensy train prints no summary
        return self._summary(r)

    def _summary(self, r: Run) -> bytes:
        n = r.k
        if self.personality == "teensy":
            text = f"Train complete. Delivered {n} pulses.\vCurrent/Voltage by stage: \n"
            text += "           Ch0                Ch1 \n"
            for i in range(len(r.train.stages)):
                cells = []
                for ch in (0, 1):
                    avg = int(r.measured[ch][i] / n) if n and r.measured else 0  # the ARM divides by 0 as 0
                    cells.append(f"{avg:6d}{'uA' if r.train.mode[ch] else 'mV'},          ")
                text += f"Stage {i}" + cells[0] + cells[1] + "\n"
            return self._teensy(text)
        out = bytearray()
        active = [ch for ch in (0, 1) if r.train.mode[ch] <= 1] or [0]
        for ch in active:
            unit = "uA" if r.train.mode[ch] == 1 else "mV"
            text = f"Channel {ch} pulse train terminated. Delivered:\n"
            stages = r.train.stages
            for i, _s in enumerate(stages):
                avg = round(r.measured[ch][i] / n) if n and r.measured else 0
                text += f"  {n}x Stage {i}: {avg:6d} {unit}\n"
            text += f"  {n}x Inter-pulse gap: {0:6d} {unit}\n\n"
            out += self._rp(text)
        return bytes(out)

    # --- the line parser --------------------------------------------------------------------------------------
    @staticmethod
    def _teensy(text: str) -> bytes:
        """Teensy output: Serial.println ends a line in \\r\\n, an embedded \\n stays \\n (callers pass the text with
        \\n where println stood; the embedded ones are marked \\v)."""
        return text.replace("\n", "\r\n").replace("\v", "\n").encode()

    @staticmethod
    def _rp(text: str) -> bytes:
        """RP2354B output: pico stdio turns every \\n into \\r\\n."""
        return text.replace("\n", "\r\n").encode()

    def _line(self, line: str, now_ns: int) -> bytes:
        if self.personality == "teensy":
            return self._teensy_line(line, now_ns)
        return self._rp_line(line, now_ns)

    def _teensy_offsets(self) -> str:
        c, v = self.current_offsets, self.voltage_offsets
        return (f"ADC offsets (+-2.5V): {0.0:f}, {0.0:f}\vADC offsets (+-10V): {0.0:f}, {0.0:f}\v"
                f"current offsets: {c[0]}, {c[1]}\vvoltage offsets: {v[0]}, {v[1]}\v\n")

    def _teensy_dump(self, i: int) -> str:
        s = self.slots[i]
        m0, m1 = s.mode
        text = f"{_RULE}\n"
        text += (f"Parameters for PulseTrain[{i}]\v  mode[ch0]: {m0} ({_MODE_NAMES[m0]})\v"
                 f"  mode[ch1]: {m1} ({_MODE_NAMES[m1]})\v")
        hz = 1e6 / s.period_us if s.period_us else float("inf")
        text += (f"  period:    {s.period_us} usec ({s.period_us * 1e-6:0.3f} sec, {hz:0.3f} Hz)\v"
                 f"  duration:  {s.duration_us} usec ({s.duration_us * 1e-6:0.3f} sec)\v")
        text += "\v  stage    duration     output0   output1\n"
        u0, u1 = ("mV" if m0 == 0 else "uA"), ("mV" if m1 == 0 else "uA")
        for j, st in enumerate(s.stages):
            text += f"   {j:2d}  {st.duration_us:7d} usec {st.amp0:8d}{u0} {st.amp1:8d}{u1}\v"
        return text + f"{_RULE}\v\n"

    def _teensy_line(self, line: str, now_ns: int) -> bytes:
        if not line:
            return b""
        cmd, args = line[0], line[1:]
        if cmd == "S":
            got = _c_scan(args, "%u,")
            idx = got[0] if got else 0
            if idx >= N_SLOTS:
                return self._teensy("Invalid PulseTrain index.\n")
            s = self.slots[idx]
            head = _c_scan(args, "%*d,%u,%u,%u,%lu;")
            for pos, v in enumerate(head):
                if pos < 2:
                    s.mode[pos] = v if v <= 3 else 3
                elif pos == 2:
                    s.period_us = v
                else:
                    s.duration_us = v
            if len(head) == 4:
                tokens = [t for t in args.split(";") if t][1:]  # strtok: empty tokens vanish
                stages: list[Stage] = []
                for tok in tokens:
                    vals = _c_scan(tok, "%d,%d,%u")
                    if len(vals) != 3:
                        break
                    if len(stages) == MAX_STAGES:
                        self.events.write("stage_overflow", now_ns, slot=idx)  # hardware: memory overwritten
                        break
                    stages.append(Stage(*vals))
                s.stages = stages
            if any(r.slot == idx for r in self.runs.values()):
                self.events.write("running_train_edited", now_ns, slot=idx)
                for r in self.runs.values():
                    if r.slot == idx:
                        self._apply(r, now_ns, restarted=False)
            return self._teensy(self._teensy_dump(idx))
        if cmd in "TU":
            idx = _atoi(args)
            if idx < 0 and not self.legacy_stop:
                return self._stop_engine(cmd, now_ns)
            if idx < 0 or idx >= N_SLOTS:
                return self._teensy("Invalid PulseTrain index.\n")
            return self._start(cmd, idx, now_ns)
        if cmd == "D":
            return self._teensy(self._teensy_offsets())
        if cmd == "M":
            vals = [*_c_scan(args, "%d,%d"), 0, 0]
            return self._teensy(f"Set channel {vals[0]} to mode {vals[1]}\n")
        if cmd == "A":
            vals = [*_c_scan(args, "%d,%d"), 0, 0]
            return self._teensy(f"Set channel {vals[0]} to amplitude {vals[1]}\n")
        if cmd == "V":
            vals = [*_c_scan(args, "%d,%d"), 0, 0]
            ch = vals[0] if vals[0] in (0, 1) else 0
            code = int(vals[1] / MILLIVOLTS_PER_DAC) + self.voltage_offsets[ch]
            return self._teensy(f"Set channel {vals[0]} to amplitude {vals[1]} mV (dac value {code}).\n")
        if cmd == "E":
            vals = [*_c_scan(args, "%d,%d"), 0, 0]
            return self._teensy(f"Read value: 0 (0{'uA)' if vals[1] else 'mV)'}\n")
        if cmd == "R":
            vals = _c_scan(args, "%d,%u,%d")
            src = vals[0] if vals else 0
            idx = vals[1] if len(vals) > 1 else 0
            if idx >= N_SLOTS:
                return self._teensy("Invalid PulseTrain index.\n")
            return self._teensy(f"Attaching interrupt to IN{src} to run PulseTrain[{idx}]\n")
        if cmd == "C":
            self.events.write("calibration_ramp", now_ns)  # the firmware sweeps a voltage ramp onto the outputs
        return b""  # B, C and unknown letters print nothing

    def _stop_engine(self, name: str, now_ns: int) -> bytes:
        r = self.runs.get(name)
        if r is not None:
            t = max(self._us(now_ns), r.busy_until_us)
            self._end(name, self._ns(t), "host_stop")
        return self._teensy(f"Forcing {name} train to stop\n")

    # --- RP2354B ----------------------------------------------------------------------------------------------
    def _rp_offsets(self) -> str:
        c, v = self.current_offsets, self.voltage_offsets
        return "".join(f"Channel {ch} offsets: adc={0.0:.4f} voltage={v[ch]} current={c[ch]}\n" for ch in (0, 1)) \
            + "\n"

    def _rp_line(self, line: str, now_ns: int) -> bytes:
        if not line:
            return self._rp("Unknown command: ''\n\n")  # the firmware prints the NUL it found
        cmd, args = line[0], line[1:]
        busy = bool(self.runs)
        if cmd == "S":
            return self._rp(self._rp_define(args))
        if cmd in "TU":
            p = _Fields(args)
            idx = p.int("pulse train index", 0, N_SLOTS - 1)
            if idx is None:
                return self._rp(p.error + "T/U usage: T<idx> or U<idx>\n\n")
            out = self._rp(f"Started PulseTrain[{idx}].\n\n")
            if busy:
                self.counters["rejected"] += 1
                return out + self._rp("Stimulus rejected: channel(s) busy.\n\n")
            return out + self._start("T", idx, now_ns)
        if cmd == "X":
            if args:
                return self._rp("X usage: X\n\n")
            out = self._rp("Stimulus cancelled.\n\n")
            for name, r in list(self.runs.items()):
                t = max(self._us(now_ns), r.busy_until_us)
                out += self._end(name, self._ns(t), "host_stop")
            return out
        if cmd == "D":
            return self._rp(self._rp_offsets() if not args else "D usage: D\n\n")
        if cmd in "MVAE" and busy:
            return b""  # notes.md: manual commands during a stimulus are discarded
        if cmd in "MVAEBCR":
            return self._rp(f"{cmd} usage: (not simulated)\n\n")
        return self._rp(f"Unknown command: '{cmd}'\n\n")

    def _rp_define(self, args: str) -> str:
        usage = "S usage: S<idx>,<mode0>,<mode1>,<period_us>,<total_dur_us>; <amp0>,<amp1>,<stage_dur_us>; ...\n\n"
        p = _Fields(args)
        head = []
        for name, lo, hi in (("idx", 0, N_SLOTS - 1), ("mode0", 0, 3), ("mode1", 0, 3),
                             ("period_us", 1, (1 << 31) - 1), ("total_dur_us", 1, (1 << 31) - 1)):
            v = p.int(name, lo, hi)
            if v is None:
                return p.error + usage
            head.append(v)
        idx, m0, m1, period, duration = head
        if p.rest[:1] not in (";", ""):
            return usage
        limits = [RP_MAX_MV if m == 0 else RP_MAX_UA if m == 1 else 0 for m in (m0, m1)]
        stages: list[Stage] = []
        while p.rest[:1] in (";", " ") and p.rest:
            p.rest = p.rest.lstrip("; ")
            if not p.rest or len(stages) >= MAX_STAGES:
                break
            n = len(stages)
            a0 = p.int(f"amp0 stage[{n}]", -limits[0], limits[0])
            a1 = p.int(f"amp1 stage[{n}]", -limits[1], limits[1]) if a0 is not None else None
            d = p.int(f"stage_dur_us stage[{n}]", 1, RP_MAX_STAGE_US) if a1 is not None else None
            if a0 is None or a1 is None or d is None:
                return p.error
            stages.append(Stage(a0, a1, d))
        total = sum(s.duration_us for s in stages)
        if total > period:
            return "Invalid pulse train: summed stage durations exceed period.\n\n"
        n_pulses = duration // period
        out = ""
        if period - total < 20 or any(s.duration_us < 20 for s in stages):
            out += "Warning: <20us stage or inter-pulse gap detected. Desired pulse timings are not guaranteed.\n"
        self.slots[idx] = Slot([m0, m1], period, duration, stages)
        out += (f"PulseTrain[{idx}]: mode[{1 << m0},{1 << m1}], period={period} us, pulses={n_pulses}, "
                f"{len(stages)} stages\n")
        for i, s in enumerate(stages):
            out += f"  Stage {i}: amp[{s.amp0},{s.amp1}], dur={s.duration_us} us\n"
        return out + "\n"


class _Fields:
    """The RP2354B's strict field parser (try_parse_i32_in_range): a number ending at a delimiter, in range."""

    def __init__(self, text: str) -> None:
        self.rest = text
        self.error = ""

    def int(self, name: str, lo: int, hi: int) -> int | None:
        s = self.rest
        if s[:1] == ",":
            s = s[1:]
        s = s.lstrip(" ")
        e = 1 if s[:1] in ("-", "+") else 0
        while e < len(s) and s[e] in "0123456789":
            e += 1
        digits = s[:e]
        ok = digits not in ("", "-", "+") and (e == len(s) or s[e] in ",; ")
        if ok and lo <= int(digits) <= hi:
            self.rest = s[e:]
            return int(digits)
        end = 0
        while end < len(s) and s[end] not in ",; ":
            end += 1
        self.error = f"Invalid {name}: '{s[:end]}' (must be {lo}..{hi})\n\n"
        return None
