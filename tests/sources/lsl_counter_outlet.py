"""A separate process for the LSL tests: an outlet pushing counter values (sample k holds k + 0.001·channel), or the
rows of a recording (`--signal F.npz`, looped, times `--scale`), in chunks, on absolute deadlines, until killed or
`--samples` are pushed.

Stamps: `exact` (default) stamps each sample on the outlet's own sample clock, t0 + k / true rate, as an amplifier
app stamping from its sample counter does; `push` leaves stamping to liblsl (the push time, earlier samples of the
chunk back-dated at the nominal rate). `--true-rate` makes the outlet produce at another rate than it declares;
`--gap-after K --gap-samples M` drops M samples after sample K; `--stall-after K --stall-s S` stops pushing for S
seconds (the samples of the stall follow at once). `--unit` and `--labels` describe the channels (`--unit ''`: none).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pylsl


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--source-id", default="")
    ap.add_argument("--type", default="EEG")
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--true-rate", type=float, default=0.0, help="rate the samples are produced at (0: --rate)")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--samples", type=int, default=0, help="stop after this many (0: run until killed)")
    ap.add_argument("--chunk", type=int, default=10)
    ap.add_argument("--wait-consumer", type=float, default=0.0, help="wait up to this long for an inlet first")
    ap.add_argument("--unit", default="microvolts")
    ap.add_argument("--labels", default="", help="comma-separated channel labels")
    ap.add_argument("--signal", default="", help="an .npz whose `data` rows are pushed instead of counter values")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--stamp", choices=["exact", "push"], default="exact")
    ap.add_argument("--gap-after", type=int, default=-1)
    ap.add_argument("--gap-samples", type=int, default=0)
    ap.add_argument("--stall-after", type=int, default=-1)
    ap.add_argument("--stall-s", type=float, default=0.0)
    a = ap.parse_args()
    info = pylsl.StreamInfo(a.name, a.type, a.channels, a.rate, "float32", a.source_id)
    labels = [s for s in a.labels.split(",") if s]
    if labels or a.unit:
        chans = info.desc().append_child("channels")
        for c in range(a.channels):
            ch = chans.append_child("channel")
            if labels:
                ch.append_child_value("label", labels[c])
            if a.unit:
                ch.append_child_value("unit", a.unit)
            ch.append_child_value("type", "EEG")
    outlet = pylsl.StreamOutlet(info, chunk_size=a.chunk)
    signal = None
    if a.signal:
        with np.load(a.signal) as z:
            signal = (np.asarray(z["data"], dtype=np.float64)[:, : a.channels] * a.scale).astype(np.float32)
    offsets = (np.arange(a.channels, dtype=np.float64) * 0.001)[None, :]
    true_rate = a.true_rate or a.rate
    print("READY", flush=True)
    if a.wait_consumer > 0:
        outlet.wait_for_consumers(a.wait_consumer)
    k = a.start  # next sample the outlet's clock produces
    t0 = time.monotonic()
    t0_lsl = pylsl.local_clock()
    stalled = False
    while a.samples == 0 or k - a.start < a.samples:
        n = a.chunk if a.samples == 0 else min(a.chunk, a.start + a.samples - k)
        # a chunk goes out once its last sample has been produced
        delay = t0 + (k + n - 1 - a.start) / true_rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        idx = np.arange(k, k + n)
        if a.gap_after >= 0 and a.gap_samples > 0:
            idx = idx[(idx <= a.gap_after) | (idx > a.gap_after + a.gap_samples)]
        if len(idx):
            if signal is None:
                block = (idx.astype(np.float64)[:, None] + offsets).astype(np.float32)
            else:
                block = signal[(idx - a.start) % len(signal)]
            stamps = t0_lsl + (idx - a.start) / true_rate
            if a.stamp == "exact":
                outlet.push_chunk(block, stamps.tolist())
            else:
                outlet.push_chunk(block)
        k += n
        if not stalled and 0 <= a.stall_after < k:
            stalled = True
            time.sleep(a.stall_s)
    time.sleep(0.5)  # let the last chunk reach the inlet before the outlet goes away
    return 0


if __name__ == "__main__":
    sys.exit(main())
