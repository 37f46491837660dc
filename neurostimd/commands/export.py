"""`neurostimd export SESSION --to fif|edf|bdf|bids OUT`: a recorder session (or any recording the replay reads) as a
file MNE-Python opens, or as a BIDS dataset mne-bids reads, with the decisions, stimulation and faults as annotations
(neurostimd.outputs.mne_export; docs/export.md). Exit 0, 65 for data that cannot be exported, 78 for options or an
OUT that cannot be used (it exists: --force; never the recording itself), 2 for bad arguments."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import structlog

from neurostimd.errors import ConfigError, DataFormatError, NeurostimError
from neurostimd.service.exitcodes import EX_CONFIG, EX_DATAERR

log = structlog.get_logger(__name__)

FORMATS = ("fif", "edf", "bdf", "bids")
_SUFFIXES = {"fif": (".fif", ".fif.gz"), "edf": (".edf",), "bdf": (".bdf",)}
_BIDS_FORMATS = {"edf": "EDF", "bdf": "BDF", "brainvision": "BrainVision"}


def add_parser(sub: Any) -> None:
    """The `export` subcommand's arguments, on the CLI's subparsers."""
    ex = sub.add_parser(
        "export", help="write a session or recording as FIF, EDF/BDF or BIDS, with annotations (MNE, mne-bids)",
        description="Write a recorder session (or any recording `neurostimd replay` reads) as a FIF or EDF+/BDF+ "
                    "file, or into a BIDS dataset, with annotations for states (state:NAME), stimulation episodes "
                    "(stim f=..Hz a=..mA pw=..us), faults (fault:CAUSE) and gaps (BAD_ACQ_SKIP, written as zeros); "
                    "a recording's labels become one annotation per run. See docs/export.md.")
    ex.add_argument("session", metavar="SESSION", help="recorder session folder, or a recording file")
    ex.add_argument("--to", required=True, choices=FORMATS, help="fif, edf, bdf, or bids (OUT is then the root)")
    ex.add_argument("out", metavar="OUT", help="the file to write (name_raw.fif, .edf, .bdf) or the BIDS root folder")
    ex.add_argument("--force", action="store_true", help="replace an existing OUT file (never the recording itself)")
    ex.add_argument("--fs", type=float, default=None, help="sample rate (Hz) of a recording that carries none (ARFF)")
    ex.add_argument("--units", default=None, help="unit of a recording whose file declares none (e.g. uV, mV)")
    ex.add_argument("--ch-type", default="eeg", choices=["eeg", "ecog", "seeg", "dbs", "emg", "eog", "ecg"],
                    help="MNE channel type of every channel (default eeg; EEG channels named like 10-05 positions "
                         "get those positions)")
    ex.add_argument("--line-freq", type=float, choices=[50.0, 60.0], default=None,
                    help="mains frequency (Hz); required for --to bids")
    ex.add_argument("--bundle", default=None,
                    help="the model bundle the session ran with, for the state names (default: the one the "
                         "session names, if it is there)")
    ex.add_argument("--timestamp-jitter-ms", type=float, default=0.0,
                    help="timestamp steps this much longer than 1.5 periods are not gaps (as [source] "
                         "timestamp_jitter_ms of a replay)")
    ex.add_argument("--fif-format", choices=["double", "single"], default="double",
                    help="FIF sample format: double (default) reads the µV samples back exactly; single halves "
                         "the size")
    ex.add_argument("--subject", default="01", help="BIDS subject label (default 01)")
    ex.add_argument("--session", dest="bids_session", default=None, help="BIDS session label (default: none)")
    ex.add_argument("--task", default="neurostim", help="BIDS task label (default neurostim)")
    ex.add_argument("--run", type=int, default=None, help="BIDS run number (default: none)")
    ex.add_argument("--bids-format", choices=sorted(_BIDS_FORMATS), default="edf",
                    help="data format inside the BIDS dataset (default edf; brainvision needs pybv)")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_out(src: Path, out: Path, to: str, *, force: bool) -> None:
    """ConfigError when OUT cannot be written: it is (or lies in) the recording, it exists without --force, it has
    the wrong suffix, or it is a folder that is not a BIDS root."""
    s, o = src.resolve(), out.resolve()
    if _inside(o, s) or (s.is_file() and o == s) or (o.is_dir() and (o / "session.json").exists()):
        raise ConfigError(f"{out}: that is the recording being exported (or inside it); choose another OUT")
    if to == "bids":
        if o.exists() and not o.is_dir():
            raise ConfigError(f"{out} is a file; for --to bids OUT is the dataset's root folder")
        if o.is_dir() and any(o.iterdir()) and not (o / "dataset_description.json").exists():
            raise ConfigError(f"{out} holds files but no dataset_description.json, so it is not a BIDS root; give "
                              f"a new folder or an existing BIDS root")
        return
    if not out.name.lower().endswith(_SUFFIXES[to]):
        want = "NAME_raw.fif" if to == "fif" else f"NAME{_SUFFIXES[to][0]}"
        raise ConfigError(f"{out}: a {to.upper()} file's name must end in {_SUFFIXES[to][0]} (e.g. {want})")
    if o.is_dir():
        raise ConfigError(f"{out} is a folder; give the file to write")
    if o.exists() and not force:
        raise ConfigError(f"{out} exists; pass --force to replace it, or choose another OUT")


def run_export(args: argparse.Namespace) -> dict[str, Any]:
    """Export as the arguments say; returns a summary (what was written, samples, annotations by kind)."""
    from neurostimd.outputs import mne_export as mx

    if args.to == "bids" and args.line_freq is None:
        raise ConfigError("--to bids needs --line-freq 50 or 60 (the mains frequency, which BIDS requires)")
    src, out = Path(args.session), Path(args.out)
    if not src.exists():
        raise DataFormatError(f"{src} does not exist; give a recorder session folder or a recording file")
    check_out(src, out, args.to, force=args.force)
    mx._mne()  # MNE missing: say so before reading anything
    inp = mx.load_export_input(src, fs=args.fs, units=args.units, bundle=args.bundle,
                               timestamp_jitter_ms=args.timestamp_jitter_ms)
    raw = mx.to_raw(inp, ch_type=args.ch_type, line_freq=args.line_freq)
    written: str
    if args.to == "fif":
        written = str(mx.write_fif(raw, out, overwrite=args.force, fmt=args.fif_format))
    elif args.to in ("edf", "bdf"):
        written = str(mx.write_edf(raw, out, fmt=args.to, overwrite=args.force))
    else:
        path = mx.write_bids(raw, out, subject=args.subject, task=args.task, session=args.bids_session,
                             run=args.run, fmt=_BIDS_FORMATS[args.bids_format], provenance=inp.provenance,
                             overwrite=args.force)
        written = str(path.fpath)
    kinds: dict[str, int] = {}
    for a in inp.annotations:  # state:, fault:, stim, BAD_ACQ_SKIP, a class name, ...
        key = a.description.split(":", 1)[0] + ":" if ":" in a.description else a.description.split(" ", 1)[0]
        kinds[key] = kinds.get(key, 0) + 1
    return {"written": written, "format": args.to, "n_samples": int(inp.data.shape[0]), "fs": inp.fs,
            "n_channels": len(inp.channel_names), "gap_samples": inp.gap_samples, "annotations": kinds}


def cmd_export(args: argparse.Namespace) -> int:
    from neurostimd.service.logs import configure_logging

    configure_logging("warning", "console")
    try:
        summary = run_export(args)
    except DataFormatError as err:
        print(f"neurostimd export: {err}", file=sys.stderr)
        return EX_DATAERR
    except ConfigError as err:
        print(f"neurostimd export: {err}", file=sys.stderr)
        return EX_CONFIG
    except NeurostimError as err:
        print(f"neurostimd export: {err}", file=sys.stderr)
        return EX_DATAERR
    print(json.dumps(summary, indent=2))
    return 0
