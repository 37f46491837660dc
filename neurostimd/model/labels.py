"""Labels from where labs keep them: a recording's annotations (EDF+/BDF+, FIF, XDF marker streams), a label
channel, or an events file (BIDS `*_events.tsv`, or a CSV `onset,duration,label`), turned into one class index per
sample, with `--classes` saying which description is which class.

`--labels` (the `spec`):
- absent: the file's own labels (an .npz `labels` array, a CSV `label` column, an ARFF nominal attribute);
- `annotations`: the recording's annotations;
- `channel:NAME`: the channel NAME holds a class index or code per sample; it is taken out of the signal channels;
- anything else: the path of an events file with columns `onset` (s from the first sample), `duration` (s; empty or
  `n/a` = 0) and `trial_type` (BIDS; also accepted: `label`, `description`, `value`), tab-separated for `.tsv`,
  comma-separated otherwise.

`--classes` (a `ClassMap`): comma-separated items, each `NAME` or `NAME=DESCRIPTION`; class i is the i-th distinct
NAME. A bare `NAME` maps the description spelled NAME; `NAME=DESCRIPTION` maps another spelling, and several
descriptions may map to one class (`rest=T0,active=T1,active=T2`). The name `-` is no class: what it maps is
unlabelled (`-=pause`). Descriptions match exactly, after stripping spaces. For a label channel, bare names mean the
channel's values 0, 1, 2, ... in order, and `NAME=CODE` maps an integer code.

From annotations to samples: an annotation with a duration labels exactly its span; an instant one (duration 0, as
XDF markers arrive) starts a state that lasts until the next instant annotation that maps (or the end); spans win
over instant states. Samples claimed by spans of two different classes, and samples nothing mapped covers, are
unlabelled: `UNLABELLED` (-1), which training and evaluation skip. Pure apart from reading the events file."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from neurostimd.core.markers import parse_marker
from neurostimd.errors import ConfigError, DataFormatError
from neurostimd.sources.recordings import Annotation, Recording

log = structlog.get_logger(__name__)

UNLABELLED = -1
SKIP_NAME = "-"
ANNOTATIONS = "annotations"
CHANNEL_PREFIX = "channel:"
CLASSES_SYNTAX = 'comma-separated NAME or NAME=DESCRIPTION items, e.g. --classes "rest,active" or ' \
                 '--classes "rest=T0,active=T1,active=T2"'
_DESCRIPTION_COLUMNS = ("trial_type", "label", "description", "value")
_NONE = -2  # no span covers the sample (internal)
_CONFLICT = -3  # spans of two classes cover it (internal)


@dataclass(frozen=True)
class ClassMap:
    """The parsed `--classes`: the class names in order and which description is which class (-1: unlabelled)."""

    class_names: list[str]
    codes: dict[str, int]
    bare: bool  # every item was a bare NAME
    text: str

    def describe(self) -> dict[str, str]:
        """description → class name ('-' for unlabelled), for the manifest and messages."""
        return {d: (self.class_names[i] if i >= 0 else SKIP_NAME) for d, i in self.codes.items()}


def parse_classes(text: str) -> ClassMap:
    """Parse `--classes`; ConfigError naming the bad item and the syntax."""
    names: list[str] = []
    codes: dict[str, int] = {}
    bare = True
    items = [it.strip() for it in text.split(",")]
    if not text.strip() or any(not it for it in items):
        raise ConfigError(f"--classes {text!r} has an empty item; use {CLASSES_SYNTAX}")
    for item in items:
        name, eq, desc = (s.strip() for s in item.partition("="))
        if eq:
            bare = False
        else:
            desc = name
        if not name or not desc:
            raise ConfigError(f"--classes {text!r}: item {item!r} lacks a name or a description; use {CLASSES_SYNTAX}")
        if name != SKIP_NAME and name not in names:
            names.append(name)
        index = UNLABELLED if name == SKIP_NAME else names.index(name)
        if desc in codes and codes[desc] != index:
            other = names[codes[desc]] if codes[desc] >= 0 else SKIP_NAME
            raise ConfigError(f"--classes {text!r}: description {desc!r} is mapped to both {other!r} and {name!r}; "
                              f"map each description to one class")
        codes[desc] = index
    if not names:
        raise ConfigError(f"--classes {text!r} names no class (only '-'); use {CLASSES_SYNTAX}")
    return ClassMap(names, codes, bare, text)


@dataclass(frozen=True)
class LabelSource:
    """The parsed `--labels`: kind 'file', 'annotations', 'channel' (name = the channel) or 'events' (path)."""

    kind: str
    name: str = ""
    path: Path | None = None

    @property
    def spec(self) -> str:
        if self.kind == "channel":
            return CHANNEL_PREFIX + self.name
        if self.kind == "events":
            return str(self.path)
        return self.kind


def parse_label_source(spec: str | None) -> LabelSource:
    """Parse `--labels`; None (or 'file') is the file's own labels. ConfigError for an empty channel name."""
    if spec is None or spec.strip() in ("", "file"):
        return LabelSource("file")
    s = spec.strip()
    if s == ANNOTATIONS:
        return LabelSource("annotations")
    if s.startswith(CHANNEL_PREFIX):
        name = s[len(CHANNEL_PREFIX):].strip()
        if not name:
            raise ConfigError(f"--labels {spec!r} names no channel; write --labels channel:NAME (e.g. channel:STI)")
        return LabelSource("channel", name=name)
    return LabelSource("events", path=Path(s))


@dataclass
class Labelled:
    """What a label source gives a recording: the recording (without a label channel), per-sample class indices
    (-1 = unlabelled), the class names and what the bundle records about where the labels came from."""

    recording: Recording
    labels: npt.NDArray[np.int64]
    class_names: list[str]
    info: dict[str, Any] = field(default_factory=dict)


# --- events files -----------------------------------------------------------------------------------------------------
def read_events(path: str | Path) -> tuple[list[Annotation], str]:
    """An events file's rows as annotations, and the file's sha256; DataFormatError naming the file, the line and
    the column for anything unreadable."""
    p = Path(path)
    if not p.is_file():
        raise DataFormatError(f"--labels {p}: no such events file, and not 'annotations' or 'channel:NAME'; give "
                              f"the path of a BIDS *_events.tsv or an onset,duration,label CSV")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{p}: not a text events file ({err})") from err
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise DataFormatError(f"{p}: the events file is empty; it needs a header row (onset, duration, trial_type)")
    delim = "\t" if p.suffix.lower() == ".tsv" or ("\t" in lines[0] and "," not in lines[0]) else ","
    rows = list(csv.reader(lines, delimiter=delim))
    header = [h.strip().lower() for h in rows[0]]
    if "onset" not in header:
        raise DataFormatError(f"{p}: no `onset` column (columns: {header}); an events file needs onset (s), "
                              f"duration (s) and trial_type (or label)")
    col = next((c for c in _DESCRIPTION_COLUMNS if c in header), None)
    if col is None:
        raise DataFormatError(f"{p}: no column naming the events (columns: {header}); add one of "
                              f"{', '.join(_DESCRIPTION_COLUMNS)}")
    i_on, i_desc = header.index("onset"), header.index(col)
    i_dur = header.index("duration") if "duration" in header else None
    out: list[Annotation] = []
    for n, r in enumerate(rows[1:], start=2):
        if len(r) != len(header):
            raise DataFormatError(f"{p}: line {n} has {len(r)} fields, the header has {len(header)}")
        onset = _number(p, n, "onset", r[i_on], allow_na=False)
        dur = _number(p, n, "duration", r[i_dur], allow_na=True) if i_dur is not None else 0.0
        if dur < 0:
            raise DataFormatError(f"{p}: line {n}: duration {r[i_dur] if i_dur is not None else ''!r} is negative")
        out.append(Annotation(onset, dur, r[i_desc].strip()))
    return sorted(out, key=lambda a: a.onset_s), hashlib.sha256(raw).hexdigest()


def _number(p: Path, line: int, column: str, text: str, *, allow_na: bool) -> float:
    t = text.strip()
    if allow_na and t.lower() in ("", "n/a", "na", "nan"):
        return 0.0
    try:
        v = float(t)
    except ValueError:
        v = float("nan")
    if not np.isfinite(v):
        raise DataFormatError(f"{p}: line {line}: {column} {text!r} is not a number of seconds")
    return v


def description_key(description: str, codes: dict[str, int] | set[str]) -> str:
    """What --classes matches a description by: the description (stripped); for a neurostimd marker that does not
    match whole (`state:active index=1 confidence=0.93`, from a session's Markers stream, docs/lsl-outputs.md), its
    tag (`state:active`), so that `--classes "rest=state:quiet,active=state:activated"` maps a recorded session."""
    d = description.strip()
    if d in codes or " " not in d:
        return d
    try:
        tag, _fields = parse_marker(d)
    except ValueError:
        return d
    return ":".join(tag)


# --- annotations → samples --------------------------------------------------------------------------------------------
def annotation_labels(annotations: list[Annotation], n_samples: int, fs: float, cmap: ClassMap,
                      where: str, times_s: npt.NDArray[np.float64] | None = None
                      ) -> tuple[npt.NDArray[np.int64], dict[str, Any]]:
    """Per-sample class indices from annotations (see the module's docstring), and what happened to them.

    Onsets are seconds on the recording's time axis, gaps included (`times_s`: each sample's time from the first,
    Recording.times_s(); None = i / fs, a recording without gaps): an onset labels from the first sample whose time is
    not more than half a period before it, so that a label after a gap (an XDF timestamp jump, an MNE skip) lands on
    the samples recorded at that time, not on the ones the gap's length later."""
    keys = [description_key(a.description, cmap.codes) for a in annotations]
    counts = Counter(keys)
    mapped = [(a, cmap.codes[k]) for a, k in zip(annotations, keys, strict=True) if k in cmap.codes]
    unmapped = {d: c for d, c in counts.items() if d not in cmap.codes}
    if not any(c >= 0 for _, c in mapped):
        found = ", ".join(f"{d!r} ×{c}" for d, c in sorted(counts.items())) or "none"
        raise DataFormatError(f"{where}: no label maps to the classes asked for: the descriptions found are {found}; "
                              f"--classes {cmap.text!r} asks for {cmap.class_names} (as {sorted(cmap.codes)}); "
                              f"fix --classes ({CLASSES_SYNTAX})")
    labels = np.full(n_samples, UNLABELLED, dtype=np.int64)
    times = np.arange(n_samples, dtype=np.float64) / fs if times_s is None else np.asarray(times_s, np.float64)
    if times.shape[0] != n_samples:
        raise ValueError(f"times_s has {times.shape[0]} entries for {n_samples} samples")
    half = 0.5 / fs

    def sample_at(t_s: float) -> int:
        return int(np.searchsorted(times, t_s - half, side="left"))

    instants = sorted((sample_at(a.onset_s), c) for a, c in mapped if a.duration_s <= 0)
    for k, (s0, c) in enumerate(instants):
        s1 = instants[k + 1][0] if k + 1 < len(instants) else n_samples
        labels[max(0, s0):max(0, min(s1, n_samples))] = c
    spans = np.full(n_samples, _NONE, dtype=np.int64)
    outside = 0
    for a, c in mapped:
        s0 = sample_at(a.onset_s)
        s1 = min(n_samples, sample_at(a.onset_s + a.duration_s))
        if a.onset_s < -half or s0 >= n_samples:
            outside += 1
        if a.duration_s <= 0 or s1 <= s0:
            continue
        seg = spans[s0:s1]
        spans[s0:s1] = np.where((seg == _NONE) | (seg == c), c, _CONFLICT)
    conflict = int(np.count_nonzero(spans == _CONFLICT))
    labels = np.where(spans == _NONE, labels, np.where(spans == _CONFLICT, UNLABELLED, spans)).astype(np.int64)
    info = {"n_annotations": len(annotations), "n_mapped": len(mapped), "unmapped": unmapped,
            "outside_recording": outside, "conflict_s": round(conflict / fs, 3)}
    if unmapped:
        log.info("labels_unmapped_descriptions", where=where, descriptions=unmapped)
    if outside:
        log.warning("labels_outside_recording", where=where, n=outside, duration_s=round(n_samples / fs, 3))
    if conflict:
        log.warning("labels_conflicting_spans", where=where, unlabelled_s=round(conflict / fs, 3))
    return labels, info


# --- a label channel --------------------------------------------------------------------------------------------------
def channel_labels(rec: Recording, name: str, cmap: ClassMap | None,
                   where: str) -> tuple[Recording, npt.NDArray[np.int64], list[str], dict[str, Any]]:
    """Take the label channel `name` out of `rec`; its values (integers) become class indices."""
    names = rec.channel_names
    idx = names.index(name) if name in names else next(
        (i for i, c in enumerate(names) if c.lower() == name.lower()), None)
    if idx is None:
        raise DataFormatError(f"{where}: --labels channel:{name}: no channel {name!r}; the channels are {names}")
    if rec.n_channels < 2:
        raise DataFormatError(f"{where}: {name!r} is the only channel; a label channel needs signal channels beside it")
    values = rec.data[:, idx].astype(np.float64)
    if not np.isfinite(values).all() or not np.allclose(values, np.round(values), atol=1e-3):
        raise DataFormatError(f"{where}: label channel {name!r} holds values that are not whole numbers (e.g. "
                              f"{values[np.flatnonzero(values != np.round(values))[:3]].tolist()}); it must hold a "
                              f"class index or integer code per sample")
    codes = np.round(values).astype(np.int64)
    found = Counter(codes.tolist())
    if cmap is None:
        top = int(codes.max())
        if top < 0:
            raise DataFormatError(f"{where}: label channel {name!r} holds no class index (all values negative)")
        class_names = [str(i) for i in range(top + 1)]
        labels = np.where(codes >= 0, codes, UNLABELLED)
        mapping = {str(i): str(i) for i in range(top + 1)}
    else:
        table: dict[int, int] = {}
        if cmap.bare:
            table = dict(enumerate(range(len(cmap.class_names))))
        else:
            for desc, c in cmap.codes.items():
                try:
                    table[int(desc)] = c
                except ValueError as err:
                    raise ConfigError(f"--classes {cmap.text!r}: {desc!r} is not an integer code, and a label "
                                      f"channel holds integers; write NAME=CODE (e.g. rest=0,active=1)") from err
        lut_codes = np.array(sorted(table), dtype=np.int64)
        lut_classes = np.array([table[k] for k in sorted(table)], dtype=np.int64)
        pos = np.clip(np.searchsorted(lut_codes, codes), 0, len(lut_codes) - 1)
        hit = lut_codes[pos] == codes
        labels = np.where(hit, lut_classes[pos], UNLABELLED)
        if not np.any(labels >= 0):
            raise DataFormatError(f"{where}: no value of label channel {name!r} maps to the classes asked for: it "
                                  f"holds {sorted(found)}; --classes {cmap.text!r} asks for {cmap.class_names} "
                                  f"(codes {sorted(table)}); fix --classes ({CLASSES_SYNTAX})")
        class_names = cmap.class_names
        mapping = {str(k): (cmap.class_names[v] if v >= 0 else SKIP_NAME) for k, v in sorted(table.items())}
    keep = [i for i in range(rec.n_channels) if i != idx]
    rng = None if rec.range_uv is None else (rec.range_uv[0][keep], rec.range_uv[1][keep])
    rest = replace(rec, data=np.ascontiguousarray(rec.data[:, keep]), channel_names=[names[i] for i in keep],
                   range_uv=rng, labels=None, class_names=None)
    unmapped = {str(k): v for k, v in sorted(found.items()) if labels[codes == k][0] < 0}
    return rest, labels.astype(np.int64), class_names, {"classes": mapping, "unmapped": unmapped}


# --- the one entry point ----------------------------------------------------------------------------------------------
def apply_labels(rec: Recording, source: LabelSource, cmap: ClassMap | None, where: str) -> Labelled:
    """Labels for `rec` from `source` (not 'file', which the caller handles) mapped by `cmap`."""
    info: dict[str, Any] = {"source": source.kind if source.kind != "channel" else source.spec}
    if source.kind == "channel":
        rest, labels, class_names, extra = channel_labels(rec, source.name, cmap, where)
        info.update(extra)
        return _summarised(Labelled(rest, labels, class_names, info), where)
    if cmap is None:
        descs = sorted({a.description.strip() for a in _annotations(rec, source, where, info)})
        raise ConfigError(f"{where}: --labels {source.spec} needs --classes to say which descriptions are which class "
                          f"(found: {descs}); use {CLASSES_SYNTAX}")
    anns = _annotations(rec, source, where, info)
    labels, extra = annotation_labels(anns, rec.n_samples, rec.fs, cmap, where if source.kind == "annotations"
                                      else f"{where} with events {source.path}", times_s=rec.times_s())
    info.update(extra)
    info["classes"] = cmap.describe()
    return _summarised(Labelled(rec, labels, list(cmap.class_names), info), where)


def _annotations(rec: Recording, source: LabelSource, where: str, info: dict[str, Any]) -> list[Annotation]:
    if source.kind == "events":
        assert source.path is not None
        anns, sha = read_events(source.path)
        info["path"], info["sha256"] = str(source.path), sha
        if not anns:
            raise DataFormatError(f"{source.path}: the events file lists no events")
        return anns
    if not rec.annotations:
        raise DataFormatError(f"{where}: --labels annotations, but the recording carries no annotations (EDF+/BDF+ "
                              f"annotations, FIF annotations or XDF marker streams are read; a plain EDF/BDF or a "
                              f"discontinuous EDF+D has none here); give an events file (--labels events.tsv) or a "
                              f"label channel (--labels channel:NAME)")
    return list(rec.annotations)


def remap_file_labels(rec: Recording, cmap: ClassMap, where: str) -> Labelled:
    """The file's own labels renamed or merged by `--classes`: its class names (or 0, 1, ...) are the descriptions."""
    assert rec.labels is not None
    own = rec.class_names or [str(c) for c in range(int(rec.labels.max()) + 1)]
    if rec.labels.min() < 0 or rec.labels.max() >= len(own):
        raise DataFormatError(f"{where}: labels span {rec.labels.min()}..{rec.labels.max()} but there are "
                              f"{len(own)} class_names")
    lut = np.array([cmap.codes.get(name, UNLABELLED) for name in own], dtype=np.int64)
    if not np.any(lut >= 0):
        raise DataFormatError(f"{where}: no label maps to the classes asked for: the file's classes are {own}; "
                              f"--classes {cmap.text!r} asks for {cmap.class_names}; fix --classes "
                              f"({CLASSES_SYNTAX})")
    info = {"source": "file", "classes": cmap.describe(), "unmapped": {n: 1 for n in own if n not in cmap.codes}}
    return _summarised(Labelled(rec, lut[rec.labels], list(cmap.class_names), info), where)


def _summarised(lab: Labelled, where: str) -> Labelled:
    fs = lab.recording.fs
    n_un = int(np.count_nonzero(lab.labels < 0))
    per = {name: round(int(np.count_nonzero(lab.labels == i)) / fs, 3) for i, name in enumerate(lab.class_names)}
    lab.info["labelled_s"] = per
    lab.info["unlabelled_s"] = round(n_un / fs, 3)
    log.info("labels_applied", where=where, source=lab.info["source"], labelled_s=per,
             unlabelled_s=lab.info["unlabelled_s"])
    return lab


def summary(lab_info: dict[str, Any]) -> str:
    """One line for the progress output: seconds per class, unlabelled seconds, unmapped descriptions."""
    per = ", ".join(f"{k} {v:g} s" for k, v in lab_info.get("labelled_s", {}).items())
    text = f"labels from {lab_info.get('source')}: {per}; {lab_info.get('unlabelled_s', 0):g} s unlabelled (skipped)"
    unmapped = lab_info.get("unmapped") or {}
    if unmapped:
        text += "; not mapped: " + ", ".join(f"{d!r} ×{c}" for d, c in sorted(unmapped.items()))
    return text


def classes_text(manifest_labels: object) -> str | None:
    """The --classes text that maps descriptions as a bundle's training did, from its manifest's `labels` (None if
    it recorded none)."""
    if not isinstance(manifest_labels, dict):
        return None
    mapping, names = manifest_labels.get("classes"), manifest_labels.get("class_names")
    if not isinstance(mapping, dict) or not isinstance(names, list):
        return None
    order = {str(n): i for i, n in enumerate(names)}
    items = sorted(((str(c), str(d)) for d, c in mapping.items()), key=lambda it: (order.get(it[0], len(order)), it))
    return ",".join(f"{c}={d}" for c, d in items) if items else None
