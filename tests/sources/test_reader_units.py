"""Recording files in µV: units declared by XDF and EDF files are applied, missing or unknown ones are refused unless
stated, interchange files are µV by convention; generated channel names are not declared names; a file's timestamps
keep their gaps and must agree with its rate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from neurostimd.errors import DataFormatError
from neurostimd.sources.recordings import read_recording
from tests.sources.test_readers import sine_data, write_xdf


def test_xdf_in_volts_is_scaled_to_microvolts(tmp_path: Path) -> None:
    """An XDF stream whose channels declare volts reads back in µV."""
    data = sine_data(200, 2, 100.0)
    p = tmp_path / "v.xdf"
    write_xdf(p, data * 1e-6, 100.0, ["C3", "C4"], units=["V", "volts"])
    got = read_recording(p)
    np.testing.assert_allclose(got.data, data, rtol=1e-5, atol=1e-4)
    assert got.units.startswith("declared")


def test_xdf_with_mne_lsl_exponents_is_scaled_by_channel_type(tmp_path: Path) -> None:
    """MNE-LSL's unit "0" on eeg channels is volts, "-6" microvolts."""
    data = sine_data(200, 2, 100.0)
    p = tmp_path / "mne.xdf"
    write_xdf(p, np.stack([data[:, 0] * 1e-6, data[:, 1]], axis=1), 100.0, ["C3", "C4"], units=["0", "-6"],
              types=["eeg", "eeg"])
    np.testing.assert_allclose(read_recording(p).data, data, rtol=1e-5, atol=1e-4)


def test_xdf_without_units_is_refused_unless_stated(tmp_path: Path) -> None:
    """An XDF stream that declares no units is refused naming the channels and [source] units; stated, it reads."""
    data = sine_data(200, 2, 100.0)
    p = tmp_path / "nounit.xdf"
    write_xdf(p, data, 100.0, ["C3", "C4"])
    with pytest.raises(DataFormatError, match=r"nounit\.xdf.*no unit declared for channel 0 \('C3'\).*units"):
        read_recording(p)
    np.testing.assert_allclose(read_recording(p, units="mV").data, data * 1e3, rtol=1e-5)


def test_xdf_units_contradicting_the_stated_ones_are_refused(tmp_path: Path) -> None:
    """An XDF in microvolts with units = "V" stated is a contradiction naming both."""
    p = tmp_path / "uv.xdf"
    write_xdf(p, sine_data(100, 1, 100.0), 100.0, ["Cz"], units=["microvolts"])
    with pytest.raises(DataFormatError, match=r"contradicts.*'V'.*declares 'microvolts'"):
        read_recording(p, units="V")


def test_xdf_keeps_a_short_gap_in_its_timestamps(tmp_path: Path) -> None:
    """A 20 ms hole in an XDF stream's stamps survives reading (no dejittering smooths it over)."""
    fs = 1000.0
    k = np.concatenate([np.arange(0, 300), np.arange(320, 600)])
    p = tmp_path / "gap.xdf"
    write_xdf(p, sine_data(len(k), 1, fs), fs, ["Cz"], units=["uV"], timestamps=10.0 + k / fs)
    steps = np.diff(read_recording(p).timestamps)
    assert steps.max() == pytest.approx(0.021, abs=1e-6) and np.sum(steps > 0.0015) == 1


def _edf(path: Path, dims: list[str], values: list[np.ndarray], labels: list[str], ranges: list[tuple[float, float]]):
    import edfio

    signals = [edfio.EdfSignal(v.astype(np.float64), 256.0, label=lab, physical_dimension=d, physical_range=r)
               for v, d, lab, r in zip(values, dims, labels, ranges, strict=True)]
    edfio.Edf(signals).write(path)


def test_edf_with_an_empty_physical_dimension_is_refused_unless_stated(tmp_path: Path) -> None:
    """An empty EDF physical dimension is not µV: refused naming the signal, read when units are stated."""
    data = sine_data(512, 2, 256.0)
    p = tmp_path / "blank.edf"
    _edf(p, ["uV", ""], [data[:, 0], data[:, 1]], ["Fz", "Cz"], [(-100, 100), (-100, 100)])
    with pytest.raises(DataFormatError, match=r"no unit declared for channel 1 \('Cz'\)"):
        read_recording(p)
    got = read_recording(p, units="uV")
    np.testing.assert_allclose(got.data, data, atol=0.01)


def test_edf_in_volts_and_its_physical_range_become_microvolts(tmp_path: Path) -> None:
    """An EDF signal in V reads in µV, and its physical range gives rail thresholds half a step inside it, in µV."""
    data = sine_data(512, 1, 256.0)
    p = tmp_path / "volts.edf"
    _edf(p, ["V"], [data[:, 0] * 1e-6], ["Oz"], [(-200e-6, 200e-6)])
    got = read_recording(p)
    np.testing.assert_allclose(got.data[:, 0], data[:, 0], atol=0.02)
    assert got.range_uv is not None
    lo, hi = got.range_uv
    step_uv = 400.0 / 65535
    assert hi[0] == pytest.approx(200.0 - step_uv / 2, rel=1e-6) and lo[0] == pytest.approx(-200.0 + step_uv / 2,
                                                                                             rel=1e-6)


def test_edf_with_an_unknown_unit_is_refused(tmp_path: Path) -> None:
    """A physical dimension that is not a voltage unit neurostimd knows is named in the refusal."""
    p = tmp_path / "counts.edf"
    _edf(p, ["counts"], [sine_data(512, 1, 256.0)[:, 0]], ["Fz"], [(-100, 100)])
    with pytest.raises(DataFormatError, match="unknown unit for channel 0 \\('Fz'\\): 'counts'"):
        read_recording(p)


def test_npz_is_microvolts_by_convention_and_honours_its_units(tmp_path: Path) -> None:
    """An .npz without units is µV; with units = "mV" it is scaled; a stated unit contradicting it is refused."""
    data = sine_data(100, 2, 100.0)
    plain = tmp_path / "plain.npz"
    np.savez(plain, data=data, fs=100.0)
    assert np.array_equal(read_recording(plain).data, data)
    mv = tmp_path / "mv.npz"
    np.savez(mv, data=data / 1e3, fs=100.0, units="mV")
    np.testing.assert_allclose(read_recording(mv).data, data, rtol=1e-5)
    with pytest.raises(DataFormatError, match="contradicts"):
        read_recording(mv, units="uV")


def test_generated_channel_names_are_not_declared(tmp_path: Path) -> None:
    """An .npz without channel_names has column labels only; one with names declares them."""
    p = tmp_path / "n.npz"
    np.savez(p, data=sine_data(100, 2, 100.0), fs=100.0)
    assert not read_recording(p).channel_names_declared
    np.savez(p, data=sine_data(100, 2, 100.0), fs=100.0, channel_names=np.array(["a", "b"]))
    assert read_recording(p).channel_names_declared


def test_a_session_with_the_recorders_placeholder_names_declares_none(tmp_path: Path) -> None:
    """A session recorded from a source without channel names (names ch0, ch1, ...) declares no montage."""
    from neurostimd.core.ringbuffer import RingBuffer
    from neurostimd.outputs.recorder import Recorder

    ring = RingBuffer(2, 100, 100.0)
    ring.write(sine_data(50, 2, 100.0))
    for names, declared in ((None, False), (["Fz", "Cz"], True)):
        folder = tmp_path / f"s{declared}"
        with Recorder(folder, 2, 100.0, names) as rec:
            rec.record_samples(ring.latest(50))
        assert json.loads((folder / "session.json").read_text())["closed_cleanly"]
        assert read_recording(folder).channel_names_declared is declared


def test_timestamps_that_disagree_with_the_rate_are_refused(tmp_path: Path) -> None:
    """A file whose stamps advance at 500 Hz while it says 1000 Hz is refused naming both rates."""
    p = tmp_path / "t.npz"
    np.savez(p, data=sine_data(100, 1, 1000.0), fs=1000.0, timestamps=np.arange(100) / 500.0)
    with pytest.raises(DataFormatError, match=r"advance at 500 Hz.*1000 Hz"):
        read_recording(p)
    np.savez(p, data=sine_data(100, 1, 1000.0), fs=1000.0, timestamps=np.full(100, np.nan))
    with pytest.raises(DataFormatError, match="NaN"):
        read_recording(p)
