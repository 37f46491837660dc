"""The exit codes of every neurostimd command, in one place. The names and numbers are those of sysexits.h (except
EX_USAGE, see there); README.md's exit-code table lists the same codes, and systemd/neurostimd.service keeps
systemd from restarting the daemon on EX_CONFIG."""

from __future__ import annotations

EX_OK = 0  # success; the daemon also exits 0 after SIGTERM/SIGINT once the board has confirmed the STOP
EX_USAGE = 2  # bad command-line arguments: argparse's own status, kept by every command (not sysexits' 64)
EX_DATAERR = 65  # bad input data (a recording, labels or session that cannot be used)
EX_NOINPUT = 66  # `neurostimd audit verify`: no audit log at the path given
EX_UNAVAILABLE = 69  # the daemon stopped, but the board did not confirm the shutdown STOP
EX_SOFTWARE = 70  # an internal error (a crashed thread): stimulation stopped; systemd restarts the service
EX_CANTCREAT = 73  # `neurostimd init`: a file it would write exists (without --force) or cannot be written
EX_TEMPFAIL = 75  # another process holds the board's port: try again later (systemd retries)
EX_CONFIG = 78  # a configuration problem (invalid config; a bundle, board or audit log that does not fit it): a
#                restart cannot fix it, so systemd does not restart (RestartPreventExitStatus=78)

__all__ = ["EX_CANTCREAT", "EX_CONFIG", "EX_DATAERR", "EX_NOINPUT", "EX_OK", "EX_SOFTWARE", "EX_TEMPFAIL",
           "EX_UNAVAILABLE", "EX_USAGE"]
