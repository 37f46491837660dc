"""Progress of long offline work: a bar with the ETA on a terminal, a line per step with the ETA elsewhere."""

from __future__ import annotations

import io

import pytest

from neurostimd.progress import eta, progress_bar


def test_the_eta_is_the_time_left_at_the_rate_so_far() -> None:
    assert eta(10.0, 0, 4) == "?"
    assert eta(10.0, 1, 4) == "30 s"
    assert eta(60.0, 1, 4) == "3.0 min"
    assert eta(10.0, 4, 4) == "0 s"


def test_a_log_file_gets_one_line_per_step_with_its_eta() -> None:
    buf = io.StringIO()  # not a terminal
    with progress_bar(3, "trials", file=buf) as bar:
        bar.write("starting")
        for k in range(3):
            bar.update(f"trial {k + 1}: score {k}")
    lines = buf.getvalue().splitlines()
    assert lines[0] == "starting"
    assert [ln.split("  [ETA")[0] for ln in lines[1:]] == ["trial 1: score 0", "trial 2: score 1", "trial 3: score 2"]
    assert all("[ETA " in ln for ln in lines[1:]) and lines[-1].endswith("[ETA 0 s]")
    assert "\r" not in buf.getvalue()


def test_a_terminal_gets_a_bar_with_elapsed_time_and_eta() -> None:
    pytest.importorskip("tqdm")
    buf = io.StringIO()
    with progress_bar(2, "front end", file=buf, bar=True) as bar:
        bar.update("trial 1 done")
        bar.update("trial 2 done")
    out = buf.getvalue()
    assert "trial 1 done" in out and "trial 2 done" in out
    assert "front end: 2/2" in out and "elapsed, ETA" in out
