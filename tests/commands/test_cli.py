"""The command line as a user meets it: --version on every command, help that shows defaults and an example,
`bench --only` naming its sections, and no traceback when the reader of our output goes away."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from neurostimd import __version__
from neurostimd.commands.bench import SECTIONS
from neurostimd.commands.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def _commands(p: argparse.ArgumentParser,
              path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    out = [(path, p)]
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                out += _commands(sub, (*path, name))
    return out


ALL = [path for path, _ in _commands(build_parser())]


@pytest.mark.parametrize("path", ALL, ids=[" ".join(p) or "neurostimd" for p in ALL])
def test_every_command_answers_version(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ex:
        main([*path, "--version"])
    assert ex.value.code == 0
    assert capsys.readouterr().out.strip() == f"neurostimd {__version__}"


def test_every_subcommand_has_an_example_and_every_option_a_help() -> None:
    for path, parser in _commands(build_parser()):
        if not path or any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
            continue  # the top level and `audit` list their commands
        text = parser.format_help()
        assert "example" in text and "neurostimd " in text.split("example")[-1], path
        for a in parser._actions:
            assert a.help, f"{' '.join(path)} {a.option_strings or a.dest} has no help"


def test_help_shows_defaults_but_not_for_unset_options_or_flags() -> None:
    train = dict(_commands(build_parser()))[("train",)].format_help()
    assert "(default: 100)" in train  # --epochs
    assert "(default: 0.2)" in train  # --val-fraction
    assert "(default: None)" not in train and "(default: False)" not in train
    tune = dict(_commands(build_parser()))[("tune-stim",)].format_help()
    assert "in target % − W × charge % (default: 0.5)" in tune  # a % in the help survives


def test_bench_only_lists_its_sections_and_refuses_an_unknown_one(capsys: pytest.CaptureFixture[str]) -> None:
    help_text = dict(_commands(build_parser()))[("bench",)].format_help()
    assert all(name in help_text for name in SECTIONS)
    with pytest.raises(SystemExit) as ex:
        main(["bench", "--only", "lopo"])
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'lopo'" in err and "loop" in err


def test_a_closed_pipe_ends_the_command_quietly(tmp_path: Path) -> None:
    """`neurostimd status --json | head -c 20`: the reader leaves early; no traceback, the status of a SIGPIPE."""
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"phase": "running", "ticks": 5, "pid": 1, "probs": [0.1] * 40000,
                                 "updated_unix": 0}))
    argv = ["status", "--json", "--state-file", str(state)]  # about 480 KB: more than a pipe holds
    proc = subprocess.Popen([sys.executable, "-m", "neurostimd", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    head = proc.stdout.read(20)
    proc.stdout.close()  # what `head` does
    err = proc.stderr.read().decode()
    code = proc.wait(60)
    proc.stderr.close()
    assert head
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert code in (0, 141), err  # 0 when all of it fitted the pipe before the reader left
