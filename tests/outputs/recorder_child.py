"""A separate process for the SIGKILL test: records counter samples in real time into a session folder and prints,
after every recorded block, how many samples it has handed to the recorder, until it is killed."""

from __future__ import annotations

import sys
import time

import numpy as np

from neurostimd.core.ringbuffer import RingBuffer
from neurostimd.outputs.recorder import Recorder


def main() -> int:
    folder, fs, flush_ms = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    ch = 4
    ring = RingBuffer(ch, int(fs * 10), fs)
    rec = Recorder(folder, ch, fs, [f"c{i}" for i in range(ch)], flush_interval_ms=flush_ms)
    t0 = time.monotonic()
    written = 0
    next_read = 0
    while True:
        # Pace by real time so that any flush interval covers at most interval · fs samples.
        due = int((time.monotonic() - t0) * fs)
        if due > written:
            block = (np.arange(written, due, dtype=np.float32)[:, None] + np.arange(ch, dtype=np.float32) * 0.5)
            ring.write(block, None, first_index=written)
            written = due
            w = ring.since(next_read)
            rec.record_samples(w)
            next_read = w.end_index
            rec.record_decision({"t_data_s": written / fs, "state": written % 3})
            print("N", written, flush=True)
        time.sleep(0.005)


if __name__ == "__main__":
    sys.exit(main())
