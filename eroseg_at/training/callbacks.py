"""Callbacks of the training run: config in checkpoints, a checkpoint when asked to stop, per-class IoU table, W&B
example panels, the guard against a collapse of robustness, the timer of training and validation."""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from rich.console import Console
from rich.table import Table

from eroseg_at.checkpoint import (
    CONFIG_KEY,
    FORMAT_KEY,
    FORMAT_VERSION,
    METHOD_KEY,
    SINGLE_STEP,
    TrainingMethod,
)
from eroseg_at.metrics import SegmentationScores
from eroseg_at.signals import exit_status, raise_interrupted, signal_name
from eroseg_at.visualization import amplified_perturbation


class ConfigInCheckpoint(Callback):
    """Stores the run's resolved config, the checkpoint format and the training method in every checkpoint
    (:mod:`eroseg_at.checkpoint`), so evaluation can rebuild the exact model and dataset from the checkpoint
    alone and name how it was trained (plain types only, so it still loads with ``weights_only=True``).

    The method is read once training starts, before any eps warm-up changes the attack.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.method: TrainingMethod | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.method = training_method(pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[CONFIG_KEY] = self.config
        checkpoint[FORMAT_KEY] = FORMAT_VERSION
        checkpoint[METHOD_KEY] = (self.method or training_method(pl_module)).to_record()


def training_method(module: L.LightningModule) -> TrainingMethod:
    """How ``module`` trains, from the objects it trains with: the training attack as built (its class, its
    ``steps``, its ``eps``) and the ``adversarial`` settings (mode, objective, clipping)."""
    attack = module.train_attack
    if attack is None:
        return TrainingMethod()
    adversarial = module.adversarial
    return TrainingMethod(
        attack=type(attack).__name__,
        mode=adversarial.mode,
        # Per batch (multi_step), per visit of an image (accumulated), or the single step (single_step).
        steps=attack.steps,
        objective=adversarial.objective,
        eps=float(attack.eps),
        clip=adversarial.single_step.clip if adversarial.mode == SINGLE_STEP else None,
    )


class InterruptCheckpoint(Callback):
    """Training asked to stop (SIGTERM, or SIGINT: Ctrl-C) ends after the batch it is in, writes ``path``, which
    ``ckpt_path=`` resumes, and the process exits with status 128 + the signal's number.

    Lightning stops at the end of the next training or validation batch on SIGTERM, with ``SIGTERMException``: a
    ``SystemExit`` without a status, so the process used to end with 0 (success) and lose the epoch in progress.
    This callback gives the first SIGINT the same treatment (a second one stops at once and saves nothing), and on
    that exception writes the checkpoint and sets the status. The checkpoint holds the last completed optimizer
    step; resuming it mid-epoch draws the epoch's remaining batches from a fresh shuffle (Lightning warns so).

    Args:
        path: The checkpoint file (the run's ``checkpoints/last.ckpt``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.signum = signal.SIGTERM

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After Lightning installed its SIGTERM handler; its teardown restores the SIGINT handler found then.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, partial(self._stop_after_batch, trainer))

    def _stop_after_batch(self, trainer: L.Trainer, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        # The flag Lightning's SIGTERM handler sets and its loops check after every batch (on all ranks).
        trainer._signal_connector.received_sigterm = True
        signal.signal(signum, raise_interrupted)
        if trainer.is_global_zero:
            print(
                f"\ntrain: {signal_name(signum)}: stopping after this batch (again: at once, no checkpoint)"
            )

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        if trainer.validating:
            restart_validation(trainer)
        trainer.save_checkpoint(self.path, weights_only=False)
        exception.code = exit_status(self.signum)
        if trainer.is_global_zero:
            print(
                f"train: stopped by {signal_name(self.signum)} at epoch {trainer.current_epoch}, step "
                f"{trainer.global_step}; resume with ckpt_path={self.path}",
                flush=True,
            )


def restart_validation(trainer: L.Trainer) -> None:
    """Records the validation in progress as stopped inside its first batch, so that a checkpoint saved now
    resumes by running the whole validation again.

    Lightning resumes a checkpoint saved between two validation batches by skipping the rest of that validation
    (no scores for the epoch, its best-checkpoint decision lost), and one saved inside a batch by finishing the
    remaining batches (scores of part of the images). Inside the first batch, the remaining batches are all.
    """
    progress = trainer.fit_loop.epoch_loop.val_loop.batch_progress
    done = progress.current.completed
    for tracker in (progress.total, progress.current):
        # total also counts the validations run earlier in the epoch (val_check_interval < 1).
        earlier = tracker.completed - done
        tracker.ready = tracker.started = earlier + 1
        tracker.processed = tracker.completed = earlier


def iou_table(scores: dict[str, SegmentationScores], class_names: list[str]) -> Table:
    """A table of per-class IoU (rows) for clean and each attack (columns)."""
    table = Table(title="Validation IoU per class (%)")
    table.add_column("class")
    for name in scores:
        table.add_column(name, justify="right")
    for index, class_name in enumerate(class_names):
        cells = []
        for result in scores.values():
            value = float(result.iou_per_class[index])
            cells.append("absent" if np.isnan(value) else f"{100 * value:.1f}")
        table.add_row(class_name, *cells)
    table.add_row("mIoU", *(f"{100 * float(result.miou):.1f}" for result in scores.values()), style="bold")
    return table


class IoUTablePrinter(Callback):
    """Prints the per-class IoU table after each validation epoch (rank 0 only).

    Hooked on ``on_validation_end``: callbacks' ``on_validation_epoch_end`` runs before the
    module's, which computes the scores, so it would print the previous epoch's table.
    """

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not pl_module.last_val_scores:
            return
        Console().print(iou_table(pl_module.last_val_scores, pl_module.class_names))


class WandbExamplePanels(Callback):
    """Logs, per validation epoch, examples with the clean image, adversarial image,
    amplified perturbation, and ground truth / clean / adversarial predictions as W&B masks."""

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        examples = pl_module.val_examples
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if trainer.sanity_checking or not trainer.is_global_zero or not loggers or not examples:
            return
        import wandb

        class_labels = dict(enumerate(pl_module.class_names))
        class_labels[pl_module.ignore_index] = "void"

        def masks(**label_maps: torch.Tensor) -> dict[str, dict[str, Any]]:
            return {
                key: {"mask_data": value.cpu().numpy().astype(np.int64), "class_labels": class_labels}
                for key, value in label_maps.items()
            }

        def picture(image: torch.Tensor) -> np.ndarray:
            return (image.float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)

        panels: dict[str, list] = {"val/examples_clean": []}
        for i in range(examples.images.shape[0]):
            panels["val/examples_clean"].append(
                wandb.Image(
                    picture(examples.images[i]),
                    masks=masks(ground_truth=examples.labels[i], prediction=examples.clean_prediction[i]),
                )
            )
            if examples.attack is not None:
                attack = examples.attack
                panels.setdefault(f"val/examples_{attack}", []).append(
                    wandb.Image(
                        picture(examples.adversarial[i]),
                        masks=masks(
                            ground_truth=examples.labels[i], prediction=examples.adversarial_prediction[i]
                        ),
                    )
                )
                panels.setdefault(f"val/perturbation_{attack}", []).append(
                    wandb.Image(picture(amplified_perturbation(examples.images[i], examples.adversarial[i])))
                )
        for logger in loggers:
            logger.experiment.log({**panels, "epoch": trainer.current_epoch})


class RobustCollapseGuard(Callback):
    """Detects a sudden collapse of robust validation mIoU (single-step AT's catastrophic overfitting) and keeps
    the last good checkpoint.

    After each validation of an adversarially trained run, epoch e is a **collapse** when its robust mIoU
    ``r_e`` (``monitor``) has fallen below ``(1 − max_drop)`` times the best robust mIoU so far ``r*`` while
    clean mIoU ``c_e`` holds (at least ``(1 − max_drop)`` times the clean mIoU of the epoch of ``r*``): the
    signature of catastrophic overfitting, as opposed to training that fails altogether. A best below
    ``min_best`` arms nothing (early epochs are noise). Every epoch that is not a collapse is good and is saved
    as ``<dirpath>/<filename>.ckpt``; a collapse is reported (a warning, ``val/robust_collapse`` = 1 in the
    loggers, at the step of the validation metrics, and in the run's metrics) and, with ``stop``, ends training.

    Args:
        monitor: The robust metric (``val/miou_pgd10``: PGD-10 at the training eps, robust validation's default).
        clean: The clean metric.
        max_drop: The relative drop that counts as a collapse, in (0, 1).
        min_best: The best robust mIoU that arms the guard, in percent like the metrics.
        dirpath: Where the last good checkpoint goes; None: no checkpoint.
        filename: Its name, without ``.ckpt``.
        stop: End training at a collapse.
    """

    def __init__(
        self,
        monitor: str = "val/miou_pgd10",
        clean: str = "val/miou_clean",
        max_drop: float = 0.5,
        min_best: float = 5.0,
        dirpath: str | None = None,
        filename: str = "last_good",
        stop: bool = False,
    ) -> None:
        if not 0 < max_drop < 1:
            raise ValueError(f"callbacks.collapse_guard.max_drop must lie in (0, 1), got {max_drop}")
        self.monitor, self.clean = monitor, clean
        self.max_drop, self.min_best = float(max_drop), float(min_best)
        self.dirpath = None if dirpath is None else Path(dirpath)
        self.path = None if dirpath is None else self.dirpath / f"{filename}.ckpt"
        self.stop = stop
        self.best = self.best_clean = 0.0
        self.collapses: list[int] = []
        self._verdict: tuple[bool, float, float] | None = None

    def is_collapse(self, robust: float, clean: float) -> bool:
        """Whether an epoch with these scores (percent) is a collapse, given the best so far."""
        keep = 1.0 - self.max_drop
        return self.best >= self.min_best and robust < keep * self.best and clean >= keep * self.best_clean

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Decided and logged here, beside the module's validation metrics (same logging step), from the scores
        # the module computes once per epoch; acted on in on_validation_end.
        self._verdict = None
        if trainer.sanity_checking or pl_module.train_attack is None:
            return
        metrics = pl_module.validation_metrics()
        if self.monitor not in metrics:
            return
        robust, clean = metrics[self.monitor], metrics[self.clean]
        # Every rank decides alike: the metrics were summed across ranks.
        collapse = self.is_collapse(robust, clean)
        pl_module.log("val/robust_collapse", float(collapse))
        self._verdict = (collapse, robust, clean)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._verdict is None:
            return
        (collapse, robust, clean), self._verdict = self._verdict, None
        if collapse:
            self.collapses.append(trainer.current_epoch)
            rank_zero_warn(
                f"robustness collapsed at epoch {trainer.current_epoch}: {self.monitor} {robust:.1f} < "
                f"{100 * (1 - self.max_drop):.0f}% of its best {self.best:.1f} while {self.clean} holds at "
                f"{clean:.1f} (catastrophic overfitting); the last good checkpoint is {self.path}"
                + ("; stopping" if self.stop else "")
            )
            trainer.should_stop = trainer.should_stop or self.stop
            return
        if robust > self.best:
            self.best, self.best_clean = robust, clean
        if self.path is not None:
            # weights_only given: left unset, Lightning logs that it defaulted to False, after every validation.
            trainer.save_checkpoint(self.path, weights_only=False)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_clean": self.best_clean, "collapses": list(self.collapses)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.best_clean = state_dict["best"], state_dict["best_clean"]
        self.collapses = list(state_dict["collapses"])


@dataclass(frozen=True)
class TrainingTime:
    """Where a run's wall time went, in seconds (over every epoch, resumed parts included).

    Attributes:
        training: The training batches: from the start of each epoch to the end of its last batch (data loading,
            attacks, forward, backward, optimizer), without validation, checkpoints or epoch-end callbacks.
        validation: The validation loops (clean and robust validation, with their hooks).
        epochs: The training epochs timed.
    """

    training: float
    validation: float
    epochs: int


class TrainingTimer(Callback):
    """Times the training batches and the validation loops apart (:class:`TrainingTime`), so that the cost of
    training methods compares on the same span whatever else their runs do (robust validation, erosion records,
    extra checkpoints). Kept in checkpoints: a resumed run adds to it."""

    def __init__(self) -> None:
        self.training = self.validation = 0.0
        self.epochs = 0
        self._mark: float | None = None
        self._validation_started: float | None = None

    @property
    def time(self) -> TrainingTime:
        return TrainingTime(self.training, self.validation, self.epochs)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A run resumed within an epoch (stopped by a signal) gets no on_train_epoch_start for it, and its
        # checkpoint counted that epoch already.
        self._mark = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark = time.perf_counter()
        self.epochs += 1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        now = time.perf_counter()
        self.training += now - self._mark
        self._mark = now

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validation_started = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._validation_started is None:
            return
        now = time.perf_counter()
        self.validation += now - self._validation_started
        # A validation within an epoch is not part of the next batch's time.
        self._validation_started, self._mark = None, now

    def state_dict(self) -> dict[str, Any]:
        return {"training": self.training, "validation": self.validation, "epochs": self.epochs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.training, self.validation = state_dict["training"], state_dict["validation"]
        self.epochs = state_dict["epochs"]
