"""Print the beta plant's characteristic curves (the figures in docs/plants.md), and its speed.

    python -m neurostimd.firmware_sim.plants.sweep [--seconds 6] [--seed 0]

With the coupling held fixed (no drift): the noise-free oscillation against the coupling scale kappa (amplitude and
frequency of the STN rate), then, in the beta-prone regime (kappa = 1), the smoothed beta biomarker against the DBS
amplitude at 130 Hz / 60 µs, against the frequency at 2.5 mA, and against the pulse width at 1.5 mA; last, how many
simulated seconds the plant runs per wall-clock second (default parameters, 8 channels, 50-sample blocks).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np

from neurostimd.drivers.types import StimParams
from neurostimd.firmware_sim.plants.beta import BetaParams, BetaPlant

FS = 1000.0


def _fixed(kappa: float, **kw: float) -> BetaParams:
    return BetaParams(kappa_low=kappa, kappa_high=kappa, kappa_jitter_sd=0.0, **kw)


def _run(params: BetaParams, stim: StimParams | None, seconds: float, seed: int) -> tuple[float, float, float]:
    """(mean biomarker, STN rate sd, STN rate spectral peak in Hz) over the run after its first 2 s."""
    plant = BetaPlant(1, FS, seed, params=params)
    bio, rate = [], []
    for i in range(int(seconds * FS)):
        plant.step(1, stim)
        if i >= 2 * FS:
            rate.append(plant.stn_rate_hz)
            if i % 50 == 49:
                bio.append(plant.biomarker)
    s = np.asarray(rate)
    spec = np.abs(np.fft.rfft((s - s.mean()) * np.hanning(len(s)))) ** 2
    f = np.fft.rfftfreq(len(s), 1 / FS)
    band = (f >= 4) & (f <= 100)
    return float(np.mean(bio)), float(s.std()), float(f[band][np.argmax(spec[band])])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m neurostimd.firmware_sim.plants.sweep",
                                description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=6.0, help="simulated seconds per point (default 6)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.seconds <= 3:
        p.error("--seconds must be above 3 (the first 2 s are discarded)")
    n, sec = args.seed, args.seconds
    print("coupling kappa (noise-free): STN rate sd [spikes/s], spectral peak [Hz]")
    for kappa in (0.45, 0.5, 0.55, 0.6, 0.7, 0.8, 1.0, 1.2):
        _, sd, peak = _run(_fixed(kappa, noise_sd=0.0), None, sec, n)
        print(f"  kappa {kappa:4.2f}: sd {sd:6.2f}  peak {peak:5.1f}")
    print("beta-prone regime (kappa 1, with noise): biomarker [spikes/s]")
    beta = _fixed(1.0)
    off = _run(beta, None, sec, n)[0]
    print(f"  no stimulation: {off:6.2f}")
    for amp in (0.5, 1.0, 1.5, 1.75, 2.0, 2.5, 3.0):
        b = _run(beta, StimParams(130.0, amp, 60.0), sec, n)[0]
        print(f"  130 Hz, 60 us, {amp:4.2f} mA: {b:6.2f}  ({100 * (1 - b / off):5.1f} % below off)")
    for freq in (20.0, 60.0, 90.0, 130.0, 180.0):
        b = _run(beta, StimParams(freq, 2.5, 60.0), sec, n)[0]
        print(f"  {freq:5.0f} Hz, 60 us, 2.5 mA: {b:6.2f}")
    for pw in (30.0, 60.0, 90.0):
        b = _run(beta, StimParams(130.0, 1.5, pw), sec, n)[0]
        print(f"  130 Hz, {pw:3.0f} us, 1.5 mA: {b:6.2f}")
    plant = BetaPlant(8, FS, n)
    stim = StimParams(130.0, 2.5, 60.0)
    t0 = time.perf_counter()
    for i in range(1200):
        plant.step(50, stim if (i // 100) % 2 else None)
    wall = time.perf_counter() - t0
    print(f"speed: 60 simulated s in {wall:.2f} s wall = {60 / wall:.0f} simulated s per wall s "
          f"(8 channels, 50-sample blocks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
