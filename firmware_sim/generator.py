"""Synthetic multichannel neural signals with three states, and the sample sources the simulated board streams from.

The signal in µV is a sum of
* a 1/f background per channel (a bank of one-pole low-pass filters on white noise, corners 1–256 Hz);
* state-dependent rhythms shared across channels through smooth spatial gain patterns:
  state 0 "quiet": strong alpha (~10 Hz), little beta; state 1 "activated": beta (~20 Hz) in bursts;
  state 2 "pathological": large 3 Hz spike-and-wave activity and a louder background;
  band amplitudes follow the state with a ~150 ms time constant, so a transition is not a step;
* 50 Hz line noise (per-channel gain);
* occasional movement artefacts (a large decaying step on a few channels, ~one every 20 s);
* stimulation artefacts: one biphasic spike per stimulation pulse at the stimulation frequency, scaled by
  amplitude and pulse width, on every channel (strongest near the stimulating contact).

SyntheticSource couples the generator to the Plant (neurostimd.firmware_sim.plant), whose state responds to stimulation;
FileSource plays a recording the host has read. Everything is deterministic given the seed and the sequence of calls.
No I/O.
"""

from __future__ import annotations

import functools
import math
from typing import Protocol

import numpy as np
import numpy.typing as npt

from neurostimd.drivers.types import StimParams
from neurostimd.firmware_sim.plant import N_STATES, STATE_NAMES, Plant, PlantParams, charge_rate_uc_per_s

F32 = npt.NDArray[np.float32]

# per state: (alpha, beta, spike-wave, background scale) amplitudes in µV
_STATE_AMPLITUDES = np.array([
    [28.0, 4.0, 0.0, 1.0],
    [8.0, 22.0, 0.0, 1.15],
    [5.0, 7.0, 90.0, 1.6],
], dtype=np.float64)
_PINK_CORNERS_HZ = (1.0, 4.0, 16.0, 64.0, 256.0)


_CHUNK = 32


def synthetic_channel_names(n_channels: int) -> list[str]:
    """The synthetic signal's channel names, the same wherever it goes (a generated recording, the LSL outlet):
    ch00, ch01, ... zero-padded to the widest index (ch000 ... ch255 for 256), so they sort in channel order."""
    width = max(2, len(str(n_channels - 1)))
    return [f"ch{i:0{width}d}" for i in range(n_channels)]


def one_pole(x: npt.NDArray[np.float64], a: float, b: float,
             y_prev: npt.NDArray[np.float64] | float) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """y[n] = a·y[n-1] + b·x[n] along axis 0, starting from y[-1] = y_prev; returns (y, y[-1]).

    Written with numpy (chunked: a small lower-triangular matrix per 32 samples, a carry between chunks) so that
    the simulator does not import scipy.signal, which costs seconds at start-up on a loaded machine."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    rest = x.shape[1:]
    flat = x.reshape(n, -1)
    weights, powers = _one_pole_kernel(float(a), float(b))
    if n <= _CHUNK:  # the common case (one sample block): one small matrix product, no padding
        y = weights[:n, :n] @ flat
        y += powers[:n, None] * np.broadcast_to(np.asarray(y_prev, dtype=np.float64), rest).reshape(-1)
        out = y.reshape((n, *rest))
        return out, out[-1].copy()
    pad = (-n) % _CHUNK
    if pad:
        flat = np.concatenate([flat, np.zeros((pad, flat.shape[1]))])
    chunks = flat.reshape(-1, _CHUNK, flat.shape[1])
    yc = np.matmul(weights, chunks)
    carry = np.broadcast_to(np.asarray(y_prev, dtype=np.float64), rest).reshape(-1)
    for j in range(chunks.shape[0]):
        yc[j] += powers[:, None] * carry
        carry = yc[j, -1]
    out = yc.reshape(-1, flat.shape[1])[:n].reshape((n, *rest))
    return out, out[-1].copy()


@functools.lru_cache(maxsize=64)
def _one_pole_kernel(a: float, b: float) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The lower-triangular impulse-response matrix of one chunk, and a^(k+1) for the carried-in state."""
    k = np.arange(_CHUNK)
    lag = k[:, None] - k[None, :]
    weights = np.where(lag >= 0, b * a ** np.maximum(lag, 0), 0.0)
    powers = np.asarray(a ** (k + 1), dtype=np.float64)
    return np.asarray(weights, dtype=np.float64), powers


def _spatial_gains(rng: np.random.Generator, n_channels: int) -> npt.NDArray[np.float64]:
    """A smooth bump over the channel line centred at a random channel, plus a floor (volume conduction)."""
    centre = rng.uniform(0, n_channels - 1) if n_channels > 1 else 0.0
    width = max(1.0, n_channels / 4.0)
    ch = np.arange(n_channels)
    return np.asarray(0.3 + 0.7 * np.exp(-0.5 * ((ch - centre) / width) ** 2), dtype=np.float64)


class SignalGenerator:
    """Makes `n_samples` × `n_channels` float32 µV for a given state sequence and stimulation."""

    def __init__(self, n_channels: int = 32, sample_rate_hz: float = 1000.0, seed: int = 0, *,
                 line_hz: float = 50.0, line_uv: float = 3.0, background_uv: float = 8.0,
                 artefact_rate_hz: float = 1 / 20.0, stim_artefact_uv_per_ma: float = 150.0,
                 rng: np.random.Generator | None = None) -> None:
        if n_channels <= 0 or sample_rate_hz <= 0:
            raise ValueError(f"need n_channels > 0 and sample_rate_hz > 0, got {n_channels}, {sample_rate_hz}")
        self.n_channels = n_channels
        self.fs = float(sample_rate_hz)
        self.rng = rng if rng is not None else np.random.default_rng(seed)
        r = self.rng
        self.line_hz = line_hz
        self.line_uv = line_uv
        self.background_uv = background_uv
        self.artefact_rate_hz = artefact_rate_hz
        self.stim_artefact_uv_per_ma = stim_artefact_uv_per_ma
        self.freqs_hz = np.array([r.uniform(9.0, 11.0), r.uniform(18.0, 24.0), r.uniform(2.7, 3.5)])
        self.gains = np.stack([_spatial_gains(r, n_channels) for _ in range(3)])  # (3 sources, ch)
        self.line_gain = r.uniform(0.5, 1.5, n_channels)
        self.stim_gain = _spatial_gains(r, n_channels)
        self.phase = r.uniform(0, 1, 4)  # alpha, beta, spike-wave, line (in cycles)
        self.stim_phase = 0.0  # cycles of the stimulation pulse train
        # 1/f bank: one-pole low-passes, unit-variance each, summed
        self.pink_a = np.array([math.exp(-2 * math.pi * fc / self.fs) for fc in _PINK_CORNERS_HZ])
        self.pink_zi = np.zeros((len(_PINK_CORNERS_HZ), n_channels))
        # smoothed per-source amplitudes and the beta burst envelope
        self.amp_a = math.exp(-1.0 / (0.15 * self.fs))
        self.amp_zi = np.zeros(4)
        self.amp_initialised = False
        self.burst_on = 0.0
        self.burst_zi = np.zeros(())
        self.burst_a = math.exp(-1.0 / (0.05 * self.fs))
        self.artefact_level = np.zeros(n_channels)
        self.artefact_decay = math.exp(-1.0 / (0.3 * self.fs))
        self.stim_tail = np.zeros(n_channels)

    def generate(self, states: int | npt.ArrayLike, n_samples: int, stim: StimParams | None = None) -> F32:
        """The next n_samples rows, continuing every rhythm and filter from the previous call."""
        n = int(n_samples)
        if n <= 0:
            return np.zeros((0, self.n_channels), dtype=np.float32)
        st = np.broadcast_to(np.asarray(states, dtype=np.int64), (n,))
        if st.min() < 0 or st.max() >= N_STATES:
            raise ValueError(f"states must be 0..{N_STATES - 1}")
        r = self.rng
        ch = self.n_channels

        # band amplitudes follow the state through a one-pole smoother
        target = _STATE_AMPLITUDES[st]  # (n, 4)
        if not self.amp_initialised:
            self.amp_zi = target[0].copy()
            self.amp_initialised = True
        amps_t, self.amp_zi = one_pole(target, self.amp_a, 1 - self.amp_a, self.amp_zi)
        amps = amps_t.T  # (4, n)

        # 1/f background
        white = r.standard_normal((len(self.pink_a), n, ch))
        bg = np.zeros((n, ch))
        for i, a in enumerate(self.pink_a):
            y, self.pink_zi[i] = one_pole(white[i], a, math.sqrt(1 - a * a), self.pink_zi[i])
            bg += y
        bg *= self.background_uv / math.sqrt(len(self.pink_a)) * amps[3][:, None]

        # rhythms: phases continue across calls
        steps = np.arange(1, n + 1)[:, None] / self.fs
        phases = self.phase[None, :3] + steps * self.freqs_hz[None, :]  # (n, 3) cycles
        alpha = np.sin(2 * np.pi * phases[:, 0])
        # beta in bursts: a random telegraph (mean dwell 200 ms on and off) smoothed into an envelope
        flips = r.random(n) < 1 / (0.2 * self.fs)
        on = np.asarray((self.burst_on + np.cumsum(flips)) % 2, dtype=np.float64)
        self.burst_on = float(on[-1])
        env, self.burst_zi = one_pole(on, self.burst_a, 1 - self.burst_a, self.burst_zi)
        beta = np.sin(2 * np.pi * phases[:, 1]) * (0.3 + 1.4 * env)
        frac = phases[:, 2] % 1.0
        spike_wave = -1.6 * np.exp(-0.5 * ((frac - 0.1) / 0.025) ** 2) + 0.6 * np.sin(2 * np.pi * (frac - 0.25))
        self.phase[:3] = phases[-1] % 1.0
        rhythms = (alpha * amps[0])[:, None] * self.gains[0] + (beta * amps[1])[:, None] * self.gains[1] \
            + (spike_wave * amps[2])[:, None] * self.gains[2]

        line_ph = self.phase[3] + steps[:, 0] * self.line_hz
        self.phase[3] = line_ph[-1] % 1.0
        line = (self.line_uv * np.sin(2 * np.pi * line_ph))[:, None] * self.line_gain

        out = bg + rhythms + line + self._artefacts(n) + self._stim_artefacts(n, stim)
        return out.astype(np.float32)

    def _artefacts(self, n: int) -> npt.NDArray[np.float64]:
        r = self.rng
        start = self.artefact_level.copy()
        new = np.zeros((n, self.n_channels))
        if r.random() < 1 - math.exp(-self.artefact_rate_hz * n / self.fs):
            at = int(r.integers(0, n))
            k = int(r.integers(1, min(4, self.n_channels) + 1))
            chans = r.choice(self.n_channels, size=k, replace=False)
            new[at, chans] = r.choice([-1, 1]) * r.uniform(200, 500, k)
        total, self.artefact_level = one_pole(new, self.artefact_decay, 1.0, start)
        return total

    def _stim_artefacts(self, n: int, stim: StimParams | None) -> npt.NDArray[np.float64]:
        out = np.zeros((n, self.n_channels))
        tail = self.stim_tail
        if np.any(tail):
            out[0] += tail
            self.stim_tail = np.zeros(self.n_channels)
        if stim is None or stim.amplitude_ma <= 0 or stim.frequency_hz <= 0:
            return out
        # pulses at the stimulation rate: the sample in which each pulse falls gets the cathodic phase, the next one
        # the (smaller, filtered) anodic phase
        ph = self.stim_phase + np.arange(1, n + 1) * stim.frequency_hz / self.fs
        pulse_at = np.nonzero(np.floor(ph) > np.floor(np.concatenate([[self.stim_phase], ph[:-1]])))[0]
        self.stim_phase = float(ph[-1] % 1.0)
        height = self.stim_artefact_uv_per_ma * stim.amplitude_ma * (stim.pulse_width_us / 200.0)
        for i in pulse_at:
            out[i] -= height * self.stim_gain
            if i + 1 < n:
                out[i + 1] += 0.6 * height * self.stim_gain
            else:
                self.stim_tail = 0.6 * height * self.stim_gain
        return out


class SampleSource(Protocol):
    """Where the simulated board's samples come from. read() returns float32 µV (n, n_channels)."""

    n_channels: int
    sample_rate_hz: float

    def read(self, n_samples: int, stim: StimParams | None) -> F32: ...

    @property
    def state(self) -> int | None: ...


class SyntheticSource:
    """Generator + plant: the plant steps once per read (dt = n/fs) under the current stimulation."""

    def __init__(self, n_channels: int = 32, sample_rate_hz: float = 1000.0, seed: int = 0, *,
                 initial_state: int = 0, plant_params: PlantParams | None = None) -> None:
        ss = np.random.SeedSequence(seed)
        plant_seed, gen_seed = ss.spawn(2)
        self.n_channels = n_channels
        self.sample_rate_hz = float(sample_rate_hz)
        self.plant = Plant(initial_state=initial_state, params=plant_params,
                           rng=np.random.default_rng(plant_seed))
        self.generator = SignalGenerator(n_channels, sample_rate_hz, rng=np.random.default_rng(gen_seed))

    @property
    def state(self) -> int | None:
        return self.plant.state

    def read(self, n_samples: int, stim: StimParams | None) -> F32:
        q = charge_rate_uc_per_s(stim.frequency_hz, stim.amplitude_ma, stim.pulse_width_us) if stim else 0.0
        self.plant.step(n_samples / self.sample_rate_hz, q)
        return self.generator.generate(self.plant.state, n_samples, stim)


class Playable(Protocol):
    """A recording already read by the host (neurostimd.sources.recordings.Recording is one): float µV samples
    (n_samples, n_channels) at `fs` Hz. The simulator reads no files itself: it imports no host code."""

    @property
    def data(self) -> npt.NDArray[np.floating]: ...

    @property
    def fs(self) -> float: ...

    @property
    def channel_names(self) -> list[str]: ...


class FileSource:
    """Plays a recording sample by sample (non-finite values become 0, as a board's ADC cannot produce NaN).
    ValueError naming the problem for samples that cannot be played."""

    def __init__(self, recording: Playable, *, loop: bool = False) -> None:
        data = np.asarray(recording.data, dtype=np.float32)
        fs = float(recording.fs)
        if data.ndim != 2 or data.shape[0] == 0 or data.shape[1] == 0:
            raise ValueError(f"the recording's samples must be (n_samples, n_channels), got shape {data.shape}")
        if not (math.isfinite(fs) and fs > 0):
            raise ValueError(f"the recording's sample rate must be a positive number, got {fs}")
        names = [str(c) for c in recording.channel_names]
        if len(names) != data.shape[1]:
            raise ValueError(f"{len(names)} channel names for {data.shape[1]} channels")
        self.data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
        self.sample_rate_hz = fs
        self.n_channels = int(data.shape[1])
        self.channel_names = names
        self.loop = loop
        self.pos = 0

    @property
    def state(self) -> int | None:
        return None

    @property
    def exhausted(self) -> bool:
        return not self.loop and self.pos >= len(self.data)

    def read(self, n_samples: int, stim: StimParams | None) -> F32:
        """Up to n_samples rows; fewer (possibly none) at the end of a file that does not loop."""
        if not self.loop:
            out = self.data[self.pos:self.pos + n_samples]
            self.pos += len(out)
            return out
        idx = (self.pos + np.arange(n_samples)) % len(self.data)
        self.pos = int((self.pos + n_samples) % len(self.data))
        return self.data[idx]


__all__ = ["STATE_NAMES", "FileSource", "Playable", "SampleSource", "SignalGenerator", "SyntheticSource"]
