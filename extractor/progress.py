"""Progress of a long pass, for people at a terminal and batch-job logs alike.

On a terminal: tqdm's bar (rate, time left). Without one (a Slurm or Kubernetes job's log,
a pipe, a file) a bar would be one endless line of carriage returns, or nothing at all;
instead a line goes to the `headstart` logger every HEADSTART_PROGRESS_SECONDS (30 by
default), with what is done of the total, the rate and the time left:

    embed: 2,048/10,000 images (20%), 23.4 images/s, about 5m40s left
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import TYPE_CHECKING

from .errors import SettingError

if TYPE_CHECKING:
    from tqdm import tqdm

log = logging.getLogger("headstart")

PROGRESS_SECONDS_VARIABLE = "HEADSTART_PROGRESS_SECONDS"
DEFAULT_PROGRESS_SECONDS = 30.0


def progress_seconds() -> float:
    """Seconds between two progress lines in a log, from HEADSTART_PROGRESS_SECONDS.
    Raises SettingError for a value that is not a positive number."""
    said = os.environ.get(PROGRESS_SECONDS_VARIABLE, "").strip()
    if not said:
        return DEFAULT_PROGRESS_SECONDS
    try:
        seconds = float(said)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise SettingError(
            f"{PROGRESS_SECONDS_VARIABLE}={said!r}: give the seconds between two progress "
            f"lines in a log, a positive number (default {DEFAULT_PROGRESS_SECONDS:g})"
        )
    return seconds


def on_terminal() -> bool:
    stream = sys.stderr
    try:
        return stream is not None and stream.isatty()
    except (OSError, ValueError):  # closed, or not a real stream
        return False


class Progress:
    """Count what a pass has done: `update(n)` as work is done, `close()` (or the `with`
    block's end) when the pass ends. Shown only when `shown` (a command's own pass, not a
    library call's): as a bar on a terminal, as a line every `seconds` otherwise."""

    def __init__(
        self,
        total: int,
        description: str,
        unit: str = "images",
        shown: bool = True,
        seconds: float | None = None,
        leave: bool = True,
        initial: int = 0,
    ):
        """`initial`: what was done before the pass started (files known unchanged): it
        counts in done/total, not in the rate nor the time left."""
        self.total, self.description, self.unit = total, description, unit
        self.done = self.initial = initial
        self.bar: tqdm | None = None
        self.lines = shown and not on_terminal()
        if shown and not self.lines:
            from tqdm import tqdm  # here: the CLI checks the setting before its start-up

            unit = _tqdm_unit(unit)  # leave=False: the bar goes once its pass is done
            self.bar = tqdm(
                total=total, unit=unit, desc=description, smoothing=0.1, leave=leave,
                initial=initial,
            )  # fmt: skip
        if not self.lines:
            self.seconds = math.inf  # nothing to say: the setting is not even read
        elif seconds is not None:
            self.seconds = seconds
        else:  # the commands refuse a nonsense setting before their work; a library call
            try:  # is not failed for it mid-run
                self.seconds = progress_seconds()
            except SettingError:
                self.seconds = DEFAULT_PROGRESS_SECONDS
        self.started = self.last_line = time.monotonic()

    def update(self, n: int = 1) -> None:
        if n <= 0:
            return
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.lines:
            now = time.monotonic()
            if now - self.last_line >= self.seconds:
                self.last_line = now
                log.info("%s", self.line(now))

    def line(self, now: float) -> str:
        """`description: done/total unit (percent), rate unit/s, about T left`."""
        rate = (self.done - self.initial) / max(now - self.started, 1e-9)
        line = f"{self.description}: {self.done:,}/{self.total:,} {self.unit}"
        if self.total:
            line += f" ({100 * self.done / self.total:.0f}%)"
        line += f", {_rate(rate)} {self.unit}/s"
        left = self.total - self.done
        if rate > 0 and left > 0:
            seconds = left / rate
            line += ", less than 1s left" if seconds < 1 else f", about {_duration(seconds)} left"
        return line

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _tqdm_unit(unit: str) -> str:
    """tqdm's unit is singular: it writes `img/s`, `rows/s` from `img`, `row`."""
    return {"images": "img", "rows": "row", "batches": "batch"}.get(unit, unit)


def _rate(rate: float) -> str:
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
