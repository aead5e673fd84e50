"""Callbacks of the training run: config in checkpoints, per-class IoU table, W&B example panels."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from rich.console import Console
from rich.table import Table

from eroseg_at.checkpoint import CONFIG_KEY, FORMAT_KEY, FORMAT_VERSION
from eroseg_at.metrics import SegmentationScores
from eroseg_at.visualization import amplified_perturbation


class ConfigInCheckpoint(Callback):
    """Stores the run's resolved config and the checkpoint format in every checkpoint
    (:mod:`eroseg_at.checkpoint`), so evaluation can rebuild the exact model and dataset from
    the checkpoint alone (plain types only, so it still loads with ``weights_only=True``)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[CONFIG_KEY] = self.config
        checkpoint[FORMAT_KEY] = FORMAT_VERSION


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
