"""Progress of a long run that reads well on a terminal and in a log file.

On a terminal (the stream is a TTY) a live rich bar; otherwise (SLURM, output redirected to a file) a rich
bar prints nothing useful, so one plain line is printed every ``interval_s`` seconds, such as::

    evaluate: model 1/2 last.ckpt, run 3/9 APGD-mCE @8/255, batch 12/46 (images 96/368), elapsed 0:10:12, ETA 0:31:40

Training (a Lightning progress bar, :mod:`eroseg_at.training.progress`) and evaluation both use it; it sits
below both, as they never import each other.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


def clock_text(seconds: float) -> str:
    """``H:MM:SS`` of a duration."""
    return str(timedelta(seconds=round(max(seconds, 0.0))))


class Progress:
    """Reports the progress of ``total`` units of work, live on a terminal, in plain lines elsewhere.

    The ETA is the remaining work at the rate of the work done by this object since its first unit finished:
    the first one carries the start-up costs (data loader workers, memory allocation, compilation) and, counted
    in, made the first ETAs many times too long. Until the rate has been measured over ``warmup_s`` seconds and at
    least one more unit of work since the first, the ETA shows as ``?``. Work that was never done here (results
    read from a cache) should be left out of ``total``.

    Args:
        name: The line's prefix (``evaluate``, ``train``).
        total: Units of work in all (any positive measure: batches, images × iterations); None if unknown.
        interval_s: Seconds between plain lines (the first update and the end always print one).
        stream: Where to write; None is ``sys.stdout`` at the time of :meth:`__enter__`.
        live: Force the live bar (True) or plain lines (False); None decides by ``stream.isatty()``.
        clock: Returns seconds (monotonic); replaced in tests.
        warmup_s: Seconds after the first advancing update before an ETA is given.
    """

    def __init__(
        self,
        name: str,
        total: float | None,
        interval_s: float = 30.0,
        stream: TextIO | None = None,
        live: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        warmup_s: float = 10.0,
    ) -> None:
        if interval_s < 0:
            raise ValueError(f"interval_s must be >= 0 seconds, got {interval_s}")
        self.name = name
        self.total = total
        self.interval_s = interval_s
        self.stream = stream
        self.live = live
        self.clock = clock
        self.warmup_s = warmup_s
        self.done = 0.0
        self.status = ""
        self._started = 0.0
        self._printed: float | None = None
        # (time, units done) when the first unit of work finished.
        self._first: tuple[float, float] | None = None
        self._bar: RichProgress | None = None
        self._task = None

    def __enter__(self) -> Progress:
        self.stream = self.stream or sys.stdout
        if self.live is None:
            self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self._started = self.clock()
        if self.live:
            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
            )
            self._bar.start()
            self._task = self._bar.add_task(self.name, total=self.total)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self._printed is not None:
            outcome = "done" if exc_info[0] is None else "stopped"
            self._print(f"{outcome}: {self.status}" if self.status else outcome, eta=False)

    def update(self, status: str, advance: float = 0.0) -> None:
        """Records ``advance`` more units done and the current ``status``; prints when a line is due."""
        self.done += advance
        self.status = status
        if advance > 0 and self._first is None:
            self._first = (self.clock(), self.done)
        if self._bar is not None:
            self._bar.update(self._task, advance=advance, description=f"{self.name}: {status}")
            return
        now = self.clock()
        if self._printed is None or now - self._printed >= self.interval_s:
            self._print(status, eta=True)

    def eta_seconds(self) -> float | None:
        """Seconds left at the rate since the first unit of work finished; None during the warm-up (see the class)
        or without a total."""
        if self.total is None or self._first is None:
            return None
        first_time, first_done = self._first
        seconds, work = self.clock() - first_time, self.done - first_done
        if seconds < self.warmup_s or work <= 0:
            return None
        return seconds * max(self.total - self.done, 0.0) / work

    def _print(self, status: str, eta: bool) -> None:
        now = self.clock()
        parts = [f"{self.name}: {status}", f"elapsed {clock_text(now - self._started)}"]
        if eta:
            remaining = self.eta_seconds()
            parts.append(f"ETA {'?' if remaining is None else clock_text(remaining)}")
        print(", ".join(parts), file=self.stream, flush=True)
        self._printed = now
