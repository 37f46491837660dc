"""`make run`: the simulated board behind a pty plus the daemon on it, with a live, readable view of what the loop
decides. Ctrl-C (or DURATION seconds) stops the daemon first — so the board ACKs the STOP — and then the board."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from neurostimd.commands.simulator import SimulatorError, SimulatorProcess

ROOT = Path(__file__).resolve().parents[2]  # the project root (config/, runs/)


def _fmt_params(p: dict[str, Any] | None) -> str:
    if not p:
        return "off"
    return f"{p['frequency_hz']:g} Hz  {p['amplitude_ma']:.2f} mA  {p['pulse_width_us']:g} µs"


def _names(items: Any) -> str:
    return ", ".join(str(x).replace("_", " ") for x in items or []) or "none"


def render(rec: dict[str, Any], t0: float, policy: Any = None) -> str | None:
    """One sentence for each daemon log event a person running a session cares about; None for the rest. `policy`
    (the config's [policy]) lets a state change say how long the new state had to hold first."""
    ev = rec.get("event")
    t = f"{time.monotonic() - t0:6.1f}s"
    if ev == "board_ready":
        return f"{t}  board {rec.get('device_id')} fw {rec.get('firmware')}: {rec.get('n_channels')} ch @ " \
               f"{rec.get('sample_rate_hz'):g} Hz"
    if ev == "brainflow_source_open":
        return f"{t}  BrainFlow board {rec.get('board')} (BrainFlow {rec.get('version')}): {rec.get('channel_kind')} " \
               f"{', '.join(rec.get('channels') or [])} @ {rec.get('rate_hz'):g} Hz"
    if ev == "ready":
        return f"{t}  READY in {rec.get('ready_s')} s — deciding every tick"
    if ev == "state_change":
        return f"{t}  state → {rec.get('state_name') or 'none'} (confidence {rec.get('confidence')})" \
               + _held_for(rec, policy)
    if ev in ("stim_command", "stim_stop"):
        lim = rec.get("limited_by") or []
        return f"{t}  stimulation: {_fmt_params(rec.get('applied'))}" + (f"   [gate: {', '.join(lim)}]" if lim else "")
    if ev == "fault":
        return f"{t}  FAULT: {_names(rec.get('raised'))} — safe state {rec.get('safe_state')} " \
               f"(faults now: {_names(rec.get('faults'))})"
    if ev == "fault_cleared":
        return f"{t}  faults cleared: the data is clean again, stimulation may resume (ramping up)"
    if ev == "board_lost":
        return f"{t}  BOARD LOST on {rec.get('port')}: {rec.get('error')} — reconnecting; its dead-man timer stops it"
    if ev == "board_reconnected":
        return f"{t}  board {rec.get('device_id')} back on {rec.get('port')}; stimulation restarts from zero"
    if ev == "overrun":
        stages = rec.get("stages_ms") or {}
        slowest = max(stages, key=lambda k: stages[k]) if stages else None
        return f"{t}  overrun: tick {rec.get('tick')} ended {rec.get('late_ms')} ms past the next deadline " \
               f"({rec.get('missed_ticks')} tick(s) skipped" + (f"; slowest stage {slowest} "
                                                                 f"{stages[slowest]} ms)" if slowest else ")")
    if ev == "stim_send_failed":
        return f"{t}  command not confirmed by the board ({rec.get('reply')}): {rec.get('error')}; requested " \
               f"{_fmt_params(rec.get('requested'))}"
    if rec.get("level") in ("error", "critical"):
        return f"{t}  ERROR {ev}: {rec.get('error') or rec.get('detail') or ''}"
    if ev == "exit":
        return f"{t}  daemon exited with code {rec.get('code')}"
    return None


def _held_for(rec: dict[str, Any], policy: Any) -> str:
    """Why the change came when it did: a state is taken only after onset_ms of agreeing decisions (a stronger
    stimulation) or termination_ms (a weaker one, or none)."""
    if policy is None:
        return ""
    onset, term = getattr(policy, "onset_ms", None), getattr(policy, "termination_ms", None)
    if rec.get("reason") == "state_ended" and term is not None:
        return f", after {term:g} ms without the old state (termination_ms)"
    if onset is not None and term is not None:
        return f", after {onset:g} ms of agreeing decisions (onset_ms; {term:g} ms to a weaker state)"
    return ""


def _pump(stream: IO[str], t0: float, policy: Any = None) -> None:
    for line in stream:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            print(line.rstrip(), flush=True)
            continue
        out = render(rec, t0, policy)
        if out:
            print(out, flush=True)


def _ticker(state_file: Path, t0: float, done: threading.Event, every_s: float = 3.0) -> None:
    """Every few seconds, one line of what the loop is doing now, from the daemon's status file."""
    while not done.wait(every_s):
        try:
            st = json.loads(state_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if st.get("exited"):
            return
        probs = " ".join(f"{p:.2f}" for p in st.get("probs") or [])
        print(f"{time.monotonic() - t0:6.1f}s  [{st.get('phase')}] state {st.get('state_name') or '-'} "
              f"(p = {probs or '-'})  stim {_fmt_params(st.get('applied'))}  fault {st.get('fault') or 'none'}  "
              f"ticks {st.get('ticks')} overruns {st.get('overruns')}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    checkout = (ROOT / "pyproject.toml").is_file()  # a source checkout; installed, ROOT is site-packages
    p.add_argument("--config", default=str(ROOT / "config" / "sim.toml") if checkout else None,
                   help="the daemon's config (default in a checkout: config/sim.toml)")
    p.add_argument("--duration", type=float, default=0.0, help="seconds to run (0: until Ctrl-C)")
    args = p.parse_args(argv)
    if args.config is None:
        raise SystemExit("no --config: write a configuration first with `neurostimd init DIR`, then run "
                         "`python -m neurostimd.commands.demo --config DIR/config/sim.toml` (the demo never writes "
                         "into the installed package)")
    # Ctrl-C before the children exist just ends the demo; after, it is forwarded (see below).
    stop_early = {"flag": False}
    signal.signal(signal.SIGINT, lambda *_: stop_early.update(flag=True))
    from neurostimd.config import load_config
    from neurostimd.errors import ConfigError

    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        raise SystemExit("\n".join([f"{args.config}: {line}" for line in err.errors or [str(err)]])) from err
    runs = Path(cfg.audit.path).parent  # the board's event log beside the daemon's outputs, where the config says
    cmd = [sys.executable, "-m", "neurostimd", "run", "--config", args.config]
    sim: SimulatorProcess | None = None
    if cfg.device.kind == "serial":
        # the simulated board on a pty stands in for the serial stimulator (and, with [source] kind = "board", for
        # the signal); other devices (the in-process virtual board, none) need no simulator
        board_log = runs / "board.jsonl"
        board_log.parent.mkdir(parents=True, exist_ok=True)
        board_log.with_suffix(".stderr").unlink(missing_ok=True)
        try:
            sim = SimulatorProcess(log=board_log, stderr=board_log.with_suffix(".stderr"))
        except SimulatorError as err:
            raise SystemExit(str(err)) from err
        print(f"simulated board on {sim.port} (event log {runs / 'board.jsonl'}); starting the daemon — Ctrl-C stops",
              flush=True)
        cmd += ["--port", sim.port]
    else:
        print(f"[device] kind = {cfg.device.kind!r}, [source] kind = {cfg.source.kind!r}: no simulated board needed; "
              f"starting the daemon — Ctrl-C stops", flush=True)
    if args.duration > 0:
        cmd += ["--duration", str(args.duration)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    daemon = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    assert daemon.stdout is not None
    reader = threading.Thread(target=_pump, args=(daemon.stdout, t0, cfg.policy), name="demo-log", daemon=True)
    reader.start()
    state_file = cfg.runtime.state_file
    state_file.unlink(missing_ok=True)
    done = threading.Event()
    ticker = threading.Thread(target=_ticker, args=(state_file, t0, done), name="demo-status", daemon=True)
    ticker.start()

    def forward(signum: int, _frame: object) -> None:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    if stop_early["flag"]:
        forward(signal.SIGINT, None)
    try:
        code = daemon.wait()
    finally:
        done.set()
        reader.join(timeout=5)
        if sim is not None:
            sim.stop(timeout_s=5)
    print(f"done: daemon exit code {code}; audit log {cfg.audit.path}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
