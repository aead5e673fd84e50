"""`make demo` (experiment=quickstart, then suite=quick): a first run that learns and is robust, in minutes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from eroseg_at.configs import build
from eroseg_at.evaluation import evaluate
from eroseg_at.metrics import SegmentationMetrics
from eroseg_at.training.runner import train
from tests.conftest import compose_train_config
from tests.evaluation.conftest import compose_evaluate_config


def demo_overrides(variable: str) -> list[str]:
    """The overrides ``make demo`` passes, as the Makefile's ``variable`` gives them."""
    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    return re.search(rf"^{variable} := (.*)$", makefile, re.MULTILINE).group(1).split()


def background_everywhere_miou(cfg) -> float:
    """The validation mIoU of a model that predicts the background class at every pixel."""
    datamodule = build(cfg.dataset)
    datamodule.setup("validate")
    metrics = SegmentationMetrics(datamodule.num_classes, datamodule.ignore_index)
    for _, labels in datamodule.full_resolution_dataloader():
        metrics.update(torch.full_like(labels, datamodule.background_class), labels)
    return float(metrics.compute().miou)


@pytest.mark.slow
def test_the_quickstart_learns_and_is_robust_well_above_a_constant_prediction(tmp_path):
    cfg = compose_train_config([*demo_overrides("DEMO_TRAIN"), "logger=none"], output_dir=tmp_path / "train")
    constant = background_everywhere_miou(cfg)
    trained = train(cfg)
    evaluation = compose_evaluate_config(
        [f"ckpt_path={trained.last_checkpoint}", *demo_overrides("DEMO_EVALUATE")],
        tmp_path / "eval",
    )
    report = evaluate(evaluation).reports[0]
    clean, robust = report.row("clean").miou, report.row("worst_case", eps_text="4/255").miou
    print(
        f"quickstart: constant {100 * constant:.1f}, clean {100 * clean:.1f}, worst case @4/255 {100 * robust:.1f}"
    )
    # Two epochs learn the shapes (clean 42 against 11.6 measured) and hold at 4/255 (21); at 8/255 the worst case
    # (16) is near the constant prediction's level, which README says.
    assert clean > 2.5 * constant and robust > 1.5 * constant
