"""`neurostimd train` and `neurostimd evaluate` on the command line: the arguments to neurostimd.model.train /
neurostimd.model.evaluate, and their errors to exit codes (the model layer knows no exit codes): EX_DATAERR (65) for
data that cannot be used (a recording, its labels, labels that do not map to the classes), EX_CONFIG (78) for the
rest (a bad --labels/--classes, feature settings or table, a bundle that does not fit, a path that cannot be read or
written). TensorFlow is imported only when training starts."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from neurostimd.errors import DataFormatError, NeurostimError
from neurostimd.parallel import RunnerFailed, runner_exit
from neurostimd.service.exitcodes import EX_CONFIG, EX_DATAERR, EX_OK, EX_UNAVAILABLE


def exit_code(err: BaseException) -> int:
    """EX_DATAERR for bad data, EX_CONFIG for everything else train and evaluate refuse."""
    return EX_DATAERR if isinstance(err, DataFormatError) else EX_CONFIG


def _reading(args: argparse.Namespace) -> dict[str, Any]:
    """The reader's options from --fs, --stream-name and --stream-type (the ones given)."""
    given = {"fs": args.fs, "stream_name": args.stream_name, "stream_type": args.stream_type}
    return {k: v for k, v in given.items() if v is not None}


def cmd_train(args: argparse.Namespace) -> int:
    from neurostimd.extras import MissingExtra, require

    try:
        require(["tensorflow", "keras", "sklearn", *(["optuna"] if args.search else [])], "neurostimd train")
    except MissingExtra as err:
        print(f"neurostimd train: {err}", file=sys.stderr)
        return EX_UNAVAILABLE
    from neurostimd.core.features import FeatureSettings
    from neurostimd.core.stimtable import StimTable
    from neurostimd.model.train import front_end_options, quiet_tensorflow, train_bundle

    quiet_tensorflow()
    overrides: dict[str, Any] = {}
    if args.features:
        overrides["kind"] = args.features
    if args.hop_ms is not None:
        overrides["hop_ms"] = args.hop_ms
    if args.frame_hops is not None:
        overrides["frame_hops"] = args.frame_hops
    if args.frames is not None:
        overrides["n_frames"] = args.frames
    try:
        front_end = front_end_options(args.channels, args.reference, args.notch)
        if front_end is not None:
            overrides["front_end"] = front_end
        table = StimTable.from_file(args.table) if args.table else None
        if args.search:
            return _search(args, overrides, table)
        if args.jobs != 1 or args.address or args.no_ray:
            raise ValueError("--jobs, --address and --no-ray apply to --search (a plain train is one fit)")
        settings = FeatureSettings(**overrides)
        train_bundle(args.data, args.out, epochs=args.epochs, seed=args.seed, batch_size=args.batch_size,
                     settings=settings, table=table, val_fraction=args.val_fraction,
                     test_fraction=args.test_fraction, block_s=args.block_s, stride=args.stride,
                     labels=args.labels, classes=args.classes, reading=_reading(args))
    except (NeurostimError, ValueError, OSError) as err:
        print(f"neurostimd train: {err}", file=sys.stderr)
        return exit_code(err)
    except RunnerFailed as err:
        return runner_exit("train", err)
    return EX_OK


def _search(args: argparse.Namespace, overrides: dict[str, Any], table: Any) -> int:
    from neurostimd.core.features import FeatureSettings
    from neurostimd.model.search import SearchOptions, search_bundle
    from neurostimd.parallel import RunnerUnavailable, make_runner

    if args.stride != 1:
        raise ValueError("--stride does not apply to --search, which caps each fit's windows with --max-windows")
    opts = SearchOptions(folds=args.folds, front_end_trials=args.front_end_trials, model_trials=args.search_trials,
                         ensemble=args.ensemble, search_epochs=args.search_epochs, max_windows=args.max_windows,
                         max_window_s=args.max_window_s,
                         archs=tuple(a.strip() for a in args.archs.split(",") if a.strip()))
    FeatureSettings(**overrides)  # what the user fixed must be valid settings by itself (78 before any data)
    base = FeatureSettings(**({"front_end": overrides["front_end"]} if "front_end" in overrides else {}))
    fixed: dict[str, Any] = {k: overrides[k] for k in ("kind", "hop_ms", "frame_hops", "n_frames") if k in overrides}
    report = args.search_report or f"{str(args.out).rstrip('/')}-search"
    try:
        runner = make_runner(args.jobs, args.address, args.no_ray, "train --search")  # before any data is read
    except RunnerUnavailable as err:
        return runner_exit("train", err)
    print(f"train --search: trials run {runner.description}", file=sys.stderr, flush=True)
    with runner:
        search_bundle(args.data, args.out, report, opts=opts, epochs=args.epochs, seed=args.seed,
                      batch_size=args.batch_size, base=base, fixed=fixed, table=table,
                      val_fraction=args.val_fraction, test_fraction=args.test_fraction, block_s=args.block_s,
                      labels=args.labels, classes=args.classes, reading=_reading(args), jobs=args.jobs,
                      runner=runner)
    return EX_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from neurostimd.extras import MissingExtra, require

    try:
        # the baseline beside the model (scikit-learn), checked before any data is read
        require(["sklearn"], "neurostimd evaluate")
    except MissingExtra as err:
        print(f"neurostimd evaluate: {err}", file=sys.stderr)
        return EX_UNAVAILABLE
    from neurostimd.model.evaluate import evaluate_bundle

    try:
        evaluate_bundle(args.bundle, args.data, args.report, split=args.split, labels=args.labels,
                        classes=args.classes, reading=_reading(args))
    except (NeurostimError, ValueError, OSError) as err:
        print(f"neurostimd evaluate: {err}", file=sys.stderr)
        return exit_code(err)
    return EX_OK
