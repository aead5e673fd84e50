"""Evaluation test helpers: composing conf/evaluate.yaml, and one tiny trained checkpoint per session."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from omegaconf import DictConfig

from eroseg_at.configs import compose_config
from eroseg_at.training.runner import train
from tests.conftest import TINY_SHAPES, compose_train_config


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
