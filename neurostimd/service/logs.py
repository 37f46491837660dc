"""Logging set up once, at the edge: under systemd, each record to the journal with its priority and fields
(neurostimd.service.journal); JSON lines to stdout otherwise; a human rendering on a TTY."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Literal

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info", fmt: Literal["auto", "json", "console", "journal"] = "auto", *,
                      journal_socket: str | None = None) -> None:
    """Configure structlog for the process. Called by the CLI entry points only, never by library code. `auto`:
    the journal when systemd connected stdout to it (JOURNAL_STREAM) and its socket is there, a console rendering
    on a TTY, JSON lines otherwise."""
    from neurostimd.service.journal import JOURNAL_SOCKET, JournalLogger, _pass_dict, journal_stream_is_stdout

    path = journal_socket or JOURNAL_SOCKET
    if fmt == "auto" and journal_stream_is_stdout() and os.path.exists(path):
        fmt = "journal"
    use_console = fmt == "console" or (fmt == "auto" and sys.stdout.isatty())
    last: structlog.typing.Processor
    factory: Any
    if fmt == "journal":
        journal = JournalLogger(path)  # one socket for the process: every logger sends through it
        last, factory = _pass_dict, (lambda *_: journal)
    else:
        last = (structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty()) if use_console
                else structlog.processors.JSONRenderer())
        factory = structlog.PrintLoggerFactory(file=sys.stdout)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            last,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
