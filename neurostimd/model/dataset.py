"""Training data for the classifier: labelled recordings → segments → leak-free splits → windows of frames.
Recordings are read by the one reader, neurostimd.sources.recordings; this module adds what training needs.

A *segment* is the unit that is never split: one epoch of an epoch set, or one contiguous time block of a continuous
recording. Splits assign whole segments to train / validation / test, and windows are cut inside one segment only,
so no sample of a held-out segment ever reaches training (the research notebook shuffled single samples first).

Labels come from the file itself or from where labs keep them (neurostimd.model.labels: annotations, a label
channel, an events file). Unlabelled samples (-1) are never trained on or scored: a time block or epoch with no
labelled sample is no segment (the block numbering stays that of the whole recording, so splits stay comparable),
and a window whose newest sample is unlabelled is dropped."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neurostimd.core.features import FeatureSettings, extract_frames, frame_end_sample, sliding_windows
from neurostimd.core.stream_checks import MontageError, pick_channels
from neurostimd.errors import ConfigError, DataFormatError
from neurostimd.model.labels import (
    UNLABELLED,
    ClassMap,
    LabelSource,
    apply_labels,
    parse_classes,
    parse_label_source,
    remap_file_labels,
)
from neurostimd.sources.recordings import Recording, read_recording, read_recording_with_label_channel


@dataclass
class LabelledRecording:
    """A recording read by the one reader (neurostimd.sources.recordings.read_recording) with what training and
    evaluation add: its per-sample labels (required), the class names, the file's sha256 and where the labels came
    from (`label_info`: source, description → class, seconds labelled per class and unlabelled)."""

    recording: Recording
    labels: np.ndarray  # (n_samples,) int64 class indices; UNLABELLED (-1) where no label applies
    class_names: list[str]
    sha256: str
    label_info: dict[str, Any] = field(default_factory=lambda: {"source": "file"})

    @property
    def path(self) -> str:
        return self.recording.source

    @property
    def kind(self) -> str:
        """'continuous' or 'epochs'."""
        return self.recording.kind

    @property
    def fs(self) -> float:
        return self.recording.fs

    @property
    def data(self) -> np.ndarray:
        """(n_samples, n_channels) float32 µV; an epoch set's epochs end to end."""
        return self.recording.data

    @property
    def channel_names(self) -> list[str]:
        return self.recording.channel_names

    @property
    def names_declared(self) -> bool:
        """False when the file names no channels (they are generated ch0, ch1, ...)."""
        return self.recording.channel_names_declared

    @property
    def n_channels(self) -> int:
        return self.recording.n_channels


@dataclass
class Segment:
    """A stretch of samples that stays whole in every split."""

    source: int  # index of the recording in the list given to `segments()`
    index: int  # epoch number, or time-block number
    data: np.ndarray  # (n_samples, n_channels) float32
    labels: np.ndarray  # (n_samples,) int; constant for an epoch
    start_sample: int = 0  # where the block starts in its recording (0 for epochs)

    @property
    def key(self) -> str:
        return f"{self.source}:{self.index}"

    @property
    def majority_label(self) -> int:
        """The most frequent class among the labelled samples (segments() keeps only segments that have some)."""
        known = self.labels[self.labels >= 0]
        return int(np.bincount(known).argmax()) if known.size else UNLABELLED


@dataclass
class Windows:
    """Windows of unscaled frames with the label of each window's newest sample and the segment it came from."""

    X: np.ndarray  # (n, T, F) float32
    y: np.ndarray  # (n,) int
    segment: np.ndarray  # (n,) int: index into the segment list
    frames: list[np.ndarray] = field(default_factory=list)  # per segment (n_frames, F), for fitting the scaler


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_recording(path: str | Path, labels: str | LabelSource | None = None,
                   classes: str | ClassMap | None = None, *, fs: float | None = None,
                   stream_name: str | None = None, stream_type: str | None = None) -> LabelledRecording:
    """Read a labelled recording for training or evaluation: any format read_recording reads, plus epoch-set .npz,
    with per-sample labels from `labels` (`--labels`: None = the file's own; see neurostimd.model.labels) mapped by
    `classes` (`--classes`); `fs`, `stream_name`, `stream_type` are read_recording's (a rate for a file that has
    none, the XDF signal stream). DataFormatError saying what is missing, ConfigError for a bad --labels/--classes."""
    p = Path(path)
    source = labels if isinstance(labels, LabelSource) else parse_label_source(labels)
    cmap = classes if isinstance(classes, ClassMap) or classes is None else parse_classes(classes)
    if source.kind == "channel":
        rec = read_recording_with_label_channel(p, source.name, epochs=True, fs=fs, stream_name=stream_name,
                                                stream_type=stream_type)
    else:
        rec = read_recording(p, epochs=True, fs=fs, stream_name=stream_name, stream_type=stream_type)
    y: np.ndarray
    if source.kind == "file":
        own = rec.labels
        if own is None:
            raise DataFormatError(_no_labels(p))
        if cmap is not None:
            lab = remap_file_labels(rec, cmap, str(p))
            rec, y, class_names, info = lab.recording, lab.labels, lab.class_names, lab.info
        else:
            y = own
            class_names = rec.class_names or [str(c) for c in range(int(y.max()) + 1)]
            if y.min() < 0 or y.max() >= len(class_names):
                raise DataFormatError(f"{p}: labels span {y.min()}..{y.max()} but there are {len(class_names)} "
                                      f"class_names")
            info = {"source": "file"}
    else:
        lab = apply_labels(rec, source, cmap, str(p))
        rec, y, class_names, info = lab.recording, lab.labels, lab.class_names, lab.info
    if not np.isfinite(rec.data).all():
        raise DataFormatError(f"{p}: contains NaN or infinite samples; clean or interpolate them first")
    return LabelledRecording(rec, y, class_names, file_sha256(p), info)


def load_recordings(paths: list[str | Path], labels: str | None = None,
                    classes: str | None = None, **reading: Any) -> list[LabelledRecording]:
    """load_recording for each path (`reading`: its fs / stream_name / stream_type); an events file labels one
    recording only."""
    source = parse_label_source(labels)
    if source.kind == "events" and len(paths) != 1:
        raise ConfigError(f"--labels {labels} is one events file but {len(paths)} recordings were given; train on "
                          f"one recording per events file, or use --labels annotations / channel:NAME")
    cmap = parse_classes(classes) if classes is not None else None
    return [load_recording(p, source, cmap, **reading) for p in paths]


def pick_inputs(rec: LabelledRecording, settings: FeatureSettings) -> LabelledRecording:
    """The recording with only the model's input channels, in the front end's order (channels are matched by name,
    as the daemon matches a source's); the recording itself when the front end takes every channel. DataFormatError
    naming the file and the missing channels otherwise."""
    wanted = settings.front_end.input_names()
    if wanted is None:
        return rec
    try:
        idx = pick_channels(wanted, rec.channel_names)
    except MontageError as err:
        raise DataFormatError(f"{rec.path}: the front end takes channels {wanted}, but the recording has "
                              f"{rec.channel_names} ({err}); pick channels the recording has (--channels, the "
                              f"--reference pairs)") from err
    r = rec.recording
    rng = None if r.range_uv is None else (r.range_uv[0][idx], r.range_uv[1][idx])
    # The names as the front end spells them: they are the bundle's channel_names, which the daemon matches.
    picked = dataclasses.replace(r, data=np.ascontiguousarray(r.data[:, idx]), channel_names=list(wanted),
                                 range_uv=rng)
    return LabelledRecording(picked, rec.labels, rec.class_names, rec.sha256, rec.label_info)


def _no_labels(p: Path) -> str:
    """Why a recording without labels cannot train or evaluate, and what to do."""
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return f"{p}: a continuous recording needs per-sample 'labels' to train or evaluate; add a `labels` array " \
               f"(n_samples,) of class indices (and `class_names`)"
    if suffix == ".csv":
        return f"{p}: no `label` column; training and evaluation need a class index per sample — add a `label` " \
               f"column"
    if suffix == ".arff":
        return f"{p}: no nominal attribute to take the class labels from; training and evaluation need one"
    what = "a recorder session" if p.is_dir() else f"an {suffix.lstrip('.').upper()} file"
    return f"{p}: {what} carries no per-sample labels of its own, and training and evaluation need them; take " \
           f"them from its annotations (--labels annotations --classes \"rest,active\"), a label channel " \
           f"(--labels channel:NAME) or an events file (--labels events.tsv), or convert it to a labelled .npz " \
           f"(`data`, `fs`, `labels`, `class_names`; see docs/recording-format.md)"


def block_samples(settings: FeatureSettings, fs: float, block_s: float) -> int:
    """Samples per time block: at least four model windows, so each block still yields plenty of decisions."""
    return max(round(block_s * fs), 4 * settings.window_samples(fs))


def segments(recordings: list[LabelledRecording], settings: FeatureSettings, block_s: float) -> list[Segment]:
    """Split every recording into its never-to-be-divided segments: epochs, or time blocks of `block_s` that never
    span a gap in the recording's time."""
    out: list[Segment] = []
    for si, rec in enumerate(recordings):
        epoch_starts = rec.recording.segment_starts
        if epoch_starts is not None:
            bounds = [*epoch_starts.tolist(), len(rec.data)]
            for i, (s0, s1) in enumerate(itertools.pairwise(bounds)):
                if np.any(rec.labels[s0:s1] >= 0):
                    out.append(Segment(si, i, rec.data[s0:s1], rec.labels[s0:s1]))
        else:
            n = len(rec.data)
            size = block_samples(settings, rec.fs, block_s)
            starts: list[int] = []
            # A gap in the recording's time (an XDF timestamp jump, an MNE skip, a session's lost samples) ends a
            # block: the filters and windows never run across it, as the daemon's do not (its ring flags the gap).
            steps = np.diff(rec.recording.times_s())
            cuts = [0, *(np.flatnonzero(steps > 1.5 / rec.fs) + 1).tolist(), n]
            for r0, r1 in itertools.pairwise(cuts):
                run = list(range(r0, r1, size))
                # A short tail joins the block before it rather than making a block too short for one window.
                if len(run) > 1 and r1 - run[-1] < size // 2:
                    run.pop()
                starts += run
            ends = [*starts[1:], n]
            for i, (s0, s1) in enumerate(zip(starts, ends, strict=True)):
                if np.any(rec.labels[s0:s1] >= 0):
                    out.append(Segment(si, i, rec.data[s0:s1], rec.labels[s0:s1], start_sample=s0))
    return out


def split_segments(segs: list[Segment], test_fraction: float, val_fraction: float,
                   seed: int) -> tuple[list[int], list[int], list[int]]:
    """Stratified split of whole segments into (train, val, test) index lists.

    Stratified by each segment's majority label, so every class appears in training whenever it has >= 2 segments."""
    if not 0 <= test_fraction < 1 or not 0 <= val_fraction < 1 or test_fraction + val_fraction >= 1:
        raise ValueError(f"test_fraction={test_fraction} and val_fraction={val_fraction} must be in [0, 1) and sum "
                         f"to less than 1")
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, s in enumerate(segs):
        by_class.setdefault(s.majority_label, []).append(i)
    train: list[int] = []
    val: list[int] = []
    test: list[int] = []
    for c in sorted(by_class):
        idx = list(rng.permutation(by_class[c]))
        n = len(idx)
        n_test = round(test_fraction * n) if test_fraction > 0 else 0
        n_val = round(val_fraction * n) if val_fraction > 0 else 0
        if n >= 3:
            n_test = max(n_test, 1 if test_fraction > 0 else 0)
            n_val = max(n_val, 1 if val_fraction > 0 else 0)
        n_test = min(n_test, max(n - 1, 0))
        n_val = min(n_val, max(n - 1 - n_test, 0))
        test += idx[:n_test]
        val += idx[n_test:n_test + n_val]
        train += idx[n_test + n_val:]
    return sorted(int(i) for i in train), sorted(int(i) for i in val), sorted(int(i) for i in test)


def windows_for(segs: list[Segment], which: list[int], settings: FeatureSettings, fs: float,
                stride: int = 1) -> Windows:
    """All windows of the chosen segments (features restarted at each segment, exactly as evaluation streams them)."""
    Xs, ys, ss, frames_list = [], [], [], []
    t = settings.n_frames
    for i in which:
        seg = segs[i]
        frames = extract_frames(settings, seg.data, fs)
        frames_list.append(frames)
        w = sliding_windows(frames, t, stride)
        if len(w) == 0:
            continue
        newest = np.arange(t - 1, len(frames), stride)[: len(w)]
        ends = np.array([frame_end_sample(settings, fs, int(f)) for f in newest])
        y = seg.labels[ends]
        known = y >= 0  # a window whose newest sample is unlabelled is neither trained on nor scored
        if not known.any():
            continue
        Xs.append(w[known])
        ys.append(y[known])
        ss.append(np.full(int(known.sum()), i))
    if not Xs:
        f = frames_list[0].shape[1] if frames_list else 0
        return Windows(np.zeros((0, t, f), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64), frames_list)
    return Windows(np.concatenate(Xs), np.concatenate(ys), np.concatenate(ss), frames_list)
