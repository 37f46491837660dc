"""What a command needs beyond the daemon's own dependencies, checked before it starts work: a missing optional
extra is named with the pip command that installs it (exit 69), instead of a bare `No module named 'keras'` from deep
inside, or a crash after all the data was read."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

from neurostimd.errors import NeurostimError

# pyproject.toml's optional extras, by the import names they provide
EXTRA_OF = {"tensorflow": "train", "keras": "train", "sklearn": "train", "optuna": "train", "tomli_w": "train",
            "ray": "scale", "mne": "lab", "mne_bids": "lab", "brainflow": "lab"}


class MissingExtra(NeurostimError):
    """A module of an optional extra is not installed; the message says which extra installs it."""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed package counts as absent
        return False


def require(modules: Iterable[str], what: str) -> None:
    """MissingExtra naming `what` needs, the missing modules and the `pip install 'neurostimd[EXTRA]'` that
    installs them; nothing when all are there. Looks the modules up without importing them."""
    missing = [m for m in modules if not _installed(m)]
    if not missing:
        return
    extras = sorted({EXTRA_OF.get(m, "train") for m in missing})
    raise MissingExtra(f"{what} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
                       f"installed: pip install 'neurostimd[{','.join(extras)}]'")
