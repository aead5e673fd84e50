"""Evaluation test helpers: composing conf/evaluate.yaml, one tiny trained checkpoint per session, and a TorchScript
model file and a folder dataset that need no training."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig
from PIL import Image
from torch import nn

from eroseg_at.configs import compose_config
from eroseg_at.training.runner import train
from tests.conftest import TINY_SHAPES, compose_train_config

# The cheapest suite with an attack: the clean pass and a 1-step PGD at one budget, no curve, no example grid,
# no gradient-masking checks (their passes are tested in test_masking_report.py).
ONE_STEP_PGD = (
    "suite=quick",
    "eps=[8/255]",
    "~suite.attacks.segpgd3",
    "~suite.attacks.eroseg3",
    "suite.attacks.pgd3.steps=1",
    "suite.iterations=null",
    "example_images=0",
    "masking_checks.enabled=false",
)


def compose_evaluate_config(overrides: Sequence[str], output_dir: Path) -> DictConfig:
    """``conf/evaluate.yaml`` with ``overrides`` as ``python evaluate.py`` sees it, W&B disabled."""
    return compose_config("evaluate", ["logger.mode=disabled", *overrides, f"output_dir={output_dir}"])


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """The checkpoint directory of a one-epoch standard training run on tiny shapes (best + last)."""
    output_dir = tmp_path_factory.mktemp("train")
    cfg = compose_train_config(
        [*TINY_SHAPES, "logger=none", "schedule.max_epochs=1", "validation.attacks=null"],
        output_dir=output_dir,
    )
    result = train(cfg)
    return result.last_checkpoint.parent


CLASSES = 3
SIZE = 32


class Stripes(nn.Module):
    """A per-pixel classifier (one 1x1 convolution), traced to TorchScript: a model file without an SMP build."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, CLASSES, 1)

    def forward(self, x):
        return self.conv(x)


def save_traced(path: Path, seed: int) -> Path:
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(Stripes(seed).eval(), torch.rand(1, 3, SIZE, SIZE)), path)
    return path


def write_folder(root: Path, images: int = 4, order: Sequence[int] | None = None) -> Path:
    """A folder dataset of random images with 3-class stripes, all listed for validation (in ``order``)."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for index in range(images):
        # Each image in its own range of colours and with its own stripe widths, so a model scores each differently.
        low, first = 40 * (index % 6), 4 + 5 * (index % 5)
        mask = np.full((SIZE, SIZE), 2, dtype=np.uint8)
        mask[:, :first], mask[:, first : first + 8] = 0, 1
        Image.fromarray(rng.integers(low, low + 40, (SIZE, SIZE, 3), dtype=np.uint8)).save(
            root / "images" / f"{index}.png"
        )
        Image.fromarray(mask).save(root / "masks" / f"{index}.png")
    (root / "train.txt").write_text("".join(f"{index}\n" for index in range(images)))
    (root / "val.txt").write_text("".join(f"{index}\n" for index in order or range(images)))
    return root


def folder_settings(root: Path, model: Path) -> tuple[str, ...]:
    """A TorchScript model file on a folder dataset (:func:`write_folder`), in batches of two."""
    return (
        "model=torchscript",
        f"model.path={model}",
        "dataset=folder",
        f"dataset.root={root}",
        f"dataset.num_classes={CLASSES}",
        "dataset.num_workers=0",
        "dataset.val_batch_size=2",
        "dataset.train_source.split_list=train.txt",
        "dataset.val_source.split_list=val.txt",
        f"dataset.stats_cache_dir={root.parent / 'stats'}",
    )
