"""Callbacks: the config stored in checkpoints, the IoU table, the W&B example panels."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.loggers import WandbLogger
from rich.console import Console

from eroseg_at.metrics import SegmentationScores
from eroseg_at.training.callbacks import WandbExamplePanels, iou_table
from eroseg_at.training.module import ValidationExamples
from eroseg_at.training.runner import train
from eroseg_at.visualization import amplified_perturbation


def test_amplified_perturbation_maps_the_largest_change_to_the_range_ends():
    clean = torch.full((3, 2, 2), 0.5)
    adversarial = clean.clone()
    adversarial[0, 0, 0] += 0.02
    adversarial[1, 1, 1] -= 0.01
    amplified = amplified_perturbation(clean, adversarial)
    assert amplified[0, 0, 0] == 1.0
    assert amplified[1, 1, 1] == 0.25
    assert amplified[2, 0, 0] == 0.5


def test_iou_table_marks_absent_classes_and_shows_every_attack():
    scores = {
        "clean": SegmentationScores(torch.tensor(0.9), torch.tensor(0.9), torch.tensor([0.9, float("nan")])),
        "pgd10": SegmentationScores(torch.tensor(0.2), torch.tensor(0.2), torch.tensor([0.2, float("nan")])),
    }
    console = Console(record=True, width=120)
    console.print(iou_table(scores, ["background", "disc"]))
    text = console.export_text()
    assert "absent" in text and "90.0" in text and "20.0" in text and "pgd10" in text


def test_wandb_panels_log_images_with_class_masks(tmp_path):
    logger = WandbLogger(project="eroseg-at-test", save_dir=str(tmp_path), offline=True, mode="offline")
    images = torch.rand(2, 3, 8, 8)
    labels = torch.randint(0, 3, (2, 8, 8))
    labels[:, 0] = 255
    module = SimpleNamespace(
        class_names=["background", "disc", "square"],
        ignore_index=255,
        val_examples=ValidationExamples(
            images=images,
            labels=labels,
            clean_prediction=labels.clamp(max=2),
            attack="pgd10",
            adversarial=(images + 0.03).clamp(0, 1),
            adversarial_prediction=torch.randint(0, 3, (2, 8, 8)),
        ),
    )
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, loggers=[logger], current_epoch=3)
    try:
        WandbExamplePanels().on_validation_epoch_end(trainer, module)
        run_dir = tmp_path / "wandb"
        media = list(run_dir.rglob("media/images/**/*.png"))
    finally:
        import wandb

        wandb.finish()
    names = " ".join(path.name for path in media)
    # 2 clean + 2 adversarial + 2 perturbation images, and ground-truth/prediction masks for 4 of them
    # (W&B stores identical masks once, so every mask here differs).
    assert names.count("examples_clean") >= 2
    assert names.count("examples_pgd10") >= 2
    assert names.count("perturbation_pgd10") >= 2
    masks = [path for path in media if "mask" in str(path.parent)]
    assert len(masks) >= 8


def test_iou_table_shows_the_epoch_just_validated(tiny_train_config, capsys):
    result = train(tiny_train_config("schedule.max_epochs=2", "validation.attacks=null"))
    printed = capsys.readouterr().out
    tables = [line for line in printed.splitlines() if "mIoU" in line and "│" in line]
    assert len(tables) == 2  # one per epoch, none before the first is computed
    last_table_miou = float(tables[-1].split("│")[2])
    # The table prints percent, and so are the logged metrics.
    assert last_table_miou == pytest.approx(result.validation.miou["clean"], abs=0.05)
