"""XDF files with several streams: the signal stream is chosen by name or type (only the chosen streams are parsed),
marker streams become annotations on the signal's time axis, and a missing or ambiguous choice is refused naming the
streams the file holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neurostimd.errors import ConfigError, DataFormatError
from neurostimd.sources.recordings import Annotation, read_recording
from tests.sources.test_readers import sine_data
from tests.sources.xdf_files import XdfStream, marker_stream, write_xdf, write_xdf_streams

FS = 100.0


def two_signals(path: Path, markers: list[XdfStream] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """An XDF with an 'EEG amp' (EEG, 3 ch) and an 'EMG amp' (EMG, 2 ch) stream, both from 10 s, plus `markers`."""
    eeg, emg = sine_data(400, 3, FS), sine_data(300, 2, FS) * 2
    ts = 10.0 + np.arange(400) / FS
    write_xdf_streams(path, [
        XdfStream("EEG amp", "EEG", FS, eeg, ts, labels=["C3", "Cz", "C4"], units=["microvolts"] * 3),
        XdfStream("EMG amp", "EMG", FS, emg, ts[:300], labels=["L", "R"], units=["microvolts"] * 2),
        *(markers or []),
    ])
    return eeg, emg


def test_the_signal_stream_is_chosen_by_name_or_type(tmp_path: Path) -> None:
    """Of two signal streams, stream_name picks one and stream_type the other, each with its own channels."""
    p = tmp_path / "two.xdf"
    eeg, emg = two_signals(p)
    by_name = read_recording(p, stream_name="EMG amp")
    assert by_name.channel_names == ["L", "R"]
    np.testing.assert_array_equal(by_name.data, emg)
    by_type = read_recording(p, stream_type="EEG")
    assert by_type.channel_names == ["C3", "Cz", "C4"]
    np.testing.assert_array_equal(by_type.data, eeg)
    both = read_recording(p, stream_name="EEG amp", stream_type="EEG")
    assert both.n_channels == 3


def test_several_signal_streams_without_a_choice_are_refused_naming_them(tmp_path: Path) -> None:
    """Without a choice, a file with two signal streams is refused listing each (name, type, channels, rate) and
    the settings that choose one."""
    p = tmp_path / "two.xdf"
    two_signals(p)
    with pytest.raises(DataFormatError) as err:
        read_recording(p)
    msg = str(err.value)
    assert "two.xdf" in msg and "2 signal streams" in msg
    assert "'EEG amp' (type 'EEG', 3 channels, 100 Hz" in msg and "'EMG amp' (type 'EMG', 2 channels" in msg
    assert "stream_name" in msg and "stream_type" in msg


def test_a_stream_that_is_not_there_is_refused_naming_those_that_are(tmp_path: Path) -> None:
    """A name no stream has, and the name of a marker stream asked for as the signal, are refused naming what the
    file holds."""
    p = tmp_path / "two.xdf"
    two_signals(p, [marker_stream("Task", [11.0], ["go"])])
    with pytest.raises(DataFormatError, match=r"no stream with name 'ECoG'.*'EEG amp'.*'EMG amp'.*'Task'"):
        read_recording(p, stream_name="ECoG")
    with pytest.raises(DataFormatError, match=r"name 'Task' has no regular rate or holds strings.*not a signal"):
        read_recording(p, stream_name="Task")
    with pytest.raises(DataFormatError, match=r"no marker stream named 'Keys'.*'Task'.*marker_streams"):
        read_recording(p, stream_name="EEG amp", marker_streams=["Keys"])


def test_marker_streams_become_annotations_from_the_signals_first_sample(tmp_path: Path) -> None:
    """String markers read as instant annotations, onset from the signal's first timestamp, named by their stream,
    in onset order; markers outside the signal's span are left out."""
    p = tmp_path / "m.xdf"
    task = marker_stream("Task", [10.5, 12.25, 9.0, 30.0], ["rest", "active", "before", "after"])
    keys = marker_stream("Keys", [11.0], ["space"])
    two_signals(p, [task, keys])
    rec = read_recording(p, stream_name="EEG amp")
    assert rec.annotations == [Annotation(0.5, 0.0, "rest", "Task"), Annotation(1.0, 0.0, "space", "Keys"),
                               Annotation(2.25, 0.0, "active", "Task")]
    only = read_recording(p, stream_name="EEG amp", marker_streams=["Keys"])
    assert [a.description for a in only.annotations] == ["space"]
    assert read_recording(p, stream_name="EEG amp", marker_streams=[]).annotations == []


def test_multichannel_and_numeric_markers_read_as_text(tmp_path: Path) -> None:
    """A two-channel string marker joins its channels with '/', an empty second channel is dropped, and an integer
    event code on an irregular-rate one-channel stream reads as its digits; a float stream without a rate (a
    decisions outlet's) is neither signal nor markers, and is not read."""
    p = tmp_path / "mc.xdf"
    words = marker_stream("Cues", [10.1, 10.2], [["left", "cue"], ["right", ""]])
    codes = XdfStream("Codes", "Markers", 0.0, np.array([[7], [12]], dtype=np.int32), np.array([10.3, 10.4]),
                      channel_format="int32")
    probs = XdfStream("Decisions", "Decisions", 0.0, np.array([[0.2, 0.8], [0.6, 0.4]], np.float32),
                      np.array([10.35, 10.45]))
    write_xdf(p, sine_data(100, 1, FS), FS, ["Cz"], units=["uV"], markers=[words, codes, probs])
    rec = read_recording(p)
    assert [(a.description, a.stream) for a in rec.annotations] == [
        ("left/cue", "Cues"), ("right", "Cues"), ("7", "Codes"), ("12", "Codes")]


def test_only_the_chosen_streams_are_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pyxdf is asked for the chosen signal stream and the marker streams only, not the other signal stream."""
    import pyxdf

    p = tmp_path / "sel.xdf"
    two_signals(p, [marker_stream("Task", [11.0], ["go"])])
    asked: list[object] = []
    real = pyxdf.load_xdf

    def spy(*args: object, **kw: object) -> object:
        asked.append(kw.get("select_streams"))
        return real(*args, **kw)

    monkeypatch.setattr(pyxdf, "load_xdf", spy)
    read_recording(p, stream_type="EMG")
    assert asked == [[2, 3]]


def test_stream_choices_on_a_file_that_is_not_xdf_are_refused(tmp_path: Path) -> None:
    """stream_name given for an .npz is a mistake in the config (ConfigError: exit 78, not a data error), refused
    naming the setting."""
    p = tmp_path / "r.npz"
    np.savez(p, data=sine_data(100, 2, FS), fs=FS)
    with pytest.raises(ConfigError, match=r"r\.npz: stream_name chooses streams of an XDF file"):
        read_recording(p, stream_name="EEG")


def test_replay_settings_choose_the_stream(tmp_path: Path) -> None:
    """[source] kind = "replay" with stream_type builds a replay of that stream; an empty stream_name is refused
    when the config is read."""
    from pydantic import ValidationError

    from neurostimd.sources.settings import ReplaySourceConfig, SourceContext

    p = tmp_path / "two.xdf"
    two_signals(p)
    src = ReplaySourceConfig(kind="replay", path=p, speed="max", stream_type="EMG").build(SourceContext())
    assert src.recording.channel_names == ["L", "R"]  # type: ignore[attr-defined]
    with pytest.raises(ValidationError, match="stream_name"):
        ReplaySourceConfig(kind="replay", path=p, stream_name="")
