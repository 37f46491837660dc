"""Recording readers: every supported format reads into the same Recording; bad files give DataFormatError that
names the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neurostimd.errors import DataFormatError
from neurostimd.sources.recordings import read_recording, to_npz
from tests.sources.xdf_files import write_xdf

__all__ = ["sine_data", "write_xdf"]


def sine_data(n: int = 512, ch: int = 3, fs: float = 256.0) -> np.ndarray:
    t = np.arange(n) / fs
    return np.stack([50 * np.sin(2 * np.pi * (5 + 3 * c) * t) for c in range(ch)], axis=1).astype(np.float32)


def test_npz_round_trip_keeps_every_field(tmp_path):
    """to_npz then read_recording gives back data, rate, names, labels, class names and timestamps."""
    from neurostimd.sources.recordings import Recording

    rec = Recording(sine_data(), 256.0, ["a", "b", "c"], np.arange(512) % 2, ["open", "closed"],
                    np.arange(512) / 256.0)
    got = read_recording(to_npz(rec, tmp_path / "r.npz"))
    np.testing.assert_array_equal(got.data, rec.data)
    assert got.fs == 256.0 and got.channel_names == ["a", "b", "c"] and got.class_names == ["open", "closed"]
    np.testing.assert_array_equal(got.labels, rec.labels)
    np.testing.assert_array_equal(got.timestamps, rec.timestamps)


def test_epoch_set_npz_is_refused_with_an_explanation(tmp_path):
    """An epoch-set .npz is not a continuous recording, and the error says what replay needs."""
    p = tmp_path / "epochs.npz"
    np.savez(p, X=np.zeros((2, 1, 10), np.float32), y=np.array([0, 1]), fs=100.0)
    with pytest.raises(DataFormatError, match="epoch set"):
        read_recording(p)


def test_csv_with_time_and_label_columns(tmp_path):
    """A CSV with a header, a time column and a label column gives the rate from the time steps."""
    data = sine_data(100, 2, 200.0)
    lines = ["time,C3,C4,label"] + [f"{i / 200.0:.6f},{a!r},{b!r},{i // 50}" for i, (a, b) in
                                     enumerate(data.tolist())]
    p = tmp_path / "r.csv"
    p.write_text("# exported by a test\n" + "\n".join(lines) + "\n")
    got = read_recording(p)
    assert got.fs == pytest.approx(200.0) and got.channel_names == ["C3", "C4"]
    np.testing.assert_array_equal(got.data, data)
    np.testing.assert_array_equal(got.labels, np.arange(100) // 50)


def test_csv_errors_name_the_problem(tmp_path):
    """CSVs without a rate, without a header, or with a bad value are refused with the line and the fix."""
    p = tmp_path / "norate.csv"
    p.write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(DataFormatError, match="pass fs"):
        read_recording(p)
    assert read_recording(p, fs=10.0).data.shape == (2, 2)
    p.write_text("1,2\n3,4\n")
    with pytest.raises(DataFormatError, match="header"):
        read_recording(p, fs=10.0)
    p.write_text("a,b\n1,2\n3,x\n")
    with pytest.raises(DataFormatError, match="line 3"):
        read_recording(p, fs=10.0)
    p.write_text("a,b\n1,2\n3\n")
    with pytest.raises(DataFormatError, match="line 3 has 1 fields"):
        read_recording(p, fs=10.0)


@pytest.mark.parametrize("suffix", [".edf", ".bdf"])
def test_edf_and_bdf_read_in_microvolts(tmp_path, suffix):
    """EDF/BDF signals written with edfio read back at their rate, with labels, scaled to µV."""
    import edfio

    data = sine_data(512, 2, 256.0)
    sig_cls = edfio.BdfSignal if suffix == ".bdf" else edfio.EdfSignal
    signals = [sig_cls(data[:, 0].astype(np.float64), 256.0, label="Fz", physical_dimension="uV",
                       physical_range=(-100, 100)),
               sig_cls(data[:, 1].astype(np.float64) / 1000.0, 256.0, label="Cz", physical_dimension="mV",
                       physical_range=(-0.1, 0.1))]
    edf = edfio.Bdf(signals) if suffix == ".bdf" else edfio.Edf(signals)
    p = tmp_path / f"r{suffix}"
    edf.write(p)
    got = read_recording(p)
    assert got.fs == 256.0 and got.channel_names == ["Fz", "Cz"]
    np.testing.assert_allclose(got.data, data, atol=0.01)


def test_xdf_stream_reads_with_labels_and_timestamps(tmp_path):
    """An XDF file's numeric stream reads with its rate, channel labels and timestamps."""
    data = sine_data(300, 3, 100.0)
    p = tmp_path / "r.xdf"
    write_xdf(p, data, 100.0, ["O1", "Oz", "O2"], units=["microvolts"] * 3)
    got = read_recording(p)
    assert got.fs == 100.0 and got.channel_names == ["O1", "Oz", "O2"]
    np.testing.assert_array_equal(got.data, data)
    assert got.timestamps is not None and got.timestamps.shape == (300,)


def test_bad_files_give_data_format_errors(tmp_path):
    """Unknown types, missing files, and corrupt npz/EDF/XDF files raise DataFormatError naming the file."""
    with pytest.raises(DataFormatError, match="does not exist"):
        read_recording(tmp_path / "nope.npz")
    (tmp_path / "x.abc").write_bytes(b"0")
    with pytest.raises(DataFormatError, match=r"unknown recording type '\.abc'.*\.npz.*\.xdf.*\.fif.*\.vhdr"):
        read_recording(tmp_path / "x.abc")
    for name in ("bad.npz", "bad.edf", "bad.xdf", "bad.fif", "bad.mat", "bad.vhdr"):
        (tmp_path / name).write_bytes(b"this is not a recording")
        with pytest.raises(DataFormatError, match=name):
            read_recording(tmp_path / name)
    with pytest.raises(DataFormatError, match="not a recorder session"):
        read_recording(tmp_path)


@pytest.mark.needs_data
def test_eye_state_arff_reads_like_the_shared_converter(shared_data):
    """The Eye State ARFF reads as 14980 x 14 samples with per-sample labels, the same as to_npz.py produces."""
    rec = read_recording(shared_data / "eeg_eye_state" / "EEG_Eye_State.arff", fs=128.0)
    assert rec.data.shape == (14980, 14) and rec.fs == 128.0
    assert rec.channel_names[0] == "AF3" and rec.channel_names[-1] == "AF4"
    assert rec.labels is not None and int(rec.labels.sum()) == 6723
    with pytest.raises(DataFormatError, match="pass fs"):
        read_recording(shared_data / "eeg_eye_state" / "EEG_Eye_State.arff")


def test_the_reader_loads_no_streaming_training_or_plotting_library() -> None:
    """Importing the one reader (and reading an .npz) loads no pylsl, TensorFlow, LiteRT or matplotlib, and none of
    the optional format libraries until a file of their format is read."""
    import subprocess
    import sys

    code = ("import sys, tempfile, numpy as np\n"
            "from neurostimd.sources.recordings import read_recording\n"
            "p = tempfile.mkdtemp() + '/r.npz'; np.savez(p, data=np.zeros((4, 2)), fs=10.0); read_recording(p)\n"
            "bad = ('pylsl', 'tensorflow', 'keras', 'ai_edge_litert', 'matplotlib', 'edfio', 'pyxdf',\n"
            "       'scipy.io.arff')\n"
            "print(sorted(m for m in bad if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
