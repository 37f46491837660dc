"""The driver over a real pty keeps up with a fast board when it is read only once per 50 ms tick, as the daemon
reads it (issue 10, item 6: at most 4 095 bytes were taken per tick, ~82 KB/s)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from neurostimd.drivers.neurostim_board.driver import SerialBoardDriver
from tests.sim.simproc import running_sim


@pytest.mark.parametrize(("channels", "rate", "fmt"), [
    ("32", "1000", "float32"),  # 128 KB/s: the float32 board that flickered between stale and stimulating
    ("128", "2000", "float32"),  # 1 MB/s: 2x the largest rate the bench measures (128 ch x 2 kHz int16, 512 KB/s)
])
def test_one_read_per_tick_receives_every_sample(tmp_path: Path, channels: str, rate: str, fmt: str) -> None:
    """Read once per 50 ms for 3 s: every sample the board sent arrives, with no counter gap and no bad frame."""
    block = str(max(10, int(float(rate) / 200)))
    with running_sim(tmp_path, "--channels", channels, "--rate", rate, "--format", fmt, "--block", block) as sim:
        d = SerialBoardDriver(port=sim.path, ack_timeout_ms=250.0)
        with d:
            d.read_samples(0.5)  # the stream is running
            blocks = []
            t0 = time.monotonic()
            due = t0
            while time.monotonic() - t0 < 3.0:
                blocks += d.read_samples(0.0)
                due += 0.05
                time.sleep(max(0.0, due - time.monotonic()))
            counters = d.counters
    received = sum(len(b.data) for b in blocks)
    span = blocks[-1].first_index + len(blocks[-1].data) - blocks[0].first_index
    assert received == span, f"{span - received} of {span} samples lost"
    assert received >= 0.9 * 3.0 * float(rate)
    assert counters.sample_gaps == 0 and counters.bad_frames == 0
