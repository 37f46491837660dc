"""`make run` (the demo) and `neurostimd bench` find the project's config and model where the project keeps them."""

from __future__ import annotations

from pathlib import Path

from neurostimd.config import load_config

PROJECT = Path(__file__).resolve().parents[2]


def test_demo_and_bench_resolve_the_project_root(tmp_path: Path) -> None:
    """The demo's default config, the bench's configs and its default bundle are the project's own files."""
    from neurostimd.commands import demo
    from neurostimd.commands.bench import _procs, inference

    assert demo.ROOT == PROJECT and _procs.ROOT == PROJECT
    assert (demo.ROOT / "config" / "sim.toml").is_file() and (_procs.ROOT / "config" / "replay.toml").is_file()
    assert (inference.DEFAULT_BUNDLE / "manifest.json").is_file()
    cfg = load_config(_procs.bench_config(tmp_path))
    assert cfg.audit.path == tmp_path / "audit.jsonl"
