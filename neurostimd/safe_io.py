"""Opening the daemon's own files (audit log, state file, recordings) without trusting what is at the path.

Whatever sits at a configured path is checked before it is used: only a regular file (or nothing) is accepted. A
symbolic link is refused (O_NOFOLLOW: a pre-created link would redirect the daemon's writes), and so is a FIFO, a
character device or a directory — opened with O_NONBLOCK, so that a FIFO without a reader cannot hang the start.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from neurostimd.errors import NeurostimError


class UnsafePath(NeurostimError):
    """A path the daemon writes is not a regular file (or absent): a symlink, FIFO, device or directory."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _refusal(path: Path, what: str, kind: str) -> UnsafePath:
    return UnsafePath(f"{what} {path} is {kind}, not a regular file; the daemon writes only regular files it can "
                      f"trust — remove it (or choose another path in the config) and start again")


def check_regular_or_absent(path: str | Path, what: str = "file") -> None:
    """UnsafePath unless `path` does not exist or is a regular file (a symlink is refused, not followed)."""
    p = Path(path)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise _refusal(p, what, _kind(st.st_mode))


def open_regular(path: str | Path, flags: int, mode: int = 0o640, *, what: str = "file") -> int:
    """os.open(path, flags) that accepts only a regular file: never follows a symlink, never blocks on a FIFO.

    Returns the descriptor (blocking mode, close-on-exec). UnsafePath if something else is at the path; OSError for
    the ordinary failures (missing folder, permissions, …)."""
    p = Path(path)
    try:
        fd = os.open(p, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise _refusal(p, what, "a symbolic link") from err
        if err.errno in (errno.ENXIO, errno.EISDIR):  # a FIFO opened for writing with no reader; a directory
            try:
                kind = _kind(os.lstat(p).st_mode)
            except OSError:
                kind = "not a regular file"
            raise _refusal(p, what, kind) from err
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refusal(p, what, _kind(st.st_mode))
        os.set_blocking(fd, True)  # no effect on a regular file's I/O; keeps later writes plain
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | Path, *, what: str = "file") -> bytes | None:
    """The whole content of a regular file, or None when nothing is at the path; UnsafePath for anything else."""
    try:
        fd = open_regular(path, os.O_RDONLY, what=what)
    except FileNotFoundError:
        return None
    chunks = []
    try:
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def real_directory(path: str | Path, *, what: str = "folder") -> Path:
    """Create `path` (and parents) if needed and check that it is a directory, not a symlink to one."""
    p = Path(path)
    # FileExistsError: something that is not a directory (a dangling link, a file) is in the way; lstat says what
    with contextlib.suppress(FileExistsError):
        p.mkdir(parents=True, exist_ok=True)
    st = os.lstat(p)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{what} {p} is {_kind(st.st_mode)}, not a directory the daemon created; remove it or "
                         f"choose another path in the config")
    return p
