"""A bundle's manifest can name only files inside the bundle folder itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from neurostimd.errors import BundleError
from neurostimd.model import bundle as files


@pytest.fixture
def bundle(default_copy: Path) -> Path:
    return default_copy


def _edit_manifest(bundle: Path, edit) -> None:  # type: ignore[no-untyped-def]
    m = json.loads((bundle / files.MANIFEST).read_text())
    edit(m)
    (bundle / files.MANIFEST).write_text(json.dumps(m))


@pytest.mark.parametrize("name", ["../../../../../../etc/hostname", "/etc/hostname", "sub/model.tflite", "..",
                                  ".hidden", "a\\b"])
def test_manifest_naming_a_file_outside_the_bundle_is_refused(bundle: Path, name: str) -> None:
    """A manifest entry with a folder part, `..`, an absolute path or a hidden name is refused before any file is
    read or hashed (a listed `../../…/etc/hostname` was read and hashed)."""
    target = Path("/etc/hostname")
    _edit_manifest(bundle, lambda m: m["files"].__setitem__(name, files.sha256_file(target)
                                                             if target.is_file() else "0" * 64))
    with pytest.raises(BundleError, match="not a plain file name"):
        files.read_verified_manifest(bundle)


def test_symlinked_bundle_file_is_refused(bundle: Path, tmp_path: Path) -> None:
    """A bundle file that is a symbolic link (even to an identical copy elsewhere) is refused."""
    outside = tmp_path / "elsewhere.tflite"
    shutil.copy(bundle / files.MODEL_TFLITE, outside)
    (bundle / files.MODEL_TFLITE).unlink()
    (bundle / files.MODEL_TFLITE).symlink_to(outside)
    with pytest.raises(BundleError, match="symbolic link"):
        files.read_verified_manifest(bundle)


def test_the_shipped_bundle_passes(bundle: Path) -> None:
    """The default bundle's manifest names only plain files of its own folder."""
    assert files.read_verified_manifest(bundle)["files"]
