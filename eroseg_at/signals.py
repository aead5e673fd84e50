"""How a run ends when it is asked to stop (SIGTERM from a scheduler or ``kill``, SIGINT from Ctrl-C): with exit
status 128 + the signal's number, the shells' convention, so that a scheduler or a script never takes an
interrupted run for a finished one.

Training stops after the batch it is in and writes its last checkpoint first
(:class:`eroseg_at.training.callbacks.InterruptCheckpoint`); evaluation stops at once, its cache holding every
batch that finished (:mod:`eroseg_at.evaluation.cache`). This module sits below both, as they never import each
other.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_status(signum: int) -> int:
    """The exit status of a run stopped by signal ``signum``: 128 + its number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class Interrupted(SystemExit):
    """A run stopped by a signal; the process exits with :func:`exit_status`.

    A ``SystemExit``, so ``except Exception`` blocks (Hydra's job runner among them) let it through unchanged.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(exit_status(signum))
        self.signum = int(signum)

    def __str__(self) -> str:
        return f"stopped by {signal_name(self.signum)}"


def raise_interrupted(signum: int, frame: FrameType | None) -> None:
    """A signal handler: raises :class:`Interrupted` where the main thread is."""
    raise Interrupted(signum)


@contextmanager
def interrupt_on(signals: Iterable[int] = STOP_SIGNALS) -> Iterator[None]:
    """Within the block, each of ``signals`` raises :class:`Interrupted` in the main thread; the previous handlers
    come back afterwards. Outside the main thread (where Python allows no handler) it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, raise_interrupted) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
