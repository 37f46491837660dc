"""The simulated StimJim as a process behind a pseudo-terminal (or a real serial port).

    python -m neurostimd.firmware_sim.stimjim --pty [--firmware teensy|rp2354b] [--log EVENTS.jsonl] [--log-pulses]

With --pty it prints `PTY <path>` as its first stdout line (the pty plumbing is firmware_sim.__main__'s). It sleeps
on select() until the next pulse or train end, or until the host writes; it keeps serving when the host closes the
port and whatever arrives on the line. SIGTERM / SIGINT: stop the trains (event log: stim_off, reason "shutdown")
and exit 0. SIGHUP: reboot (trains stop, slots back to their defaults).
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

import serial
import structlog

from neurostimd.firmware_sim.__main__ import _open_pty, _Stop
from neurostimd.firmware_sim.board import EventLog
from neurostimd.firmware_sim.stimjim.device import StimJimDevice

log = structlog.get_logger("firmware_sim.stimjim")

MAX_PENDING = 1 << 16  # output the host has not read; beyond it the oldest is dropped (hardware would block)


def build_parser(prog: str = "python -m neurostimd.firmware_sim.stimjim") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Simulated Open Ephys StimJim.")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--pty", action="store_true", help="open a pseudo-terminal and print 'PTY <path>' first")
    where.add_argument("--port", help="serve on this real serial port instead")
    p.add_argument("--pty-link", help="also make this path a symlink to the pty")
    p.add_argument("--baudrate", type=int, default=115200, help="baud rate for --port (the device ignores it)")
    p.add_argument("--firmware", choices=["teensy", "rp2354b"], default="teensy",
                   help="which firmware to behave as (default teensy: stimjimPulser.ino)")
    p.add_argument("--log", help="event log (JSON lines): stim_applied, stim_off, rearm, dac_wrap, …")
    p.add_argument("--log-pulses", action="store_true", help="also log every pulse (event 'pulse')")
    p.add_argument("--legacy-stop", action="store_true",
                   help="Teensy firmware before ea7d0de (2020-10-09): T-1 / U-1 are invalid indices, not stops")
    p.add_argument("--current-offsets", type=int, nargs=2, default=(0, 0), metavar=("CH0", "CH1"),
                   help="calibration offsets (DAC codes) the device reports and adds")
    return p


def serve(args: argparse.Namespace) -> int:
    events = EventLog(args.log)
    dev = StimJimDevice(args.firmware, event_log=events, start_ns=time.monotonic_ns(), log_pulses=args.log_pulses,
                        legacy_stop=args.legacy_stop, current_offsets=tuple(args.current_offsets))
    stop = _Stop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
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
    log.info("sim_started", device="stimjim", firmware=args.firmware, path=path)
    pending = bytearray()
    try:
        while not stop.requested:
            if stop.reboot:
                stop.reboot = False
                dev.reboot(time.monotonic_ns())
                pending.clear()
            wake = dev.next_wakeup_ns()
            timeout_s = 1.0 if wake is None else max(0.0, (wake - time.monotonic_ns()) / 1e9)
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
                    if err.errno != errno.EIO:  # EIO: the host closed the port; it may come back
                        raise
                    data = b""
                    time.sleep(0.001)
                if data:
                    pending += dev.feed(data, time.monotonic_ns())
            pending += dev.advance(time.monotonic_ns())
            if pending:
                if len(pending) > MAX_PENDING:
                    del pending[:len(pending) - MAX_PENDING]
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
        log.info("sim_stopped", signal=stop.signum, counters=dev.counters)
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
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    try:
        return serve(args)
    except serial.SerialException as err:
        print(f"{parser.prog}: cannot open {args.port}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
