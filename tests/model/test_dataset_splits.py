"""Training data: interchange files load with clear errors, and splits never share a segment or time block."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neurostimd.core.features import FeatureSettings, frame_end_sample
from neurostimd.errors import DataFormatError
from neurostimd.model.dataset import load_recording, segments, split_segments, windows_for


def _continuous(path: Path, seconds: float = 120.0, fs: float = 250.0, ch: int = 2) -> Path:
    n = int(seconds * fs)
    rng = np.random.default_rng(0)
    labels = (np.arange(n) // int(7 * fs)) % 3
    np.savez(path, data=rng.standard_normal((n, ch)).astype(np.float32), fs=fs,
             channel_names=np.array([f"c{i}" for i in range(ch)]), labels=labels,
             class_names=np.array(["a", "b", "c"]))
    return path


def _epochs(path: Path, n: int = 30) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, X=rng.standard_normal((n, 1, 2000)).astype(np.float32), y=np.arange(n) % 3, fs=200.0,
             channel_names=np.array(["EEG"]), class_names=np.array(["a", "b", "c"]))
    return path


def test_split_holds_out_whole_time_blocks(tmp_path: Path) -> None:
    """Train, validation and test share no time block, blocks tile the recording, and every class is trained."""
    s = FeatureSettings(hop_ms=100, frame_hops=2, n_frames=5)
    rec = load_recording(_continuous(tmp_path / "c.npz"))
    segs = segments([rec], s, block_s=10.0)
    starts = [seg.start_sample for seg in segs]
    assert starts == sorted(starts) and sum(len(seg.data) for seg in segs) == len(rec.data)
    tr, va, te = split_segments(segs, 0.3, 0.2, seed=3)
    assert not (set(tr) & set(va)) and not (set(tr) & set(te)) and not (set(va) & set(te))
    assert sorted(tr + va + te) == list(range(len(segs)))
    assert {segs[i].majority_label for i in tr} == {0, 1, 2}
    # No training sample range overlaps any test sample range.
    test_ranges = [(segs[i].start_sample, segs[i].start_sample + len(segs[i].data)) for i in te]
    for i in tr:
        a0, a1 = segs[i].start_sample, segs[i].start_sample + len(segs[i].data)
        assert all(a1 <= b0 or b1 <= a0 for b0, b1 in test_ranges)


def test_windows_stay_inside_their_segment_and_take_the_newest_label(tmp_path: Path) -> None:
    """Each window is cut from one segment and is labelled with the label of its newest sample."""
    s = FeatureSettings(hop_ms=100, frame_hops=2, n_frames=5)
    rec = load_recording(_continuous(tmp_path / "c.npz"))
    segs = segments([rec], s, block_s=10.0)
    w = windows_for(segs, [0, 1], s, rec.fs)
    assert set(w.segment.tolist()) == {0, 1}
    first = w.y[w.segment == 0]
    ends = [frame_end_sample(s, rec.fs, f) for f in range(s.n_frames - 1, s.n_frames - 1 + len(first))]
    assert np.array_equal(first, segs[0].labels[ends])


def test_epoch_split_is_stratified_and_reproducible(tmp_path: Path) -> None:
    """Epoch sets split by whole epochs, stratified per class, identically for the same seed."""
    rec = load_recording(_epochs(tmp_path / "e.npz"))
    segs = segments([rec], FeatureSettings(hop_ms=250, frame_hops=2, n_frames=4), 20.0)
    assert len(segs) == 30
    a = split_segments(segs, 0.3, 0.2, seed=1)
    assert a == split_segments(segs, 0.3, 0.2, seed=1)
    tr, va, te = a
    for c in range(3):
        assert sum(segs[i].majority_label == c for i in te) == 3
    assert len(set(tr) | set(va) | set(te)) == 30


@pytest.mark.parametrize(("content", "message"), [
    ({"data": np.zeros((10, 2), np.float32), "fs": 100.0}, "labels"),
    ({"X": np.zeros((3, 1, 50), np.float32), "y": np.zeros(3, int)}, "fs"),
    ({"foo": np.zeros(3), "fs": 100.0}, "neither an epoch set"),
    ({"data": np.full((10, 1), np.nan, np.float32), "fs": 10.0, "labels": np.zeros(10, int)}, "NaN"),
])
def test_bad_files_are_refused_with_the_problem_named(tmp_path: Path, content: dict, message: str) -> None:
    """A malformed interchange file raises DataFormatError naming what is missing or wrong."""
    p = tmp_path / "bad.npz"
    np.savez(p, **content)
    with pytest.raises(DataFormatError, match=message):
        load_recording(p)


def test_training_reads_through_the_one_reader_so_units_scale_as_in_replay(tmp_path: Path) -> None:
    """A labelled .npz in mV (its `units`) reaches training in µV, the same samples replay plays."""
    from neurostimd.sources.recordings import read_recording
    from neurostimd.sources.replay import ReplaySource

    p = _continuous(tmp_path / "mv.npz", seconds=20.0)
    with np.load(p) as z:
        arrays = dict(z)
    np.savez(p, **arrays, units="mV")
    rec = load_recording(p)
    np.testing.assert_allclose(rec.data, arrays["data"] * 1000.0, rtol=1e-6)
    assert np.array_equal(rec.data, read_recording(p).data)
    assert np.array_equal(rec.data, ReplaySource(p).recording.data)
    assert np.array_equal(rec.labels, arrays["labels"]) and rec.class_names == ["a", "b", "c"]
    assert rec.kind == "continuous" and rec.path == str(p) and len(rec.sha256) == 64 and rec.names_declared


def test_an_epoch_set_reads_as_whole_epochs(tmp_path: Path) -> None:
    """An epoch set's segments are its epochs exactly (X[i].T, labelled y[i]); replay refuses the file."""
    from neurostimd.sources.recordings import read_recording

    p = _epochs(tmp_path / "e.npz", n=6)
    rec = load_recording(p)
    assert rec.kind == "epochs" and rec.n_channels == 1 and rec.fs == 200.0
    segs = segments([rec], FeatureSettings(hop_ms=250, frame_hops=2, n_frames=4), 20.0)
    with np.load(p) as z:
        for i, seg in enumerate(segs):
            assert np.array_equal(seg.data, z["X"][i].T) and set(seg.labels.tolist()) == {int(z["y"][i])}
            assert seg.start_sample == 0 and seg.index == i
    with pytest.raises(DataFormatError, match="epoch set"):
        read_recording(p)


def test_a_csv_with_a_label_column_is_training_data(tmp_path: Path) -> None:
    """Any format the reader reads trains when it carries labels: a CSV's `label` column, class names 0..max."""
    p = tmp_path / "l.csv"
    lines = ["time,Fz,Cz,label"] + [f"{i / 100:.2f},{np.sin(i / 5):.4f},{np.cos(i / 7):.4f},{(i // 300) % 2}"
                                    for i in range(1200)]
    p.write_text("\n".join(lines) + "\n")
    rec = load_recording(p)
    assert rec.fs == pytest.approx(100.0) and rec.channel_names == ["Fz", "Cz"] and rec.class_names == ["0", "1"]
    assert rec.labels.tolist() == [(i // 300) % 2 for i in range(1200)]
    assert len(segments([rec], FeatureSettings(hop_ms=100, frame_hops=2, n_frames=5), 3.0)) == 4


def _edf(p: Path) -> Path:
    import edfio

    edfio.Edf([edfio.EdfSignal(np.zeros(512), 256.0, label="Fz", physical_dimension="uV",
                               physical_range=(-100.0, 100.0))]).write(p)
    return p


def _session(folder: Path) -> Path:
    import json

    folder.mkdir()
    np.zeros((100, 2), "<f4").tofile(folder / "samples.f32")
    (np.arange(100) / 100.0).astype("<f8").tofile(folder / "timestamps.f64")
    (folder / "session.json").write_text(json.dumps({
        "format": "neurostimd-session", "n_channels": 2, "sample_rate_hz": 100.0, "channel_names": ["Fz", "Cz"],
        "files": {"samples": "samples.f32", "timestamps": "timestamps.f64"}}))
    return folder


def _unlabelled_csv(p: Path) -> Path:
    p.write_text("time,Fz\n0,1\n0.01,2\n0.02,3\n")
    return p


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: _edf(d / "r.edf"), r"r\.edf: an EDF file carries no per-sample labels.*convert it to a labelled \.npz"),
    (lambda d: _session(d / "sess"), r"sess: a recorder session carries no per-sample labels.*labelled \.npz"),
    (lambda d: _unlabelled_csv(d / "r.csv"), r"r\.csv: no `label` column.*add a `label` column"),
], ids=["edf", "session", "csv"])
def test_a_recording_without_labels_is_refused_for_training_naming_the_file(tmp_path: Path, make, message) -> None:
    """A readable recording without labels gives a DataFormatError that names the file, what training needs and
    what to do."""
    with pytest.raises(DataFormatError, match=message):
        load_recording(make(tmp_path))
