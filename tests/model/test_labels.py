"""Labels from where labs keep them: --classes syntax, annotations → samples, events files, label channels, and
how unlabelled samples stay out of segments and windows (no TensorFlow here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neurostimd.core.features import FeatureSettings
from neurostimd.errors import ConfigError, DataFormatError
from neurostimd.model.dataset import load_recording, load_recordings, segments, split_segments, windows_for
from neurostimd.model.labels import UNLABELLED, annotation_labels, parse_classes, parse_label_source, read_events
from neurostimd.sources.recordings import Annotation

FS = 100.0
S = FeatureSettings(hop_ms=100, frame_hops=2, n_frames=5)


def _signal(seconds: float, ch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((int(seconds * FS), ch)) * 10.0


def _edf(path: Path, data: np.ndarray, annotations: list[tuple[float, float, str]] = (),  # type: ignore[assignment]
         extra: dict[str, np.ndarray] | None = None) -> Path:
    """An EDF+ written by edfio: µV signals C0, C1, ..., optional unit-less extra signals, and annotations."""
    import edfio

    sigs = [edfio.EdfSignal(data[:, i], FS, label=f"C{i}", physical_dimension="uV", physical_range=(-200.0, 200.0))
            for i in range(data.shape[1])]
    for name, values in (extra or {}).items():
        sigs.append(edfio.EdfSignal(values, FS, label=name, physical_range=(-10.0, 10.0)))
    edfio.Edf(sigs, annotations=[edfio.EdfAnnotation(o, d, t) for o, d, t in annotations]).write(path)
    return path


# --- --classes and --labels -------------------------------------------------------------------------------------------
def test_classes_are_numbered_in_order_and_several_descriptions_may_map_to_one() -> None:
    """Class i is the i-th distinct name; NAME=DESCRIPTION maps other spellings; '-' maps to unlabelled."""
    m = parse_classes("rest=T0, active=T1,active=T2,-=pause")
    assert m.class_names == ["rest", "active"]
    assert m.codes == {"T0": 0, "T1": 1, "T2": 1, "pause": UNLABELLED} and not m.bare
    b = parse_classes("open,closed")
    assert b.class_names == ["open", "closed"] and b.codes == {"open": 0, "closed": 1} and b.bare


@pytest.mark.parametrize(("text", "message"), [
    ("rest,,active", r"empty item"),
    ("rest=T0,active=T0", r"'T0' is mapped to both 'rest' and 'active'"),
    ("=T0", r"lacks a name"),
    ("-=x", r"names no class"),
])
def test_bad_classes_are_a_configuration_error_naming_the_item(text: str, message: str) -> None:
    """A malformed --classes is refused as a ConfigError that names the problem and shows the syntax."""
    with pytest.raises(ConfigError, match=message):
        parse_classes(text)


def test_label_sources_parse() -> None:
    """--labels: absent/file, annotations, channel:NAME, or a path; an empty channel name is refused."""
    assert parse_label_source(None).kind == "file"
    assert parse_label_source("annotations").kind == "annotations"
    assert parse_label_source("channel:STI").name == "STI"
    assert parse_label_source("sub-01_events.tsv").path == Path("sub-01_events.tsv")
    with pytest.raises(ConfigError, match=r"names no channel"):
        parse_label_source("channel:")


# --- annotations → samples --------------------------------------------------------------------------------------------
def test_an_instant_marker_lasts_until_the_next_mapped_marker() -> None:
    """Markers (duration 0) start a state that runs to the next marker that maps; an unmapped marker neither starts
    nor ends one, and before the first marker nothing is labelled."""
    anns = [Annotation(1.0, 0.0, "rest"), Annotation(2.0, 0.0, "boundary"), Annotation(3.0, 0.0, "active")]
    y, info = annotation_labels(anns, 500, FS, parse_classes("rest,active"), "rec")
    assert (y[:100] == UNLABELLED).all() and (y[100:300] == 0).all() and (y[300:] == 1).all()
    assert info["unmapped"] == {"boundary": 1}


def test_spans_label_exactly_their_samples_and_overlaps_of_two_classes_are_unlabelled() -> None:
    """A duration labels [onset, onset + duration); spans override marker states; where spans of two classes
    overlap, the samples are unlabelled; '-' unlabels its span."""
    anns = [Annotation(0.0, 0.0, "rest"), Annotation(1.0, 1.0, "active"), Annotation(1.5, 1.0, "rest"),
            Annotation(3.0, 0.5, "bad")]
    y, info = annotation_labels(anns, 400, FS, parse_classes("rest,active,-=bad"), "rec")
    assert (y[:100] == 0).all() and (y[100:150] == 1).all() and (y[150:200] == UNLABELLED).all()
    assert (y[200:250] == 0).all() and (y[250:300] == 0).all()  # the marker state resumes after the spans
    assert (y[300:350] == UNLABELLED).all() and (y[350:] == 0).all()
    assert info["conflict_s"] == pytest.approx(0.5)


def test_nothing_mapping_names_the_descriptions_found_and_the_classes_asked_for() -> None:
    """When no annotation maps, the error lists what the file holds and what --classes asked for."""
    anns = [Annotation(0.0, 1.0, "T0"), Annotation(1.0, 1.0, "T1")]
    with pytest.raises(DataFormatError, match=r"rec: no label maps.*'T0' ×1, 'T1' ×1.*asks for \['rest', 'active'\]"):
        annotation_labels(anns, 300, FS, parse_classes("rest,active"), "rec")


# --- files written by the real libraries ------------------------------------------------------------------------------
def test_edf_annotations_label_a_recording_and_the_unlabelled_seconds_are_counted(tmp_path: Path) -> None:
    """Trials as EDF+ annotations (4 s each, 1 s gaps): labelled per trial, gaps unlabelled (-1) and counted."""
    trials = [(t * 5.0, 4.0, ("rest", "active")[t % 2]) for t in range(6)]
    p = _edf(tmp_path / "t.edf", _signal(30.0), [*trials, (0.5, 0.0, "Recording starts")])
    rec = load_recording(p, "annotations", "rest,active")
    assert rec.class_names == ["rest", "active"]
    assert rec.labels[0] == 0 and rec.labels[450] == UNLABELLED and rec.labels[500] == 1 and rec.labels[-1] == -1
    assert rec.label_info["unlabelled_s"] == pytest.approx(6.0)
    assert rec.label_info["labelled_s"] == {"rest": 12.0, "active": 12.0}
    assert rec.label_info["unmapped"] == {"Recording starts": 1}


def test_a_bids_events_tsv_and_a_csv_give_the_same_labels_as_annotations(tmp_path: Path) -> None:
    """The same trials as EDF+ annotations, as a BIDS events.tsv (n/a durations = markers) and as a CSV."""
    data = _signal(30.0)
    trials = [(t * 5.0, 4.0, ("T1", "T2")[t % 2]) for t in range(6)]
    with_ann = load_recording(_edf(tmp_path / "a.edf", data, trials), "annotations", "rest=T1,active=T2")
    plain = _edf(tmp_path / "plain.edf", data)
    tsv = tmp_path / "sub-01_task-x_events.tsv"
    tsv.write_text("onset\tduration\ttrial_type\tvalue\n" + "".join(f"{o}\t{d}\t{t}\t1\n" for o, d, t in trials)
                   + "29.5\tn/a\tn/a\t0\n")
    csv_ = tmp_path / "events.csv"
    csv_.write_text("onset,duration,label\n" + "".join(f"{o},{d},{t}\n" for o, d, t in trials))
    for events in (tsv, csv_):
        rec = load_recording(plain, str(events), "rest=T1,active=T2")
        np.testing.assert_array_equal(rec.labels, with_ann.labels)
        assert rec.label_info["source"] == "events" and len(rec.label_info["sha256"]) == 64
    assert read_events(tsv)[0][-1] == Annotation(29.5, 0.0, "n/a")


@pytest.mark.parametrize(("content", "message"), [
    ("time\tduration\ttrial_type\n1\t1\tx\n", r"no `onset` column"),
    ("onset\tduration\n1\t1\n", r"no column naming the events"),
    ("onset\tduration\ttrial_type\nsoon\t1\tx\n", r"line 2: onset 'soon' is not a number"),
    ("onset\tduration\ttrial_type\n1\t-2\tx\n", r"line 2: duration '-2' is negative"),
])
def test_a_bad_events_file_is_refused_naming_the_line_and_column(tmp_path: Path, content: str, message: str) -> None:
    """An events file that cannot be read is a DataFormatError naming the file and what is wrong."""
    p = tmp_path / "e_events.tsv"
    p.write_text(content)
    with pytest.raises(DataFormatError, match=r"e_events\.tsv: " + message):
        read_events(p)


def test_a_missing_events_file_or_no_annotations_is_refused(tmp_path: Path) -> None:
    """--labels naming no file, or annotations on a file that has none, say what was looked for and what to do."""
    plain = _edf(tmp_path / "plain.edf", _signal(10.0))
    with pytest.raises(DataFormatError, match=r"--labels .*nope\.tsv: no such events file"):
        load_recording(plain, str(tmp_path / "nope.tsv"), "a,b")
    with pytest.raises(DataFormatError, match=r"plain\.edf: --labels annotations, but the recording carries no "
                                              r"annotations.*--labels events\.tsv"):
        load_recording(plain, "annotations", "a,b")
    with pytest.raises(ConfigError, match=r"one events file but 2 recordings"):
        load_recordings([plain, plain], str(tmp_path / "e.tsv"), "a,b")


def test_annotations_without_classes_ask_for_them_naming_what_is_there(tmp_path: Path) -> None:
    """--labels annotations without --classes is a configuration error that lists the descriptions found."""
    p = _edf(tmp_path / "a.edf", _signal(10.0), [(0.0, 5.0, "rest"), (5.0, 5.0, "active")])
    with pytest.raises(ConfigError, match=r"needs --classes.*found: \['active', 'rest'\]"):
        load_recording(p, "annotations", None)


def test_a_label_channel_is_taken_out_of_the_signal_and_read_as_stored(tmp_path: Path) -> None:
    """channel:STI (no unit in the EDF header) gives the labels and leaves only the signal channels; bare class
    names number its values 0, 1, ...; NAME=CODE maps codes and other codes are unlabelled."""
    data = _signal(20.0)
    codes = np.repeat([0.0, 1.0, 2.0, 1.0], 500)
    p = _edf(tmp_path / "sti.edf", data, extra={"STI": codes})
    rec = load_recording(p, "channel:STI", "rest,active")
    assert rec.channel_names == ["C0", "C1"] and rec.recording.range_uv is not None
    assert len(rec.recording.range_uv[0]) == 2
    np.testing.assert_array_equal(rec.labels, np.where(codes < 2, codes, -1).astype(int))
    coded = load_recording(p, "channel:sti", "rest=2,active=1")
    np.testing.assert_array_equal(coded.labels, np.select([codes == 2, codes == 1], [0, 1], -1))
    assert coded.label_info["unmapped"] == {"0": 500}
    bare = load_recording(p, "channel:STI")
    assert bare.class_names == ["0", "1", "2"]
    with pytest.raises(DataFormatError, match=r"no channel 'TRIG'; the channels are \['C0', 'C1'\]"):
        load_recording(_edf(tmp_path / "plain.edf", data), "channel:TRIG", "a,b")
    with pytest.raises(ConfigError, match=r"'x' is not an integer code"):
        load_recording(p, "channel:STI", "rest=x")


def test_a_label_channel_of_fractions_is_refused(tmp_path: Path) -> None:
    """A label channel whose values are not whole numbers is not a code channel; the error says so."""
    p = _edf(tmp_path / "f.edf", _signal(5.0), extra={"STI": np.full(500, 0.5)})
    with pytest.raises(DataFormatError, match=r"label channel 'STI' holds values that are not whole numbers"):
        load_recording(p, "channel:STI", "a,b")


# --- the file's own labels, unchanged ---------------------------------------------------------------------------------
def test_the_files_own_labels_are_the_default_in_npz_csv_and_arff(tmp_path: Path) -> None:
    """Without --labels, an .npz labels array, a CSV label column and an ARFF nominal attribute give the same
    samples and labels as before (source 'file'); --classes can rename or merge them."""
    data = _signal(12.0).astype(np.float32)
    y = (np.arange(len(data)) // 300) % 2
    np.savez(tmp_path / "r.npz", data=data, fs=FS, channel_names=np.array(["C0", "C1"]), labels=y,
             class_names=np.array(["0", "1"]))
    rows = [(float(a), float(b), int(c)) for a, b, c in zip(data[:, 0], data[:, 1], y, strict=True)]
    (tmp_path / "r.csv").write_text("time,C0,C1,label\n" + "".join(
        f"{i / FS:.2f},{a!r},{b!r},{c}\n" for i, (a, b, c) in enumerate(rows)))
    (tmp_path / "r.arff").write_text("@RELATION r\n@ATTRIBUTE C0 NUMERIC\n@ATTRIBUTE C1 NUMERIC\n@ATTRIBUTE eye {0,1}\n"
                                     "@DATA\n" + "".join(f"{a!r},{b!r},{c}\n" for a, b, c in rows))
    got = [load_recording(tmp_path / "r.npz"), load_recording(tmp_path / "r.csv")]
    from neurostimd.sources.recordings import read_recording

    arff = read_recording(tmp_path / "r.arff", fs=FS)
    for rec in got:
        np.testing.assert_array_equal(rec.labels, y)
        np.testing.assert_allclose(rec.data, data, rtol=1e-6)
        assert rec.class_names == ["0", "1"] and rec.label_info == {"source": "file"}
    assert arff.labels is not None and arff.class_names == ["0", "1"]
    np.testing.assert_array_equal(arff.labels, y)
    renamed = load_recording(tmp_path / "r.npz", None, "open=0,closed=1")
    assert renamed.class_names == ["open", "closed"]
    np.testing.assert_array_equal(renamed.labels, y)


def test_an_epoch_set_keeps_its_per_epoch_labels_under_a_class_mapping(tmp_path: Path) -> None:
    """An epoch set relabelled by --classes (A,B → healthy; E → seizure; C unlabelled) keeps one label per epoch,
    and an epoch with no mapped label is no segment."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "e.npz", X=rng.standard_normal((9, 1, 400)).astype(np.float32), y=np.arange(9) % 4,
             fs=FS, channel_names=np.array(["EEG"]), class_names=np.array(["A", "B", "C", "E"]))
    rec = load_recording(tmp_path / "e.npz", None, "healthy=A,healthy=B,seizure=E")
    segs = segments([rec], S, 20.0)
    assert [s.index for s in segs] == [0, 1, 3, 4, 5, 7, 8]
    assert [s.majority_label for s in segs] == [0, 0, 1, 0, 0, 1, 0]
    assert all(len(set(s.labels.tolist())) == 1 for s in segs)


# --- unlabelled samples in segments and windows -----------------------------------------------------------------------
def test_unlabelled_blocks_are_no_segments_and_unlabelled_windows_are_dropped(tmp_path: Path) -> None:
    """A block with no labelled sample is skipped (block numbers stay those of the whole recording), windows whose
    newest sample is unlabelled are dropped, and the split stays disjoint by time."""
    trials = [(t * 10.0, 6.0, ("rest", "active")[t % 2]) for t in range(12)]
    trials = [t for t in trials if not 40.0 <= t[0] < 60.0]  # 40..60 s carries no label at all
    p = _edf(tmp_path / "t.edf", _signal(120.0), trials)
    rec = load_recording(p, "annotations", "rest,active")
    segs = segments([rec], S, block_s=10.0)
    assert [s.index for s in segs] == [0, 1, 2, 3, 6, 7, 8, 9, 10, 11]
    w = windows_for(segs, list(range(len(segs))), S, FS)
    assert len(w.X) > 0 and (w.y >= 0).all()
    full = load_recording(p, "annotations", "rest=rest,rest=active,-=x")  # the same blocks, gaps still unlabelled
    assert len(windows_for(segs, list(range(len(segs))), S, FS).X) == len(
        windows_for(segments([full], S, 10.0), list(range(len(segs))), S, FS).X)
    gapless = load_recording(_edf(tmp_path / "g.edf", _signal(120.0), [(0.0, 120.0, "rest")]), "annotations", "rest")
    g_segs = segments([gapless], S, 10.0)
    n_all = len(windows_for(g_segs, [s.index for s in segs], S, FS).X)
    assert n_all - len(w.X) == pytest.approx(10 * 4.0 * FS / S.hop_samples(FS), abs=10 * 2)  # 4 s gaps dropped
    tr, va, te = split_segments(segs, 0.3, 0.2, seed=1)
    assert not set(tr) & set(te) and not set(tr) & set(va) and sorted(tr + va + te) == list(range(len(segs)))
    assert {segs[i].majority_label for i in tr} == {0, 1}


# --- labels on the recording's time axis (gaps) -----------------------------------------------------------------------
def test_an_onset_after_a_gap_labels_the_samples_recorded_at_that_time() -> None:
    """With a 2 s gap in the samples' times, a span at 5–6 s labels the samples stamped 5–6 s, not those 2 s later
    (an onset is a time, and after a gap sample i is no longer at i / fs)."""
    times = np.arange(600) / FS
    times[200:] += 2.0  # samples 200.. were recorded from 4.0 s on
    anns = [Annotation(0.0, 0.0, "rest"), Annotation(5.0, 1.0, "active")]
    y, info = annotation_labels(anns, 600, FS, parse_classes("rest,active"), "rec", times_s=times)
    active = np.flatnonzero(y == 1)
    assert times[active[0]] == pytest.approx(5.0) and times[active[-1]] == pytest.approx(5.99)
    assert active.size == 100 and (y[:300] == 0).all() and info["outside_recording"] == 0


def test_xdf_markers_after_a_timestamp_gap_label_the_right_samples(tmp_path: Path) -> None:
    """An XDF whose stamps jump by 5 s: the marker stream's labels land on the samples recorded at the markers'
    times."""
    from tests.sources.xdf_files import marker_stream, write_xdf

    n = 2000
    ts = 50.0 + np.arange(n) / FS
    ts[1000:] += 5.0  # 5 s of nothing after sample 1000 (t = 10 s)
    data = np.random.default_rng(0).normal(0, 10, (n, 2)).astype(np.float32)
    marks = marker_stream("events", [50.0, 50.0 + 16.0], ["rest", "active"])
    p = tmp_path / "gap.xdf"
    write_xdf(p, data, FS, ["C3", "C4"], ["microvolts"] * 2, timestamps=ts, markers=[marks])
    rec = load_recording(p, "annotations", "rest,active")
    first_active = int(np.flatnonzero(rec.labels == 1)[0])
    assert first_active == 1100  # 16 s = 10 s before the gap + 5 s gap + 1 s (100 samples) after it


def test_fif_annotations_after_skipped_acquisition_and_a_stim_channel_as_labels(tmp_path: Path) -> None:
    """MNE's BAD_ACQ_SKIP drops 2 s; a span annotated at 5–6 s labels the samples recorded then; and the file's stim
    channel (not a voltage channel, left out of the signal) serves as --labels channel:NAME."""
    import mne

    fs = 100.0
    n = 1000
    rng = np.random.default_rng(1)
    stim = np.zeros(n)
    stim[500:] = 2.0
    info = mne.create_info(["C3", "C4", "STI"], fs, ["eeg", "eeg", "stim"])
    raw = mne.io.RawArray(np.vstack([rng.normal(0, 1e-5, (2, n)), stim[None]]), info, verbose="error")
    raw.set_annotations(mne.Annotations([0.0, 2.0, 5.0], [2.0, 2.0, 1.0], ["rest", "BAD_ACQ_SKIP", "active"]))
    p = tmp_path / "skip_raw.fif"
    raw.save(p, verbose="error")
    rec = load_recording(p, "annotations", "rest,active")
    assert rec.data.shape[0] == n - 200 and rec.channel_names == ["C3", "C4"]
    active = np.flatnonzero(rec.labels == 1)
    assert active[0] == 300 and active.size == 100  # 5 s = row 300 once the 2 s skip is gone
    by_channel = load_recording(p, "channel:STI", "rest=0,active=2")
    assert by_channel.channel_names == ["C3", "C4"]
    assert (by_channel.labels[:300] == 0).all() and (by_channel.labels[300:] == 1).all()  # code 2 from 5 s on


def test_training_blocks_never_span_a_gap_in_the_recordings_time() -> None:
    """A continuous recording with a timestamp gap is cut there: no segment's samples straddle the gap, so the
    training filters and windows never run across it; without a gap the blocks are as before."""
    from neurostimd.model.dataset import LabelledRecording
    from neurostimd.sources.recordings import Recording

    n = 6000
    ts = np.arange(n) / FS
    ts[2500:] += 3.0
    data = np.zeros((n, 1), np.float32)
    labels = np.zeros(n, np.int64)
    settings = FeatureSettings()
    gapped = LabelledRecording(Recording(data, FS, ["C3"], timestamps=ts), labels, ["rest"], "x")
    segs = segments([gapped], settings, block_s=20.0)
    assert [s.start_sample for s in segs] == [0, 2500, 4500]  # a 500-sample tail joins its block; none spans 2500
    plain = LabelledRecording(Recording(data, FS, ["C3"]), labels, ["rest"], "x")
    assert [s.start_sample for s in segments([plain], settings, block_s=20.0)] == [0, 2000, 4000]


def test_a_sessions_own_state_markers_map_by_their_tag() -> None:
    """Markers as the Markers stream writes them (`state:<class> index=… confidence=…`) map through --classes by
    their tag, whatever their fields; a description that matches whole still matches whole."""
    anns = [Annotation(0.0, 0.0, "state:quiet index=0 confidence=0.91"),
            Annotation(1.0, 0.0, "state:activated index=1 confidence=0.77"),
            Annotation(2.0, 0.0, "stim:on frequency_hz=130 amplitude_ma=2 pulse_width_us=60"),
            Annotation(3.0, 0.0, "rest now")]
    y, info = annotation_labels(anns, 400, FS, parse_classes("rest=state:quiet,active=state:activated,"
                                                              "rest=rest now"), "rec")
    assert (y[:100] == 0).all() and (y[100:300] == 1).all() and (y[300:] == 0).all()
    assert info["unmapped"] == {"stim:on": 1}
