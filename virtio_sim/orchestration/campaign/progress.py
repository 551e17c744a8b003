"""Progress of a campaign run, for a person at a terminal and for a CI log.

At a terminal a rich bar redraws in place (done/total, rate, ETA) and disappears when the
run ends. Off a terminal a bar would print nothing useful (rich drops it) or, forced on,
would fill a log with carriage returns; instead one plain line is written when the first
case finishes, then at most every ``interval`` seconds, and once at the end, so a CI log
shows the run is alive and how long it has left without being flooded. The label and the
unit name the campaign (``matrix: 120/2880 cells``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

LOG_INTERVAL = 10.0  # seconds between plain progress lines in a log


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def progress_line(label: str, done: int, total: int, elapsed: float, unit: str = "cells") -> str:
    """``matrix: 120/2880 cells (4%), 11.9 cells/s, ETA 3m52s``."""
    pct = 100 * done // total if total else 100
    rate = done / elapsed if elapsed > 0 else 0.0
    if done >= total:
        tail = f"done in {_duration(elapsed)}"
    elif rate > 0:
        tail = f"ETA {_duration((total - done) / rate)}"
    else:
        tail = "ETA unknown"
    return f"{label}: {done}/{total} {unit} ({pct}%), {rate:.1f} {unit}/s, {tail}"


class _RateColumn(ProgressColumn):
    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} {self.unit}/s" if speed else f"- {self.unit}/s")


class ProgressReporter:
    """``advance()`` once per finished case; use as a context manager around the run."""

    def __init__(
        self,
        total: int,
        *,
        label: str = "matrix",
        unit: str = "cells",
        stream: TextIO | None = None,
        interval: float = LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.clock = clock
        self.done = 0
        self._start = clock()
        self._last_line: float | None = None
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        if self.stream.isatty():
            self._bar = Progress(
                TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), _RateColumn(unit),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=Console(file=self.stream), transient=True,
            )  # fmt: skip

    def __enter__(self) -> ProgressReporter:
        self._start = self.clock()
        if self._bar is not None:
            self._bar.start()
            self._task = self._bar.add_task(self.unit, total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self) -> None:
        self.done += 1
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task)
            return
        now = self.clock()
        due = self._last_line is None or now - self._last_line >= self.interval
        if due or self.done >= self.total:
            self._last_line = now
            print(
                progress_line(self.label, self.done, self.total, now - self._start, self.unit),
                file=self.stream,
            )
            self.stream.flush()
