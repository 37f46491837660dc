"""The `neurostimd` command line. Each subcommand imports its implementation lazily, so that `run` never pulls in
TensorFlow and `check-config` starts in milliseconds."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
from collections.abc import Sequence

from neurostimd.parallel import add_runner_options
from neurostimd.service.exitcodes import EX_CONFIG

# subcommand -> "module:function"; each function takes the parsed argparse.Namespace and returns an exit code.
_COMMANDS = {
    "run": "neurostimd.service.daemon:cmd_run",
    "replay": "neurostimd.commands.replay:cmd_replay",
    "check-config": "neurostimd.commands.cli:cmd_check_config",
    "config-schema": "neurostimd.commands.cli:cmd_config_schema",
    "train": "neurostimd.commands.training:cmd_train",
    "evaluate": "neurostimd.commands.training:cmd_evaluate",
    "bench": "neurostimd.commands.bench:cmd_bench",
    "status": "neurostimd.commands.status:cmd_status",
    "closed-loop-eval": "neurostimd.commands.evaluation:cmd_closed_loop_eval",
    "audit": "neurostimd.commands.audit:cmd_audit",
    "export": "neurostimd.commands.export:cmd_export",
    "tune-stim": "neurostimd.commands.tune_stim:cmd_tune_stim",
    "sweep": "neurostimd.commands.sweep:cmd_sweep",
    "init": "neurostimd.commands.init:cmd_init",
}

_VERIFY_EPILOG = """\
exit status: 0 intact, 1 broken (the first break is named: file, line, seq, what it means), 2 bad arguments,
66 no log at PATH.

examples:
  neurostimd audit verify /var/lib/neurostimd/audit.jsonl
  neurostimd audit verify /var/lib/neurostimd --json
  # against the chain head the journal kept (`audit_chain_head` records, logged at each rotation and at close):
  journalctl -u neurostimd EVENT=audit_chain_head -o cat | tail -1
  neurostimd audit verify /var/lib/neurostimd/audit.jsonl --expect 199999:<hash from that line>
"""


_LABELS_EPILOG = """\
labels (docs/classifier.md, "Labels"):
  --labels annotations --classes "rest,active"          EDF+/BDF+/FIF annotations, XDF markers
  --labels annotations --classes "rest=T0,active=T1,active=T2"   other spellings; several to one class
  --labels channel:STI [--classes "rest,active"]        a channel of class indices (or NAME=CODE)
  --labels sub-01_task-x_events.tsv --classes ...       BIDS events (onset, duration, trial_type) or CSV
  samples no label covers are not trained on or scored; `-=DESCRIPTION` marks a description as unlabelled.
exit status: 0 done, 2 bad arguments, 65 bad data (recording, labels), 78 bad configuration.
"""


def _label_arguments(p: argparse.ArgumentParser, evaluate: bool = False) -> None:
    p.add_argument("--labels", default=None,
                   help="where the labels are: annotations, channel:NAME or an events file (default: the file's own "
                        "labels)")
    p.add_argument("--classes", default=None,
                   help="class names in order, each NAME or NAME=DESCRIPTION (e.g. \"rest=T0,active=T1\")"
                        + ("; default: the bundle's mapping" if evaluate else ""))
    p.add_argument("--fs", type=float, default=None,
                   help="sample rate in Hz of a file that carries none (ARFF, CSV without a time column)")
    p.add_argument("--stream-name", default=None, help="XDF: the signal stream, by name (a file of several streams)")
    p.add_argument("--stream-type", default=None, help="XDF: the signal stream, by type (e.g. EEG)")


class _Help(argparse.RawDescriptionHelpFormatter):
    """Every parser's help: descriptions and epilogs as written, and each option's default where it has one that
    its help does not already give (a None or False default — "not given", a flag — says nothing)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default is argparse.SUPPRESS or default == []
                or "default" in text.lower() or not action.option_strings):
            return text
        shown = ",".join(str(x) for x in default) if isinstance(default, list | tuple) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


# One example per subcommand, shown at the end of its --help (a subcommand's own epilog comes first).
_EXAMPLES = {
    "run": "neurostimd run --config config/sim.toml --port /dev/pts/3 --duration 60",
    "replay": "neurostimd replay recording.npz --config config/replay.toml --out runs/replay",
    "check-config": "neurostimd check-config config/serial.toml",
    "config-schema": "neurostimd config-schema > neurostimd.schema.json",
    "train": "neurostimd train --data bonn.npz --out models/bonn --search --test-fraction 0.3",
    "evaluate": "neurostimd evaluate --bundle models/bonn --data bonn.npz --report runs/eval",
    "bench": "neurostimd bench --only loop --only scale --json bench.json",
    "status": "neurostimd status --config config/serial.toml --json",
    "closed-loop-eval": "neurostimd closed-loop-eval --plant beta --seeds 10 --duration 600 --jobs 2 --out runs/cle",
    "audit": "neurostimd audit verify /var/lib/neurostimd/audit.jsonl",
    "export": "neurostimd export runs/sim/recordings/SESSION --to fif runs/session_raw.fif",
    "init": "neurostimd init ~/neurostimd && neurostimd check-config ~/neurostimd/config/sim.toml",
}


def _finish(parser: argparse.ArgumentParser, version: str, name: str | None = None) -> None:
    """--version and the one help formatter on `parser` and every subcommand under it, and its example."""
    parser.formatter_class = _Help
    if parser.description and "\n" not in parser.description:  # written to be wrapped: wrap it here
        parser.description = textwrap.fill(parser.description, 100)
    if name in _EXAMPLES and "example" not in (parser.epilog or ""):
        parser.epilog = (parser.epilog.rstrip() + "\n\n" if parser.epilog else "") + f"example:\n  {_EXAMPLES[name]}"
    if not any("--version" in a.option_strings for a in parser._actions):
        parser.add_argument("--version", action="version", version=f"neurostimd {version}")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                _finish(sub, version, sub_name if name is None else None)


def build_parser() -> argparse.ArgumentParser:
    from neurostimd import __version__

    p = argparse.ArgumentParser(
        prog="neurostimd",
        description="Closed-loop neural stimulation controller (research software, not a medical device).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run the closed-loop daemon")
    r.add_argument("--config", required=True, help="TOML config file (see config/sim.toml)")
    r.add_argument("--port", help="serial port of the stimulator board; overrides [device] port")
    r.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: run forever)")
    r.add_argument("--shadow", action="store_true", help="decide and audit, but never command the board")
    r.add_argument("--timings", help="write per-tick stage latencies as JSON lines to this file (used by the bench)")

    rp = sub.add_parser("replay", help="run the whole pipeline over a recording on a virtual clock")
    rp.add_argument("recording", help="continuous .npz, .csv, .edf/.bdf, .xdf, .arff, a format MNE reads (.fif, "
                                      ".vhdr, .set, ...: the lab extra), or a recorder session folder")
    rp.add_argument("--config", required=True, help="the daemon config whose model, policy and safety replay uses")
    rp.add_argument("--speed", default="max", help="N (x real time) or max (default)")
    rp.add_argument("--out", required=True, help="output folder for decisions.jsonl, audit.jsonl, timeline.png")
    rp.add_argument("--stream-name", default=None, metavar="NAME",
                    help="an XDF file's signal stream, by name (overrides [source] stream_name)")
    rp.add_argument("--stream-type", default=None, metavar="TYPE",
                    help="an XDF file's signal stream, by type, e.g. EEG (overrides [source] stream_type)")

    c = sub.add_parser("check-config", help=f"validate a config file (exit 0, or {EX_CONFIG} with one line per error)")
    c.add_argument("config", help="the TOML config file to check")

    sub.add_parser("config-schema", help="print the config's JSON Schema")

    t = sub.add_parser("train", help="train a model bundle", epilog=_LABELS_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--data", action="append", required=True,
                   help="recording (repeatable): continuous or epoch-set .npz, CSV, ARFF, EDF/BDF, XDF, ... with "
                        "labels of its own or from --labels")
    _label_arguments(t)
    t.add_argument("--out", required=True, help="bundle folder to write")
    t.add_argument("--epochs", type=int, default=100, help="training epochs at most (early stopping on val)")
    t.add_argument("--seed", type=int, default=0, help="seed of the split, the weights and the search")
    t.add_argument("--batch-size", type=int, default=32, help="windows per gradient step")
    t.add_argument("--table", help="stimulation table (TOML); default: the notebook's three-state table")
    t.add_argument("--features", default=None, help="feature kind (bandpower or raw); default bandpower")
    t.add_argument("--val-fraction", type=float, default=0.2,
                   help="fraction of the training segments/time kept for early stopping")
    t.add_argument("--test-fraction", type=float, default=0.0,
                   help="hold this fraction of segments/time out of training entirely (for evaluate)")
    t.add_argument("--hop-ms", type=float, default=None, help="feature frame hop in ms (default 50, the cadence)")
    t.add_argument("--frame-hops", type=int, default=None, help="frame length in hops (default 2)")
    t.add_argument("--frames", type=int, default=None, help="T, frames per model window (default 10)")
    t.add_argument("--block-s", type=float, default=20.0,
                   help="continuous recordings: length of the time blocks that splits keep whole")
    t.add_argument("--stride", type=int, default=1, help="train on every Nth window (1 = all)")
    # front end, stored in the bundle (docs/classifier.md, "Front end")
    t.add_argument("--channels", default=None, help="the model's input channels by name, e.g. F3,C3,F4,C4 "
                                                    "(default: every channel of the recording)")
    t.add_argument("--reference", default=None, help="re-reference: none (default), car (common average over the "
                                                     "input channels) or bipolar pairs F3-C3,F4-C4")
    t.add_argument("--notch", type=int, choices=[50, 60], default=None,
                   help="mains notch at 50 or 60 Hz and its harmonics below 0.45 fs, before the band filters")
    # search (docs/classifier.md, "Search")
    t.add_argument("--search", action="store_true",
                   help="choose the front end (features, hop, frame, T) and the model (BiLSTM, CNN or linear; "
                        "sizes, dropout, learning rate) by cross-validation over whole training segments, then "
                        "train the best --ensemble models and average them; --features/--hop-ms/--frame-hops/"
                        "--frames given are kept, not searched")
    t.add_argument("--folds", type=int, default=3, help="--search: cross-validation folds of whole segments")
    t.add_argument("--front-end-trials", type=int, default=24,
                   help="--search: front-end candidates (each scored in seconds by a linear proxy)")
    t.add_argument("--search-trials", type=int, default=8,
                   help="--search: model candidates (each trained once per fold)")
    t.add_argument("--ensemble", type=int, default=3, help="--search: average the best K models (1 = one model)")
    t.add_argument("--search-epochs", type=int, default=20, help="--search: epochs at most per fold fit")
    t.add_argument("--max-windows", type=int, default=6000,
                   help="--search: training windows per fit at most (every Nth overlapping window beyond)")
    t.add_argument("--max-window-s", type=float, default=5.0,
                   help="--search: longest model window (s) a candidate may take (the decision's latency)")
    t.add_argument("--archs", default="bilstm,cnn,linear", help="--search: architectures that compete")
    t.add_argument("--search-report", default=None,
                   help="--search: folder for summary.json, trials.csv and search.png (default: OUT-search)")
    add_runner_options(t, "--search: trials (and ensemble members)")

    e = sub.add_parser("evaluate", help="evaluate a bundle on held-out data and write a report", epilog=_LABELS_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--bundle", required=True, help="the model bundle folder to evaluate")
    e.add_argument("--data", required=True, help="a labelled recording, as for train")
    _label_arguments(e, evaluate=True)
    e.add_argument("--report", required=True, help="folder for metrics.json and PNGs")
    e.add_argument("--split", choices=["auto", "all", "test"], default="auto",
                   help="test: the bundle's held-out segments of this data (a file it trained on); all: all of it "
                        "(a file it never saw); auto: test for a file it trained on, all for any other")

    b = sub.add_parser("bench", help="run the benchmark suite")
    b.add_argument("--json", dest="json_path", default="bench.json", help="where to write the figures")
    from neurostimd.commands.bench import SECTIONS

    b.add_argument("--only", action="append", default=None, choices=SECTIONS, metavar="SECTION",
                   help=f"run only this section (repeatable): {', '.join(SECTIONS)}; default: all")
    b.add_argument("--quick", action="store_true", help="shorter runs (for tests; figures are noisier)")

    s = sub.add_parser("status", help="show the running daemon's state")
    s.add_argument("--config", default=None, help="config of the daemon (to find its state file)")
    s.add_argument("--state-file", default=None, help="the daemon's state file (instead of --config)")
    s.add_argument("--json", action="store_true", help="print the state as JSON (for machines)")

    cl = sub.add_parser("closed-loop-eval", help="none / continuous / the three control laws on a simulated plant")
    cl.add_argument("--plant", choices=("markov", "beta"), default="markov", help="the simulated plant")
    cl.add_argument("--arms", default=None,
                    help="evaluation file: the base config and each law arm (default config/eval/PLANT.toml)")
    cl.add_argument("--duration", type=float, default=600.0, help="simulated seconds per arm")
    cl.add_argument("--seed", type=int, default=0, help="first plant seed")
    cl.add_argument("--seeds", type=int, default=10, help="number of seeds (seed, seed+1, ...)")
    cl.add_argument("--quick", action="store_true", help="2 seeds x 30 s (overrides --seeds and --duration)")
    cl.add_argument("--continuous-amplitude", type=float, default=None,
                    help="mA of the continuous arm (default: the evaluation file's [continuous])")
    cl.add_argument("--arm", action="append", default=None,
                    choices=("none", "continuous", "table", "dual_threshold", "proportional"),
                    help="run only this arm (repeatable)")
    add_runner_options(cl, "arms x seeds")
    cl.add_argument("--block", type=int, default=50,
                    help="samples per board block, i.e. per plant step (default 50: one 50 ms tick)")
    cl.add_argument("--no-plot", action="store_true", help="skip the figure")
    cl.add_argument("--out", required=True, help="folder for the tables, the figure and each episode's files")
    t = sub.add_parser(
        "tune-stim", help="tune a law's stimulation or gains on a simulated plant by feedback (Optuna)",
        description="Tune a control law's stimulation (table) or gains (dual threshold, PI) on a simulated "
                    "plant, one closed-loop episode per trial and plant seed, with Optuna's TPE sampler; every "
                    "proposal is mapped into the safety gate's envelope before it is tried (docs/tune-stim.md)",
        epilog="example:\n  neurostimd tune-stim --plant beta --law dual_threshold --trials 30 --episode-s 300 "
               "--plant-seeds 100,101 --grid 7 --out runs/tune")
    t.add_argument("--plant", choices=("markov", "beta"), default="beta", help="the simulated plant")
    t.add_argument("--arms", default=None, help="evaluation file (default config/eval/PLANT.toml): the base "
                                                 "config, the continuous reference and the law's base settings")
    t.add_argument("--law", choices=("table", "dual_threshold", "proportional"), required=True, help="the law tuned")
    t.add_argument("--space", action="append", default=[], metavar="NAME=LO:HI[:log]|NAME=unit",
                   help="a searched setting (repeatable); default: dual_threshold amplitude_high_ma (unit) and "
                        "termination_ms; proportional kp and setpoint; table each stimulating row's amplitude. "
                        "state<N>.<field> names a table row's field")
    t.add_argument("--trials", type=int, default=30, help="search trials (episodes per plant seed)")
    t.add_argument("--plant-seeds", default="100,101", help="plant seeds each trial runs (use tuning seeds)")
    t.add_argument("--episode-s", type=float, default=300.0, help="simulated seconds per episode")
    t.add_argument("--charge-weight", type=float, default=0.5, help="score = in target %% − W × charge %%")
    t.add_argument("--max-charge-pct", type=float, default=None,
                   help="constraint: charge at most this %% of continuous")
    t.add_argument("--grid", type=int, default=0, help="also run the exhaustive grid, N points per dimension")
    t.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    add_runner_options(t, "trials")
    t.add_argument("--out", required=True, help="folder for the tuned config, the trials and the plots")
    from neurostimd.commands.export import add_parser as add_export_parser

    add_export_parser(sub)
    from neurostimd.commands.sweep import add_parser as add_sweep_parser

    add_sweep_parser(sub)
    ini = sub.add_parser("init", help="write a working configuration (configs, model bundles, systemd files) into DIR",
                         description="Copy the example configs, the model bundles and the systemd files the package "
                                     "carries into DIR, with the configs' paths made absolute under DIR.")
    ini.add_argument("dir", metavar="DIR", help="the folder to write (created if needed)")
    ini.add_argument("--force", action="store_true", help="replace files DIR already has")
    au = sub.add_parser("audit", help="check the audit log")
    au_sub = au.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    v = au_sub.add_parser(
        "verify", help="check the hash chain of every segment of an audit log",
        description="Walk every segment of the audit log in order (oldest first, then the active file) and\n"
                    "check that each record's `prev` is the sha256 of the record before it, that seq goes up\n"
                    "by one, and that each segment starts with an audit_segment record naming the one before.\n"
                    "Torn lines left by a crash are reported, not counted as breaks, when the next record\n"
                    "names them. What the chain does and does not prove: docs/audit-log.md.",
        epilog=_VERIFY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("path", help="the active audit log file ([audit] path), or the folder it is in")
    v.add_argument("--json", action="store_true", help="print the report as JSON (for machines)")
    v.add_argument("--expect", action="append", metavar="SEQ:SHA256",
                   help="the record with this seq must have this sha256 (a chain head from the journal); repeatable")
    _finish(p, __version__)
    return p


def cmd_check_config(args: argparse.Namespace) -> int:
    from neurostimd.config import load_config
    from neurostimd.errors import ConfigError

    try:
        load_config(args.config)
    except ConfigError as err:
        for line in err.errors or [str(err)]:
            print(f"{args.config}: {line}", file=sys.stderr)
        return EX_CONFIG
    print(f"{args.config}: OK")
    return 0


def cmd_config_schema(args: argparse.Namespace) -> int:
    import json

    from neurostimd.config import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


# Commands that run the closed loop: numpy's OpenBLAS on one thread. Its worker threads busy-wait after each call,
# and the loop calls it every tick on small arrays, so on a 2-core machine one of them spun at 100 % of a core the
# whole run (daemon CPU 104 % against 4.4 % with one thread, measured 2026-12-03; docs/realtime.md). Set before numpy
# is first imported (a command module imports it); an explicit OPENBLAS_NUM_THREADS is kept.
_LOOP_COMMANDS = ("run", "replay", "sweep", "closed-loop-eval", "tune-stim", "bench")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in _LOOP_COMMANDS:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    module_name, func_name = _COMMANDS[args.command].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        if args.command == "run" or not _stdout_closed():
            raise  # the daemon's own, or a pipe to a child process: a real failure, with its traceback
        return 141  # the shell's status for a death by SIGPIPE


def _stdout_closed() -> bool:
    """Whether the reader of our stdout went away (`neurostimd status --json | head`); if so, stdout is pointed at
    /dev/null so that Python's flush at exit adds no second traceback."""
    import select

    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        # the write end of a pipe whose reader has gone reports POLLERR
        if not any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0)):
            return False
    except (OSError, ValueError):  # a stdout without a file descriptor: nothing to tell by
        return False
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except OSError:
        pass
    return True


if __name__ == "__main__":
    sys.exit(main())
