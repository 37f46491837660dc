"""EDF+/BDF+ annotations reach Recording.annotations: onsets in seconds from the first sample, durations, texts;
files written by edfio and cross-checked against MNE's EDF reader."""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import pytest

from neurostimd.sources.recordings import Annotation, read_recording

FS = 100.0


def _write(path: Path, annotations: list[tuple[float, float, str]], *, starttime: datetime.time | None = None,
           bdf: bool = False) -> Path:
    import edfio

    x = np.sin(np.arange(1000) / 7.0) * 50.0
    anns = [edfio.EdfAnnotation(o, d, t) for o, d, t in annotations]
    if bdf:
        edfio.Bdf([edfio.BdfSignal(x, FS, label="Cz", physical_dimension="uV", physical_range=(-100.0, 100.0))],
                  starttime=starttime, annotations=anns).write(path)
    else:
        edfio.Edf([edfio.EdfSignal(x, FS, label="Cz", physical_dimension="uV", physical_range=(-100.0, 100.0))],
                  starttime=starttime, annotations=anns).write(path)
    return path


def test_edf_plus_annotations_are_read_in_onset_order(tmp_path: Path) -> None:
    """Spans and instant markers come back with onset, duration (0 for a marker) and text, sorted by onset."""
    rec = read_recording(_write(tmp_path / "a.edf", [(4.25, 0.0, "go"), (1.5, 2.0, "rest"), (6.0, 3.5, "T1")]))
    assert rec.annotations == [Annotation(1.5, 2.0, "rest"), Annotation(4.25, 0.0, "go"), Annotation(6.0, 3.5, "T1")]


def test_onsets_are_from_the_first_sample_when_the_start_has_a_fraction_of_a_second(tmp_path: Path) -> None:
    """A subsecond start time (EDF+ keeps it in the first data record's time stamp) does not shift the onsets, and
    MNE's reader of the same file reports the same onsets and durations."""
    import mne

    p = _write(tmp_path / "s.edf", [(1.5, 2.0, "rest"), (4.25, 0.0, "go")], starttime=datetime.time(10, 0, 0, 250000))
    got = read_recording(p).annotations
    raw = mne.io.read_raw_edf(p, verbose="error")
    assert [a.onset_s for a in got] == pytest.approx(list(raw.annotations.onset))
    assert [a.duration_s for a in got] == pytest.approx(list(raw.annotations.duration))
    assert [a.description for a in got] == list(raw.annotations.description) == ["rest", "go"]


def test_bdf_plus_annotations_and_a_plain_edf(tmp_path: Path) -> None:
    """BDF+ carries annotations the same way; a file without any has an empty list."""
    assert read_recording(_write(tmp_path / "a.bdf", [(2.0, 1.0, "active")], bdf=True)).annotations == [
        Annotation(2.0, 1.0, "active")]
    assert read_recording(_write(tmp_path / "p.edf", [])).annotations == []


def test_mne_exported_edf_reads_its_skips_as_a_gap_and_its_padding_as_the_end(tmp_path: Path) -> None:
    """An EDF written by mne.export.export_raw (1234 samples: MNE pads the last 1 s data record with edge values
    under a BAD_ACQ_SKIP of its own) with a BAD_ACQ_SKIP inside reads without the skipped samples, the index
    jumping over the inner skip, the padding cut off, the other annotations on times_s(), and replays with a ring gap
    of exactly the skipped samples."""
    import mne

    from neurostimd.clock import VirtualClock
    from neurostimd.core.ringbuffer import FLAG_GAP, RingBuffer
    from neurostimd.sources.replay import ReplaySource

    n, skip_at, skipped = 1234, 300, 50
    uv = np.random.default_rng(3).normal(0, 20, (n, 2))
    raw = mne.io.RawArray(uv.T * 1e-6, mne.create_info(["C3", "C4"], FS, "eeg"), verbose="error")
    raw.set_annotations(mne.Annotations([skip_at / FS, 9.0], [skipped / FS, 1.0], ["BAD_ACQ_SKIP", "active"]))
    p = tmp_path / "skip.edf"
    mne.export.export_raw(p, raw, fmt="edf", physical_range="channelwise", verbose="error")
    assert mne.io.read_raw(p, verbose="error").n_times == 1300  # the file holds 13 whole records
    rec = read_recording(p)
    assert rec.n_samples == n - skipped and rec.annotations == [Annotation(9.0, 1.0, "active")]
    assert rec.sample_index is not None and rec.sample_index[-1] == n - 1
    assert np.flatnonzero(np.diff(rec.sample_index) != 1).tolist() == [skip_at - 1]
    half_step = (uv.max(axis=0) - uv.min(axis=0)) / 65534 / 2 + 1e-3  # 16 bit over each channel's range
    assert (np.abs(rec.data[:skip_at] - uv[:skip_at]) <= half_step).all()
    assert (np.abs(rec.data[skip_at:] - uv[skip_at + skipped:]) <= half_step).all()
    assert rec.times_s()[np.searchsorted(rec.times_s(), 9.0)] == pytest.approx(9.0)
    clock = VirtualClock()
    ring = RingBuffer(rec.n_channels, 2000, FS)
    with ReplaySource(rec, 1.0, clock) as src:
        clock.advance(20_000_000_000)
        assert src.pump(ring) == rec.n_samples
    w = ring.latest(ring.samples_written)
    assert np.flatnonzero(w.flags & FLAG_GAP).tolist() == [skip_at] and ring.counters.missing_samples == skipped


def test_an_edf_that_ends_in_a_skip_reads_as_consecutive_samples(tmp_path: Path) -> None:
    """A BAD_ACQ_SKIP only at the end (MNE's padding) shortens the recording and leaves no sample index."""
    p = _write(tmp_path / "pad.edf", [(2.0, 0.5, "rest"), (7.5, 2.5, "BAD_ACQ_SKIP")])
    rec = read_recording(p)
    assert rec.n_samples == 750 and rec.sample_index is None and rec.annotations == [Annotation(2.0, 0.5, "rest")]
    np.testing.assert_allclose(rec.data[:, 0], np.sin(np.arange(750) / 7.0) * 50.0, atol=0.01)


def test_an_edf_plus_c_with_a_subsecond_start_keeps_its_annotations(tmp_path: Path) -> None:
    """An EDF+C whose start time has microseconds that edfio writes into the records' time stamps with float noise
    (+1.1735470000000001) is continuous by its header: its annotations are read."""
    p = _write(tmp_path / "f.edf", [(1.5, 2.0, "rest"), (7.25, 0.5, "go")], starttime=datetime.time(3, 43, 39, 173547))
    assert read_recording(p).annotations == [Annotation(1.5, 2.0, "rest"), Annotation(7.25, 0.5, "go")]
