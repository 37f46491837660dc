"""A session or a recording as an MNE Raw with annotations, written as FIF, EDF/BDF or BIDS (docs/export.md).

What a session becomes: its samples (µV in the session, volts inside MNE), one channel type for all channels, the
10-05 positions of channels named like them, `meas_date` from the sidecar's `started_wall`, and annotations, each
with its onset in seconds from the first sample:

- `state:<class>` from the decision that entered a state to the one that left it (decisions.jsonl);
- `stim f=<Hz>Hz a=<mA>mA pw=<us>us` for each acknowledged command that applied parameters, until the next
  acknowledged command (commands.jsonl); a command the board did not acknowledge is a zero-length
  `stim_unacknowledged`;
- `fault:<cause>` while a decision lists that cause (decisions.jsonl);
- `BAD_ACQ_SKIP` over each gap: a step of the timestamps longer than 1.5 sample periods (plus the jitter allowed) or
  an index jump. MNE's Raw is continuous, so the samples a gap stands for are written as zeros under the annotation
  (MNE's own convention for acquisition skips); a reader that honours BAD_ACQ_SKIP gets the gap back, as
  neurostimd.sources.recordings does for FIF and EDF/BDF.

Onsets come from the decisions' and commands' `t_data_s` (the source's time of its newest sample, seconds from its
first sample, gaps included), which is the session's time axis as exported. A recording other than a session gives
one annotation per run of equal labels (the class name) and the annotations the file carries.

MNE and mne-bids are imported when something is exported, never with this module.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from neurostimd.core.stream_checks import virtual_counter
from neurostimd.errors import ConfigError, DataFormatError
from neurostimd.sources.recordings import Annotation, Recording, read_jsonl, read_recording

log = structlog.get_logger(__name__)

GAP_DESCRIPTION = "BAD_ACQ_SKIP"
STATE_PREFIX = "state:"
FAULT_PREFIX = "fault:"
STIM_PREFIX = "stim "
STIM_UNACKNOWLEDGED = "stim_unacknowledged"
CH_TYPES = ("eeg", "ecog", "seeg", "dbs", "emg", "eog", "ecg")  # MNE's voltage channel types
MAX_GAP_FILL_S = 3600.0  # a gap filled with zeros longer than this is refused (a session of hours of nothing)
# An EDF/BDF physical range is the converter's rails to a reader (ours flags a sample on them as saturation): the
# range written reaches this share of the span beyond the samples, so that no sample sits on a rail. It costs 0.2 %
# of the resolution.
RANGE_MARGIN = 1e-3
LAB_EXTRA = "pip install 'neurostimd[lab]'"


def stim_description(applied: dict[str, Any]) -> str:
    """`stim f=130Hz a=2mA pw=60us`: the applied parameters of a command, in the form annotations carry."""
    return (f"{STIM_PREFIX}f={float(applied['frequency_hz']):g}Hz a={float(applied['amplitude_ma']):g}mA "
            f"pw={float(applied['pulse_width_us']):g}us")


def parse_stim_description(text: str) -> dict[str, float] | None:
    """The parameters of a `stim f=…Hz a=…mA pw=…us` description; None for any other description."""
    if not text.startswith(STIM_PREFIX):
        return None
    fields = dict(part.split("=", 1) for part in text[len(STIM_PREFIX):].split() if "=" in part)
    try:
        return {"frequency_hz": float(fields["f"].removesuffix("Hz")),
                "amplitude_ma": float(fields["a"].removesuffix("mA")),
                "pulse_width_us": float(fields["pw"].removesuffix("us"))}
    except (KeyError, ValueError):
        return None


@dataclass
class ExportInput:
    """What is exported: gap-filled samples (n, ch) float32 µV at `fs`, the annotations, and where they came from."""

    data: npt.NDArray[np.float32]
    fs: float
    channel_names: list[str]
    annotations: list[Annotation]
    source: Path
    meas_date: dt.datetime | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    gap_samples: int = 0  # zeros written for the gaps

    @property
    def duration_s(self) -> float:
        return self.data.shape[0] / self.fs


# --- reading ----------------------------------------------------------------------------------------------------------
def load_export_input(path: str | Path, *, fs: float | None = None, units: str | None = None,
                      bundle: str | Path | None = None, timestamp_jitter_ms: float = 0.0) -> ExportInput:
    """Read a recorder session folder (with its decisions and commands) or any recording `read_recording` reads."""
    p = Path(path)
    rec = read_recording(p, fs=fs, units=units)
    if rec.segment_starts is not None:
        raise DataFormatError(f"{p} is an epoch set, which has no continuous time to export")
    # A session's ring indices; a file's skipped acquisition (FIF/EDF BAD_ACQ_SKIP, dropped by the reader) is its
    # sample index: both are written back as gaps.
    indices = _session_indices(p, rec.n_samples) if p.is_dir() else rec.sample_index
    counter = _counter(rec, indices, timestamp_jitter_ms / 1000.0)
    n_total = int(counter[-1]) + 1
    missing = n_total - rec.n_samples
    if missing / rec.fs > MAX_GAP_FILL_S:
        raise DataFormatError(f"{p}: its gaps add up to {missing / rec.fs:.0f} s without samples (more than "
                              f"{MAX_GAP_FILL_S:.0f} s of zeros to write); check its timestamps, or cut it first")
    if missing:
        data = np.zeros((n_total, rec.n_channels), dtype=np.float32)
        data[counter] = rec.data
    else:
        data = rec.data
    annotations = _gap_annotations(counter, rec.fs)
    out = ExportInput(data, rec.fs, list(rec.channel_names), [], p, gap_samples=missing)
    if p.is_dir():
        meta = json.loads((p / "session.json").read_text())
        out.meas_date = _wall(meta.get("started_wall"), p / "session.json")
        class_names, out.provenance = _provenance(p, meta, bundle)
        decisions = read_jsonl(p / meta["files"].get("decisions", "decisions.jsonl"))
        commands = read_jsonl(p / meta["files"].get("commands", "commands.jsonl"))
        origin = _data_time_origin(p, decisions, out.duration_s, rec.fs)
        annotations += session_annotations(decisions, commands, class_names, origin_s=origin,
                                           end_s=out.duration_s)
    else:
        annotations += label_annotations(rec, counter)
        annotations += list(rec.annotations)
        out.provenance = {"source_file": str(p)}
    out.annotations = sorted(annotations, key=lambda a: (a.onset_s, a.description))
    log.info("export_input", source=str(p), n_samples=rec.n_samples, gap_samples=missing,
             annotations=len(out.annotations))
    return out


def _session_indices(folder: Path, n: int) -> npt.NDArray[np.int64] | None:
    p = folder / "indices.i64"
    if not p.exists():
        return None
    idx = np.fromfile(p, dtype="<i8")
    return idx[:n] if idx.shape[0] >= n else None


def _counter(rec: Recording, indices: npt.NDArray[np.int64] | None, jitter_s: float) -> npt.NDArray[np.int64]:
    """Each sample's place on the continuous time axis: consecutive samples 1 apart, and a jump where the timestamps
    skip samples (the rule the replay and the live sources use) or the session's ring indices jump."""
    n = rec.n_samples
    inc = np.ones(n, dtype=np.int64)
    inc[0] = 0
    if rec.timestamps is not None and n > 1:
        inc = np.maximum(inc, np.diff(virtual_counter(rec.timestamps, rec.fs, jitter_s), prepend=0))
    if indices is not None and n > 1:
        inc[1:] = np.maximum(inc[1:], np.diff(indices))
    return np.cumsum(inc)


def _gap_annotations(counter: npt.NDArray[np.int64], fs: float) -> list[Annotation]:
    steps = np.diff(counter)
    out = []
    for k in np.flatnonzero(steps > 1):
        first_missing = int(counter[k]) + 1
        out.append(Annotation(first_missing / fs, int(steps[k] - 1) / fs, GAP_DESCRIPTION))
    return out


def _wall(value: Any, where: Path) -> dt.datetime | None:
    if value is None:
        return None
    try:
        t = dt.datetime.fromisoformat(str(value))
    except ValueError as err:
        raise DataFormatError(f"{where}: started_wall {value!r} is not an ISO 8601 time ({err})") from err
    return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _provenance(folder: Path, meta: dict[str, Any], bundle: str | Path | None) -> tuple[list[str] | None,
                                                                                       dict[str, Any]]:
    """The bundle's class names (from `bundle`, else the bundle the session names, when it can be found) and what
    the sidecar says about the session's origin."""
    import neurostimd

    prov: dict[str, Any] = {"software": f"neurostimd {neurostimd.__version__}", "session": str(folder),
                            "started_wall": meta.get("started_wall"), "closed_cleanly": meta.get("closed_cleanly")}
    for key in ("config", "bundle", "bundle_sha256"):
        if meta.get(key) is not None:
            prov[key] = meta[key]
    where = Path(bundle) if bundle is not None else (Path(str(meta["bundle"])) if meta.get("bundle") else None)
    manifest = where / "manifest.json" if where is not None else None
    if manifest is None or not manifest.is_file():
        if bundle is not None:
            raise ConfigError(f"--bundle {bundle}: no model bundle there (no manifest.json); give the bundle the "
                              f"session ran with")
        log.warning("export_bundle_not_found", session=str(folder), bundle=meta.get("bundle"),
                    detail="states are exported by number; pass --bundle for their names")
        return None, prov
    try:
        names = [str(c) for c in json.loads(manifest.read_text())["class_names"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataFormatError(f"{manifest}: no readable class_names ({err})") from err
    # The manifest holds the sha256 of every other file of the bundle: its own hash stands for the whole bundle.
    prov.setdefault("bundle_sha256", sha256_file(manifest))
    prov["bundle_classes"] = names
    return names, prov


def _data_time_origin(folder: Path, decisions: Sequence[dict[str, Any]], duration_s: float, fs: float) -> float:
    """The data time (`t_data_s`) of the session's first sample: 0, since the recorder records from the loop's first
    tick and every source counts its data time from its first sample, except a board whose sample counter did not
    start at 0. Then (decisions later than the session's end) the last decision is aligned with the last sample:
    exact for a cleanly closed session, within one flush interval for one cut short."""
    times = [float(d["t_data_s"]) for d in decisions if d.get("t_data_s") is not None]
    if not times or max(times) <= duration_s + 0.5:
        return 0.0
    origin = times[-1] - (duration_s - 1.0 / fs)
    log.warning("export_data_time_realigned", session=str(folder), origin_s=round(origin, 6),
                detail="the source's data time did not start at the session's first sample (a board counter); "
                       "the last decision is aligned with the last sample")
    return origin


def _at(value: Any, origin_s: float, end_s: float) -> float:
    """A record's `t_data_s` as seconds from the first sample, inside [0, end]; no data time yet: 0."""
    t = 0.0 if value is None else float(value) - origin_s
    return min(max(t, 0.0), end_s)


def session_annotations(decisions: Iterable[dict[str, Any]], commands: Iterable[dict[str, Any]],
                        class_names: Sequence[str] | None, *, origin_s: float, end_s: float) -> list[Annotation]:
    """State spans, fault spans (decisions) and stimulation episodes (commands) as annotations; spans still open at
    the end of the session end there."""
    out: list[Annotation] = []

    def name(state: int) -> str:
        if class_names is not None and 0 <= state < len(class_names):
            return str(class_names[state])
        return str(state)

    state: int | None = None
    state_t = 0.0
    faults: dict[str, float] = {}
    for d in decisions:
        t = _at(d.get("t_data_s"), origin_s, end_s)
        new = d.get("state")
        if new != state:
            if state is not None:
                out.append(Annotation(state_t, t - state_t, STATE_PREFIX + name(state)))
            state, state_t = (None if new is None else int(new)), t
        now = {str(c) for c in d.get("faults") or ()}
        for cause in [c for c in faults if c not in now]:
            out.append(Annotation(faults[cause], t - faults.pop(cause), FAULT_PREFIX + cause))
        for cause in sorted(now - faults.keys()):
            faults[cause] = t
    if state is not None:
        out.append(Annotation(state_t, end_s - state_t, STATE_PREFIX + name(state)))
    for cause, t0 in faults.items():
        out.append(Annotation(t0, end_s - t0, FAULT_PREFIX + cause))
    episode: tuple[float, str] | None = None
    for c in commands:
        t = _at(c.get("t_data_s"), origin_s, end_s)
        if c.get("ack") is not True:
            out.append(Annotation(t, 0.0, STIM_UNACKNOWLEDGED))
            continue
        if episode is not None:
            out.append(Annotation(episode[0], t - episode[0], episode[1]))
            episode = None
        applied = c.get("applied")
        if isinstance(applied, dict):
            episode = (t, stim_description(applied))
    if episode is not None:
        out.append(Annotation(episode[0], end_s - episode[0], episode[1]))
    return out


def label_annotations(rec: Recording, counter: npt.NDArray[np.int64]) -> list[Annotation]:
    """One annotation per run of equal per-sample labels, named by the class (or its number)."""
    if rec.labels is None or rec.n_samples == 0:
        return []
    labels = np.asarray(rec.labels)
    starts = np.concatenate(([0], np.flatnonzero(np.diff(labels) != 0) + 1))
    ends = np.concatenate((starts[1:], [labels.shape[0]]))
    names = rec.class_names
    out = []
    for a, b in zip(starts, ends, strict=True):
        k = int(labels[a])
        text = names[k] if names is not None and 0 <= k < len(names) else str(k)
        onset = int(counter[a]) / rec.fs
        out.append(Annotation(onset, (int(counter[b - 1]) + 1) / rec.fs - onset, text))
    return out


# --- MNE --------------------------------------------------------------------------------------------------------------
def _mne() -> Any:
    try:
        import mne
    except ImportError as err:
        raise ConfigError(f"exporting needs MNE-Python, which is not installed: {LAB_EXTRA}") from err
    return mne


def to_raw(inp: ExportInput, *, ch_type: str = "eeg", line_freq: float | None = None) -> Any:
    """The samples as an `mne.io.RawArray` in volts, with the annotations, meas_date, line_freq and, for EEG, the
    standard 10-05 positions of the channels named like them."""
    mne = _mne()
    if ch_type not in CH_TYPES:
        raise ConfigError(f"channel type {ch_type!r} is not one MNE keeps in volts; use one of {', '.join(CH_TYPES)}")
    if len(set(inp.channel_names)) != len(inp.channel_names):
        dup = sorted({c for c in inp.channel_names if inp.channel_names.count(c) > 1})
        raise DataFormatError(f"{inp.source}: channel names repeat ({dup}); MNE needs unique names")
    info = mne.create_info(list(inp.channel_names), sfreq=float(inp.fs), ch_types=ch_type, verbose="error")
    info["line_freq"] = None if line_freq is None else float(line_freq)
    # samples are µV; MNE keeps voltages in volts
    raw = mne.io.RawArray(inp.data.T.astype(np.float64) * 1e-6, info, verbose="error")
    if inp.meas_date is not None:
        raw.set_meas_date(inp.meas_date)
    if ch_type == "eeg":
        # the 10-05 template; MNE 1.13 renamed standard_1005 to colin27_1005
        name = "colin27_1005" if "colin27_1005" in mne.channels.get_builtin_montages() else "standard_1005"
        montage = mne.channels.make_standard_montage(name)
        known = {c.lower() for c in montage.ch_names}
        if any(c.lower() in known for c in inp.channel_names):
            raw.set_montage(montage, match_case=False, on_missing="ignore", verbose="error")
    a = inp.annotations
    raw.set_annotations(mne.Annotations([x.onset_s for x in a], [x.duration_s for x in a],
                                        [x.description for x in a], orig_time=inp.meas_date), verbose="error")
    return raw


def write_fif(raw: Any, out: Path, *, overwrite: bool = False, fmt: str = "double") -> Path:
    """`raw.save`: float64 by default, so that the µV float32 samples read back exactly."""
    if not out.name.endswith((".fif", ".fif.gz")):
        raise ConfigError(f"{out}: a FIF file's name must end in _raw.fif (or .fif); MNE reads it by that")
    raw.save(out, fmt=fmt, overwrite=overwrite, verbose="error")
    return out


def physical_ranges_uv(raw: Any) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per channel (min, max) µV to write as the EDF/BDF physical range: the samples' extremes widened by
    RANGE_MARGIN of their span (by 1 µV for a flat channel), so that a reader sees no sample on the rails."""
    x = raw.get_data() * 1e6
    lo, hi = x.min(axis=1), x.max(axis=1)
    pad = np.where(hi > lo, (hi - lo) * RANGE_MARGIN, 1.0)
    return lo - pad, hi + pad


def _header_bounds(lo: npt.NDArray[np.float64], hi: npt.NDArray[np.float64]) -> tuple[list[float], list[float]]:
    """Each (lo, hi) as the EDF header will state it: edfio rounds a physical range outwards to the header's 8
    characters (asked through edfio itself), and MNE scales the samples by the range it is given, so the range given
    must be one that edfio writes unchanged. Rounding again can move a bound by a last digit (float arithmetic):
    repeated until it holds, else whole µV, which edfio keeps."""
    import edfio

    out_lo, out_hi = [], []
    for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
        for _ in range(4):
            sig = edfio.EdfSignal(np.array([a, b]), 1.0, physical_range=(a, b))
            if (sig.physical_min, sig.physical_max) == (a, b):
                break
            a, b = float(sig.physical_min), float(sig.physical_max)
        else:
            a, b = float(math.floor(a)), float(math.ceil(b))
        out_lo.append(a)
        out_hi.append(b)
    return out_lo, out_hi


def write_edf(raw: Any, out: Path, *, fmt: str = "edf", overwrite: bool = False) -> Path:
    """`mne.export.export_raw` (edfio): 16-bit EDF+ or 24-bit BDF+, the physical range per channel
    (physical_ranges_uv)."""
    mne = _mne()
    _edf_labels(raw.ch_names, out)
    # MNE's public choices are one range for all channels or each channel's bare extremes (which a reader takes for
    # the rails); its "orig" choice writes the per-channel range a Raw read from an EDF carries in _raw_extras, so
    # that is where ours goes (checked by tests/commands/test_export.py, which reads the header back).
    try:
        lo, hi = _header_bounds(*physical_ranges_uv(raw))
        raw._raw_extras[0].update(physical_min=lo, physical_max=hi)
        mne.export.export_raw(out, raw, fmt=fmt, physical_range="orig", overwrite=overwrite, verbose="error")
    except ImportError as err:
        raise ConfigError(f"writing {fmt.upper()} needs edfio: {LAB_EXTRA}") from err
    finally:
        for key in ("physical_min", "physical_max"):
            raw._raw_extras[0].pop(key, None)
    return out


def _edf_labels(names: Sequence[str], out: Path) -> None:
    long = [c for c in names if len(c) > 16]
    if long:
        raise DataFormatError(f"{out}: EDF/BDF labels hold at most 16 characters, but channels {long} are longer; "
                              f"export to FIF, or rename the channels")


def write_bids(raw: Any, root: Path, *, subject: str, task: str, session: str | None = None, run: int | None = None,
               fmt: str = "EDF", provenance: dict[str, Any] | None = None, overwrite: bool = False) -> Any:
    """`mne_bids.write_raw_bids` into the BIDS root `root` (events.tsv from the annotations), then the session's
    provenance into the data's sidecar JSON (`SoftwareVersions` and `Neurostimd*` fields). Returns the BIDSPath."""
    try:
        import mne_bids
    except ImportError as err:
        raise ConfigError(f"exporting to BIDS needs mne-bids, which is not installed: {LAB_EXTRA}") from err
    if raw.info["line_freq"] is None:
        raise ConfigError("BIDS needs the mains frequency: pass --line-freq 50 or 60")
    if fmt == "BrainVision":
        try:
            import pybv  # noqa: F401
        except ImportError as err:
            raise ConfigError("BrainVision needs pybv, which is not installed; use --bids-format edf or bdf") from err
    if fmt in ("EDF", "BDF"):
        _edf_labels(raw.ch_names, root)
    path = mne_bids.BIDSPath(subject=subject, session=session, task=task, run=run, root=root)
    try:
        # one physical range for all channels (mne-bids takes no per-channel one), wide enough that no sample sits
        # on it; BrainVision has none
        lo, hi = physical_ranges_uv(raw)
        path = mne_bids.write_raw_bids(raw, path, format=fmt, allow_preload=True, overwrite=overwrite,
                                       physical_range=(float(lo.min()), float(hi.max())) if fmt != "BrainVision"
                                       else "auto", verbose="error")
    except FileExistsError as err:
        raise ConfigError(f"{root} already holds {path.basename} ({err}); pass --force to replace it, or give "
                          f"another --subject, --session, --task or --run") from err
    prov = dict(provenance or {})
    entries: dict[str, Any] = {"SoftwareVersions": str(prov.pop("software", "neurostimd"))}
    for key, value in prov.items():
        entries["Neurostimd" + "".join(w.capitalize() for w in key.split("_"))] = value
    sidecar = path.copy().update(suffix=path.datatype, extension=".json")
    mne_bids.update_sidecar_json(sidecar, entries, verbose="error")
    return path

