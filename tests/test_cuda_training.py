"""Adversarial training and evaluation on a CUDA device (``make test-gpu``): the ``gpu`` trainer with
bf16-mixed precision, DDP through NCCL, and ``evaluate`` in bf16, each end to end through ``train(cfg)``.
"""

from __future__ import annotations

import pytest
import torch

from eroseg_at.evaluation import evaluate
from eroseg_at.training.runner import train
from tests.conftest import TINY_SHAPES, compose_train_config
from tests.evaluation.conftest import compose_evaluate_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (make test-gpu)"),
]

GPU_AT = (
    "attack=eroseg",
    "attack.steps=3",
    "schedule.max_epochs=2",
    "validation.attack_batches=null",
)


def finite_weights(checkpoint) -> bool:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory):
    cfg = compose_train_config(
        [*TINY_SHAPES, "logger=none", "trainer=gpu", *GPU_AT],
        output_dir=tmp_path_factory.mktemp("gpu_run"),
    )
    assert cfg.trainer.precision == "bf16-mixed"
    return train(cfg)


def test_bf16_adversarial_training_on_cuda_validates_clean_and_robust(gpu_run):
    scores = gpu_run.validation
    assert 0.0 <= scores.miou["pgd10"] <= 100.0 and 0.0 <= scores.miou["clean"] <= 100.0
    assert scores.pixel_accuracy["pgd10"] <= scores.pixel_accuracy["clean"]
    assert finite_weights(gpu_run.last_checkpoint)
    assert torch.load(gpu_run.last_checkpoint, map_location="cpu", weights_only=True)["epoch"] == 1


def test_ddp_strategy_trains_adversarially_on_one_cuda_device(tiny_train_config):
    # DDPStrategy with NCCL in this process: the attack must use the raw model, or the wrapper's
    # forward would expect a backward that autograd.grad never gives it.
    result = train(tiny_train_config("trainer=ddp", "trainer.devices=1", *GPU_AT))
    assert result.last_checkpoint is not None and finite_weights(result.last_checkpoint)
    assert 0.0 <= result.validation.miou["pgd10"] <= 100.0


def test_bf16_evaluation_on_cuda_bounds_every_attack_by_the_worst_case(gpu_run, tmp_path):
    cfg = compose_evaluate_config(
        [f"ckpt_path={gpu_run.last_checkpoint}", "suite=quick", "device=cuda", "precision=bf16"], tmp_path
    )
    (report,) = evaluate(cfg).reports
    clean = next(row for row in report.rows if row.kind == "clean")
    attacks = [row for row in report.rows if row.kind == "attack"]
    worst = [row for row in report.rows if row.kind == "worst_case"]
    assert attacks and worst
    for row in attacks:
        assert row.pixel_accuracy <= clean.pixel_accuracy + 1e-9
    for budget_worst in worst:
        same_budget = [row for row in attacks if row.eps_text == budget_worst.eps_text]
        assert all(budget_worst.miou <= row.miou + 1e-12 for row in same_budget)
