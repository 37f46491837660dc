"""The simulated Pulse Pal as a process behind a pseudo-terminal (or a real serial port).

    python -m neurostimd.firmware_sim.pulsepal --pty [--pty-link PATH] [--log EVENTS.jsonl [--log-pulses]]
        [--firmware 21|22] [--hardware 2|3]

With --pty it prints `PTY <path>` as its first stdout line (the pty plumbing is the board simulator's). The loop
sleeps on select() until the firmware's next event (a pulse, a train end, the inter-byte timeout) or until the host
writes; it keeps serving when the host closes the port and whatever arrives on the line.
SIGTERM / SIGINT: stop every channel (event log: stim_off, reason "shutdown") and exit 0.
SIGUSR1: click the joystick (clears COMM. FAILURE; otherwise aborts every train).
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
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import serial

from neurostimd.firmware_sim.__main__ import _open_pty, _Stop
from neurostimd.firmware_sim.board import EventLog
from neurostimd.firmware_sim.pulsepal.device import PulsePal


def build_parser(prog: str = "python -m neurostimd.firmware_sim.pulsepal") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Simulated Sanworks Pulse Pal (firmware 21 or 22).")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--pty", action="store_true", help="open a pseudo-terminal and print 'PTY <path>' first")
    where.add_argument("--port", help="serve on this real serial port instead")
    p.add_argument("--pty-link", help="also make this path a symlink to the pty (a stable name for the host)")
    p.add_argument("--baudrate", type=int, default=115_200, help="baud rate for --port (USB CDC ignores it)")
    p.add_argument("--firmware", type=int, choices=[21, 22], default=22, help="firmware version (default 22)")
    p.add_argument("--hardware", type=int, choices=[2, 3], default=None,
                   help="Pulse Pal 2 or 3 (default: 3 for firmware 22, 2 for firmware 21)")
    p.add_argument("--log", help="event log (JSON lines): stim_applied, stim_off, comm_failure, …")
    p.add_argument("--log-pulses", action="store_true", help="also log every pulse start (event 'pulse')")
    return p


class _Click:
    def __init__(self) -> None:
        self.pending = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.pending = True


def serve(args: argparse.Namespace) -> int:
    events = EventLog(args.log)
    dev = PulsePal(args.firmware, hardware_version=args.hardware, event_log=events, start_ns=time.monotonic_ns(),
                   log_pulses=args.log_pulses)
    stop, click = _Stop(), _Click()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGUSR1, click)
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
        print(f"PORT {args.port}", flush=True)
    pending = bytearray()
    try:
        while not stop.requested:
            if click.pending:
                click.pending = False
                dev.click(time.monotonic_ns())
            now = time.monotonic_ns()
            wake = dev.next_wakeup_ns()
            timeout_s = 1.0 if wake is None else min(1.0, max(0.0, (wake - now) / 1e9))
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
                    if err.errno != errno.EIO:  # EIO on a pty master: the host closed the port; it may come back
                        raise
                    data = b""
                    time.sleep(0.001)
                if data:
                    pending += dev.feed(data, time.monotonic_ns())
            dev.advance(time.monotonic_ns())
            if pending:
                try:
                    del pending[:os.write(fd, pending)]
                except BlockingIOError:
                    pass
                except OSError as err:
                    if err.errno != errno.EIO:
                        raise
                    pending.clear()
    finally:
        dev.shutdown(time.monotonic_ns())
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return serve(args)
    except (ValueError, serial.SerialException) as err:
        print(f"{parser.prog}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
