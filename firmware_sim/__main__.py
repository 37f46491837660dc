"""The simulated stimulator board as a process behind a pseudo-terminal (or a real serial port).

    python -m neurostimd.firmware_sim --pty [--pty-link PATH] [--log EVENTS.jsonl] [--plant markov|beta]

The simulator imports no host code, so it reads no recording files itself: `main(read_signal=...)` takes the reader
from its caller. `neurostimd-sim` (neurostimd.commands.simulator) is this program with `--signal RECORDING` read by
neurostimd's recording reader, and SimulatorProcess there is the one way host code and tests start it; run bare,
this module plays the synthetic signal only. `--plant` names the simulated tissue behind it
(neurostimd.firmware_sim.plants: the Markov plant by default, or the STN–GPe beta model; docs/plants.md).

With --pty it prints `PTY <path>` as its first stdout line; a host opens that path as a serial port. The loop
sleeps on select() until the next absolute deadline (next sample block, dead-man deadline) or until the host writes.
It keeps serving when the host closes the port (a host may come back) and when garbage arrives on the line.
SIGTERM / SIGINT: stop stimulating (event log: stim_off, reason "shutdown") and exit 0.
SIGHUP: reboot the board, as its reset button would (stimulation off, session forgotten, sample counter back to 0).

Test hooks that emulate a faulty or unsafe board (never needed for normal use): --limit NAME=VALUE reports (and
enforces) another hard limit, --pace-rate HZ sends samples at another rate than INFO declares, --no-session-check
obeys any session token, --watchdog-ms 0 has no dead-man timer.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import select
import signal
import sys
import time
import tty
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

import serial
import structlog

from neurostimd.drivers.neurostim_board.codec import SampleFormat
from neurostimd.drivers.types import BoardLimits
from neurostimd.firmware_sim.board import DEFAULT_LIMITS, Board, EventLog
from neurostimd.firmware_sim.generator import FileSource, Playable, SampleSource
from neurostimd.firmware_sim.plants import DEFAULT_PLANT, PLANTS, make_plant
from neurostimd.firmware_sim.turnaround import Turnaround

log = structlog.get_logger("firmware_sim")

# Output the host has not read yet is kept for about this long (at least 64 KiB); beyond that the oldest bytes are
# dropped, as a board's small transmit FIFO would: a host that comes back wants fresh samples, not a stale backlog.
PENDING_TX_S = 0.5

# Reads the recording named by --signal (the parsed arguments give the path and any reading options).
SignalReader = Callable[[argparse.Namespace], Playable]


def build_parser(prog: str = "python -m neurostimd.firmware_sim") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Simulated neurostimd stimulator board.")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--pty", action="store_true", help="open a pseudo-terminal and print 'PTY <path>' first")
    where.add_argument("--port", help="serve on this real serial port instead")
    p.add_argument("--pty-link", help="also make this path a symlink to the pty (a stable name for the host)")
    p.add_argument("--baudrate", type=int, default=2_000_000, help="baud rate for --port")
    p.add_argument("--channels", type=int, default=None, help="channels (default 32; a recording sets its own)")
    p.add_argument("--rate", type=float, default=None,
                   help="sample rate in Hz (default 1000; a recording sets its own)")
    p.add_argument("--block", type=int, default=10, help="samples per SAMPLES frame (default 10)")
    p.add_argument("--format", choices=["int16", "float32"], default="int16", help="sample format on the wire")
    p.add_argument("--uv-per-lsb", type=float, default=0.195, help="µV per count for int16 (default 0.195)")
    p.add_argument("--watchdog-ms", type=int, default=250, help="dead-man timeout in ms (default 250)")
    p.add_argument("--log", help="event log (JSON lines): stim_applied, stim_off, watchdog_trip, …")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--signal", default="synthetic",
                   help="'synthetic' (default) or a recording (neurostimd-sim reads every format replay reads)")
    p.add_argument("--loop", action="store_true", help="loop the recording instead of going quiet at its end")
    p.add_argument("--impedance-ohm", type=float, default=None, help="electrode impedance the board reports")
    p.add_argument("--initial-state", type=int, default=0, choices=[0, 1, 2], help="plant state at start")
    p.add_argument("--plant", default=DEFAULT_PLANT, choices=list(PLANTS),
                   help="the simulated tissue behind the synthetic signal (default markov; beta: the STN-GPe model "
                        "of docs/plants.md, 8 channels by default)")
    p.add_argument("--rt-priority", type=int, default=0, metavar="N",
                   help="run under SCHED_FIFO at this priority (1-99), as firmware has its own processor: a host's "
                        "benchmark then measures the host, not the simulator waiting for a CPU (default 0: off; "
                        "needs root or CAP_SYS_NICE)")
    faulty = p.add_argument_group("emulating a faulty or unsafe board (for testing the host)")
    faulty.add_argument("--limit", action="append", default=[], metavar="NAME=VALUE",
                        help="report and enforce this hard limit instead of the default (e.g. max_frequency_hz=0)")
    faulty.add_argument("--pace-rate", type=float, default=None, metavar="HZ",
                        help="send samples at this rate while INFO declares --rate (a board with a wrong clock)")
    faulty.add_argument("--no-session-check", action="store_true",
                        help="obey requests with any session token (firmware without the protocol-2 session check)")
    return p


def parse_limits(items: Sequence[str], watchdog_ms: int) -> BoardLimits:
    """The default limits with --limit NAME=VALUE overrides (and --watchdog-ms)."""
    values: dict[str, float | int] = {**DEFAULT_LIMITS.__dict__, "watchdog_ms": int(watchdog_ms)}
    names = [n for n in values if n != "watchdog_ms"]  # the dead-man timeout is --watchdog-ms
    for item in items:
        name, _, raw = item.partition("=")
        if name not in names or not raw:
            raise ValueError(f"--limit {item!r}: use NAME=VALUE with NAME one of {', '.join(names)}")
        try:
            values[name] = float(raw)
        except ValueError as err:
            raise ValueError(f"--limit {item!r}: {raw!r} is not a number") from err
    return BoardLimits(**values)  # type: ignore[arg-type]  # the names are BoardLimits' own fields


def make_source(args: argparse.Namespace, read_signal: SignalReader | None = None) -> SampleSource:
    """The synthetic signal, or the --signal recording read by `read_signal`; ValueError naming the problem."""
    plant = getattr(args, "plant", DEFAULT_PLANT)
    if args.signal == "synthetic":
        default_channels = 8 if plant == "beta" else 32
        return make_plant(plant, args.channels or default_channels, args.rate or 1000.0, args.seed,
                          initial_state=args.initial_state)
    if plant != DEFAULT_PLANT:
        raise ValueError(f"--plant {plant} makes the synthetic signal; a --signal recording has no plant (drop one)")
    if read_signal is None:
        raise ValueError(f"--signal {args.signal}: this entry point plays only the synthetic signal (the simulator "
                         f"imports no host code, so it reads no files); play a recording with neurostimd-sim "
                         f"(python -m neurostimd.commands.simulator)")
    src = FileSource(read_signal(args), loop=args.loop)
    for flag, given, actual in (("--channels", args.channels, src.n_channels), ("--rate", args.rate,
                                                                                src.sample_rate_hz)):
        if given is not None and given != actual:
            raise ValueError(f"{flag} {given} disagrees with the recording {args.signal} ({actual}); drop {flag}")
    return src


class _Stop:
    """Signal flags for the serve loop: SIGTERM/SIGINT ask it to exit, SIGHUP to reboot the board."""

    def __init__(self) -> None:
        self.requested = False
        self.reboot = False
        self.signum = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reboot = True
            return
        self.requested = True
        self.signum = signum


def _open_pty() -> tuple[int, int, str]:
    master, slave = os.openpty()
    # raw mode: no echo, no CR/LF translation, no line editing — the line carries binary frames
    tty.setraw(slave)
    os.set_blocking(master, False)
    return master, slave, os.ttyname(slave)


def _set_rt_priority(priority: int) -> None:
    """SCHED_FIFO at `priority` for the whole simulator; ValueError saying what to change where the OS refuses."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except PermissionError as err:
        raise ValueError(f"--rt-priority {priority}: the OS refused SCHED_FIFO ({err}); run as root or with "
                         f"CAP_SYS_NICE, raise RLIMIT_RTPRIO (ulimit -r), or leave --rt-priority out") from err


def serve(args: argparse.Namespace, read_signal: SignalReader | None = None) -> int:
    if args.rt_priority:
        _set_rt_priority(args.rt_priority)
    source = make_source(args, read_signal)
    events = EventLog(args.log)
    board = Board(source=source, block_size=args.block, sample_format=SampleFormat.from_label(args.format),
                  uv_per_lsb=args.uv_per_lsb, watchdog_ms=args.watchdog_ms, impedance_ohm=args.impedance_ohm,
                  limits=parse_limits(args.limit, args.watchdog_ms), device_id=f"neurostimd-sim-{os.getpid()}",
                  event_log=events, start_ns=time.monotonic_ns(), check_session=not args.no_session_check,
                  pace_rate_hz=args.pace_rate)
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, stop)

    port: serial.Serial | None = None
    slave = -1
    link_path: Path | None = None
    if args.pty:
        fd, slave, path = _open_pty()
        if args.pty_link:
            link_path = Path(args.pty_link)
            with contextlib.suppress(FileNotFoundError):
                link_path.unlink()
            link_path.symlink_to(path)
        print(f"PTY {path}", flush=True)
    else:
        port = serial.Serial(args.port, args.baudrate, timeout=0)
        fd = port.fileno()
        path = args.port
        print(f"PORT {path}", flush=True)
    log.info("sim_started", path=path, n_channels=board.n_channels, sample_rate_hz=board.sample_rate_hz,
             block=board.block_size, sample_format=board.sample_format.label, watchdog_ms=args.watchdog_ms,
             signal=args.signal)

    pending = bytearray()
    turnaround = Turnaround()  # host frame read -> its reply written (the board event log's `sim_turnaround`)
    itemsize = 2 if board.sample_format is SampleFormat.INT16 else 4
    max_pending = max(1 << 16, int(PENDING_TX_S * board.sample_rate_hz * board.n_channels * itemsize * 1.1))
    try:
        while not stop.requested:
            if stop.reboot:
                stop.reboot = False
                board.reboot(time.monotonic_ns())
                turnaround.dropped(len(pending))
                pending.clear()  # what the board had queued is gone with it
            now = time.monotonic_ns()
            wake = board.next_wakeup_ns()
            timeout_s = 1.0 if wake is None else max(0.0, (wake - now) / 1e9)
            try:
                readable, _, _ = select.select([fd], [fd] if pending else [], [], timeout_s)
            except InterruptedError:
                continue
            if readable:
                try:
                    data = os.read(fd, 1 << 16)
                except BlockingIOError:
                    data = b""
                except OSError as err:
                    # EIO on a pty master: the host closed the port; keep serving, it may come back
                    if err.errno != errno.EIO:
                        raise
                    data = b""
                    time.sleep(0.001)
                if data:
                    t_read = time.monotonic_ns()
                    reply = board.feed(data, t_read)
                    turnaround.queued(len(reply), t_read)
                    pending += reply
            more = board.advance(time.monotonic_ns())
            turnaround.queued(len(more))
            pending += more
            if pending:
                if len(pending) > max_pending:
                    turnaround.dropped(len(pending) - max_pending)
                    del pending[:len(pending) - max_pending]  # nobody reads: drop the oldest output
                try:
                    n = os.write(fd, pending)
                    turnaround.wrote(n, time.monotonic_ns())
                    del pending[:n]
                except BlockingIOError:
                    pass  # the host is not reading fast enough; try again on the next wake
                except OSError as err:
                    if err.errno != errno.EIO:
                        raise
                    turnaround.dropped(len(pending))
                    pending.clear()
    finally:
        board.shutdown(time.monotonic_ns())
        events.write("sim_turnaround", time.monotonic_ns(), **turnaround.summary())
        log.info("sim_stopped", signal=stop.signum, counters=board.counters.__dict__, turnaround=turnaround.summary())
        events.close()
        if link_path is not None:
            with contextlib.suppress(FileNotFoundError):
                link_path.unlink()
        if port is not None:
            port.close()
        else:
            os.close(fd)
            os.close(slave)
    return 0


def main(argv: Sequence[str] | None = None, *, parser: argparse.ArgumentParser | None = None,
         read_signal: SignalReader | None = None) -> int:
    """Run the simulator; `parser` (build_parser's, perhaps extended) and `read_signal` come from a host entry point
    that reads recordings (neurostimd.commands.simulator)."""
    parser = parser or build_parser()
    prog = parser.prog
    args = parser.parse_args(argv)
    # stdout carries the PTY line; everything the sim logs goes to stderr
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    if args.block <= 0 or args.watchdog_ms < 0 or (args.channels is not None and args.channels <= 0) \
            or (args.rate is not None and args.rate <= 0) or (args.pace_rate is not None and args.pace_rate <= 0):
        print(f"{prog}: --block, --channels, --rate and --pace-rate must be positive, --watchdog-ms at least "
              "0 (0: no dead-man timer)", file=sys.stderr)
        return 2
    if not 0 <= args.rt_priority <= 99:
        print(f"{prog}: --rt-priority must be 0 (off) to 99, not {args.rt_priority}", file=sys.stderr)
        return 2
    try:
        return serve(args, read_signal)
    except ValueError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 2
    except serial.SerialException as err:
        print(f"{prog}: cannot open {args.port}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
