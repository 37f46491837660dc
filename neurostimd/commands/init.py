"""`neurostimd init DIR`: a working configuration in DIR from what the package carries — the example configs, the
model bundles and the systemd files — with the configs' relative paths (bundles, audit logs, recordings, state
files) made absolute under DIR, so they work from any working directory and nothing is ever written into the
installed package. Refuses to replace a file unless --force; every config written is loaded back before it says
done."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

from neurostimd.errors import ConfigError
from neurostimd.service.exitcodes import EX_CANTCREAT, EX_CONFIG, EX_OK

SHARE = Path(__file__).resolve().parents[1] / "share"  # neurostimd/share: config/, models/, systemd/
# the configs' relative paths that point into the project: the bundles and the outputs under runs/
_RELATIVE = re.compile(r'^(\s*(?:bundle|path|dir|state_file)\s*=\s*")((?:models|runs)/[^"]*)(")', re.MULTILINE)


def share_dir() -> Path:
    """What the package carries (a checkout's own folders through symlinks, the wheel's copies when installed)."""
    if not (SHARE / "config").is_dir():
        raise ConfigError(f"the package's data folder {SHARE} is missing (a broken install): reinstall neurostimd")
    return SHARE


def absolute_paths(text: str, root: Path) -> str:
    """A config's `bundle`, `path`, `dir` and `state_file` values under models/ or runs/ made absolute under root
    (escaped as a TOML basic string: a quote or a backslash in the folder's name stays itself)."""
    return _RELATIVE.sub(lambda m: f"{m.group(1)}{json.dumps((root / m.group(2)).as_posix())[1:-1]}{m.group(3)}",
                         text)


def plan(root: Path) -> list[tuple[Path, Path]]:
    """(source, destination) for every file init writes."""
    share = share_dir()
    files: list[tuple[Path, Path]] = []
    for sub in ("config", "models", "systemd"):
        base = share / sub
        for src in sorted(p for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            files.append((src, root / sub / src.relative_to(base)))
    return files


def run_init(root: Path, *, force: bool = False) -> list[Path]:
    """Write the configuration into `root`; returns the configs written. FileExistsError naming the files that
    would be replaced (nothing written) unless `force`; ConfigError if a written config does not load."""
    from neurostimd.config import load_config

    root = root.resolve()
    if (root / "config").resolve() == (share_dir() / "config").resolve():
        raise FileExistsError(f"{root} is the project itself (its config/ is what init copies from): choose another "
                              f"DIR")
    files = plan(root)
    existing = [dst for _, dst in files if dst.exists()]
    if existing and not force:
        shown = ", ".join(str(p) for p in existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5
                                                           else "")
        raise FileExistsError(f"{root} already has {shown}; pass --force to replace them, or choose another DIR")
    configs: list[Path] = []
    for src, dst in files:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix == ".toml" and src.is_relative_to(share_dir() / "config"):
            dst.write_text(absolute_paths(src.read_text(), root))
            configs.append(dst)
        else:
            shutil.copyfile(src, dst)
    for cfg in configs:
        if cfg.parent.name == "config":  # the daemon's configs (config/eval/ holds evaluation files)
            load_config(cfg)
    return configs


def cmd_init(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    try:
        configs = run_init(root, force=args.force)
    except FileExistsError as err:
        print(f"neurostimd init: {err}", file=sys.stderr)
        return EX_CANTCREAT
    except ConfigError as err:
        print(f"neurostimd init: a written config does not load: {err}; {err.errors}", file=sys.stderr)
        return EX_CONFIG
    except OSError as err:
        print(f"neurostimd init: cannot write {root}: {err}", file=sys.stderr)
        return EX_CANTCREAT
    r = root.resolve()
    print(f"wrote {len(configs)} configs, the model bundles and the systemd files into {r}\n"
          f"next:\n"
          f"  neurostimd check-config {r}/config/sim.toml\n"
          f"  neurostimd-sim --pty        # prints PTY /dev/pts/N: the simulated board\n"
          f"  neurostimd run --config {r}/config/sim.toml --port /dev/pts/N\n"
          f"  # a lab stimulator: edit {r}/config/serial.toml (its bundle is the system install's "
          f"/opt/neurostimd/models/default: copy {r}/models there, or point it at {r}/models/default), then install "
          f"{r}/systemd/ (README, 'systemd')")
    return EX_OK
