"""`neurostimd-sim`: the simulated board (neurostimd.firmware_sim) as a process, and `SimulatorProcess`, the one way
host code and tests start it.

    neurostimd-sim --pty [--signal synthetic|RECORDING] [--signal-rate HZ] [--signal-units UNIT] [board options]

The simulator imports no host code, so it reads no files: this entry point reads `--signal` with the one recording
reader (neurostimd.sources.recordings: .npz, CSV, EDF/BDF, XDF, ARFF, recorder sessions) and hands the board the
samples. `--signal-rate` and `--signal-units` are what `[source] sample_rate_hz` and `units` are to replay: the rate
of a file that has none (ARFF, CSV without a time column), the unit of one that declares none. Every other option
is the board's (`python -m neurostimd.firmware_sim --help`)."""

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
from types import TracebackType
from typing import IO, Any

from neurostimd.firmware_sim.__main__ import build_parser
from neurostimd.firmware_sim.__main__ import main as board_main
from neurostimd.firmware_sim.generator import Playable

MODULE = "neurostimd.commands.simulator"
START_TIMEOUT_S = 30.0


def read_signal(args: argparse.Namespace) -> Playable:
    """The --signal recording, read by neurostimd.sources.recordings; ValueError (the simulator's exit 2) if not."""
    from neurostimd.errors import DataFormatError
    from neurostimd.sources.recordings import read_recording

    try:
        return read_recording(args.signal, fs=args.signal_rate, units=args.signal_units)
    except DataFormatError as err:
        raise ValueError(f"cannot read the --signal recording: {err}") from err


def parser() -> argparse.ArgumentParser:
    p = build_parser(prog="neurostimd-sim")
    rec = p.add_argument_group("reading the --signal recording (as [source] sample_rate_hz and units for replay)")
    rec.add_argument("--signal-rate", type=float, default=None, metavar="HZ",
                     help="its sample rate, for a file that has none (ARFF, CSV without a time column)")
    rec.add_argument("--signal-units", default=None, metavar="UNIT",
                     help="the unit of its samples, for a file that declares none (e.g. uV, mV)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return board_main(argv, parser=parser(), read_signal=read_signal)


class SimulatorError(RuntimeError):
    """The simulator process did not start (its exit code and stderr are in the message)."""


class SimulatorProcess:
    """A running `neurostimd-sim --pty`: started on construction, stopped by stop() or on leaving a `with` block.

    `args` are the simulator's options (`--pty` and `--log` are added). `log` is its event log (JSON lines),
    `link` a stable path symlinked to the pty (--pty-link), `stderr` a file for its own log (default: a temporary
    file, shown in the error when it fails to start). `new_session` puts it in its own session, so that a Ctrl-C
    on the terminal reaches only its parent. Attributes: `port` (the link, else the pty), `pty`, `pid`, `proc`,
    `log_path`, `stderr_path` (None for the temporary file)."""

    def __init__(self, args: Sequence[str] = (), *, log: str | Path | None = None, link: str | Path | None = None,
                 stderr: str | Path | None = None, timeout_s: float = START_TIMEOUT_S,
                 new_session: bool = True) -> None:
        self.log_path = Path(log) if log is not None else None
        self.stderr_path = Path(stderr) if stderr is not None else None
        cmd = [sys.executable, "-m", MODULE, "--pty", *(["--log", str(log)] if log is not None else []), *args,
               *(["--pty-link", str(link)] if link is not None else [])]
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
            self.pty = self._wait_for_pty(timeout_s)
        except BaseException:
            self.stop(signal.SIGKILL)
            raise
        self.port = str(link) if link is not None else self.pty

    def _wait_for_pty(self, timeout_s: float) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SimulatorError(self._failure(f"printed no 'PTY <path>' line within {timeout_s:g} s"))
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break  # it exited
                buf += chunk
        line = buf.split(b"\n", 1)[0].decode(errors="replace").strip()
        if not line.startswith("PTY "):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(2.0)  # so that the message can give its exit code
            got = f"printed {line!r} instead of 'PTY <path>'" if line else "printed nothing"
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


def start_simulator(args: Sequence[str] = (), **kw: Any) -> SimulatorProcess:
    """Start `neurostimd-sim --pty` with `args`; keyword arguments as SimulatorProcess's. SimulatorError, with the
    simulator's stderr, when it does not print its pty within the timeout."""
    return SimulatorProcess(args, **kw)


if __name__ == "__main__":
    sys.exit(main())
