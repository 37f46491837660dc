"""The model bundle on disk: which files it holds, its manifest, and the integrity checks (no TensorFlow here).

A bundle is a directory: `model.keras`, `model.tflite`, `features.json` (settings + fitted scaler), `classes.json`,
`stim_table.json`, `check.npz` (check windows and the Keras outputs on them), `split.json` (which segments were held
out), `history.json` (learning curves) and `manifest.json` (sha256 of every other file, data hash, metrics, versions,
n_channels, sample_rate_hz, input shape)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from neurostimd.errors import BundleError

FORMAT = "neurostimd-bundle/1"
MANIFEST = "manifest.json"
MODEL_KERAS = "model.keras"
MODEL_TFLITE = "model.tflite"
FEATURES = "features.json"
CLASSES = "classes.json"
STIM_TABLE = "stim_table.json"
CHECK = "check.npz"
SPLIT = "split.json"
HISTORY = "history.json"
# What the runtime needs; every file present is hashed, but these must exist.
REQUIRED = (MODEL_TFLITE, FEATURES, CLASSES, STIM_TABLE, CHECK)
_MEMBER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
REBUILD_HINT = "rebuild it with `neurostimd train` (docs/classifier.md has the command) or restore it from git"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("neurostimd", "numpy", "scipy", "tensorflow-cpu", "tensorflow", "keras", "ai-edge-litert"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def write_manifest(bundle_dir: Path, fields: dict[str, Any]) -> dict[str, Any]:
    """Hash every file in the bundle (except the manifest) and write manifest.json with `fields` merged in."""
    files = {p.name: sha256_file(p) for p in sorted(bundle_dir.iterdir())
             if p.is_file() and not p.is_symlink() and p.name != MANIFEST}
    manifest = {"format": FORMAT, "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "versions": versions(), **fields, "files": files}
    (bundle_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def bundle_member(bundle_dir: Path, name: object) -> Path:
    """The path of the bundle file `name`, which must be a plain file name in the bundle folder itself: no folder
    part, no `..`, not hidden, and not a symlink (a manifest naming `../../etc/hostname`, or a `model.tflite` that
    links elsewhere, would make the daemon read and trust a file outside the bundle). BundleError otherwise."""
    if not isinstance(name, str) or not _MEMBER_NAME.fullmatch(name) or name in (".", ".."):
        raise BundleError(f"model bundle {bundle_dir}: the manifest lists {name!r}, which is not a plain file name in "
                          f"the bundle folder (no '/', '..' or hidden files); the manifest was edited or is not "
                          f"from `neurostimd train` — {REBUILD_HINT}")
    p = bundle_dir / name
    if p.is_symlink():
        raise BundleError(f"model bundle {bundle_dir}: {name} is a symbolic link (to {os.readlink(p)!r}); a bundle "
                          f"holds its own files — copy the file in instead of linking it")
    return p


def read_verified_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    """The manifest, after checking that every listed file exists and has the listed sha256; BundleError otherwise."""
    d = Path(bundle_dir)
    if not d.is_dir():
        raise BundleError(f"model bundle {d} is not a directory; set [model] bundle to a folder written by "
                          f"`neurostimd train` (the default is models/default)")
    mpath = d / MANIFEST
    if mpath.is_symlink():
        raise BundleError(f"model bundle {d}: {MANIFEST} is a symbolic link; a bundle holds its own files")
    if not mpath.is_file():
        raise BundleError(f"model bundle {d}: {MANIFEST} is missing; {REBUILD_HINT}")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as err:
        raise BundleError(f"model bundle {d}: {MANIFEST} is not readable JSON ({err}); {REBUILD_HINT}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(f"model bundle {d}: manifest format is {got!r}, expected {FORMAT!r}; {REBUILD_HINT}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"model bundle {d}: manifest has no 'files' table; {REBUILD_HINT}")
    for name in REQUIRED:
        if name not in files:
            raise BundleError(f"model bundle {d}: manifest does not list required file {name}; {REBUILD_HINT}")
    for name, want in sorted(files.items()):
        p = bundle_member(d, name)
        if not p.is_file():
            raise BundleError(f"model bundle {d}: file {name} listed in the manifest is missing; {REBUILD_HINT}")
        got = sha256_file(p)
        if got != want:
            raise BundleError(f"model bundle {d}: {name} has sha256 {got[:12]}… but the manifest says {want[:12]}… "
                              f"(the file is corrupt or was changed after training); {REBUILD_HINT}")
    for key in ("n_channels", "sample_rate_hz", "input_shape", "class_names"):
        if key not in manifest:
            raise BundleError(f"model bundle {d}: manifest lacks {key!r}; {REBUILD_HINT}")
    return manifest


# --- maintenance: training-signal statistics for a bundle trained before they were stored ---------------------------
CONTENT_TOLERANCE = 1e-5


def _content_proof(bundle_dir: Path, manifest: dict[str, Any], recs: list[Any], segs: list[Any],
                   keys: dict[str, list[int]]) -> str:
    """Why `recs` are the bundle's training data although their file hashes differ: they reproduce the bundle's
    check windows and its fitted scaler (every training frame enters the scaler). BundleError otherwise."""
    import numpy as np

    from neurostimd.core.features import FeatureSettings, Scaler
    from neurostimd.model.dataset import windows_for

    feat = json.loads((bundle_dir / FEATURES).read_text())
    settings = FeatureSettings.model_validate(feat["settings"])
    stored = Scaler.from_dict(feat["scaler"])
    split = json.loads((bundle_dir / SPLIT).read_text())
    fs = float(manifest["sample_rate_hz"])
    n_split = sum(len(src[part]) for src in split["sources"] for part in ("train", "val", "test"))
    d_scaler = d_check = float("inf")
    if len(segs) == n_split and keys["train"] and keys["val"] and \
            all(r.n_channels == int(manifest["n_channels"]) and r.fs == fs for r in recs):
        tr = windows_for(segs, keys["train"], settings, fs, 1)
        refit = Scaler.fit(settings.scaler, np.concatenate(tr.frames))
        if refit.offset.shape == stored.offset.shape:
            d_scaler = max(float(np.max(np.abs(refit.offset - stored.offset))),
                           float(np.max(np.abs(refit.scale - stored.scale) / np.abs(stored.scale))))
        va = windows_for(segs, keys["val"], settings, fs, 1)
        with np.load(bundle_dir / CHECK, allow_pickle=False) as z:
            check = np.asarray(z["windows"], dtype=np.float32)
        if len(va.X) >= len(check) and va.X.shape[1:] == check.shape[1:]:
            x_va = stored.transform(va.X)
            rng = np.random.default_rng(int(split["seed"]))
            pick = rng.choice(len(x_va), size=len(check), replace=False)
            d_check = float(np.max(np.abs(x_va[np.sort(pick)].astype(np.float32) - check)))
    if not (d_scaler <= CONTENT_TOLERANCE and d_check <= CONTENT_TOLERANCE):
        raise BundleError(f"model bundle {bundle_dir}: {', '.join(r.path for r in recs)} is not the data it was "
                          f"trained on (its scaler refits {d_scaler:.2e} away and its check windows differ by "
                          f"{d_check:.2e}, tolerance {CONTENT_TOLERANCE:g}); pass the training file")
    return f"content (scaler refit within {d_scaler:.1e}, check windows within {d_check:.1e})"


def add_signal_stats(bundle_dir: str | Path, data: list[str | Path], *, by_content: bool = False) -> dict[str, Any]:
    """Compute `signal_stats` from a bundle's training data and add them to its manifest; no other file changes.

    The data must be the training files the manifest lists, by sha256. With `by_content`, a file whose bytes differ
    (regenerated elsewhere, re-saved) is accepted when it reproduces the bundle's fitted scaler and check windows.
    Statistics come from the training segments of split.json, as `neurostimd train` computes them; the labels (which
    decide which time blocks are segments) are taken from where the manifest says training took them."""
    from neurostimd.core.features import FeatureSettings
    from neurostimd.core.stats import compute_signal_stats
    from neurostimd.model.dataset import load_recording, pick_inputs, segments
    from neurostimd.model.labels import classes_text

    d = Path(bundle_dir)
    manifest = read_verified_manifest(d)
    listed = manifest.get("training_data") or []
    feat_settings = FeatureSettings.model_validate(json.loads((d / FEATURES).read_text())["settings"])
    raw_labels = manifest.get("labels")
    lab: dict[str, Any] = raw_labels if isinstance(raw_labels, dict) else {}
    source = lab.get("source") if lab.get("source") not in (None, "file") else None
    if source == "events":
        events = [(e.get("labels") or {}).get("path") for e in listed if isinstance(e, dict)]
        source = str(events[0]) if events and events[0] else None
    classes = classes_text(lab) if source is not None or lab.get("classes_arg") else None
    raw_reading = manifest.get("read_options")
    reading: dict[str, Any] = raw_reading if isinstance(raw_reading, dict) else {}  # as training read the files
    recs = [pick_inputs(load_recording(p, source, classes, **reading), feat_settings) for p in data]  # model inputs
    want = [str(e.get("sha256")) for e in listed if isinstance(e, dict)]
    if len(recs) != len(want):
        raise BundleError(f"model bundle {d} was trained on {len(want)} file(s) "
                          f"({', '.join(str(e.get('path')) for e in listed)}); pass each of them with --data")
    hashes = [r.sha256 for r in recs]
    if sorted(hashes) == sorted(want):
        order = [hashes.index(h) for h in want]
        recs = [recs[i] for i in order]
        verified = "sha256"
    elif not by_content:
        raise BundleError(f"model bundle {d}: the data given has sha256 {', '.join(h[:12] + '…' for h in hashes)} "
                          f"but the bundle was trained on {', '.join(h[:12] + '…' for h in want)}; pass the training "
                          f"file(s), or --by-content to accept data that reproduces the bundle's scaler and check "
                          f"windows")
    else:
        verified = ""  # below
    split = json.loads((d / SPLIT).read_text())
    feat = json.loads((d / FEATURES).read_text())
    settings = FeatureSettings.model_validate(feat["settings"])
    segs = segments(recs, settings, float(split["block_s"]))
    keys: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for si, src in enumerate(split["sources"]):
        for part in keys:
            chosen = set(src[part])
            keys[part] += [i for i, s in enumerate(segs) if s.source == si and s.index in chosen]
    if not verified:
        verified = _content_proof(d, manifest, recs, segs, keys)
    names = [str(n) for n in manifest.get("channel_names", [])] or None
    stats = compute_signal_stats([segs[i].data for i in keys["train"]], int(manifest["window_samples"]), names)
    manifest["signal_stats"] = {**stats.to_json(), "verified_by": verified, "data_sha256": hashes}
    (d / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return read_verified_manifest(d)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from neurostimd.errors import NeurostimError

    ap = argparse.ArgumentParser(prog="python -m neurostimd.model.bundle", description="Bundle maintenance.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("add-stats", help="add training-signal statistics (signal_stats) to a bundle's manifest")
    a.add_argument("--bundle", required=True)
    a.add_argument("--data", action="append", required=True, help="a training file the manifest lists (repeat)")
    a.add_argument("--by-content", action="store_true",
                   help="accept data whose bytes differ if it reproduces the bundle's scaler and check windows")
    args = ap.parse_args(argv)
    try:
        m = add_signal_stats(args.bundle, args.data, by_content=args.by_content)
    except (NeurostimError, OSError, ValueError, KeyError) as err:
        print(f"add-stats: {err}", file=sys.stderr)
        return 2
    s = m["signal_stats"]
    print(f"added signal_stats to {args.bundle} ({s['verified_by']}): abs_max {min(s['abs_max']):.4g}..."
          f"{max(s['abs_max']):.4g} uV, window RMS {min(s['window_rms_lo']):.4g}..{max(s['window_rms_hi']):.4g} uV")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
