"""Training progress: rich's live bar on a terminal, plain lines in a log file (SLURM, redirected output)."""

from __future__ import annotations

import math
import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

from eroseg_at.progress import Progress


def progress_bar(leave: bool = True, interval_s: float = 30.0) -> ProgressBar:
    """The progress bar callback for where stdout goes: :class:`RichProgressBar` on a TTY, else plain lines.

    Args:
        leave: The rich bar's ``leave`` (keep each epoch's bar).
        interval_s: Seconds between plain lines (:class:`PlainProgressBar`).
    """
    if sys.stdout.isatty():
        return RichProgressBar(leave=leave)
    return PlainProgressBar(interval_s)


class PlainProgressBar(ProgressBar):
    """A line every ``interval_s`` seconds: epoch, step, loss and the progress-bar metrics, elapsed, ETA.

    Lightning keeps one progress bar callback and disables it on every rank but 0, so only rank 0 prints.
    The ETA is the remaining optimizer steps at the rate so far, validation time included.
    """

    def __init__(self, interval_s: float = 30.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._enabled = True
        self._progress: Progress | None = None
        self._steps = 0
        self._last_step = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._enabled:
            return
        self._steps = trainer.estimated_stepping_batches
        # A resumed run starts past step 0: the ETA counts only the steps this process runs.
        self._last_step = trainer.global_step
        remaining = None if math.isinf(self._steps) else self._steps - self._last_step
        self._progress = Progress("train", remaining, self.interval_s).__enter__()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._progress is not None:
            # The last status was taken at the last validation batch, before that validation's scores were logged.
            self._progress.status = self._status(trainer, pl_module, "", epoch=trainer.current_epoch)
            self._progress.__exit__(None, None, None)
            self._progress = None

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if self._progress is not None:
            self._progress.__exit__(type(exception), exception, None)
            self._progress = None

    def _status(
        self, trainer: L.Trainer, pl_module: L.LightningModule, where: str, epoch: int | None = None
    ) -> str:
        """The line's text; ``epoch`` (1-based) defaults to the one in progress (after the last one, the count of
        epochs done is ``trainer.current_epoch``)."""
        metrics = {
            key: value
            for key, value in self.get_metrics(trainer, pl_module).items()
            if key != "v_num" and isinstance(value, (int, float))
        }
        return ", ".join(
            [
                f"epoch {trainer.current_epoch + 1 if epoch is None else epoch}/{trainer.max_epochs}",
                f"step {trainer.global_step}/{'?' if math.isinf(self._steps) else int(self._steps)}",
                *([where] if where else []),
                *(f"{key} {value:.4g}" for key, value in metrics.items()),
            ]
        )

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._progress is not None:
            advance, self._last_step = trainer.global_step - self._last_step, trainer.global_step
            self._progress.update(self._status(trainer, pl_module, ""), advance=advance)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        # Robust validation (attacks on every validation batch) can take longer than the epoch's training.
        if self._progress is not None and not trainer.sanity_checking:
            where = f"validation batch {batch_idx + 1}/{trainer.num_val_batches[dataloader_idx]:g}"
            self._progress.update(self._status(trainer, pl_module, where))
