"""A separate process for the LSL tests: an outlet pushing counter values (sample k holds k + 0.001·channel) in
chunks at the nominal rate, on absolute deadlines, until killed or `--samples` are pushed."""

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
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--samples", type=int, default=0, help="stop after this many (0: run until killed)")
    ap.add_argument("--chunk", type=int, default=10)
    ap.add_argument("--wait-consumer", type=float, default=0.0, help="wait up to this long for an inlet first")
    a = ap.parse_args()
    info = pylsl.StreamInfo(a.name, a.type, a.channels, a.rate, "float32", a.source_id)
    outlet = pylsl.StreamOutlet(info, chunk_size=a.chunk)
    offsets = (np.arange(a.channels, dtype=np.float64) * 0.001)[None, :]
    print("READY", flush=True)
    if a.wait_consumer > 0:
        outlet.wait_for_consumers(a.wait_consumer)
    k = a.start
    t0 = time.monotonic()
    period = a.chunk / a.rate
    n_chunks = 0
    while a.samples == 0 or k - a.start < a.samples:
        n = a.chunk if a.samples == 0 else min(a.chunk, a.start + a.samples - k)
        block = (np.arange(k, k + n, dtype=np.float64)[:, None] + offsets).astype(np.float32)
        outlet.push_chunk(block)
        k += n
        n_chunks += 1
        delay = t0 + n_chunks * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    time.sleep(0.5)  # let the last chunk reach the inlet before the outlet goes away
    return 0


if __name__ == "__main__":
    sys.exit(main())
