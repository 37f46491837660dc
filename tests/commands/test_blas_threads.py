"""The commands that run the closed loop keep numpy's OpenBLAS on one thread: its idle workers busy-wait after each
call, and the loop calls it every tick, so a second BLAS thread spun at 100 % of a core for the whole run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("threadpoolctl")

CODE = """
import json, sys
from neurostimd.commands.cli import main
code = main(sys.argv[1:])
import numpy, threadpoolctl
blas = [p for p in threadpoolctl.threadpool_info() if p.get("internal_api") == "openblas"]
print(json.dumps({"code": code, "threads": [p["num_threads"] for p in blas]}))
"""


def _blas_threads(*argv: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    res = subprocess.run([sys.executable, "-c", CODE, *argv], capture_output=True, text=True, timeout=120, env=env)
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one CPU: OpenBLAS runs one thread anyway")
def test_the_daemon_runs_blas_on_one_thread_and_other_commands_keep_the_default(tmp_path) -> None:
    run = _blas_threads("run", "--config", str(tmp_path / "missing.toml"))
    assert run["code"] == 78  # refused (no config), after its modules, numpy included, were imported
    other = _blas_threads("check-config", str(tmp_path / "missing.toml"))
    if not run["threads"]:
        pytest.skip("this numpy is not built on OpenBLAS")
    assert run["threads"] == [1]
    assert other["threads"] and other["threads"][0] > 1
