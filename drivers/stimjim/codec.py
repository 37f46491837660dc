"""The StimJim's text line protocol, without I/O: encoding the host's commands and classifying the device's reply
lines, for both firmwares (Teensy `stimjimPulser.ino` and the RP2354B rewrite `firmware/main.c`).

Host lines end in `\\n`. A train definition is `S<slot>,<mode0>,<mode1>,<period_us>,<duration_us>;<a0>,<a1>,<us>;…`
(amplitudes in mV for voltage mode, µA for current mode, up to 10 stages); `T<slot>` / `U<slot>` start a train on
timer engine T / U; `T-1` / `U-1` stop an engine (Teensy); `X` cancels every stimulus (RP2354B); `D` prints the
calibration offsets. Replies end in `\\r\\n` or `\\n`; `LineDecoder` splits them and `parse_line` names each one.
A line the protocol does not define is an `Unknown`, which a strict client treats as an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

from neurostimd.drivers.errors import ProtocolError

N_SLOTS = 100
MAX_STAGES = 10
MICROAMPS_PER_DAC = 0.1017
MILLIVOLTS_PER_DAC = 0.4574
INT16_MIN, INT16_MAX = -32768, 32767
# The RP2354B firmware refuses stage amplitudes beyond these; the Teensy firmware takes anything and its DAC code
# wraps (int16) past about ±3332 µA / ±14.99 V.
RP_MAX_UA = 3333
RP_MAX_MV = 10000
RP_MAX_STAGE_US = 65535
MAX_LINE = 1000  # the Teensy firmware's input buffer (it does not check for overflow)

Firmware = Literal["teensy", "rp2354b"]
Engine = Literal["T", "U"]


class Mode(IntEnum):
    """A channel's output mode in a train (the numbers of `S` and `M`)."""

    VOLTAGE = 0
    CURRENT = 1
    HIGH_Z = 2
    GROUNDED = 3


@dataclass(frozen=True)
class Stage:
    """One stage of a pulse: the two channels' amplitudes (mV or µA by mode) held for `duration_us`."""

    amp0: int
    amp1: int
    duration_us: int


@dataclass(frozen=True)
class TrainDef:
    """A pulse train as `S` defines it."""

    slot: int
    mode0: Mode
    mode1: Mode
    period_us: int
    duration_us: int
    stages: tuple[Stage, ...]

    def problems(self) -> list[str]:
        """What no firmware would store as sent (empty when none)."""
        out = []
        if not 0 <= self.slot < N_SLOTS:
            out.append(f"slot {self.slot} is outside 0..{N_SLOTS - 1}")
        if not 1 <= len(self.stages) <= MAX_STAGES:
            out.append(f"{len(self.stages)} stages (1..{MAX_STAGES})")
        if self.period_us < 1 or self.duration_us < 1:
            out.append("period and duration must be at least 1 µs")
        if any(not 1 <= s.duration_us <= RP_MAX_STAGE_US for s in self.stages):
            out.append(f"a stage lasts outside 1..{RP_MAX_STAGE_US} µs")
        if sum(s.duration_us for s in self.stages) > self.period_us:
            out.append("the stages last longer than the period")
        return out


def encode_train(train: TrainDef) -> bytes:
    """The `S` line that defines `train`; ProtocolError when a firmware would not store it as sent."""
    problems = train.problems()
    if problems:
        raise ProtocolError(f"train for slot {train.slot} cannot be sent: {'; '.join(problems)}")
    head = f"S{train.slot},{int(train.mode0)},{int(train.mode1)},{train.period_us},{train.duration_us}"
    return (head + "".join(f";{s.amp0},{s.amp1},{s.duration_us}" for s in train.stages) + "\n").encode()


def encode_start(engine: Engine, slot: int) -> bytes:
    """`T<slot>` / `U<slot>`: start the train in `slot` on that timer engine (restarting it if it runs)."""
    if engine not in ("T", "U") or not 0 <= slot < N_SLOTS:
        raise ProtocolError(f"cannot start engine {engine!r} with slot {slot}: engines T, U; slots 0..{N_SLOTS - 1}")
    return f"{engine}{slot}\n".encode()


def encode_stop(engine: Engine) -> bytes:
    """`T-1` / `U-1`: stop that engine (Teensy firmware since ea7d0de, 2020-10-09)."""
    if engine not in ("T", "U"):
        raise ProtocolError(f"no timer engine {engine!r}: T or U")
    return f"{engine}-1\n".encode()


CANCEL = b"X\n"  # RP2354B: cancel every stimulus
PRINT_OFFSETS = b"D\n"  # both: print the calibration offsets (the identification probe)


class LineDecoder:
    """Splits the device's byte stream into lines (`\\r` stripped). A line longer than `max_line` without an end is
    cut off and counted in `overlong`: the device is talking garbage."""

    def __init__(self, max_line: int = 4096) -> None:
        self._buf = bytearray()
        self.max_line = max_line
        self.overlong = 0

    def feed(self, data: bytes) -> list[str]:
        self._buf += data
        out = []
        while True:
            i = self._buf.find(b"\n")
            if i < 0:
                if len(self._buf) > self.max_line:
                    self.overlong += 1
                    self._buf.clear()
                break
            raw = bytes(self._buf[:i]).rstrip(b"\r")
            del self._buf[:i + 1]
            out.append(raw.decode("ascii", errors="replace"))
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


# --- the reply lines -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    """A line from the device; `text` is the line as received."""

    text: str


@dataclass(frozen=True)
class Blank(Reply):
    pass


@dataclass(frozen=True)
class Banner(Reply):
    """A boot line; `firmware` and `version` when the line says them."""

    firmware: Firmware | None = None
    version: str | None = None


@dataclass(frozen=True)
class TeensyOffsets(Reply):
    """One line of the Teensy `D` reply: `which` is adc25, adc10, current or voltage; values for channels 0, 1."""

    which: str = ""
    values: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class RpOffsets(Reply):
    """One line of the RP2354B `D` reply."""

    channel: int = 0
    adc: float = 0.0
    voltage: int = 0
    current: int = 0


@dataclass(frozen=True)
class Started(Reply):
    """A train started: engine T or U (Teensy) or None (RP2354B, which does not say), and the slot."""

    engine: Engine | None = None
    slot: int = 0


@dataclass(frozen=True)
class Stopped(Reply):
    """`Forcing T train to stop` (Teensy, answering T-1 / U-1)."""

    engine: Engine = "T"


@dataclass(frozen=True)
class Cancelled(Reply):
    """`Stimulus cancelled.` (RP2354B, answering X)."""


@dataclass(frozen=True)
class Rejected(Reply):
    """`Stimulus rejected: channel(s) busy.` (RP2354B: a train was started while one runs)."""


@dataclass(frozen=True)
class TrainComplete(Reply):
    """Teensy: a train ended by itself after `n_pulses` pulses (a summary follows)."""

    n_pulses: int = 0


@dataclass(frozen=True)
class ChannelTerminated(Reply):
    """RP2354B: a channel's train ended (run out or cancelled; a summary follows)."""

    channel: int = 0


@dataclass(frozen=True)
class Summary(Reply):
    """A line of a train-end summary (measured amplitude per stage)."""


@dataclass(frozen=True)
class DumpRule(Reply):
    """The dashed line around the Teensy `S` dump."""


@dataclass(frozen=True)
class DumpHeader(Reply):
    slot: int = 0


@dataclass(frozen=True)
class DumpMode(Reply):
    channel: int = 0
    mode: int = 0


@dataclass(frozen=True)
class DumpPeriod(Reply):
    period_us: int = 0


@dataclass(frozen=True)
class DumpDuration(Reply):
    duration_us: int = 0


@dataclass(frozen=True)
class DumpStageHeader(Reply):
    pass


@dataclass(frozen=True)
class DumpStage(Reply):
    """A stage line of a train definition's echo (both firmwares)."""

    index: int = 0
    stage: Stage = Stage(0, 0, 0)


@dataclass(frozen=True)
class RpDefined(Reply):
    """RP2354B: `PulseTrain[i]: mode[m0,m1], period=… us, pulses=…, n stages` (modes as bit masks 1 << mode)."""

    slot: int = 0
    mode_bits: tuple[int, int] = (0, 0)
    period_us: int = 0
    n_pulses: int = 0
    n_stages: int = 0


@dataclass(frozen=True)
class Warning_(Reply):
    """RP2354B: `Warning: <20us stage or inter-pulse gap detected…`."""


@dataclass(frozen=True)
class Invalid(Reply):
    """The device refused a command: a bad index or field, a usage line, an unknown command."""


@dataclass(frozen=True)
class Unknown(Reply):
    """Nothing this protocol defines."""


_I = r"(-?\d+)"
_F = r"(-?\d+(?:\.\d+)?|nan|-?inf)"


def _stage(m: re.Match[str], i_amp0: int, i_amp1: int, i_dur: int) -> Stage:
    return Stage(int(m[i_amp0]), int(m[i_amp1]), int(m[i_dur]))


def parse_line(line: str) -> Reply:
    """Name one reply line (as LineDecoder returns it: no line end). Never raises: what the protocol does not
    define comes back as Unknown."""
    s = line
    if not s.strip():
        return Blank(s)
    if s == "Booting StimJim on Teensy 3.5!":
        return Banner(s, "teensy", None)
    if s in ("Initializing inputs...", "Ready to go!"):
        return Banner(s, "teensy", None)
    if m := re.fullmatch(r"StimJim (v[0-9A-Za-z.\-]+)", s):
        return Banner(s, "rp2354b", m[1])
    if m := re.fullmatch(rf"ADC offsets \(\+-(2\.5|10)V\): {_F}, {_F}", s):
        return TeensyOffsets(s, "adc25" if m[1] == "2.5" else "adc10", (float(m[2]), float(m[3])))
    if m := re.fullmatch(rf"(current|voltage) offsets: {_I}, {_I}", s):
        return TeensyOffsets(s, m[1], (float(m[2]), float(m[3])))
    if m := re.fullmatch(rf"Channel ([01]) offsets: adc={_F} voltage={_I} current={_I}", s):
        return RpOffsets(s, int(m[1]), float(m[2]), int(m[3]), int(m[4]))
    if m := re.fullmatch(r"Started ([TU]) train with parameters of PulseTrain (\d+)", s):
        return Started(s, "T" if m[1] == "T" else "U", int(m[2]))
    if m := re.fullmatch(r"Started PulseTrain\[(\d+)\]\.", s):
        return Started(s, None, int(m[1]))
    if m := re.fullmatch(r"Forcing ([TU]) train to stop", s):
        return Stopped(s, "T" if m[1] == "T" else "U")
    if s == "Stimulus cancelled.":
        return Cancelled(s)
    if s == "Stimulus rejected: channel(s) busy.":
        return Rejected(s)
    if m := re.fullmatch(r"Train complete\. Delivered (\d+) pulses\.", s):
        return TrainComplete(s, int(m[1]))
    if m := re.fullmatch(r"Channel ([01]) pulse train terminated\. Delivered:", s):
        return ChannelTerminated(s, int(m[1]))
    if re.fullmatch(r"Current/Voltage by stage: ?|\s+Ch0\s+Ch1 ?", s) \
            or re.fullmatch(rf"Stage \d+\s*{_I}(uA|mV),\s*{_I}(uA|mV),\s*", s) \
            or re.fullmatch(rf"\s+\d+x (Stage \d+|Inter-pulse gap):\s+{_I} (uA|mV)", s):
        return Summary(s)
    if re.fullmatch(r"-{10,}", s):
        return DumpRule(s)
    if m := re.fullmatch(r"Parameters for PulseTrain\[(\d+)\]", s):
        return DumpHeader(s, int(m[1]))
    if m := re.fullmatch(r"  mode\[ch([01])\]: (\d+) \(.*\)", s):
        return DumpMode(s, int(m[1]), int(m[2]))
    if m := re.fullmatch(rf"  period:\s+{_I} usec \(.*\)", s):
        return DumpPeriod(s, int(m[1]))
    if m := re.fullmatch(rf"  duration:\s+{_I} usec \(.*\)", s):
        return DumpDuration(s, int(m[1]))
    if re.fullmatch(r"  stage\s+duration\s+output0\s+output1", s):
        return DumpStageHeader(s)
    if m := re.fullmatch(rf"\s+(\d+)\s+{_I} usec\s+{_I}(?:mV|uA)\s+{_I}(?:mV|uA)", s):
        return DumpStage(s, int(m[1]), _stage(m, 3, 4, 2))
    if m := re.fullmatch(r"PulseTrain\[(\d+)\]: mode\[(\d+),(\d+)\], period=(\d+) us, pulses=(\d+), (\d+) stages", s):
        return RpDefined(s, int(m[1]), (int(m[2]), int(m[3])), int(m[4]), int(m[5]), int(m[6]))
    if m := re.fullmatch(rf"  Stage (\d+): amp\[{_I},{_I}\], dur=(\d+) us", s):
        return DumpStage(s, int(m[1]), _stage(m, 2, 3, 4))
    if s.startswith("Warning: <20us stage or inter-pulse gap detected"):
        return Warning_(s)
    if s.startswith(("Invalid ", "Unknown command: ")) or re.match(r"[A-Z](/[A-Z])? usage: ", s):
        return Invalid(s)
    return Unknown(s)


def dac_code(amplitude: int, mode: Mode, offset: int) -> int:
    """The DAC code the Teensy firmware computes for a stage amplitude (C truncation of amp / LSB + offset), before
    the int16 store wraps it; compare with INT16_MIN..INT16_MAX to see whether it would wrap."""
    lsb = MILLIVOLTS_PER_DAC if mode == Mode.VOLTAGE else MICROAMPS_PER_DAC
    return int(amplitude / lsb + offset)


def wrap_int16(code: int) -> int:
    """What an int16 store makes of `code` (two's complement: past 32767 the sign flips)."""
    return (code + 32768) % 65536 - 32768
