"""`neurostimd status`: the running daemon's phase, state, stimulation, faults and counters, from its state file
(written by `neurostimd.outputs.status.StateFile`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from neurostimd.service.exitcodes import EX_CONFIG


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_state(path: Path) -> dict[str, Any]:
    """The daemon's last published state, with `running` (its pid is alive) and `age_s` added."""
    state: dict[str, Any] = json.loads(path.read_text())
    state["running"] = bool(state.get("pid")) and _pid_alive(int(state["pid"])) and not state.get("exited")
    state["age_s"] = round(time.time() - float(state.get("t_unix", 0.0)), 3)
    return state


def _format(state: dict[str, Any]) -> str:
    applied = state.get("applied") or {}
    stim = ("off" if not applied else
            f"{applied['frequency_hz']:g} Hz, {applied['amplitude_ma']:g} mA, {applied['pulse_width_us']:g} µs")
    lines = [
        f"daemon:      {'running' if state['running'] else 'not running'} (pid {state.get('pid')}, "
        f"updated {state['age_s']:.1f} s ago)",
        f"phase:       {state.get('phase')}{' (shadow)' if state.get('shadow') else ''}",
        f"state:       {state.get('state_name') or state.get('state')} (confidence {state.get('confidence', 0):.2f})",
        f"stimulation: {stim}",
        f"fault:       {state.get('fault') or 'none'}",
        f"ticks:       {state.get('ticks')}  overruns: {state.get('overruns')}  "
        f"samples: {state.get('samples')}  gaps: {state.get('gaps')}",
    ]
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    if args.state_file:
        path = Path(args.state_file)
    else:
        from neurostimd.config import load_config
        from neurostimd.errors import ConfigError

        try:
            cfg = load_config(args.config or "config/sim.toml")
        except ConfigError as err:
            print(f"neurostimd status: {err}; pass --state-file to read a state file directly", file=sys.stderr)
            return EX_CONFIG
        path = cfg.runtime.state_file
    try:
        state = read_state(path)
    except FileNotFoundError:
        print(f"neurostimd status: no state file at {path}: the daemon has not run with this config "
              f"(start it with `neurostimd run --config ...`)", file=sys.stderr)
        return 3  # LSB: program is not running
    except (OSError, ValueError) as err:
        print(f"neurostimd status: cannot read {path}: {err}", file=sys.stderr)
        return 4
    print(json.dumps(state, indent=2) if args.json else _format(state))
    return 0 if state["running"] else 3
