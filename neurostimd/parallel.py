"""Independent jobs (the trials of a search, the cells of a sweep, the arms of an evaluation) one by one in this
process or as Ray tasks, one CPU each: a local Ray instance on this machine's cores, or the cluster at `--address`.

Every command that runs jobs in parallel goes through `make_runner`, so each has the same options and the same
failure modes: `--jobs N` (N jobs at once), `--address` (a Ray cluster: ray://HEAD:10001 or HEAD:6379),
`--no-ray` (one by one even where Ray is installed). Without Ray (the `[scale]` extra), N jobs run one by one with
the same results, said on stderr; `--address` without Ray, or a cluster that cannot be reached, is a
`RunnerUnavailable` (exit 69 in the commands). A job is `fn(shared, item)`: `fn` a module-level function, `shared`
what every job of a call needs (put into Ray's object store once per call), `item` what differs; `setup`, when
given, runs in the worker before each job (e.g. to set logging up as the command does)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any


class RunnerUnavailable(RuntimeError):
    """Ray was asked for and is not there, or cannot be reached."""


class RunnerFailed(RuntimeError):
    """A job could not finish for a reason of the runner's (a worker killed, e.g. for memory; a lost object) or an
    unexpected error inside the job; the message names it and what to try."""


def errors_only() -> None:
    """A worker's set-up for the commands that log errors only (tune-stim, sweep): its loop would log each decision
    at info."""
    from neurostimd.service.logs import configure_logging

    configure_logging("error", "console")


def runner_exit(command: str, err: RunnerUnavailable | RunnerFailed) -> int:
    """Say what went wrong on stderr; the exit status: 69 (EX_UNAVAILABLE) when Ray is missing or unreachable, 70
    (EX_SOFTWARE) when a job failed for the runner's reasons."""
    from neurostimd.service.exitcodes import EX_SOFTWARE, EX_UNAVAILABLE

    print(f"neurostimd {command}: {err}", file=sys.stderr)
    return EX_UNAVAILABLE if isinstance(err, RunnerUnavailable) else EX_SOFTWARE


# Errors a job raises on purpose, which the commands already turn into exit codes: passed on as themselves.
def _own_error(err: BaseException) -> bool:
    from neurostimd.errors import NeurostimError

    return isinstance(err, NeurostimError | ValueError | OSError)


class SerialRunner:
    """Jobs one after the other in this process."""

    description = "one by one in this process"
    jobs = 1

    def map(self, fn: Callable[[Any, Any], Any], shared: Any, items: Sequence[Any],
            setup: Callable[[], None] | None = None) -> list[Any]:
        return [fn(shared, item) for item in items]

    def close(self) -> None:
        pass

    def __enter__(self) -> SerialRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_UNSET = object()


def _ray_job(setup: Callable[[], None] | None, fn: Callable[[Any, Any], Any], shared: Any, item: Any) -> Any:
    if setup is not None:
        setup()
    return fn(shared, item)


class RayRunner:
    """The jobs of one call at once as Ray tasks (one CPU each)."""

    def __init__(self, jobs: int, address: str | None) -> None:
        import ray

        self._ray = ray
        self._owns = not ray.is_initialized()
        self.jobs = jobs
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        try:
            if self._owns:
                kw: dict[str, Any] = {"address": address} if address else {"num_cpus": jobs}
                ray.init(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=True, **kw)
            self._task = ray.remote(num_cpus=1)(_ray_job)
            cpus = int(ray.cluster_resources().get("CPU", 0))
        except Exception as err:
            self.close()
            raise RunnerUnavailable(f"could not start or reach {where}: {err}. Check --address (ray://HEAD:10001 "
                                    f"or HEAD:6379), or run without --address (local) or with --no-ray") from err
        self.description = f"{jobs} at once on {where} ({cpus} CPUs)"
        self._shared: Any = _UNSET  # `shared` is put into the object store once; callers must not mutate it
        self._shared_ref: Any = None

    def map(self, fn: Callable[[Any, Any], Any], shared: Any, items: Sequence[Any],
            setup: Callable[[], None] | None = None) -> list[Any]:
        if self._shared is not shared:  # put into the object store once, for every call that shares it
            self._shared, self._shared_ref = shared, self._ray.put(shared)
        refs = [self._task.remote(setup, fn, self._shared_ref, item) for item in items]
        try:
            return list(self._ray.get(refs))
        except self._ray.exceptions.RayError as err:
            cause = getattr(err, "cause", None)
            if cause is not None and _own_error(cause):
                raise cause from None
            raise RunnerFailed(f"a Ray task failed: {type(err).__name__}: {str(err).strip().splitlines()[-1]}. "
                               f"A worker killed for memory needs fewer --jobs; otherwise run with --no-ray to see "
                               f"the error in this process") from err

    def close(self) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()

    def __enter__(self) -> RayRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Runner = SerialRunner | RayRunner


def make_runner(jobs: int, address: str | None, no_ray: bool, command: str) -> Runner:
    """Ray when asked for parallel jobs (or a cluster) and installed; one by one otherwise (said on stderr, naming
    `command`). RunnerUnavailable for --address without Ray, --address with --no-ray, or a Ray that cannot start."""
    if no_ray and address:
        raise RunnerUnavailable("--no-ray and --address contradict each other: give one")
    if no_ray or (jobs <= 1 and not address):
        return SerialRunner()
    try:
        import ray  # noqa: F401
    except ImportError:
        if address:
            raise RunnerUnavailable("--address needs Ray: pip install 'neurostimd[scale]'") from None
        print(f"{command}: Ray is not installed (pip install 'neurostimd[scale]'): the {jobs} jobs of each batch "
              f"run one by one, with the same results", file=sys.stderr, flush=True)
        return SerialRunner()
    return RayRunner(jobs, address)


def add_runner_options(parser: Any, what: str) -> None:
    """--jobs, --address and --no-ray on an argparse parser; `what` names the jobs ("trials", "cells")."""
    parser.add_argument("--jobs", type=_at_least_one, default=1,
                        help=f"{what} at once, as Ray tasks (one CPU each) on a local Ray instance or --address; "
                             f"without Ray they run one by one with the same results (default: 1)")
    parser.add_argument("--address", default=None,
                        help="a Ray cluster to run on (ray://HEAD:10001 or HEAD:6379); every node needs neurostimd "
                             "installed and the input files at the same paths")
    parser.add_argument("--no-ray", action="store_true", help=f"run the {what} one by one in this process")


def _at_least_one(text: str) -> int:
    import argparse

    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n
