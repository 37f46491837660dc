"""`neurostimd bench`: every figure measured in this run, side by side, written as one flat JSON object.

Each section is a module `neurostimd.commands.bench.<name>` with `run(progress, quick) -> dict[str, float | str]`
whose keys are already prefixed with the section name (e.g. `inference.runtime_p50_us`)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SECTIONS = ["inference", "ingest", "loop", "scale", "replay", "daemon", "devices"]

Progress = Callable[[str], None]


def machine() -> str:
    """CPU model and core count, as the JSON's `machine` key."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{model}; {os.cpu_count()} cores; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}")


def _progress(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_sections(names: list[str], *, quick: bool = False, progress: Progress = _progress) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "bench.quick": quick}
    for name in names:
        if name not in SECTIONS:
            raise SystemExit(f"unknown bench section {name!r}; choose from {', '.join(SECTIONS)}")
        mod = importlib.import_module(f"neurostimd.commands.bench.{name}")
        progress(f"{name}: starting")
        t0 = time.perf_counter()
        section = mod.run(progress, quick)
        results.update(section)
        progress(f"{name}: done in {time.perf_counter() - t0:.1f} s")
    return results


def cmd_bench(args: argparse.Namespace) -> int:
    names = args.only or SECTIONS
    results = run_sections(names, quick=args.quick)
    Path(args.json_path).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    for k in sorted(results):
        print(f"{k:48s} {results[k]}")
    print(f"wrote {args.json_path}")
    return 0
