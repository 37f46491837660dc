"""Recordings in MNE's formats (the `lab` extra), written by MNE itself: FIF raw files read in µV with their voltage
channels, annotations from the first sample and skipped acquisition as a gap; FIF epoch sets for training; other
formats mne.io.read_raw opens; and a clear refusal when MNE is missing."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from neurostimd.clock import VirtualClock
from neurostimd.core.ringbuffer import FLAG_GAP, RingBuffer
from neurostimd.errors import DataFormatError
from neurostimd.sources.recordings import read_recording, to_npz
from neurostimd.sources.replay import ReplaySource

mne = pytest.importorskip("mne")

FS = 250.0


def raw_fif(path: Path, *, first_samp: int = 500, annotations: Sequence[tuple[float, float, str]] = (),
            meas_date: bool = True) -> np.ndarray:
    """A FIF raw file (C3, C4 EEG, one EOG, one stim channel) written by MNE; its EEG/EOG samples in µV."""
    rng = np.random.default_rng(4)
    uv = rng.normal(0, 20, (3, 2000))
    stim = np.zeros((1, 2000))
    stim[0, 100] = 5
    info = mne.create_info(["C3", "C4", "VEOG", "STI 014"], FS, ["eeg", "eeg", "eog", "stim"])
    raw = mne.io.RawArray(np.vstack([uv * 1e-6, stim]), info, first_samp=first_samp, verbose="error")
    if meas_date:
        raw.set_meas_date(1_700_000_000)
    if annotations:
        onsets, durations, texts = zip(*annotations, strict=True)
        # With a measurement date, onsets are on the measurement's axis (the first sample at first_time); without
        # one (orig_time None), MNE takes them from the first sample.
        shift = raw.first_time if meas_date else 0.0
        raw.set_annotations(mne.Annotations(np.array(onsets) + shift, durations, texts,
                                            orig_time=raw.info["meas_date"]))
    raw.save(path, overwrite=True, verbose="error")
    return uv.T.astype(np.float32)


@pytest.mark.parametrize("meas_date", [True, False])
def test_fif_raw_reads_voltage_channels_in_microvolts_with_annotations(tmp_path: Path, meas_date: bool) -> None:
    """A FIF raw file reads its EEG and EOG channels in µV (the stim channel left out and logged), with its
    annotations' onsets counted from the first sample although the file's first sample is not sample 0."""
    p = tmp_path / "s_raw.fif"
    uv = raw_fif(p, annotations=[(1.0, 2.0, "rest"), (4.5, 0.0, "active")], meas_date=meas_date)
    with capture_logs() as logs:
        rec = read_recording(p)
    assert rec.channel_names == ["C3", "C4", "VEOG"] and rec.fs == FS and rec.channel_names_declared
    np.testing.assert_allclose(rec.data, uv, rtol=1e-5, atol=1e-3)
    assert [(a.description, a.duration_s) for a in rec.annotations] == [("rest", 2.0), ("active", 0.0)]
    assert [a.onset_s for a in rec.annotations] == pytest.approx([1.0, 4.5], abs=1e-6)
    dropped = next(e for e in logs if e["event"] == "mne_channels_dropped")
    assert dropped["dropped"] == ["STI 014 (stim)"]
    assert rec.sample_index is None and rec.timestamps is None


def test_skipped_acquisition_reads_as_a_gap_that_replay_flags(tmp_path: Path) -> None:
    """A BAD_ACQ_SKIP span (how MNE marks skipped acquisition) drops its samples and leaves a jump in
    sample_index; the annotations after it stay on the recording's time axis, and a replay writes the ring a gap of
    exactly the skipped samples."""
    p = tmp_path / "skip_raw.fif"
    uv = raw_fif(p, annotations=[(2.0, 0.4, "BAD_ACQ_SKIP"), (5.0, 0.0, "active")])
    rec = read_recording(p)
    skipped = int(0.4 * FS)
    assert rec.n_samples == 2000 - skipped
    assert rec.sample_index is not None and rec.sample_index[0] == 0
    jump = int(np.flatnonzero(np.diff(rec.sample_index) != 1)[0]) + 1
    assert jump == int(2.0 * FS) and rec.sample_index[jump] == int(2.4 * FS)
    np.testing.assert_allclose(rec.data[jump], uv[int(2.4 * FS)], rtol=1e-5, atol=1e-3)
    assert [a.description for a in rec.annotations] == ["active"]  # the skip is the gap, not a label
    assert rec.times_s()[np.searchsorted(rec.times_s(), 5.0)] == pytest.approx(5.0)
    clock = VirtualClock()
    ring = RingBuffer(rec.n_channels, 4000, FS)
    with ReplaySource(rec, 1.0, clock) as src:
        clock.advance(10_000_000_000)
        assert src.pump(ring) == rec.n_samples
    w = ring.latest(ring.samples_written)
    assert ring.counters.missing_samples == skipped and np.flatnonzero(w.flags & FLAG_GAP).tolist() == [jump]
    assert w.timestamps[jump] - w.timestamps[jump - 1] == pytest.approx((skipped + 1) / FS)
    again = read_recording(to_npz(rec, tmp_path / "skip.npz"))  # the interchange .npz keeps the gap in its stamps
    assert again.timestamps is not None and np.diff(again.timestamps)[jump - 1] == pytest.approx((skipped + 1) / FS)


def test_fif_epochs_read_as_an_epoch_set_with_named_classes(tmp_path: Path) -> None:
    """An MNE epochs file reads, with epochs=True, as its epochs end to end with per-sample labels from the events
    and class names from event_id in code order; without epochs=True it is refused as not continuous."""
    rng = np.random.default_rng(1)
    x = rng.normal(0, 10, (4, 2, 50))
    info = mne.create_info(["C3", "C4"], FS, "eeg")
    events = np.array([[0, 0, 2], [100, 0, 1], [200, 0, 2], [300, 0, 1]])
    p = tmp_path / "s-epo.fif"
    mne.EpochsArray(x * 1e-6, info, events, event_id={"rest": 1, "active": 2}, verbose="error").save(
        p, overwrite=True, verbose="error")
    rec = read_recording(p, epochs=True)
    assert rec.kind == "epochs" and rec.class_names == ["rest", "active"]
    np.testing.assert_array_equal(rec.segment_starts, [0, 50, 100, 150])
    np.testing.assert_array_equal(rec.labels, np.repeat([1, 0, 1, 0], 50))
    np.testing.assert_allclose(rec.data[50:100], x[1].T, rtol=1e-5, atol=1e-4)
    with pytest.raises(DataFormatError, match=r"s-epo\.fif is an MNE epoch set, not a continuous recording"):
        read_recording(p)


def test_a_recording_without_voltage_channels_is_refused(tmp_path: Path) -> None:
    """A FIF holding only stim and misc channels is refused naming them and the MNE call that fixes it."""
    info = mne.create_info(["STI", "temp"], FS, ["stim", "misc"])
    p = tmp_path / "aux_raw.fif"
    mne.io.RawArray(np.zeros((2, 100)), info, verbose="error").save(p, verbose="error")
    with pytest.raises(DataFormatError, match=r"aux_raw\.fif: no channel of a voltage type.*STI \(stim\), temp "
                                              r"\(misc\).*set_channel_types"):
        read_recording(p)


def test_a_stated_unit_contradicting_mnes_volts_is_refused(tmp_path: Path) -> None:
    """MNE declares volts; units = "mV" stated for it is a contradiction naming both."""
    p = tmp_path / "v_raw.fif"
    raw_fif(p)
    with pytest.raises(DataFormatError, match=r"v_raw\.fif.*'mV'.*'V'"):
        read_recording(p, units="mV")


def test_brainvision_through_mne_read_raw(tmp_path: Path) -> None:
    """A BrainVision file exported by MNE (pybv) reads through mne.io.read_raw like the FIF it came from."""
    pytest.importorskip("pybv")
    fif = tmp_path / "b_raw.fif"
    uv = raw_fif(fif, first_samp=0, annotations=[(1.0, 0.0, "rest")])
    vhdr = tmp_path / "b.vhdr"
    mne.export.export_raw(vhdr, mne.io.read_raw_fif(fif, preload=True, verbose="error"), verbose="error")
    rec = read_recording(vhdr)
    assert rec.channel_names[:2] == ["C3", "C4"]
    np.testing.assert_allclose(rec.data[:, :2], uv[:, :2], atol=0.1)
    assert any(a.description.endswith("rest") for a in rec.annotations)


def test_without_mne_the_error_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With MNE not importable, a .fif is refused naming the file and `pip install 'neurostimd[lab]'`; the unknown
    suffix message still lists the MNE formats (from the list kept for that case)."""
    p = tmp_path / "s_raw.fif"
    raw_fif(p)
    monkeypatch.setitem(sys.modules, "mne", None)  # what `import mne` meets where the extra is not installed
    monkeypatch.setitem(sys.modules, "mne.io._read_raw", None)
    with pytest.raises(DataFormatError, match=r"s_raw\.fif: reading \.fif files needs MNE-Python.*"
                                              r"pip install 'neurostimd\[lab\]'"):
        read_recording(p)
    (tmp_path / "x.abc").write_bytes(b"0")
    with pytest.raises(DataFormatError, match=r"unknown recording type.*\.vhdr"):
        read_recording(tmp_path / "x.abc")
