"""Training data for the classifier: interchange files → segments → leak-free splits → windows of frames.

A *segment* is the unit that is never split: one epoch of an epoch set, or one contiguous time block of a continuous
recording. Splits assign whole segments to train / validation / test, and windows are cut inside one segment only,
so no sample of a held-out segment ever reaches training (the research notebook shuffled single samples first)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neurostimd.core.features import FeatureSettings, extract_frames, frame_end_sample, sliding_windows
from neurostimd.errors import DataFormatError


@dataclass
class Recording:
    """One interchange file, loaded. `kind` is 'continuous' or 'epochs'."""

    path: str
    sha256: str
    kind: str
    fs: float
    channel_names: list[str]
    class_names: list[str]
    data: np.ndarray | None = None  # continuous: (n_samples, n_channels)
    labels: np.ndarray | None = None  # continuous: (n_samples,)
    X: np.ndarray | None = None  # epochs: (n_epochs, n_channels, n_samples)
    y: np.ndarray | None = None  # epochs: (n_epochs,)
    names_declared: bool = True  # False when the file has no channel_names (they are generated ch0, ch1, ...)

    @property
    def n_channels(self) -> int:
        return len(self.channel_names)


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
        return int(np.bincount(self.labels).argmax())


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


def load_recording(path: str | Path) -> Recording:
    """Read a continuous or epoch-set `.npz` (docs/design.md); raise DataFormatError saying what is missing."""
    p = Path(path)
    if not p.is_file():
        raise DataFormatError(f"{p}: no such file; pass a continuous or epoch-set .npz "
                              "(see docs/design.md, 'File formats')")
    try:
        z = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataFormatError(f"{p}: not a readable .npz ({err}); convert the recording to the interchange "
                              f"format first (e.g. shared/data/to_npz.py)") from err
    with z:
        keys = set(z.files)
        if "fs" not in keys:
            raise DataFormatError(f"{p}: missing 'fs' (sampling rate in Hz); add it to the .npz")
        fs = float(z["fs"])
        if not fs > 0:
            raise DataFormatError(f"{p}: fs={fs} is not a positive sampling rate")
        if "X" in keys and "y" in keys:
            X = np.asarray(z["X"], dtype=np.float32)
            y = np.asarray(z["y"]).astype(np.int64)
            if X.ndim != 3 or len(X) != len(y):
                raise DataFormatError(f"{p}: epoch set needs X (n_epochs, n_channels, n_samples) and y (n_epochs,), "
                                      f"got X {X.shape}, y {y.shape}")
            n_ch = X.shape[1]
            names = _names(z, "channel_names", [f"ch{i}" for i in range(n_ch)])
            classes = _names(z, "class_names", [str(c) for c in range(int(y.max()) + 1)])
            rec = Recording(str(p), file_sha256(p), "epochs", fs, names, classes, X=X, y=y,
                            names_declared="channel_names" in keys)
        elif "data" in keys:
            data = np.asarray(z["data"], dtype=np.float32)
            if data.ndim != 2:
                raise DataFormatError(f"{p}: 'data' must be (n_samples, n_channels), got {data.shape}")
            if "labels" not in keys:
                raise DataFormatError(f"{p}: a continuous recording needs per-sample 'labels' to train or evaluate")
            labels = np.asarray(z["labels"]).astype(np.int64)
            if labels.shape != (len(data),):
                raise DataFormatError(f"{p}: labels shape {labels.shape} does not match data {data.shape}")
            n_ch = data.shape[1]
            names = _names(z, "channel_names", [f"ch{i}" for i in range(n_ch)])
            classes = _names(z, "class_names", [str(c) for c in range(int(labels.max()) + 1)])
            rec = Recording(str(p), file_sha256(p), "continuous", fs, names, classes, data=data, labels=labels,
                            names_declared="channel_names" in keys)
        else:
            raise DataFormatError(f"{p}: neither an epoch set (X, y) nor a continuous recording (data, labels); "
                                  f"keys found: {sorted(keys)}")
    if len(rec.channel_names) != (rec.X.shape[1] if rec.X is not None else rec.data.shape[1]):  # type: ignore[union-attr]
        raise DataFormatError(f"{p}: {len(rec.channel_names)} channel_names for a different number of channels")
    arr = rec.X if rec.X is not None else rec.data
    if arr is not None and not np.isfinite(arr).all():
        raise DataFormatError(f"{p}: contains NaN or infinite samples; clean or interpolate them first")
    lab = rec.y if rec.y is not None else rec.labels
    if lab is not None and (lab.min() < 0 or lab.max() >= len(rec.class_names)):
        raise DataFormatError(f"{p}: labels span {lab.min()}..{lab.max()} but there are {len(rec.class_names)} "
                              f"class_names")
    return rec


def _names(z: np.lib.npyio.NpzFile, key: str, default: list[str]) -> list[str]:
    return [str(s) for s in z[key]] if key in z.files else default


def block_samples(settings: FeatureSettings, fs: float, block_s: float) -> int:
    """Samples per time block: at least four model windows, so each block still yields plenty of decisions."""
    return max(round(block_s * fs), 4 * settings.window_samples(fs))


def segments(recordings: list[Recording], settings: FeatureSettings, block_s: float) -> list[Segment]:
    """Split every recording into its never-to-be-divided segments."""
    out: list[Segment] = []
    for si, rec in enumerate(recordings):
        if rec.kind == "epochs":
            assert rec.X is not None and rec.y is not None
            for i in range(len(rec.X)):
                out.append(Segment(si, i, np.ascontiguousarray(rec.X[i].T), np.full(rec.X.shape[2], rec.y[i])))
        else:
            assert rec.data is not None and rec.labels is not None
            n = len(rec.data)
            size = block_samples(settings, rec.fs, block_s)
            starts = list(range(0, n, size))
            # A short tail joins the block before it rather than making a block too short for one window.
            if len(starts) > 1 and n - starts[-1] < size // 2:
                starts.pop()
            for i, s0 in enumerate(starts):
                s1 = starts[i + 1] if i + 1 < len(starts) else n
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
        Xs.append(w)
        ys.append(seg.labels[ends])
        ss.append(np.full(len(w), i))
    if not Xs:
        f = frames_list[0].shape[1] if frames_list else 0
        return Windows(np.zeros((0, t, f), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64), frames_list)
    return Windows(np.concatenate(Xs), np.concatenate(ys), np.concatenate(ss), frames_list)
