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
