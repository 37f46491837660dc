"""The synthetic signal generator, the plant's response to stimulation, the training-data generator, and playing a
recording (read by the host's one reader) on the simulated board."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.signal import welch

from neurostimd.commands.simulator import parser, read_signal
from neurostimd.drivers.types import StimParams
from neurostimd.firmware_sim.generate import generate_recording, main, state_schedule
from neurostimd.firmware_sim.generator import FileSource, SignalGenerator, SyntheticSource
from neurostimd.firmware_sim.plant import Plant, charge_rate_uc_per_s

FS = 1000.0


def band_power(x: np.ndarray, lo: float, hi: float) -> float:
    f, p = welch(x, fs=FS, nperseg=1000, axis=0)
    return float(p[(f >= lo) & (f <= hi)].mean())


def test_generator_is_deterministic_given_the_seed() -> None:
    """Two generators with the same seed and calls give identical samples; another seed differs."""
    a = SignalGenerator(8, FS, seed=5).generate(1, 2000)
    b = SignalGenerator(8, FS, seed=5).generate(1, 2000)
    c = SignalGenerator(8, FS, seed=6).generate(1, 2000)
    assert a.dtype == np.float32 and a.shape == (2000, 8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_the_three_states_have_their_own_spectral_signature() -> None:
    """State 0 has the most alpha, state 1 the most beta relative to alpha, state 2 the most slow (2–4 Hz)
    power."""
    gen = SignalGenerator(8, FS, seed=1, artefact_rate_hz=0.0)
    x = {s: gen.generate(s, 20_000) for s in range(3)}
    alpha = {s: band_power(x[s], 8, 12) for s in x}
    beta = {s: band_power(x[s], 16, 26) for s in x}
    slow = {s: band_power(x[s], 2, 4) for s in x}
    assert alpha[0] > alpha[1] and alpha[0] > 2 * band_power(x[0], 16, 26)
    assert beta[1] / alpha[1] > beta[0] / alpha[0]
    assert slow[2] > 10 * slow[0] and slow[2] > 10 * slow[1]
    assert band_power(x[0], 49, 51) > band_power(x[0], 44, 46)  # line noise


def test_stimulation_shows_as_artefacts_at_its_frequency_scaled_by_amplitude() -> None:
    """A stimulation train adds power at its frequency, more for a larger amplitude."""
    def power_at_stim(amplitude_ma: float) -> float:
        gen = SignalGenerator(4, FS, seed=2, artefact_rate_hz=0.0)
        stim = StimParams(frequency_hz=37.0, amplitude_ma=amplitude_ma, pulse_width_us=200.0)
        return band_power(gen.generate(0, 10_000, stim if amplitude_ma > 0 else None), 36.5, 37.5)

    off, low, high = power_at_stim(0.0), power_at_stim(1.0), power_at_stim(3.0)
    assert low > 10 * off and high > 4 * low


def test_output_continues_smoothly_across_calls() -> None:
    """Generating in blocks of 10 samples gives the same statistics as one call: no jumps at block edges."""
    gen = SignalGenerator(4, FS, seed=3, artefact_rate_hz=0.0)
    x = np.concatenate([gen.generate(0, 10) for _ in range(2000)])
    d = np.abs(np.diff(x, axis=0))
    edges = d[9::10]
    assert edges.mean() < 1.5 * d.mean()


def run_arm(policy: str, seed: int, seconds: float = 1800.0) -> tuple[float, float]:
    """(fraction of time in state 0, charge in µC) for one plant under a stimulation policy."""
    q_on = charge_rate_uc_per_s(50.0, 3.5, 300.0)
    p = Plant(seed)
    dt = 0.05
    for _ in range(int(seconds / dt)):
        if policy == "none":
            q = 0.0
        elif policy == "continuous":
            q = q_on
        else:  # adaptive: stimulate only out of state 0
            q = q_on if p.state > 0 else 0.0
        p.step(dt, q)
    return p.time_in_state_s[0] / p.time_s, p.charge_delivered_uc


def test_plant_drifts_to_pathology_without_stimulation_and_stimulation_pushes_it_back() -> None:
    """Without stimulation the plant spends little time in state 0; stimulation raises that; adaptive
    stimulation reaches at least as much time in state 0 as continuous with less charge."""
    none = [run_arm("none", s) for s in range(3)]
    cont = [run_arm("continuous", s) for s in range(3)]
    adapt = [run_arm("adaptive", s) for s in range(3)]
    t0 = {k: np.mean([r[0] for r in v]) for k, v in (("none", none), ("cont", cont), ("adapt", adapt))}
    charge = {k: np.mean([r[1] for r in v]) for k, v in (("cont", cont), ("adapt", adapt))}
    assert t0["none"] < 0.25
    assert t0["cont"] > t0["none"] + 0.1
    assert t0["adapt"] >= t0["cont"] and charge["adapt"] < 0.8 * charge["cont"]


def test_plant_is_deterministic_and_rejects_bad_states() -> None:
    """The same seed and inputs give the same trajectory; an impossible state is refused."""
    a, b = Plant(9), Plant(9)
    assert [a.step(0.1, 20.0) for _ in range(3000)] == [b.step(0.1, 20.0) for _ in range(3000)]
    with pytest.raises(ValueError):
        Plant(0, initial_state=3)


def test_synthetic_source_couples_plant_and_generator() -> None:
    """SyntheticSource steps the plant once per read and returns float32 blocks of its width."""
    src = SyntheticSource(6, FS, seed=4, initial_state=2)
    block = src.read(10, None)
    assert block.shape == (10, 6) and block.dtype == np.float32
    assert src.plant.time_s == pytest.approx(0.01) and src.state in (1, 2)


def test_schedule_visits_every_state() -> None:
    """The forced schedule covers the duration and visits all three states, even for a short recording."""
    for duration in (12.0, 600.0):
        sched = state_schedule(duration, np.random.default_rng(0))
        assert sum(length for length, _ in sched) == pytest.approx(duration)
        assert {s for _, s in sched} == {0, 1, 2}


def test_generate_writes_the_continuous_npz_format(tmp_path: Path) -> None:
    """`python -m neurostimd.firmware_sim.generate` writes data/fs/channel_names/labels/class_names that np.load
    reads."""
    out = tmp_path / "g.npz"
    assert main(["--out", str(out), "--duration", "12", "--channels", "4", "--rate", "500", "--seed", "1"]) == 0
    with np.load(out) as z:
        assert z["data"].shape == (6000, 4) and z["data"].dtype == np.float32
        assert float(z["fs"]) == 500.0 and list(z["channel_names"]) == ["ch00", "ch01", "ch02", "ch03"]
        assert z["labels"].shape == (6000,) and set(np.unique(z["labels"])) == {0, 1, 2}
        assert list(z["class_names"]) == ["quiet", "activated", "pathological"]
    again = generate_recording(12.0, 4, 500.0, 1)
    with np.load(out) as z:
        assert np.array_equal(again["data"], z["data"])  # deterministic given the seed


def test_generate_cli_names_the_channels_and_refuses_a_wrong_list(tmp_path: Path) -> None:
    """`--channel-names C3,Cz` names the channels (the same signal as without); a list of the wrong length or with a
    name twice is a usage error."""
    out = tmp_path / "n.npz"
    assert main(["--out", str(out), "--duration", "6", "--channels", "2", "--rate", "250", "--seed", "1",
                 "--channel-names", "C3, Cz"]) == 0
    with np.load(out) as z:
        assert list(z["channel_names"]) == ["C3", "Cz"]
        assert np.array_equal(z["data"], generate_recording(6.0, 2, 250.0, 1)["data"])
    for bad in ("C3", "C3,c3", "C3,"):
        with pytest.raises(SystemExit) as exc:
            main(["--out", str(tmp_path / "x.npz"), "--duration", "6", "--channels", "2", "--channel-names", bad])
        assert exc.value.code == 2
    assert not (tmp_path / "x.npz").exists()


def _signal(path: Path, *extra: str, loop: bool = False) -> FileSource:
    """What neurostimd-sim --signal PATH plays: the recording read by the host's reader."""
    return FileSource(read_signal(parser().parse_args(["--pty", "--signal", str(path), *extra])), loop=loop)


def test_the_simulators_signal_reader_reads_npz_and_names_what_is_wrong(tmp_path: Path) -> None:
    """neurostimd-sim's --signal reader gives the board (data, fs, names) of a continuous .npz, and a ValueError
    (the simulator's exit 2) naming the problem otherwise."""
    good = tmp_path / "r.npz"
    np.savez(good, data=np.ones((100, 3), dtype=np.float64), fs=250.0)
    src = _signal(good)
    assert src.data.dtype == np.float32 and src.data.shape == (100, 3) and src.sample_rate_hz == 250.0
    assert src.channel_names == ["ch0", "ch1", "ch2"]
    with pytest.raises(ValueError, match="does not exist"):
        _signal(tmp_path / "missing.npz")
    np.savez(tmp_path / "epochs.npz", X=np.zeros((2, 3, 4)), y=np.zeros(2))
    with pytest.raises(ValueError, match="not a continuous recording"):
        _signal(tmp_path / "epochs.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read"):
        _signal(tmp_path / "junk.npz")
    # The one reader's rules hold here as in replay: 1-D `data` is one channel; a rate-less file needs a rate.
    np.savez(tmp_path / "flat.npz", data=np.zeros(5), fs=100.0)
    assert _signal(tmp_path / "flat.npz").data.shape == (5, 1)
    (tmp_path / "norate.csv").write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(ValueError, match="pass fs"):
        _signal(tmp_path / "norate.csv")
    assert _signal(tmp_path / "norate.csv", "--signal-rate", "10").sample_rate_hz == 10.0


def test_file_source_refuses_samples_it_cannot_play() -> None:
    """FileSource takes an already-read recording and names what is wrong with one it cannot play."""
    from neurostimd.sources.recordings import Recording

    with pytest.raises(ValueError, match="n_samples, n_channels"):
        FileSource(Recording(np.zeros((0, 2), np.float32), 100.0, ["a", "b"]))
    with pytest.raises(ValueError, match="positive"):
        FileSource(Recording(np.zeros((4, 2), np.float32), float("nan"), ["a", "b"]))
    with pytest.raises(ValueError, match="3 channel names for 2 channels"):
        FileSource(Recording(np.zeros((4, 2), np.float32), 100.0, ["a", "b", "c"]))


def test_file_source_plays_to_the_end_or_loops(tmp_path: Path) -> None:
    """FileSource returns the recording in order, ends when it does, or wraps around with loop; NaN becomes 0."""
    x = np.arange(50, dtype=np.float32).reshape(25, 2)
    x[3, 1] = np.nan
    np.savez(tmp_path / "r.npz", data=x, fs=100.0)
    once = _signal(tmp_path / "r.npz")
    got = np.concatenate([once.read(10, None) for _ in range(4)])
    assert got.shape == (25, 2) and got[3, 1] == 0.0 and once.exhausted
    looped = _signal(tmp_path / "r.npz", loop=True)
    got = np.concatenate([looped.read(10, None) for _ in range(4)])
    assert got.shape == (40, 2) and np.array_equal(got[25:], np.nan_to_num(x)[:15])


def test_the_simulators_signal_reader_chooses_an_xdf_stream(tmp_path: Path) -> None:
    """neurostimd-sim --signal on an XDF with two signal streams refuses without a choice, naming them, and plays
    the stream --signal-stream (or --signal-stream-type) chooses."""
    from tests.sources.xdf_files import XdfStream, write_xdf_streams

    ts = 5.0 + np.arange(200) / 100.0
    eeg = np.arange(400, dtype=np.float32).reshape(200, 2)
    write_xdf_streams(tmp_path / "two.xdf", [
        XdfStream("amp", "EEG", 100.0, eeg, ts, labels=["C3", "C4"], units=["microvolts"] * 2),
        XdfStream("eye", "Gaze", 100.0, np.zeros((200, 3), np.float32), ts, labels=["x", "y", "p"],
                  units=["microvolts"] * 3),
    ])
    with pytest.raises(ValueError, match=r"2 signal streams.*'amp'.*'eye'.*--signal-stream"):
        _signal(tmp_path / "two.xdf")
    src = _signal(tmp_path / "two.xdf", "--signal-stream", "amp")
    assert src.channel_names == ["C3", "C4"] and np.array_equal(src.read(200, None), eeg)
    assert _signal(tmp_path / "two.xdf", "--signal-stream-type", "Gaze").channel_names == ["x", "y", "p"]


def test_the_simulator_says_when_it_plays_a_recordings_gaps_as_continuous(tmp_path: Path) -> None:
    """A device streams without pauses, so --signal on a recording whose stamps jump plays the gap's neighbours
    back to back: the simulator says so (signal_gaps_played_continuous, with the count), and says nothing for a
    recording without gaps."""
    from structlog.testing import capture_logs

    fs = 100.0
    ts = np.arange(500) / fs
    ts[250:] += 2.0
    np.savez(tmp_path / "gap.npz", data=np.zeros((500, 2), np.float32), fs=fs, timestamps=ts)
    np.savez(tmp_path / "plain.npz", data=np.zeros((500, 2), np.float32), fs=fs)
    with capture_logs() as logs:
        _signal(tmp_path / "gap.npz")
        _signal(tmp_path / "plain.npz")
    warned = [e for e in logs if e["event"] == "signal_gaps_played_continuous"]
    assert len(warned) == 1 and warned[0]["gaps"] == 1 and warned[0]["missing_s"] == pytest.approx(2.0)
