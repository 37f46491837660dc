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
