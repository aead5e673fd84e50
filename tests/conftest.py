"""Shared test helpers: composing conf/train.yaml the way train.py does, at a tiny size."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest
from omegaconf import DictConfig

from eroseg_at.configs import compose_config

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_script(relative_path: str) -> ModuleType:
    """A script of the repository (``benchmarks/x.py``, ``scripts/x.py``) imported as a module named by its stem.

    Registered in ``sys.modules`` before it runs, as its dataclasses look their module up there.
    """
    path = REPO_ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


# A shapes run small enough for a CPU test: 64x64 images, a handful of batches.
TINY_SHAPES = (
    "dataset.train_source.num_images=16",
    "dataset.val_source.num_images=8",
    "dataset.train_source.image_size=[64,64]",
    "dataset.crop_size=[64,64]",
    "dataset.batch_size=4",
    "dataset.val_batch_size=4",
)


def compose_train_config(overrides: Sequence[str] = (), output_dir: Path | str | None = None) -> DictConfig:
    """``conf/train.yaml`` with ``overrides``, as ``python train.py <overrides>`` would see it.

    ``paths.output_dir`` replaces Hydra's run directory, which ``compose`` does not set.
    """
    extra = [f"paths.output_dir={output_dir}"] if output_dir is not None else []
    return compose_config("train", [*overrides, *extra])


@pytest.fixture
def tiny_train_config(tmp_path):
    """Factory for a tiny, fast, logger-free training config writing into ``tmp_path``."""

    def make(*overrides: str) -> DictConfig:
        return compose_train_config([*TINY_SHAPES, "logger=none", *overrides], output_dir=tmp_path / "run")

    return make
