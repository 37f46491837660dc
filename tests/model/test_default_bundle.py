"""The committed default bundle: loads through LiteRT without TensorFlow and recognises the generator's states."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from neurostimd.firmware_sim.generator import SignalGenerator
from neurostimd.model.runtime import load_bundle

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "models" / "default"


def test_runtime_process_never_imports_tensorflow() -> None:
    """A process that loads the default bundle, streams features and predicts has no TensorFlow, Keras or
    scipy.signal loaded."""
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        from neurostimd.model.runtime import load_bundle
        b = load_bundle({str(DEFAULT)!r}, expect_channels=32, expect_rate_hz=1000.0)
        f = b.new_features()
        x = np.random.default_rng(0).standard_normal((b.window_samples + 50, b.n_channels)).astype(np.float32)
        f.push(x)
        p = b.predict(f.window())
        assert p.shape == (b.n_classes,) and abs(float(p.sum()) - 1.0) < 1e-3, p
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
        # the trained filters come from the bundle: no scipy.signal (a second of start-up) in the daemon
        bad += [m for m in sys.modules if m == "scipy.signal"]
        print("LOADED", bad)
        sys.exit(1 if bad else 0)
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "LOADED []" in r.stdout


def test_default_bundle_matches_the_simulated_board() -> None:
    """The default bundle takes 32 channels at 1000 Hz and carries the notebook's table for its three states."""
    b = load_bundle(DEFAULT, expect_channels=32, expect_rate_hz=1000.0)
    assert b.class_names == ["quiet", "activated", "pathological"]
    assert [s.frequency_hz for s in b.table.states] == [20.0, 50.0, 100.0]
    assert b.window_samples <= 1000  # a decision depends on at most one second of signal


@pytest.mark.parametrize("state", [0, 1, 2])
def test_default_bundle_classifies_each_generator_state(state: int) -> None:
    """Streamed at the daemon's 50 ms cadence, generator signal of each state is mostly classified as that state."""
    b = load_bundle(DEFAULT, expect_channels=32, expect_rate_hz=1000.0)
    gen = SignalGenerator(32, 1000.0, seed=100 + state)
    x = gen.generate(state, 15_000)
    feats = b.new_features()
    decisions = []
    for i in range(0, len(x), 50):
        feats.push(x[i:i + 50])
        w = feats.window()
        if w is not None and i >= 1_000:  # skip the first second: the generator ramps into the state
            decisions.append(int(b.predict(w).argmax()))
    share = float(np.mean(np.asarray(decisions) == state))
    assert share >= 0.8, f"state {state}: only {share:.0%} of {len(decisions)} decisions correct"
