"""The one reader of recording files, for replay, training, evaluation and the simulator's --signal: the continuous
.npz of docs/design.md (and, for training, its epoch set), CSV, EDF/BDF, XDF, ARFF, FIF and the other formats
mne.io.read_raw opens (the `lab` extra; an -epo.fif epoch set for training), and a recorder session folder, all
returned as one `Recording` in µV; `to_npz()` writes the interchange .npz. Bad files raise DataFormatError naming
what is wrong and what to do. This module imports no pylsl, TensorFlow, LiteRT or matplotlib; the optional format
libraries (edfio, pyxdf, scipy.io.arff, mne) are imported when a file of their format is read.

XDF. One signal stream (regular rate, numeric) is read: the only one, or the one `stream_name` / `stream_type`
choose (refused, listing the streams, when none or several match). Only it and the marker streams (strings, or one
integer channel of event codes without a regular rate) are loaded (pyxdf's select_streams). Marker samples become
instant annotations, onset from the signal's first timestamp, a multi-channel marker's channels joined with "/";
`marker_streams` narrows them by name.

MNE formats. The channels of a voltage type (MNE_SIGNAL_TYPES) in µV, the others dropped and logged;
raw.annotations with onsets from the first sample. BAD_ACQ_SKIP (MNE's skipped acquisition) is not signal, in
these formats and in EDF/BDF: its samples are dropped, a skip inside the recording as a jump of `sample_index` (a
gap a replay honours), one at the end (MNE's padding of an EDF's last data record) as the recording's end.

Units. Files that declare units are scaled from them (neurostimd.core.units): an XDF stream's channel units
(`desc/channels/channel/unit`, "microvolts" by the XDF EEG convention), an EDF/BDF signal's physical dimension. A
missing or unknown unit there (an empty EDF physical dimension is not µV) is refused unless the caller states the
unit (`units=`, from `[source] units`); a declared unit that contradicts the stated one is refused with both named.
The interchange .npz, CSV and ARFF carry samples in µV by this project's convention (docs/design.md), unless the .npz
holds an optional `units` string (one for all channels, e.g. "mV"), which is honoured, or the caller states `units`.
A recorder session is µV by its format.

Channel names. `channel_names_declared` is False when the file names no channels (an .npz without `channel_names`,
an XDF without labels, an EDF with blank labels, a session whose names are the recorder's placeholders ch0, ch1, ...):
the generated names are then only column labels, and the montage cannot be checked by name.

Labels. Per-sample class labels come from an .npz `labels` array, a CSV `label` column, an ARFF nominal attribute or
an MNE epochs file's events; the annotations (EDF+/BDF+, MNE, XDF markers) become labels in neurostimd.model.labels,
which maps them to classes. An epoch set (.npz `X` (n_epochs, n_channels, n_samples), `y`), read
only with `epochs=True` (training and evaluation; replay has no time between epochs), is its epochs laid end to end,
`segment_starts` marking where each begins, each sample labelled with its epoch's `y`.

Timestamps. XDF timestamps are read as recorded (clock-synchronised, not dejittered: dejittering would smooth over
short gaps); every reader's timestamps must be finite and advance at the file's rate within 2 % (median step), or the
file is refused. `sample_index` marks gaps the file counts in samples (a session's ring indices, MNE's skipped
acquisition); a replay honours both (neurostimd.sources.replay). Annotation onsets are on `Recording.times_s()`.

CSV convention: a header row naming the columns; one numeric column per channel; optional columns `time` (or
`timestamp`, seconds) and `label` (or `labels`, integer class). The rate is the `fs` argument if given, else
1 / median step of the time column; a CSV with neither is refused. Lines starting with `#` are comments.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from neurostimd.core.units import UnitError, scales_to_uv, uv_per_unit
from neurostimd.errors import ConfigError, DataFormatError

log = structlog.get_logger(__name__)

_TIME_COLUMNS = ("time", "timestamp", "timestamps", "t", "time_s")
_LABEL_COLUMNS = ("label", "labels", "class", "y")
SESSION_FORMAT = "neurostimd-session"
# What mne.io.read_raw opens (MNE 1.13), less EDF/BDF, which edfio reads: used when MNE itself cannot say (it is an
# optional extra); with MNE installed its own list is asked.
_MNE_SUFFIXES = (".ahdr", ".asc", ".bin", ".cdt", ".cdt.cef", ".cdt.dpa", ".cef", ".cnt", ".con", ".dap", ".dat",
                 ".data", ".ds", ".eeg", ".fif", ".fif.gz", ".gdf", ".hdr", ".lay", ".mat", ".mefd", ".mff", ".nedf",
                 ".ns3", ".nxe", ".rs3", ".set", ".snirf", ".sqd", ".txt", ".vhdr")
_MNE_FOLDERS = (".ds", ".mff", ".mefd")  # formats that are folders (CTF, EGI, MEF), not recorder sessions
_MNE_EPOCHS = ("-epo.fif", "_epo.fif", "-epo.fif.gz", "_epo.fif.gz")
# MNE channel types that hold voltages (MNE keeps them in volts): read, in µV. Other types (stim, misc, resp, MEG,
# fNIRS, ...) are left out and named in the log.
MNE_SIGNAL_TYPES = ("eeg", "ecog", "seeg", "dbs", "emg", "eog", "ecg")
MNE_GAP = "BAD_ACQ_SKIP"  # MNE's annotation for skipped acquisition: read as a gap


@dataclass(frozen=True)
class Annotation:
    """A stretch of a recording that the file marks (an EDF+ or FIF annotation, an XDF marker, an events-file row):
    `onset_s` seconds from the recording's first sample, `duration_s` (0 for an instant marker), `description` as
    the file spells it."""

    onset_s: float
    duration_s: float
    description: str
    stream: str = ""  # the XDF marker stream it came from ("" for formats with one set of annotations)


@dataclass
class Recording:
    """A multichannel recording: data (n_samples, n_channels) float32 µV at fs Hz; continuous unless
    `segment_starts` is set (an epoch set: the first sample of each epoch)."""

    data: npt.NDArray[np.float32]
    fs: float
    channel_names: list[str]
    labels: npt.NDArray[np.int64] | None = None
    class_names: list[str] | None = None
    timestamps: npt.NDArray[np.float64] | None = None
    source: str = ""
    channel_names_declared: bool = True
    # Per channel (lo, hi) µV at or beyond which a sample sits on the converter's rails (EDF physical range); None
    # when the file declares no range.
    range_uv: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = None
    units: str = "uV (interchange convention)"  # where the µV scale came from, for the log
    segment_starts: npt.NDArray[np.int64] | None = None
    # What the file marks (EDF+/FIF annotations, XDF marker streams), in onset order; empty when it marks nothing.
    annotations: list[Annotation] = field(default_factory=list)
    # Each sample's position on the recording's sample clock (int64, strictly increasing) where samples are missing:
    # a session's ring indices, an MNE recording with skipped acquisition. None: consecutive (or see timestamps).
    sample_index: npt.NDArray[np.int64] | None = None

    @property
    def kind(self) -> str:
        """'epochs' for an epoch set, else 'continuous'."""
        return "continuous" if self.segment_starts is None else "epochs"

    @property
    def n_samples(self) -> int:
        return int(self.data.shape[0])

    @property
    def n_channels(self) -> int:
        return int(self.data.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs

    def times_s(self) -> npt.NDArray[np.float64]:
        """Each sample's time in seconds from the first sample, gaps included: from the timestamps where the file
        has them, else from `sample_index`, else i / fs. Annotation onsets are on this axis (find the sample of an
        onset with np.searchsorted(rec.times_s(), onset_s))."""
        if self.timestamps is not None and self.timestamps.shape[0] > 0:
            return np.asarray(self.timestamps, dtype=np.float64) - float(self.timestamps[0])
        if self.sample_index is not None:
            return (self.sample_index - self.sample_index[0]).astype(np.float64) / self.fs
        return np.arange(self.n_samples, dtype=np.float64) / self.fs


def _validated(rec: Recording, where: str) -> Recording:
    if rec.data.ndim != 2 or rec.data.shape[0] == 0 or rec.data.shape[1] == 0:
        raise DataFormatError(f"{where}: data has shape {rec.data.shape}; need (n_samples > 0, n_channels > 0)")
    if not (np.isfinite(rec.fs) and rec.fs > 0):
        raise DataFormatError(f"{where}: sample rate {rec.fs!r} is not a positive number; pass fs explicitly")
    if len(rec.channel_names) != rec.data.shape[1]:
        raise DataFormatError(f"{where}: {len(rec.channel_names)} channel names for {rec.data.shape[1]} channels")
    for name, arr in (("labels", rec.labels), ("timestamps", rec.timestamps), ("sample index", rec.sample_index)):
        if arr is not None and arr.shape[0] != rec.data.shape[0]:
            raise DataFormatError(f"{where}: {name} has {arr.shape[0]} entries for {rec.data.shape[0]} samples")
    idx = rec.sample_index
    if idx is not None:
        if idx.ndim != 1 or np.any(np.diff(idx) <= 0):
            bad = int(np.flatnonzero(np.diff(idx) <= 0)[0]) + 1 if idx.ndim == 1 else 0
            raise DataFormatError(f"{where}: the sample index does not increase at sample {bad}; the file is damaged "
                                  f"(a session's indices.i64 must only grow)")
        rec.sample_index = np.ascontiguousarray(idx, dtype=np.int64)
    starts = rec.segment_starts
    if starts is not None and (starts.ndim != 1 or starts.size == 0 or starts[0] != 0
                               or np.any(np.diff(starts) <= 0) or starts[-1] >= rec.data.shape[0]):
        raise DataFormatError(f"{where}: epoch starts {starts!r} do not tile {rec.data.shape[0]} samples")
    if rec.timestamps is not None and rec.timestamps.shape[0] >= 3:
        ts = rec.timestamps
        if not np.isfinite(ts).all():
            raise DataFormatError(f"{where}: some timestamps are NaN or infinite; repair them or drop the timestamps")
        step = float(np.median(np.diff(ts)))
        if not (step > 0 and abs(step * rec.fs - 1.0) <= 0.02):
            got = f"{1.0 / step:g} Hz" if step > 0 else "not at all"
            raise DataFormatError(f"{where}: the timestamps advance at {got} (median step), but the sample rate is "
                                  f"{rec.fs:g} Hz; the file's rate or its timestamps are wrong — fix the file, or "
                                  f"pass the true rate as fs / [source] sample_rate_hz")
    rec.data = np.ascontiguousarray(rec.data, dtype=np.float32)
    rec.source = rec.source or where
    return rec


def read_recording(path: str | Path, *, fs: float | None = None, units: str | None = None,
                   epochs: bool = False, stream_name: str | None = None, stream_type: str | None = None,
                   marker_streams: Sequence[str] | None = None) -> Recording:
    """Read any supported recording. `fs` overrides (or, for CSV without a time column and ARFF, supplies) the
    sample rate in Hz; `units` states the samples' unit where the file declares none (see the module's docstring);
    `epochs` also reads an epoch set (.npz X, y; an MNE -epo.fif), which is refused otherwise. For XDF only:
    `stream_name` / `stream_type` choose the signal stream (needed when the file holds several), `marker_streams`
    names the marker streams to read as annotations (None: all of them; []: none)."""
    p = Path(path)
    if not p.exists():
        raise DataFormatError(f"recording {p} does not exist; check the path")
    xdf_only = {"stream_name": stream_name, "stream_type": stream_type, "marker_streams": marker_streams}
    given = [k for k, v in xdf_only.items() if v is not None]
    suffix = _suffix(p)
    if given and suffix != ".xdf":
        raise ConfigError(f"{p}: {', '.join(given)} choose{'s' if len(given) == 1 else ''} streams of an XDF "
                              f"file, but this is not one; remove {' and '.join(given)} from [source] (or the "
                              f"command line) for it")
    if p.is_dir() and suffix not in _MNE_FOLDERS:
        rec = read_session(p)
        if units is not None and uv_per_unit(units) != 1.0:
            raise DataFormatError(f"{p}: a recorder session holds µV by its format, but units = {units!r} was given; "
                                  f"remove [source] units for a session")
    else:
        readers = {".npz": _read_npz, ".csv": _read_csv, ".edf": _read_edf, ".bdf": _read_edf,
                   ".xdf": _read_xdf, ".arff": _read_arff}
        try:
            if suffix == ".npz":
                rec = _read_npz(p, fs, units, epochs=epochs)
            elif suffix == ".xdf":
                rec = _read_xdf(p, fs, units, stream_name=stream_name, stream_type=stream_type,
                                marker_streams=marker_streams)
            elif suffix in readers:
                rec = readers[suffix](p, fs, units)
            elif suffix in _mne_suffixes():
                rec = _read_mne(p, suffix, units, epochs=epochs)
            else:
                known = ", ".join(sorted(readers)) + ", " + ", ".join(sorted(_mne_suffixes()))
                raise DataFormatError(f"{p}: unknown recording type {suffix!r}; the readers take {known} (the last "
                                      f"ones through MNE-Python, the `lab` extra) or a recorder session folder")
        except UnitError as err:
            raise DataFormatError(f"{p}: {err}") from err
    if fs is not None:
        rec.fs = float(fs)
    return _validated(rec, str(p))


def _suffix(p: Path) -> str:
    """The file's type: its last suffix, or the last two where they name one (.fif.gz, .cdt.dpa), lower case."""
    two = "".join(p.suffixes[-2:]).lower()
    return two if two in _MNE_SUFFIXES else p.suffix.lower()


# --- .npz -------------------------------------------------------------------------------------------------------------
def _stated(data: npt.NDArray[Any], units: str | None, what: str) -> tuple[npt.NDArray[np.float32], str]:
    """Samples of a file without declared units: µV by convention, or in the unit the caller states."""
    if units is None:
        return data.astype(np.float32, copy=False), "uV (interchange convention)"
    f = scales_to_uv([None] * data.shape[1], configured=units, what=what)
    return (data.astype(np.float64) * f).astype(np.float32), f"{units} (stated in the config)"


def _read_npz(p: Path, fs: float | None, units: str | None = None, *, epochs: bool = False) -> Recording:
    try:
        z = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataFormatError(f"{p}: not a readable .npz ({err}); re-export it with numpy.savez") from err
    with z:
        keys = set(z.files)
        starts = labels = None
        if epochs and "X" in keys and "y" in keys:
            data, labels, starts = _epochs(p, np.asarray(z["X"]), np.asarray(z["y"]))
        elif "data" in keys:
            data = np.asarray(z["data"])
            if data.ndim == 1:
                data = data[:, None]
            if data.ndim != 2 or not np.issubdtype(data.dtype, np.number):
                raise DataFormatError(f"{p}: `data` has shape {data.shape} dtype {data.dtype}; need 2-D numbers")
            labels = np.asarray(z["labels"]).astype(np.int64).reshape(-1) if "labels" in keys else None
        elif epochs:
            raise DataFormatError(f"{p}: neither an epoch set (X, y) nor a continuous recording (data, labels); "
                                  f"keys found: {sorted(keys)}")
        elif "X" in keys:
            raise DataFormatError(f"{p} is an epoch set (X, y), not a continuous recording; replay and the "
                                  f"simulator need a continuous .npz with `data` (n_samples, n_channels) and `fs`")
        else:
            raise DataFormatError(f"{p}: no `data` array (found {sorted(keys)}); a continuous .npz needs `data` "
                                  f"(n_samples, n_channels) and `fs`")
        if "fs" in keys:
            rate = float(np.asarray(z["fs"]).reshape(-1)[0])
        elif fs is not None:
            rate = fs
        else:
            raise DataFormatError(f"{p}: no `fs` (sample rate, Hz) in the file; add it or pass fs")
        names = ([str(s) for s in np.asarray(z["channel_names"]).reshape(-1)] if "channel_names" in keys
                 else [f"ch{i}" for i in range(data.shape[1])])
        classes = [str(s) for s in np.asarray(z["class_names"]).reshape(-1)] if "class_names" in keys else None
        ts = np.asarray(z["timestamps"], dtype=np.float64).reshape(-1) if "timestamps" in keys else None
        declared_unit = str(np.asarray(z["units"]).reshape(-1)[0]) if "units" in keys else None
    if declared_unit is not None:
        f = scales_to_uv([declared_unit] * data.shape[1], configured=units, what=f"its `units` ({declared_unit!r})")
        samples = (data.astype(np.float64) * f).astype(np.float32)
        how = f"{declared_unit} (declared in the file)"
    else:
        samples, how = _stated(data, units, "the .npz")
    return Recording(samples, rate, names, labels, classes, ts, channel_names_declared="channel_names" in keys,
                     units=how, segment_starts=starts)


def _epochs(p: Path, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], npt.NDArray[np.int64],
                                                                        npt.NDArray[np.int64]]:
    """An epoch set's X (n_epochs, n_channels, n_samples) and y as samples laid end to end, labels, epoch starts."""
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y) or not np.issubdtype(x.dtype, np.number):
        raise DataFormatError(f"{p}: epoch set needs X (n_epochs, n_channels, n_samples) and y (n_epochs,), "
                              f"got X {x.shape}, y {y.shape}")
    n_epochs, n_ch, n_per = x.shape
    data = np.ascontiguousarray(x.transpose(0, 2, 1)).reshape(n_epochs * n_per, n_ch)
    labels = np.repeat(y.astype(np.int64), n_per)
    return data, labels, np.arange(n_epochs, dtype=np.int64) * n_per


def to_npz(rec: Recording, path: str | Path) -> Path:
    """Write `rec` as the continuous .npz of docs/design.md (readable by np.load without this project); a gap that
    only its sample_index marks is written into `timestamps` (seconds from the first sample)."""
    p = Path(path)
    if rec.segment_starts is not None:
        raise DataFormatError(f"{rec.source or 'this recording'} is an epoch set, which has no continuous time; keep "
                              f"its X, y .npz")
    arrays: dict[str, Any] = {
        "data": np.ascontiguousarray(rec.data, dtype=np.float32),
        "fs": np.float64(rec.fs),
        "channel_names": np.array([str(c) for c in rec.channel_names]),
    }
    if rec.labels is not None:
        arrays["labels"] = np.asarray(rec.labels, dtype=np.int64)
    if rec.class_names is not None:
        arrays["class_names"] = np.array([str(c) for c in rec.class_names])
    if rec.timestamps is not None:
        arrays["timestamps"] = np.asarray(rec.timestamps, dtype=np.float64)
    elif rec.sample_index is not None:  # keep its gaps: the interchange .npz marks them in timestamps
        arrays["timestamps"] = rec.times_s()
    with p.open("wb") as fh:
        np.savez(fh, **arrays)
    return p


# --- CSV --------------------------------------------------------------------------------------------------------------
def _read_csv(p: Path, fs: float | None, units: str | None = None) -> Recording:
    try:
        with p.open(newline="") as fh:
            rows = [r for r in csv.reader(line for line in fh if not line.lstrip().startswith("#")) if r]
    except (OSError, UnicodeDecodeError) as err:
        raise DataFormatError(f"{p}: cannot read as text CSV ({err})") from err
    if len(rows) < 2:
        raise DataFormatError(f"{p}: needs a header row naming the channels and at least one data row")
    header = [h.strip() for h in rows[0]]
    try:
        [float(h) for h in header]
        raise DataFormatError(f"{p}: the first row is numbers, not a header; add a header row naming the channels")
    except ValueError:
        pass
    width = len(header)
    values = np.empty((len(rows) - 1, width), dtype=np.float64)
    for i, r in enumerate(rows[1:], start=2):
        if len(r) != width:
            raise DataFormatError(f"{p}: line {i} has {len(r)} fields, the header has {width}")
        try:
            values[i - 2] = [float(v) for v in r]
        except ValueError as err:
            raise DataFormatError(f"{p}: line {i} has a non-numeric value ({err})") from err
    lower = [h.lower() for h in header]
    time_col = next((lower.index(c) for c in _TIME_COLUMNS if c in lower), None)
    label_col = next((lower.index(c) for c in _LABEL_COLUMNS if c in lower), None)
    chan_cols = [i for i in range(width) if i not in (time_col, label_col)]
    if not chan_cols:
        raise DataFormatError(f"{p}: no channel columns (only time/label columns found)")
    ts = values[:, time_col].copy() if time_col is not None else None
    rate = fs
    if rate is None:
        if ts is None or ts.shape[0] < 2:
            raise DataFormatError(f"{p}: no sample rate: add a `time` column (seconds) or pass fs")
        step = float(np.median(np.diff(ts)))
        if not step > 0:
            raise DataFormatError(f"{p}: the time column does not increase; fix it or pass fs")
        rate = 1.0 / step
    labels = values[:, label_col].astype(np.int64) if label_col is not None else None
    samples, how = _stated(values[:, chan_cols], units, "the CSV")
    return Recording(samples, float(rate), [header[i] for i in chan_cols], labels, None, ts, units=how)


# --- EDF / BDF --------------------------------------------------------------------------------------------------------
def _read_edf(p: Path, fs: float | None, units: str | None = None, *, label_channel: str | None = None) -> Recording:
    """An EDF/BDF file (EDF+/BDF+ annotations included). `label_channel` names a signal read as stored (its
    physical values, unscaled and exempt from the unit check): a channel of class codes, for the label sources."""
    import edfio

    try:
        edf = edfio.read_bdf(p) if p.suffix.lower() == ".bdf" else edfio.read_edf(p)
    except Exception as err:  # edfio raises several types for malformed headers
        raise DataFormatError(f"{p}: not a valid {p.suffix.upper().lstrip('.')} file ({err})") from err
    signals: list[Any] = list(edf.signals)
    if not signals:
        raise DataFormatError(f"{p}: no signals in the file")
    rates = [float(s.sampling_frequency) for s in signals]
    # Keep the channels at the most common rate; auxiliary channels at other rates cannot share one time axis.
    values, counts = np.unique(rates, return_counts=True)
    rate = float(values[int(np.argmax(counts))])
    kept = [s for s in signals if float(s.sampling_frequency) == rate]
    dropped = [s.label for s in signals if float(s.sampling_frequency) != rate]
    if dropped:
        log.warning("edf_channels_dropped", path=str(p), rate_hz=rate, dropped=dropped)
    n = min(len(s.data) for s in kept)
    labels = [str(s.label).strip() for s in kept]
    is_code = [label_channel is not None and lab.lower() == label_channel.lower() for lab in labels]
    factors = np.ones(len(kept))
    signal_at = [i for i, code in enumerate(is_code) if not code]
    if signal_at:
        factors[signal_at] = scales_to_uv([kept[i].physical_dimension for i in signal_at], configured=units,
                                          labels=[labels[i] for i in signal_at],
                                          what="its physical dimensions (EDF header)")
    cols, lo, hi = [], [], []
    for s, f in zip(kept, factors, strict=True):
        cols.append(np.asarray(s.data[:n], dtype=np.float64) * f)
        # The digital extremes map onto the physical ones: a sample within half a step of them is on the rails.
        pmin, pmax = sorted((float(s.physical_min), float(s.physical_max)))
        half_lsb = 0.5 * (pmax - pmin) / max(1, int(s.digital_max) - int(s.digital_min))
        lo.append((pmin + half_lsb) * f)
        hi.append((pmax - half_lsb) * f)
    declared = all(labels)
    names = [lab if lab else f"ch{i}" for i, lab in enumerate(labels)]
    how = "declared (EDF physical dimension)" if units is None else f"{units} where the EDF header declares none"
    data = np.stack(cols, axis=1).astype(np.float32)
    # BAD_ACQ_SKIP (MNE's export: a session's gaps, and its padding of the last data record) is not signal.
    annotations, keep_rows, index = _acquisition_skips(p, _edf_annotations(p, edf), n, rate)
    if keep_rows is not None:
        data = data[keep_rows]
        log.info("edf_acquisition_skips", path=str(p), skipped_samples=int((~keep_rows).sum()))
    return Recording(data, rate, names, channel_names_declared=declared,
                     range_uv=(np.array(lo, dtype=np.float32), np.array(hi, dtype=np.float32)), units=how,
                     annotations=annotations, sample_index=index)


def _edf_annotations(p: Path, edf: Any) -> list[Annotation]:
    """EDF+/BDF+ annotations, onsets in seconds from the first sample (edfio takes off a subsecond start). A
    discontinuous EDF+D's onsets are on its own clock, not on the samples laid end to end: they are not read. A file
    whose header says EDF+C (BDF+C) is continuous by the EDF+ specification: edfio's check of the data records' time
    stamps is not asked then, since it compares them exactly and edfio itself writes them with float noise after a
    subsecond start time (e.g. +1.1735470000000001 for the second record)."""
    try:
        anns = [Annotation(float(a.onset), float(a.duration or 0.0), str(a.text)) for a in edf.annotations]
        continuous = str(edf.reserved).strip().upper() in ("EDF+C", "BDF+C") or bool(edf.is_continuous)
    except Exception as err:  # edfio raises ValueError and others on a malformed annotations signal
        raise DataFormatError(f"{p}: its EDF+ annotations cannot be read ({err}); repair the file or drop its "
                              f"annotations signal") from err
    if anns and not continuous:
        log.warning("edf_discontinuous_annotations_skipped", path=str(p), n=len(anns))
        return []
    return sorted(anns, key=lambda a: a.onset_s)


# --- XDF --------------------------------------------------------------------------------------------------------------
def _first(d: Any, key: str) -> Any:
    """pyxdf's XML-as-lists: d[key][0], or None when absent."""
    try:
        v = d[key]
        return v[0] if isinstance(v, list) and v else None
    except (KeyError, TypeError, IndexError):
        return None


_EVENT_CODE_FORMATS = ("int8", "int16", "int32", "int64")


def _is_marker_stream(info: dict[str, Any]) -> bool:
    """Marker streams: strings, or event codes (one integer channel without a regular rate)."""
    if str(info.get("channel_format")) == "string":
        return True
    return (not float(info.get("nominal_srate") or 0.0) > 0 and str(info.get("channel_format")) in _EVENT_CODE_FORMATS
            and int(info.get("channel_count") or 0) == 1)


def _is_signal_stream(info: dict[str, Any]) -> bool:
    """Signal streams: numeric at a regular rate. (Others — float streams without a rate, such as the decisions
    outlet's — are neither signal nor markers, and are not read.)"""
    return str(info.get("channel_format")) != "string" and float(info.get("nominal_srate") or 0.0) > 0


def _stream_listing(infos: list[dict[str, Any]]) -> str:
    def one(i: dict[str, Any]) -> str:
        rate = float(i.get("nominal_srate") or 0.0)
        return (f"{i.get('name')!r} (type {i.get('type')!r}, {i.get('channel_count')} channels, "
                f"{f'{rate:g} Hz' if rate > 0 else 'irregular rate'}, {i.get('channel_format')})")

    return "; ".join(one(i) for i in infos) if infos else "no streams"


def _choose_xdf_stream(p: Path, infos: list[dict[str, Any]], name: str | None, kind: str | None) -> int:
    """The stream id of the signal stream: the one matching name/type, or the only regular numeric stream."""
    import pyxdf

    signals = [i for i in infos if _is_signal_stream(i)]
    how = ("set [source] stream_name and/or stream_type (neurostimd replay: --stream-name, --stream-type; "
           "neurostimd-sim: --signal-stream, --signal-stream-type)")
    if name is None and kind is None:
        if len(signals) == 1:
            return int(signals[0]["stream_id"])
        if not signals:
            raise DataFormatError(f"{p}: no regularly sampled numeric stream to read as the signal; the file holds "
                                  f"{_stream_listing(infos)}")
        raise DataFormatError(f"{p}: the file holds {len(signals)} signal streams: {_stream_listing(signals)}; "
                              f"choose one: {how}")
    query = {k: v for k, v in (("name", name), ("type", kind)) if v is not None}
    wanted = " and ".join(f"{k} {v!r}" for k, v in query.items())
    ids = pyxdf.match_streaminfos(signals, [query])
    if len(ids) == 1:
        return int(ids[0])
    if ids:
        raise DataFormatError(f"{p}: {len(ids)} signal streams have {wanted}: "
                              f"{_stream_listing([i for i in signals if i['stream_id'] in ids])}; {how} so that "
                              f"only one matches")
    others = pyxdf.match_streaminfos([i for i in infos if not _is_signal_stream(i)], [query])
    if others:
        raise DataFormatError(f"{p}: the stream with {wanted} has no regular rate or holds strings (markers, "
                              f"events), so it is not a signal; its signal streams are {_stream_listing(signals)}; "
                              f"{how}")
    raise DataFormatError(f"{p}: no stream with {wanted}; the file holds {_stream_listing(infos)}; {how}")


def _marker_text(values: Any) -> str:
    """One marker sample as text: its channels joined by "/" (MNE's tag separator), trailing empty ones dropped;
    numeric event codes without a trailing .0."""
    out = []
    for v in values if isinstance(values, list | tuple | np.ndarray) else [values]:
        if isinstance(v, float | np.floating) and float(v).is_integer():
            out.append(str(int(v)))
        else:
            out.append(str(v).strip())
    while out and not out[-1]:
        out.pop()
    return "/".join(out)


def _read_xdf(p: Path, fs: float | None, units: str | None = None, *, stream_name: str | None = None,
              stream_type: str | None = None, marker_streams: Sequence[str] | None = None) -> Recording:
    import pyxdf

    try:
        infos: list[dict[str, Any]] = pyxdf.resolve_streams(str(p))  # the stream headers only
    except Exception as err:  # pyxdf raises assorted errors on a truncated or foreign file
        raise DataFormatError(f"{p}: not a readable XDF file ({err})") from err
    sig_id = _choose_xdf_stream(p, infos, stream_name, stream_type)
    all_markers = [i for i in infos if _is_marker_stream(i)]
    if marker_streams is None:
        marker_ids = [int(i["stream_id"]) for i in all_markers]
    else:
        marker_ids = []
        for m in marker_streams:
            hit = [int(i["stream_id"]) for i in all_markers if i.get("name") == m]
            if not hit:
                raise DataFormatError(f"{p}: no marker stream named {m!r}; its marker streams are "
                                      f"{_stream_listing(all_markers)}; fix [source] marker_streams")
            marker_ids += [h for h in hit if h not in marker_ids]
    try:
        # Only the chosen streams are parsed (pyxdf skips the others' chunks). Not dejittered: pyxdf's linear fit
        # runs over gaps shorter than a second and would hide them.
        streams, _header = pyxdf.load_xdf(str(p), select_streams=[sig_id, *marker_ids], dejitter_timestamps=False)
    except Exception as err:
        raise DataFormatError(f"{p}: not a readable XDF file ({err})") from err
    by_id = {int(st["info"]["stream_id"]): st for st in streams}
    s = by_id.get(sig_id)
    info = s["info"] if s is not None else {}
    stream = f"its stream {_first(info, 'name')!r}"
    series = s.get("time_series") if s is not None else None
    if s is None or not (isinstance(series, np.ndarray) and series.ndim == 2 and series.shape[0] > 0
                         and np.issubdtype(series.dtype, np.number)):
        raise DataFormatError(f"{p}: {stream} holds no samples; choose another stream ({_stream_listing(infos)})")
    raw = np.asarray(series)
    ts = np.asarray(s["time_stamps"], dtype=np.float64)
    rate = float(info["nominal_srate"][0])
    n_ch = raw.shape[1]
    try:
        chans: list[Any] = list(info["desc"][0]["channels"][0]["channel"])
    except (KeyError, IndexError, TypeError):
        chans = []
    if len(chans) != n_ch:
        chans = [{}] * n_ch
    labels = [(_first(c, "label") or "").strip() for c in chans]
    declared = all(labels)
    names = [lab if lab else f"ch{i}" for i, lab in enumerate(labels)]
    factors = scales_to_uv([_first(c, "unit") for c in chans], channel_types=[_first(c, "type") for c in chans],
                           stream_type=_first(info, "type"), configured=units, labels=labels,
                           what=f"{stream} (channel units in the XDF header)")
    data = (raw.astype(np.float64) * factors).astype(np.float32)
    how = "declared (XDF channel units)" if units is None else f"{units} where the XDF header declares none"
    annotations = _xdf_markers(p, [by_id[i] for i in marker_ids if i in by_id], ts, fs or rate)
    return Recording(data, rate, names, None, None, ts, channel_names_declared=declared, units=how,
                     annotations=annotations)


def _xdf_markers(p: Path, streams: list[dict[str, Any]], ts: npt.NDArray[np.float64],
                 rate: float) -> list[Annotation]:
    """The marker streams' samples as instant annotations on the signal's time axis (onset from its first sample);
    markers outside the signal's span are left out, with a warning."""
    out: list[Annotation] = []
    t0, t_end = float(ts[0]), float(ts[-1]) + 1.0 / rate
    for st in streams:
        name = str(_first(st["info"], "name") or "")
        stamps = np.asarray(st.get("time_stamps", []), dtype=np.float64)
        values = st.get("time_series")
        outside = 0
        for t, v in zip(stamps, values if values is not None else [], strict=False):
            text = _marker_text(list(v) if isinstance(v, np.ndarray) else v)
            if not text:
                continue
            if not (t0 <= t < t_end):
                outside += 1
                continue
            out.append(Annotation(float(t) - t0, 0.0, text, stream=name))
        if outside:
            log.warning("xdf_markers_outside_signal", path=str(p), stream=name, markers=outside,
                        signal_start_s=t0, signal_end_s=t_end)
    out.sort(key=lambda a: a.onset_s)
    return out


# --- MNE formats (FIF, BrainVision, EEGLAB, GDF, CNT, ...) ----------------------------------------------------------
def _bids_events(p: Path) -> list[Annotation] | None:
    """The annotations of a BIDS recording `<entities>_<datatype>.<ext>` from its `<entities>_events.tsv` (onset
    and duration in seconds from the first sample, trial_type the description); None when there is no such file.
    DataFormatError for an events file that cannot be read."""
    stem, _, _datatype = p.stem.rpartition("_")
    events = p.with_name(f"{stem}_events.tsv") if stem else None
    if events is None or not events.is_file():
        return None
    try:
        with events.open(newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataFormatError(f"{events}: the BIDS events file beside {p.name} cannot be read ({err})") from err
    out = []
    for i, row in enumerate(rows, start=2):
        try:
            onset = float(row["onset"])
            dur_text = (row.get("duration") or "0").strip()
            duration = 0.0 if dur_text.lower() in ("n/a", "") else float(dur_text)
        except (KeyError, TypeError, ValueError) as err:
            raise DataFormatError(f"{events}: line {i}: onset/duration is not a number of seconds ({err})") from err
        text = (row.get("trial_type") or row.get("value") or "").strip()
        if math.isfinite(onset) and math.isfinite(duration) and text and text.lower() != "n/a":
            out.append(Annotation(onset, max(0.0, duration), text))
    log.info("bids_events_read", path=str(events), n=len(out))
    return out


def _mne_suffixes() -> set[str]:
    """The suffixes read through MNE: MNE's own list when it is installed, else the one this module keeps."""
    try:
        from mne.io._read_raw import _get_supported  # private, so guarded: the list kept here stands in

        return {str(k) for k in _get_supported()} - {".edf", ".bdf"}
    except Exception:  # MNE missing, or its list moved
        return set(_MNE_SUFFIXES)


def _import_mne(p: Path, suffix: str) -> Any:
    try:
        import mne
    except ImportError as err:
        raise DataFormatError(f"{p}: reading {suffix} files needs MNE-Python, which is not installed; install the "
                              f"lab extra: pip install 'neurostimd[lab]'") from err
    return mne


def _read_mne(p: Path, suffix: str, units: str | None, *, epochs: bool = False,
              label_channel: str | None = None) -> Recording:
    """A raw recording (or, with `epochs`, an -epo.fif epoch set) through MNE: its voltage channels in µV, its
    annotations, and skipped acquisition (BAD_ACQ_SKIP) as a gap in `sample_index`. `label_channel` names a channel
    kept as stored whatever its type (a stim channel of event codes), last, for the label sources to take out."""
    mne = _import_mne(p, suffix)
    is_epochs = p.name.lower().endswith(_MNE_EPOCHS)
    if is_epochs and not epochs:
        raise DataFormatError(f"{p} is an MNE epoch set, not a continuous recording; replay and the simulator need "
                              f"a raw recording (a *_raw.fif, *_eeg.fif, ...)")
    try:
        with mne.utils.use_log_level("error"):  # not every reader behind read_raw takes `verbose`
            obj = mne.read_epochs(p, preload=True) if is_epochs else mne.io.read_raw(p, preload=True)
    except Exception as err:  # MNE's readers raise many types on foreign or damaged files
        raise DataFormatError(f"{p}: MNE cannot read it as {'an epoch set' if is_epochs else 'a raw recording'} "
                              f"({type(err).__name__}: {err})") from err
    names = list(obj.ch_names)
    types = obj.get_channel_types()
    keep = [i for i, t in enumerate(types) if t in MNE_SIGNAL_TYPES]
    dropped = [f"{names[i]} ({t})" for i, t in enumerate(types) if t not in MNE_SIGNAL_TYPES]
    if not keep:
        raise DataFormatError(f"{p}: no channel of a voltage type ({', '.join(MNE_SIGNAL_TYPES)}); its channels are "
                              f"{', '.join(dropped[:8])}{' ...' if len(dropped) > 8 else ''}; set the channel types "
                              f"in MNE (raw.set_channel_types) and save it again")
    if dropped:
        log.info("mne_channels_dropped", path=str(p), dropped=dropped, kept=len(keep))
    if obj.info["bads"]:
        log.warning("mne_bad_channels_kept", path=str(p), bads=list(obj.info["bads"]))
    from mne.io.constants import FIFF

    declared = ["V" if int(obj.info["chs"][i]["unit"]) == FIFF.FIFF_UNIT_V else None for i in keep]
    kept_names = [names[i] for i in keep]
    factors = scales_to_uv(declared, configured=units, labels=kept_names, what="its channel units (MNE)")
    fs = float(obj.info["sfreq"])
    how = "V (MNE's SI units)"
    if is_epochs:
        x = obj.get_data(picks=keep) * factors[None, :, None]  # (n_epochs, n_channels, n_times)
        codes = obj.events[:, 2].astype(np.int64)
        by_code = sorted(obj.event_id.items(), key=lambda kv: kv[1])
        class_names = [k for k, _ in by_code]
        class_of = {code: k for k, (_, code) in enumerate(by_code)}
        missing = sorted({int(c) for c in codes} - set(class_of))
        if missing:
            raise DataFormatError(f"{p}: epochs with event codes {missing} have no name in its event_id "
                                  f"{obj.event_id}; name every event in MNE and save the epochs again")
        data, labels, starts = _epochs(p, x, np.array([class_of[int(c)] for c in codes], dtype=np.int64))
        return Recording(data.astype(np.float32), fs, kept_names, labels, class_names, units=how,
                         segment_starts=starts)
    data = (obj.get_data(picks=keep).T * factors).astype(np.float32)
    if label_channel is not None:
        li = next((i for i, n in enumerate(names) if n == label_channel), None)
        if li is None:
            li = next((i for i, n in enumerate(names) if n.lower() == label_channel.lower()), None)
        if li is not None and li not in keep:  # a voltage channel named as the label channel stays as read
            codes = obj.get_data(picks=[li]).T.astype(np.float32)  # codes as stored: no unit to scale
            data = np.hstack([data, codes])
            kept_names = [*kept_names, names[li]]
    # raw.annotations are on the measurement's time axis; the first sample sits at raw.first_time on it.
    marked = [Annotation(float(a["onset"]) - float(obj.first_time), float(a["duration"]), str(a["description"]))
              for a in obj.annotations]
    bids_events = _bids_events(p) if suffix == ".vhdr" else None
    if bids_events is not None:
        # mne-bids writes a BrainVision marker file of event codes only: the descriptions and durations (a gap's
        # BAD_ACQ_SKIP among them) are in the dataset's events.tsv beside it.
        marked = bids_events
    annotations, keep_rows, index = _acquisition_skips(p, marked, data.shape[0], fs)
    if keep_rows is not None:
        data = data[keep_rows]
        log.info("mne_acquisition_skips", path=str(p), skipped_samples=int((~keep_rows).sum()))
    return Recording(data, fs, kept_names, units=how, annotations=annotations, sample_index=index)


def _acquisition_skips(p: Path, marked: Sequence[Annotation], n: int, fs: float) -> tuple[
        list[Annotation], npt.NDArray[np.bool_] | None, npt.NDArray[np.int64] | None]:
    """Split a file's annotations (onsets from its first sample) into the BAD_ACQ_SKIP spans and the rest: the
    other annotations in onset order, the samples to keep and their sample index (None where nothing is skipped, or
    the index where the kept samples are consecutive: a skip at the start or the end, such as MNE's padding of an
    EDF's last data record). A skip inside the recording is a jump of the index by the samples it covers; the
    annotations stay on `Recording.times_s()` (shifted where the file starts with a skip)."""
    out: list[Annotation] = []
    skipped = np.zeros(n, dtype=bool)
    for a in marked:
        if a.description == MNE_GAP:
            lo, hi = max(0, round(a.onset_s * fs)), min(n, round((a.onset_s + a.duration_s) * fs))
            skipped[lo:hi] = True
        else:
            out.append(a)
    out.sort(key=lambda x: x.onset_s)
    if not skipped.any():
        return out, None, None
    keep = ~skipped
    index = np.flatnonzero(keep).astype(np.int64)
    if index.size == 0:
        raise DataFormatError(f"{p}: every sample lies under a {MNE_GAP} annotation (skipped acquisition), so there "
                              f"is no signal to read; remove or shorten those annotations")
    if index[0] > 0:  # a skip before the first kept sample: time starts at that sample
        shift = float(index[0]) / fs
        out = [Annotation(x.onset_s - shift, x.duration_s, x.description, x.stream) for x in out]
        index -= index[0]
    consecutive = int(index[-1]) == index.size - 1
    return out, keep, None if consecutive else index


# --- ARFF -------------------------------------------------------------------------------------------------------------
def _read_arff(p: Path, fs: float | None, units: str | None = None) -> Recording:
    from scipy.io import arff

    if fs is None:
        raise DataFormatError(f"{p}: ARFF carries no sample rate; pass fs (EEG Eye State was sampled at 128 Hz)")
    try:
        table, meta = arff.loadarff(p)
    except Exception as err:  # scipy raises ParseArffError / ValueError on malformed files
        raise DataFormatError(f"{p}: not a readable ARFF file ({err})") from err
    names, chans, labels, classes = [], [], None, None
    for name in meta.names():
        kind, values = meta[name]
        if kind == "numeric":
            names.append(name)
            chans.append(np.asarray(table[name], dtype=np.float32))
        elif kind == "nominal" and labels is None:
            classes = list(values)
            decoded = [v.decode() if isinstance(v, bytes) else str(v) for v in table[name]]
            labels = np.array([classes.index(v) for v in decoded], dtype=np.int64)
    if not chans:
        raise DataFormatError(f"{p}: no numeric attributes to use as channels")
    samples, how = _stated(np.stack(chans, axis=1), units, "the ARFF file")
    return Recording(samples, float(fs), names, labels, classes, units=how)


# --- recorder session folder ------------------------------------------------------------------------------------------
def read_session(folder: str | Path) -> Recording:
    """Read a recorder session folder (docs/recording-format.md). A session cut short by SIGKILL reads up to its
    last complete sample."""
    d = Path(folder)
    meta_path = d / "session.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError as err:
        raise DataFormatError(f"{d}: not a recorder session (no session.json); pass a recording file or a session "
                              f"folder written by neurostimd") from err
    except (OSError, ValueError) as err:
        raise DataFormatError(f"{meta_path}: unreadable session sidecar ({err})") from err
    if meta.get("format") != SESSION_FORMAT:
        raise DataFormatError(f"{meta_path}: format is {meta.get('format')!r}, expected {SESSION_FORMAT!r}")
    try:
        n_ch = int(meta["n_channels"])
        rate = float(meta["sample_rate_hz"])
        names = [str(c) for c in meta["channel_names"]]
        files = meta["files"]
    except (KeyError, TypeError, ValueError) as err:
        raise DataFormatError(f"{meta_path}: missing or bad field {err}") from err
    raw = np.fromfile(d / files["samples"], dtype="<f4")
    ts = np.fromfile(d / files["timestamps"], dtype="<f8")
    # The ring indices (a jump: samples the recorder did not get, or a gap in the live stream). A session of a
    # format without the file reads as consecutive samples.
    idx_path = d / str(files.get("indices", "indices.i64"))
    idx = np.fromfile(idx_path, dtype="<i8") if idx_path.exists() else None
    n = min(raw.shape[0] // n_ch, ts.shape[0])  # a SIGKILL can leave a partial last row in any of the files
    if idx is not None:
        n = min(n, idx.shape[0])
    data = raw[: n * n_ch].reshape(n, n_ch).astype(np.float32)
    if n == 0:
        raise DataFormatError(f"{d}: the session holds no complete sample")
    # The ring index jumps where the recorder lost samples; a gap in the live stream shows in the timestamps only.
    # A replay steps by whichever of the two skips more (neurostimd.sources.replay).
    index = idx[:n].astype(np.int64) if idx is not None else None
    # The recorder writes ch0, ch1, ... when its source named no channels: those are not a montage.
    declared = names != [f"ch{i}" for i in range(n_ch)]
    stamps = ts[:n].copy()
    # A session recorded from a replay at N x real time has its stamps N times closer than the signal's period:
    # spread them back onto the signal's own time (same first stamp), so that the rate check and gaps hold.
    speed = meta.get("replay_speed", 1.0)
    if not (isinstance(speed, int | float) and not isinstance(speed, bool) and math.isfinite(speed) and speed > 0):
        raise DataFormatError(f"{meta_path}: replay_speed is {speed!r}, not a positive number; fix or remove it")
    if speed != 1.0:
        stamps = stamps[0] + (stamps - stamps[0]) * float(speed)
    return Recording(data, rate, names, None, None, stamps, str(d), channel_names_declared=declared,
                     units="uV (session format)", sample_index=index)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file; a torn last line (SIGKILL mid-write) is skipped."""
    out: list[dict[str, Any]] = []
    p = Path(path)
    if not p.exists():
        return out
    lines = p.read_text().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError as err:
            if i == len(lines) - 1:
                break  # an unterminated last line is the torn tail of an interrupted write
            raise DataFormatError(f"{p}: line {i + 1} is not JSON ({err})") from err
    return out


def read_recording_with_label_channel(path: str | Path, label_channel: str, *, fs: float | None = None,
                                      units: str | None = None, epochs: bool = False,
                                      stream_name: str | None = None, stream_type: str | None = None) -> Recording:
    """read_recording, but the channel named `label_channel` of an EDF/BDF file or an MNE-read raw file (a stim
    channel) is kept and read as stored (class codes have no voltage unit); the label sources take it out of the
    channels. Other formats read as read_recording reads them."""
    p = Path(path)
    suffix = _suffix(p)
    try:
        if p.is_file() and suffix in (".edf", ".bdf"):
            rec = _read_edf(p, fs, units, label_channel=label_channel)
        elif p.exists() and suffix not in (".npz", ".csv", ".xdf", ".arff") and suffix in _mne_suffixes() \
                and not p.name.lower().endswith(_MNE_EPOCHS):
            rec = _read_mne(p, suffix, units, label_channel=label_channel)
        else:  # no label channel of its own to keep: the plain reader
            return read_recording(p, fs=fs, units=units, epochs=epochs, stream_name=stream_name,
                                  stream_type=stream_type)
    except UnitError as err:
        raise DataFormatError(f"{p}: {err}") from err
    if fs is not None:
        rec.fs = float(fs)
    return _validated(rec, str(p))
