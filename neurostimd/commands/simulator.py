"""`neurostimd-sim`: the simulated board (neurostimd.firmware_sim) as a process, and `SimulatorProcess`, the one way
host code and tests start it.

    neurostimd-sim --pty [--plant markov|beta] [--signal synthetic|RECORDING] [--signal-rate HZ] [--signal-units UNIT]
                   [--signal-stream NAME] [--signal-stream-type TYPE] [board options]
    neurostimd-sim --device pulsepal|stimjim --pty [--log F] [that device's options]

The simulator imports no host code, so it reads no files: this entry point reads `--signal` with the one recording
reader (neurostimd.sources.recordings: .npz, CSV, EDF/BDF, XDF, ARFF, the MNE formats, recorder sessions) and hands
the board the samples. `--signal-rate` and `--signal-units` are what `[source] sample_rate_hz` and `units` are to
replay: the rate of a file that has none (ARFF, CSV without a time column), the unit of one that declares none;
`--signal-stream` / `--signal-stream-type` are `[source] stream_name` / `stream_type`. Every other option
is the board's (`python -m neurostimd.firmware_sim --help`).

    neurostimd-sim --lsl NAME [--lsl-type EEG] [--lsl-source-id ID] [--signal synthetic|RECORDING] [--channels N]
                   [--rate HZ] [--block N] [--seed S] [--initial-state K] [--loop]

`--lsl NAME` replaces the pty board (the options are exclusive): it publishes the same signal (the synthetic
generator, or `--signal` read as above) as a pylsl float32 outlet for the devices that stream no samples (Pulse Pal,
StimJim; `[source] kind = "lsl"`). The outlet declares the signal's rate and, per channel, its label (the synthetic
signal's are ch00, ch01, ... as in its training data; a recording's own), unit "microvolts" and type (`--lsl-type`);
the stream's source_id is `--lsl-source-id` (default `neurostimd-sim:NAME`, stable across restarts). It pushes
`--block` samples at a time on absolute deadlines, each sample stamped on pylsl.local_clock() at first-sample time
plus its index / rate (no drift), and prints `LSL <name> <source_id>` first. Without a board nothing stimulates the
plant: the synthetic signal is open loop (the plant's own state changes only). A recording that does not `--loop`
goes quiet at its end, as the board does. SIGTERM / SIGINT: close the outlet and exit 0. pylsl is imported only
here, so the pty board does not need it. `LslSimulatorProcess` starts it from host code and tests."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

import numpy as np
import structlog

from neurostimd.firmware_sim.__main__ import build_parser, make_source
from neurostimd.firmware_sim.__main__ import main as board_main
from neurostimd.firmware_sim.generator import Playable, SampleSource, synthetic_channel_names

log = structlog.get_logger("neurostimd_sim")

MODULE = "neurostimd.commands.simulator"
START_TIMEOUT_S = 30.0


def read_signal(args: argparse.Namespace) -> Playable:
    """The --signal recording, read by neurostimd.sources.recordings; ValueError (the simulator's exit 2) if not."""
    from neurostimd.errors import DataFormatError
    from neurostimd.sources.recordings import read_recording

    try:
        rec = read_recording(args.signal, fs=args.signal_rate, units=args.signal_units,
                             stream_name=args.signal_stream, stream_type=args.signal_stream_type)
    except DataFormatError as err:
        raise ValueError(f"cannot read the --signal recording: {err}") from err
    steps = np.diff(rec.times_s())
    gaps = int(np.count_nonzero(steps > 1.5 / rec.fs))
    if gaps:
        # A device streams without pauses: the gaps' samples are not there to send, and it sends what follows at
        # once. `neurostimd replay` replays gaps as gaps (the ring's gap flag); the simulator cannot.
        log.warning("signal_gaps_played_continuous", signal=str(args.signal), gaps=gaps,
                    missing_s=round(float(np.sum(steps[steps > 1.5 / rec.fs]) - gaps / rec.fs), 3),
                    detail="the simulated device plays the recording's gaps as continuous signal; use "
                           "`neurostimd replay` to replay them as gaps")
    return rec


def parser() -> argparse.ArgumentParser:
    p = build_parser(prog="neurostimd-sim")
    p.add_argument("--device", choices=list(SIMULATED_DEVICES), default="board",
                   help="the simulated device: this project's board (default), or a Sanworks Pulse Pal or an Open "
                        "Ephys StimJim speaking its own protocol (`--device pulsepal --help` lists its options)")
    where = next(g for g in p._mutually_exclusive_groups if any("--pty" in a.option_strings for a in g._group_actions))
    where.add_argument("--lsl", metavar="NAME",
                       help="publish the signal as the LSL stream NAME instead of serving a board (no stimulation "
                            "reaches the plant: the synthetic signal is open loop); prints 'LSL <name> <source_id>'")
    lsl = p.add_argument_group("the LSL stream (--lsl)")
    lsl.add_argument("--lsl-type", default="EEG", metavar="TYPE",
                     help="the stream's and its channels' type (default EEG)")
    lsl.add_argument("--lsl-source-id", default=None, metavar="ID",
                     help="the stream's source_id (default neurostimd-sim:NAME): what a reader pins and reconnects to")
    rec = p.add_argument_group("reading the --signal recording (as [source] sample_rate_hz and units for replay)")
    rec.add_argument("--signal-rate", type=float, default=None, metavar="HZ",
                     help="its sample rate, for a file that has none (ARFF, CSV without a time column)")
    rec.add_argument("--signal-units", default=None, metavar="UNIT",
                     help="the unit of its samples, for a file that declares none (e.g. uV, mV)")
    rec.add_argument("--signal-stream", default=None, metavar="NAME",
                     help="an XDF file's signal stream, by name (as [source] stream_name), when it holds several")
    rec.add_argument("--signal-stream-type", default=None, metavar="TYPE",
                     help="an XDF file's signal stream, by type (as [source] stream_type), e.g. EEG")
    return p


# The board's own options: they mean nothing to an LSL stream, so --lsl refuses them rather than ignore them.
BOARD_ONLY = ("pty_link", "baudrate", "format", "uv_per_lsb", "watchdog_ms", "log", "impedance_ohm", "limit",
              "pace_rate", "no_session_check")


# `--device KIND`: which simulated device serves the pty. The board is this module's own; the stimulators that speak
# their vendors' protocols are processes of their own, with their own options (`--device pulsepal --help`).
SIMULATED_DEVICES = {
    "board": None,
    "pulsepal": "neurostimd.firmware_sim.pulsepal.__main__",
    "stimjim": "neurostimd.firmware_sim.stimjim.__main__",
}


def _pop_device(argv: list[str]) -> tuple[str | None, list[str]]:
    """`--device KIND` (or `--device=KIND`) taken out of argv; None when the option is malformed."""
    out: list[str] = []
    device = "board"
    it = iter(argv)
    for a in it:
        if a == "--device":
            device = next(it, "")
        elif a.startswith("--device="):
            device = a.split("=", 1)[1]
        else:
            out.append(a)
    return (device if device in SIMULATED_DEVICES else None), out


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    device, rest = _pop_device(args_in)
    if device is None:
        print(f"neurostimd-sim: --device must be one of {', '.join(SIMULATED_DEVICES)}", file=sys.stderr)
        return 2
    module = SIMULATED_DEVICES[device]
    if module is not None:
        import importlib

        return int(importlib.import_module(module).main(rest))
    argv = rest
    p = parser()
    args = p.parse_args(argv)
    if args.lsl is None:
        if args.lsl_type != p.get_default("lsl_type") or args.lsl_source_id is not None:
            print(f"{p.prog}: --lsl-type and --lsl-source-id describe an --lsl stream; add --lsl NAME or drop them",
                  file=sys.stderr)
            return 2
        return board_main(argv, parser=p, read_signal=read_signal)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    given = ["--" + d.replace("_", "-") for d in BOARD_ONLY if getattr(args, d) != p.get_default(d)]
    problem = None
    if given:
        problem = f"{', '.join(given)}: options of the board, which --lsl does not serve; drop them"
    elif not args.lsl.strip():
        problem = "--lsl needs a stream name"
    elif args.block <= 0 or (args.channels is not None and args.channels <= 0) or (
            args.rate is not None and args.rate <= 0):
        problem = "--block, --channels and --rate must be positive"
    if problem is not None:
        print(f"{p.prog}: {problem}", file=sys.stderr)
        return 2
    try:
        return serve_lsl(args)
    except ValueError as err:
        print(f"{p.prog}: {err}", file=sys.stderr)
        return 2
    except ImportError as err:
        print(f"{p.prog}: --lsl needs pylsl (and its liblsl), which would not load ({err}); install pylsl",
              file=sys.stderr)
        return 2


def channel_labels(source: SampleSource) -> list[str]:
    """A recording's channel names; the synthetic signal's ch00, ch01, ... (the names its training data carries)."""
    names = getattr(source, "channel_names", None)
    if names is not None:
        return [str(n) for n in names]
    return synthetic_channel_names(source.n_channels)


def stream_info(name: str, stream_type: str, source_id: str, source: SampleSource) -> Any:
    """The pylsl StreamInfo of the simulated stream: float32 at the signal's rate, each channel's label, unit
    (microvolts) and type in desc/channels/channel, as neurostimd.sources.lsl reads them."""
    import pylsl

    info = pylsl.StreamInfo(name, stream_type, source.n_channels, source.sample_rate_hz, pylsl.cf_float32, source_id)
    chans = info.desc().append_child("channels")
    for label in channel_labels(source):
        ch = chans.append_child("channel")
        ch.append_child_value("label", label)
        ch.append_child_value("unit", "microvolts")
        ch.append_child_value("type", stream_type)
    info.desc().append_child("acquisition").append_child_value("manufacturer", "neurostimd-sim")
    return info


def serve_lsl(args: argparse.Namespace) -> int:
    """Publish the signal as an LSL outlet until SIGTERM / SIGINT: `args.block` samples per push, sample k stamped
    t0 + k / rate on pylsl.local_clock() and pushed once that time has come. Exit 0."""
    import pylsl

    source = make_source(args, read_signal)
    source_id = args.lsl_source_id if args.lsl_source_id is not None else f"neurostimd-sim:{args.lsl}"
    fs = source.sample_rate_hz
    outlet = pylsl.StreamOutlet(stream_info(args.lsl, args.lsl_type, source_id, source),
                                chunk_size=args.block, max_buffered=30)
    stop = _LslStop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"LSL {args.lsl} {source_id}", flush=True)
    log.info("sim_lsl_started", name=args.lsl, source_id=source_id, type=args.lsl_type,
             n_channels=source.n_channels, sample_rate_hz=fs, block=args.block, signal=args.signal,
             closed_loop=False)
    sent = 0
    ended = False
    t0 = pylsl.local_clock()
    try:
        while not stop.requested:
            # the next block's last sample is due at t0 + (sent + block - 1) / fs
            wait = t0 + (sent + args.block - 1) / fs - pylsl.local_clock()
            if wait > 0 or ended:
                time.sleep(max(wait, 0.0) if not ended else 0.1)
                continue
            # Behind schedule (a loaded machine): catch up block by block, every sample keeps its own stamp.
            data = source.read(args.block, None)
            n = len(data)
            if n:
                outlet.push_chunk(np.ascontiguousarray(data, dtype=np.float32), t0 + (sent + n - 1) / fs)
                sent += n
            if n < args.block:
                ended = True
                log.info("sim_lsl_signal_ended", samples=sent, detail="the recording ended (no --loop): the stream "
                                                                      "stays open and sends nothing more")
    finally:
        del outlet
        log.info("sim_lsl_stopped", signal=stop.signum, samples=sent)
    return 0


class _LslStop:
    """SIGTERM / SIGINT: end serve_lsl's loop."""

    def __init__(self) -> None:
        self.requested = False
        self.signum = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.signum = signum


class SimulatorError(RuntimeError):
    """The simulator process did not start (its exit code and stderr are in the message)."""


class SimulatorProcess:
    """A running `neurostimd-sim --pty`: started on construction, stopped by stop() or on leaving a `with` block.

    `device` is the simulated device (`board`, `pulsepal`, `stimjim`: `neurostimd-sim --device`); `args` are its
    options (`--pty` and `--log` are added). `log` is its event log (JSON lines),
    `link` a stable path symlinked to the pty (--pty-link), `stderr` a file for its own log (default: a temporary
    file, shown in the error when it fails to start). `new_session` puts it in its own session, so that a Ctrl-C
    on the terminal reaches only its parent. Attributes: `port` (the link, else the pty), `pty`, `pid`, `proc`,
    `log_path`, `stderr_path` (None for the temporary file)."""

    def __init__(self, args: Sequence[str] = (), *, log: str | Path | None = None, link: str | Path | None = None,
                 stderr: str | Path | None = None, timeout_s: float = START_TIMEOUT_S,
                 new_session: bool = True, device: str = "board") -> None:
        if device not in SIMULATED_DEVICES:
            raise ValueError(f"device {device!r}: choose one of {', '.join(SIMULATED_DEVICES)}")
        self.device = device
        self.log_path = Path(log) if log is not None else None
        cmd = [sys.executable, "-m", MODULE, *(["--device", device] if device != "board" else []), "--pty",
               *(["--log", str(log)] if log is not None else []), *args,
               *(["--pty-link", str(link)] if link is not None else [])]
        self.pty = self._spawn(cmd, "PTY <path>", stderr=stderr, timeout_s=timeout_s, new_session=new_session)
        self.port = str(link) if link is not None else self.pty

    def _spawn(self, cmd: list[str], expect: str, *, stderr: str | Path | None, timeout_s: float,
               new_session: bool) -> str:
        """Start `cmd`; the rest of its first stdout line, which must be `expect` (e.g. "PTY <path>": the word, then
        the value); SimulatorError, and the process killed, if it does not come within timeout_s."""
        self.stderr_path = Path(stderr) if stderr is not None else None
        if self.stderr_path is not None:
            self.stderr_path.parent.mkdir(parents=True, exist_ok=True)
        self._stderr: IO[bytes] = self.stderr_path.open("ab") if self.stderr_path is not None else \
            tempfile.TemporaryFile()  # noqa: SIM115  # closed by stop()
        self._stderr_kept = ""  # the temporary file's text, kept when stop() closes (and so deletes) it
        # The child imports the same neurostimd as this process (a checkout's copy, not another installed one).
        pkg_parent = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (pkg_parent, os.environ.get("PYTHONPATH"))
                                                          if p))
        # The simulator's stderr goes to a file: an unread pipe would block it once full.
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr, env=env, bufsize=0,
                                     start_new_session=new_session)
        try:
            return self._first_line(expect, timeout_s)
        except BaseException:
            self.stop(signal.SIGKILL)
            raise

    def _first_line(self, expect: str, timeout_s: float) -> str:
        prefix = expect.split(" ", 1)[0]
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SimulatorError(self._failure(f"printed no '{expect}' line within {timeout_s:g} s"))
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break  # it exited
                buf += chunk
        line = buf.split(b"\n", 1)[0].decode(errors="replace").strip()
        if not line.startswith(prefix + " "):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(2.0)  # so that the message can give its exit code
            got = f"printed {line!r} instead of '{expect}'" if line else "printed nothing"
            raise SimulatorError(self._failure(got))
        return line.split(" ", 1)[1]

    def _failure(self, what: str) -> str:
        code = self.proc.poll()
        status = f"exited with code {code}" if code is not None else "is still running"
        tail = self.stderr_text()[-2000:].strip() or "(nothing)"
        where = f" ({self.stderr_path})" if self.stderr_path is not None else ""
        return f"neurostimd-sim did not start: it {what} and {status}; its stderr{where}:\n{tail}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def reboot(self) -> None:
        """SIGHUP: the board reboots, as its reset button would (stimulation off, session forgotten, counter 0)."""
        self.proc.send_signal(signal.SIGHUP)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int:
        """Send `sig` (SIGTERM: stop stimulating and exit 0), wait, kill it after `timeout_s`; its exit code.
        Calling it again returns the same code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()
        if not self._stderr.closed:
            if self.stderr_path is None:
                self._stderr_kept = self.stderr_text()
            self._stderr.close()
        return int(self.proc.returncode)

    def stderr_text(self) -> str:
        """What the simulator wrote to stderr so far (its log lines, a failure's reason)."""
        if self.stderr_path is not None:
            return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        if self._stderr.closed:
            return self._stderr_kept
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """The event log's records so far (a line being written right now is skipped)."""
        if self.log_path is None or not self.log_path.exists():
            return []
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def __enter__(self) -> SimulatorProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class LslSimulatorProcess(SimulatorProcess):
    """A running `neurostimd-sim --lsl NAME`: the signal as an LSL outlet, no board. Started on construction (it
    has printed `LSL <name> <source_id>`, so its outlet exists), stopped by stop() (SIGTERM: exit 0) or on leaving
    a `with` block. `args` are further options (--signal, --channels, --rate, --block, --seed, --lsl-type ...);
    `source_id` is passed as --lsl-source-id. Attributes: `name`, `source_id`, `pid`, `proc`, `stderr_path`.
    It has no pty, no event log and no reboot."""

    def __init__(self, name: str, args: Sequence[str] = (), *, source_id: str | None = None,
                 stderr: str | Path | None = None, timeout_s: float = START_TIMEOUT_S,
                 new_session: bool = True) -> None:
        self.log_path = None
        cmd = [sys.executable, "-m", MODULE, "--lsl", name, *args,
               *(["--lsl-source-id", source_id] if source_id is not None else [])]
        announced = self._spawn(cmd, "LSL <name> <source_id>", stderr=stderr, timeout_s=timeout_s,
                                new_session=new_session)
        self.name = name
        self.source_id = announced[len(name) + 1:] if announced.startswith(name + " ") else announced

    def reboot(self) -> None:
        raise SimulatorError("an --lsl simulator has no board to reboot; stop() it and start another")


def start_simulator(args: Sequence[str] = (), **kw: Any) -> SimulatorProcess:
    """Start `neurostimd-sim --pty` with `args`; keyword arguments as SimulatorProcess's. SimulatorError, with the
    simulator's stderr, when it does not print its pty within the timeout."""
    return SimulatorProcess(args, **kw)


if __name__ == "__main__":
    sys.exit(main())
