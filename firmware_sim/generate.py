"""Write a labelled synthetic continuous recording (.npz of docs/design.md) for training and tests.

    python -m neurostimd.firmware_sim.generate --out data.npz --duration 600 --channels 32 --rate 1000 --seed 0
    python -m neurostimd.firmware_sim.generate --plant beta --out beta.npz --duration 1200 --seed 0

The Markov plant (the default): the state follows a forced schedule (segments of random length; the first three
segments visit all three states in random order), so the classes are balanced and every state is present. A random
third of the segments carry stimulation, so a classifier also learns what stimulation artefacts look like.

Any other plant (`--plant beta`, firmware_sim.plants) runs free: its own dynamics decide the state, and the labels
are the plant's state at the end of each 50 ms step. Stimulation comes in segments of 5–30 s: half of them off, the
rest a train at 130 Hz (60 %), 60 Hz or 20 Hz, 60 or 90 µs, with an amplitude drawn uniformly from 0.5–3 mA — so
the classifier sees the artefact with and without the beta it suppresses.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from neurostimd.drivers.types import StimParams
from neurostimd.firmware_sim.generator import SignalGenerator, synthetic_channel_names
from neurostimd.firmware_sim.plant import N_STATES, STATE_NAMES
from neurostimd.firmware_sim.plants import DEFAULT_PLANT, PLANTS, make_plant

# stimulation a segment may carry (frequency_hz, amplitude_ma, pulse_width_us): within the board's default limits
_STIM_CHOICES = ((20.0, 2.5, 200.0), (50.0, 3.5, 300.0), (100.0, 2.0, 400.0), (130.0, 1.5, 200.0))


def state_schedule(duration_s: float, rng: np.random.Generator, *, min_segment_s: float = 5.0,
                   max_segment_s: float = 30.0) -> list[tuple[float, int]]:
    """[(segment length in s, state)] covering duration_s; the first N_STATES segments are a permutation of the
    states, so every state appears when the duration allows."""
    segments: list[tuple[float, int]] = []
    # short recordings get shorter segments, so that all states still fit
    max_segment_s = min(max_segment_s, duration_s / (N_STATES + 1))
    min_segment_s = min(min_segment_s, max_segment_s / 2)
    t = 0.0
    order = [int(s) for s in rng.permutation(N_STATES)]
    prev = -1
    while t < duration_s:
        state = order.pop(0) if order else int(rng.choice([s for s in range(N_STATES) if s != prev]))
        length = min(float(rng.uniform(min_segment_s, max_segment_s)), duration_s - t)
        segments.append((length, state))
        prev = state
        t += length
    return segments


def generate_recording(duration_s: float, n_channels: int = 32, sample_rate_hz: float = 1000.0, seed: int = 0,
                       *, stim_fraction: float = 1 / 3) -> dict[str, npt.NDArray[np.generic]]:
    """The arrays of a continuous .npz: data, fs, channel_names, labels, class_names."""
    if duration_s <= 0:
        raise ValueError(f"duration must be positive, got {duration_s} s")
    ss = np.random.SeedSequence(seed)
    sched_seed, gen_seed = ss.spawn(2)
    rng = np.random.default_rng(sched_seed)
    gen = SignalGenerator(n_channels, sample_rate_hz, rng=np.random.default_rng(gen_seed))
    n_total = round(duration_s * sample_rate_hz)
    data = np.empty((n_total, n_channels), dtype=np.float32)
    labels = np.empty(n_total, dtype=np.int64)
    pos = 0
    chunk = max(1, int(sample_rate_hz))  # one second per generate() call keeps memory flat
    for length_s, state in state_schedule(duration_s, rng):
        n_seg = min(round(length_s * sample_rate_hz), n_total - pos)
        stim = None
        if rng.random() < stim_fraction:
            f, a, pw = _STIM_CHOICES[int(rng.integers(len(_STIM_CHOICES)))]
            stim = StimParams(frequency_hz=f, amplitude_ma=a, pulse_width_us=pw)
        done = 0
        while done < n_seg:
            n = min(chunk, n_seg - done)
            data[pos + done:pos + done + n] = gen.generate(state, n, stim)
            done += n
        labels[pos:pos + n_seg] = state
        pos += n_seg
    if pos < n_total:  # rounding left a few samples: continue the last state
        data[pos:] = gen.generate(int(labels[pos - 1]), n_total - pos)
        labels[pos:] = labels[pos - 1]
    return {
        "data": data,
        "fs": np.asarray(sample_rate_hz, dtype=np.float64),
        "channel_names": np.array(synthetic_channel_names(n_channels)),
        "labels": labels,
        "class_names": np.array(STATE_NAMES),
    }


PLANT_STEP_S = 0.05


def generate_plant_recording(plant_name: str, duration_s: float, n_channels: int = 8, sample_rate_hz: float = 1000.0,
                             seed: int = 0) -> dict[str, npt.NDArray[np.generic]]:
    """A free-running recording of a named plant under a random stimulation schedule, labelled by the plant's state
    (the arrays of a continuous .npz, as generate_recording)."""
    if duration_s <= 0:
        raise ValueError(f"duration must be positive, got {duration_s} s")
    ss = np.random.SeedSequence(seed)
    plant_seed, sched_seed = ss.spawn(2)
    plant = make_plant(plant_name, n_channels, sample_rate_hz, int(plant_seed.generate_state(1)[0]))
    rng = np.random.default_rng(sched_seed)
    n_total = round(duration_s * sample_rate_hz)
    step = max(1, round(PLANT_STEP_S * sample_rate_hz))
    data = np.empty((n_total, n_channels), dtype=np.float32)
    labels = np.empty(n_total, dtype=np.int64)
    pos = 0
    while pos < n_total:
        seg = min(round(float(rng.uniform(5.0, 30.0)) * sample_rate_hz), n_total - pos)
        stim = None
        if rng.random() >= 0.5:
            u = rng.random()
            freq = 130.0 if u < 0.6 else (60.0 if u < 0.8 else 20.0)
            stim = StimParams(frequency_hz=freq, amplitude_ma=round(float(rng.uniform(0.5, 3.0)), 2),
                              pulse_width_us=float(rng.choice([60.0, 90.0])))
        done = 0
        while done < seg:
            n = min(step, seg - done)
            data[pos + done:pos + done + n] = plant.step(n, stim)
            labels[pos + done:pos + done + n] = plant.state
            done += n
        pos += seg
    return {
        "data": data,
        "fs": np.asarray(sample_rate_hz, dtype=np.float64),
        "channel_names": np.array(synthetic_channel_names(n_channels)),
        "labels": labels,
        "class_names": np.array(plant.state_names),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m neurostimd.firmware_sim.generate", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output .npz path")
    p.add_argument("--duration", type=float, default=600.0, help="seconds of signal (default 600)")
    p.add_argument("--plant", default=DEFAULT_PLANT, choices=list(PLANTS),
                   help="the plant (default markov: the forced three-state schedule; beta: docs/plants.md)")
    p.add_argument("--channels", type=int, default=None, help="channels (default 32; 8 for --plant beta)")
    p.add_argument("--rate", type=float, default=1000.0, help="sample rate in Hz")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--channel-names", help="comma-separated names for the channels (default ch00, ch01, ...), e.g. "
                                           "the amplifier's labels a bundle for it must carry")
    args = p.parse_args(argv)
    if args.channels is None:
        args.channels = 32 if args.plant == DEFAULT_PLANT else 8
    if args.channels <= 0 or args.rate <= 0:
        p.error("--channels and --rate must be positive")
    names = None
    if args.channel_names is not None:
        names = [n.strip() for n in args.channel_names.split(",")]
        if len(names) != args.channels or not all(names) or len({n.casefold() for n in names}) != len(names):
            p.error(f"--channel-names must give {args.channels} distinct, non-empty names (got {args.channel_names!r})")
    try:
        if args.plant == DEFAULT_PLANT:
            rec = generate_recording(args.duration, args.channels, args.rate, args.seed)
        else:
            rec = generate_plant_recording(args.plant, args.duration, args.channels, args.rate, args.seed)
    except ValueError as err:
        p.error(str(err))
    if names is not None:
        rec["channel_names"] = np.array(names)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **rec)  # type: ignore[arg-type]  # numpy's stub confuses **arrays with allow_pickle
    counts = np.bincount(rec["labels"], minlength=len(rec["class_names"]))
    print(f"wrote {out}: {len(rec['labels'])} samples x {args.channels} channels at {args.rate} Hz; "
          f"samples per state {counts.tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
