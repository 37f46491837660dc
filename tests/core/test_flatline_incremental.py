"""The ring's incremental flatline check agrees with an exhaustive look at the same samples."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from neurostimd.core.ringbuffer import RingBuffer


def _exhaustive(data: np.ndarray, run: int) -> bool:
    """Some channel holds `run` bit-identical consecutive samples whose last one is in the final rows."""
    eq = data[1:] == data[:-1]
    streak = np.zeros(data.shape[1], dtype=int)
    for row in eq:
        streak = np.where(row, streak + 1, 0)
        if (streak >= run - 1).any():
            return True
    return False


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), run=st.integers(3, 30), n_writes=st.integers(1, 25))
def test_incremental_flatline_matches_exhaustive(seed: int, run: int, n_writes: int) -> None:
    """Scanning only new samples per call flags exactly the spans an exhaustive scan flags."""
    rng = np.random.default_rng(seed)
    cap = 400
    ring = RingBuffer(2, cap, 1000.0, flatline_samples=run)
    history = []
    for _ in range(n_writes):
        x = rng.normal(size=(int(rng.integers(1, 40)), 2)).astype(np.float32)
        if rng.random() < 0.5:
            c, a = int(rng.integers(0, 2)), int(rng.integers(0, len(x)))
            x[a:a + int(rng.integers(1, 2 * run)), c] = 7.0
        ring.write(x)
        history.append(x)
        if rng.random() < 0.6:
            n = int(rng.integers(1, cap - run))
            allx = np.concatenate(history)
            # the span plus the run-1 samples before it, as far as the ring still holds them
            lookback = allx[max(0, len(allx) - n - run + 1):]
            assert ring.quality(n).flatline == _exhaustive(lookback, run)
