"""The shared runner: a job's own errors (the commands' exit codes) come back as themselves from a Ray task; any
other failure comes back as RunnerFailed with what to try, never as Ray's traceback."""

from __future__ import annotations

from typing import Any

import pytest

from neurostimd.parallel import RunnerFailed, RunnerUnavailable, SerialRunner, make_runner


def _job(shared: int, item: Any) -> int:
    if item == "value":
        raise ValueError("a bad setting")
    if item == "key":
        raise KeyError("surprise")
    return shared + int(item)


def test_one_by_one_gives_the_results_in_order() -> None:
    with SerialRunner() as r:
        assert r.map(_job, 10, [1, 2, 3]) == [11, 12, 13]


def test_contradictory_options_are_refused() -> None:
    with pytest.raises(RunnerUnavailable, match="contradict"):
        make_runner(2, "ray://127.0.0.1:10001", True, "test")
    assert isinstance(make_runner(1, None, False, "test"), SerialRunner)


@pytest.mark.slow
def test_a_ray_tasks_own_error_comes_back_as_itself_and_any_other_as_runner_failed() -> None:
    pytest.importorskip("ray", reason="the scale extra (Ray) is not installed")
    from neurostimd.parallel import RayRunner

    with RayRunner(2, None) as r:
        assert r.map(_job, 10, [1, 2]) == [11, 12]
        assert r.map(_job, 20, [1]) == [21]  # a new `shared` is put, not the cached one
        with pytest.raises(ValueError, match="a bad setting"):
            r.map(_job, 10, [1, "value"])
        with pytest.raises(RunnerFailed, match=r"KeyError.*--no-ray"):
            r.map(_job, 10, ["key"])
