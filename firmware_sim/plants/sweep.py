"""Print the beta plant's characteristic curves (the figures in docs/plants.md), and its speed.

    python -m neurostimd.firmware_sim.plants.sweep [--seconds 6] [--seed 0] [--figure PNG]

With the coupling held fixed (no drift): the noise-free oscillation against the coupling scale kappa (amplitude and
frequency of the STN rate), then, in the beta-prone regime (kappa = 1), the smoothed beta biomarker against the DBS
amplitude at 130 Hz / 60 µs, against the frequency at 2.5 mA, and against the pulse width at 1.5 mA; last, how many
simulated seconds the plant runs per wall-clock second (default parameters, 8 channels, 50-sample blocks).
`--figure PNG` also draws 5 free-running minutes of the default plant and the amplitude curves (needs matplotlib).
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


def _run(params: BetaParams, stim: StimParams | None, seconds: float, seed: int) -> tuple[float, float, float, float]:
    """(mean biomarker, STN rate sd, STN rate spectral peak in Hz, LFP channel 0 13–30 Hz rms in µV) over the run
    after its first 2 s."""
    plant = BetaPlant(1, FS, seed, params=params)
    bio, rate, lfp = [], [], []
    for i in range(int(seconds * FS)):
        x = plant.step(1, stim)
        if i >= 2 * FS:
            rate.append(plant.stn_rate_hz)
            lfp.append(float(x[0, 0]))
            if i % 50 == 49:
                bio.append(plant.biomarker)
    s = np.asarray(rate)
    spec = np.abs(np.fft.rfft((s - s.mean()) * np.hanning(len(s)))) ** 2
    f = np.fft.rfftfreq(len(s), 1 / FS)
    band = (f >= 4) & (f <= 100)
    v = np.asarray(lfp) - np.mean(lfp)
    lspec = np.abs(np.fft.rfft(v)) ** 2 * 2 / len(v) ** 2  # one-sided power per bin, µV²
    beta = (f >= 13) & (f <= 30)
    return float(np.mean(bio)), float(s.std()), float(f[band][np.argmax(spec[band])]), float(np.sqrt(lspec[beta].sum()))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m neurostimd.firmware_sim.plants.sweep",
                                description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=6.0, help="simulated seconds per point (default 6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--figure", default=None, metavar="PNG", help="also draw the figure of docs/plants.md")
    args = p.parse_args(argv)
    if args.seconds <= 3:
        p.error("--seconds must be above 3 (the first 2 s are discarded)")
    n, sec = args.seed, args.seconds
    print("coupling kappa (noise-free): STN rate sd [spikes/s], spectral peak [Hz]")
    for kappa in (0.3, 0.4, 0.45, 0.5, 0.6, 0.8, 1.0, 1.2):
        _, sd, peak, _ = _run(_fixed(kappa, noise_sd=0.0), None, sec, n)
        print(f"  kappa {kappa:4.2f}: sd {sd:6.2f}  peak {peak:5.1f}")
    low = BetaParams().kappa_low
    healthy = _run(_fixed(low), None, sec, n)
    print(f"healthy regime (kappa {low:g}, with noise): biomarker {healthy[0]:6.2f} spikes/s, LFP ch00 13-30 Hz "
          f"{healthy[3]:5.2f} uV rms")
    print("beta-prone regime (kappa 1, with noise): biomarker [spikes/s]; LFP ch00 13-30 Hz rms [uV]")
    beta = _fixed(1.0)
    off, _, _, off_lfp = _run(beta, None, sec, n)
    print(f"  no stimulation: {off:6.2f}  LFP {off_lfp:5.2f}")
    for amp in (0.5, 1.0, 1.5, 1.75, 2.0, 2.5, 3.0):
        b, _, _, lfp = _run(beta, StimParams(130.0, amp, 60.0), sec, n)
        print(f"  130 Hz, 60 us, {amp:4.2f} mA: {b:6.2f}  ({100 * (1 - b / off):5.1f} % below off)  LFP {lfp:5.2f}")
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
    if args.figure:
        figure(args.figure, n, sec)
        print(f"wrote {args.figure}")
    return 0


def figure(path: str, seed: int, seconds: float) -> None:
    """Left: 5 minutes of the default plant without stimulation, with 2.5 mA DBS in minute 3 (biomarker, state,
    coupling). Right: the biomarker against the amplitude at 130 Hz / 60 µs, 60 Hz / 60 µs and 130 Hz / 90 µs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plant = BetaPlant(1, FS, seed)
    t, bio, state, kappa, amp = [], [], [], [], []
    for i in range(300 * 20):
        a = 2.5 if 120.0 <= i / 20 < 180.0 else 0.0
        plant.step(50, StimParams(130.0, a, 60.0) if a > 0 else None)
        t.append(i / 20)
        bio.append(plant.biomarker)
        state.append(plant.state)
        kappa.append(plant.kappa)
        amp.append(a)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [2.2, 1]})
    ax.fill_between(t, 0, 40, where=np.asarray(state) == 1, color="tab:red", alpha=0.12, step="post",
                    label="state beta_high")
    ax.plot(t, bio, color="black", lw=0.8, label="biomarker: STN beta amplitude (spikes/s)")
    ax.axhline(plant.params.beta_threshold, color="tab:red", ls="--", lw=0.8, label="state threshold")
    ax.fill_between(t, 0, np.asarray(amp) * 4, color="tab:blue", alpha=0.25, step="post",
                    label="DBS 130 Hz, 60 µs (mA × 4)")
    k = ax.twinx()
    k.plot(t, kappa, color="tab:green", lw=1.0)
    k.set_ylabel("coupling kappa (green)")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("spikes/s")
    ax.set_ylim(0, 40)
    ax.set_title(f"beta plant, seed {seed}: slow coupling drift, DBS 2.5 mA from 120 to 180 s")
    ax.legend(loc="upper left", fontsize=7)
    amps = np.arange(0.0, 3.01, 0.25)
    settings = ((130.0, 60.0, "130 Hz, 60 µs"), (60.0, 60.0, "60 Hz, 60 µs"), (130.0, 90.0, "130 Hz, 90 µs"))
    for freq, pw, label in settings:
        curve = [_run(_fixed(1.0), StimParams(freq, a, pw) if a > 0 else None, seconds, seed)[0] for a in amps]
        bx.plot(amps, curve, marker="o", ms=3, label=label)
    bx.set_xlabel("DBS amplitude (mA)")
    bx.set_ylabel("beta amplitude (spikes/s)")
    bx.set_title("beta-prone regime (kappa 1)")
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
