"""The victim model of the attack strength test and the cross-checks: Unet-resnet18 trained on ``shapes``.

Training takes minutes on CPU, so the weights are cached under ``.cache/attack_victims/`` keyed by a hash
of every training setting, the torch version and the generated training data itself (so a change of the
``shapes`` generator also trains a new model).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassJaccardIndex

from eroseg_at.data.shapes import ShapesDataset
from eroseg_at.models import build_model
from eroseg_at.predictions import predicted_classes

REPO = Path(__file__).resolve().parents[1]
IGNORE_INDEX = 255

DEFAULT_SETTINGS = {
    "model": "unet",
    "encoder": "resnet18",
    "image_size": 64,
    "train_images": 512,
    "train_seed": 0,
    "val_images": 32,
    "val_seed": 1,
    "batch_size": 8,
    "epochs": 8,
    "learning_rate": 2e-3,
    "init_seed": 0,
}


def shapes_tensors(num_images: int, image_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All samples of a ``shapes`` split stacked.

    Shape:
        output: images [N, 3, S, S] float in [0, 1], masks [N, S, S] int64 (255 = ignore).
    """
    dataset = ShapesDataset(num_images=num_images, image_size=image_size, seed=seed)
    images, masks = zip(*(dataset[index] for index in range(len(dataset))), strict=True)
    return torch.stack(images), torch.stack(masks)


def mean_iou(
    model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, batch_size: int = 16
) -> float:
    """Dataset-level mIoU in percent (one confusion matrix over all images, ignore label excluded)."""
    metric = MulticlassJaccardIndex(num_classes=model.num_classes, ignore_index=IGNORE_INDEX)
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            logits = model(images[start : start + batch_size])
            metric.update(predicted_classes(logits), masks[start : start + batch_size])
    return 100 * metric.compute().item()


def train(settings: dict, images: torch.Tensor, masks: torch.Tensor, log: bool = True) -> torch.nn.Module:
    """Trains the victim model from scratch with a plain PyTorch loop (Adam, one-cycle, cross-entropy).

    Shape:
        images: [N, 3, S, S] float in [0, 1]; masks: [N, S, S] int64.
    """
    torch.manual_seed(settings["init_seed"])
    model = build_model(settings["model"], num_classes=ShapesDataset.num_classes, encoder=settings["encoder"])
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["learning_rate"])
    steps_per_epoch = len(images) // settings["batch_size"]
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, settings["learning_rate"], total_steps=settings["epochs"] * steps_per_epoch
    )
    generator = torch.Generator().manual_seed(settings["init_seed"])
    model.train()
    start = time.perf_counter()
    for epoch in range(settings["epochs"]):
        order = torch.randperm(len(images), generator=generator)
        for step in range(steps_per_epoch):
            batch = order[step * settings["batch_size"] : (step + 1) * settings["batch_size"]]
            loss = F.cross_entropy(model(images[batch]), masks[batch], ignore_index=IGNORE_INDEX)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        if log:
            print(
                f"epoch {epoch + 1}/{settings['epochs']}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)"
            )
    return model.eval()


def trained_shapes_model(**overrides) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The trained victim (eval mode) and its validation split, training it if no cached copy exists.

    Args:
        **overrides: Settings that replace :data:`DEFAULT_SETTINGS`.

    Returns:
        ``(model, val_images [N, 3, S, S], val_masks [N, S, S])``.
    """
    settings = {**DEFAULT_SETTINGS, **overrides}
    unknown = set(settings) - set(DEFAULT_SETTINGS)
    if unknown:
        raise ValueError(f"unknown victim settings {sorted(unknown)}; valid: {sorted(DEFAULT_SETTINGS)}")
    images, masks = shapes_tensors(settings["train_images"], settings["image_size"], settings["train_seed"])
    key = hashlib.sha256(json.dumps({**settings, "torch": torch.__version__}, sort_keys=True).encode())
    key.update(images.numpy().tobytes())
    key.update(masks.numpy().tobytes())
    path = REPO / ".cache" / "attack_victims" / f"{key.hexdigest()[:16]}.pt"
    if path.is_file():
        model = build_model(
            settings["model"], num_classes=ShapesDataset.num_classes, encoder=settings["encoder"]
        )
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        model.eval()
    else:
        model = train(settings, images, masks)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    val_images, val_masks = shapes_tensors(
        settings["val_images"], settings["image_size"], settings["val_seed"]
    )
    return model, val_images, val_masks
