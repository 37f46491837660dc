"""Progress of long offline work (a search's trials, a sweep's cells): a tqdm bar with the elapsed time and the ETA on
a terminal, one line per step with the ETA where stderr is a log file or a pipe (a bar's carriage returns would fill
a log with half-lines). Without tqdm it is the lines everywhere."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

BAR_FORMAT = "{desc}: {n_fmt}/{total_fmt} |{bar}| {elapsed} elapsed, ETA {remaining}"


def eta(elapsed_s: float, done: int, total: int) -> str:
    """The time left at this rate, in words ("?" before the first step)."""
    if done <= 0:
        return "?"
    left = elapsed_s / done * max(0, total - done)
    return f"{left / 60:.1f} min" if left >= 90 else f"{left:.0f} s"


class ProgressBar:
    """`update(msg)` after each of `total` steps, `write(msg)` for a line between them. `bar` None: a tqdm bar when
    `file` is a terminal; True/False force it on/off."""

    def __init__(self, total: int, desc: str, *, file: TextIO | None = None, bar: bool | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.total, self.desc, self.done = total, desc, 0
        self.file = file or sys.stderr
        self._log = log
        self._t0 = time.perf_counter()
        self._tqdm: Any = None
        want = bar if bar is not None else bool(getattr(self.file, "isatty", lambda: False)())
        if want:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self._tqdm = tqdm(total=total, desc=desc, file=self.file, bar_format=BAR_FORMAT, dynamic_ncols=True,
                                  leave=True)

    def write(self, msg: str) -> None:
        if self._tqdm is not None:
            self._tqdm.write(msg, file=self.file)
        elif self._log is not None:
            self._log(msg)
        else:
            print(msg, file=self.file, flush=True)

    def update(self, msg: str | None = None) -> None:
        self.done += 1
        if self._tqdm is not None:
            if msg:
                self._tqdm.write(msg, file=self.file)
            self._tqdm.update(1)
            return
        left = eta(time.perf_counter() - self._t0, self.done, self.total)
        self.write(f"{msg or f'{self.desc} {self.done}/{self.total}'}  [ETA {left}]")

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(total: int, desc: str, *, file: TextIO | None = None, bar: bool | None = None,
                 log: Callable[[str], None] | None = None) -> ProgressBar:
    return ProgressBar(total, desc, file=file, bar=bar, log=log)
