"""The training method of a checkpoint: written by training from the objects it trains with, read by evaluation,
and derived from the stored config for checkpoints written before the record existed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from eroseg_at.attacks import EroSeg, build_attack
from eroseg_at.checkpoint import METHOD_KEY, CheckpointError, TrainingMethod, load_checkpoint
from eroseg_at.evaluation import evaluate
from eroseg_at.training.amortised import SingleStepSettings
from eroseg_at.training.callbacks import training_method
from eroseg_at.training.module import AdversarialTraining
from eroseg_at.training.runner import train
from tests.conftest import compose_train_config
from tests.evaluation.conftest import ONE_STEP_PGD, compose_evaluate_config

EPS = 8 / 255


@pytest.mark.parametrize(
    ("method", "label"),
    [
        (TrainingMethod(), "standard"),
        (TrainingMethod("EroSeg", "multi_step", 3, "clean_plus_adv", EPS), "EroSeg3-AT"),
        (TrainingMethod("PGD", "multi_step", 3, "adv_only", EPS), "PGD3-AT (adv_only)"),
        (
            TrainingMethod("EroSeg", "accumulated", 1, "adv_only", EPS),
            "EroSeg-AT accumulated (1 step/visit, adv_only)",
        ),
        (
            TrainingMethod("EroSeg", "accumulated", 2, "clean_plus_adv", EPS),
            "EroSeg-AT accumulated (2 steps/visit)",
        ),
        (TrainingMethod("PGD", "single_step", 1, "adv_only", EPS, clip=False), "N-FGSM-AT (pgd, adv_only)"),
        (TrainingMethod("PGD", "single_step", 1, "half_adv", EPS, clip=True), "FGSM-RS-AT (pgd, half_adv)"),
        (TrainingMethod("EroSeg", "multi_step", 7, "clean_plus_adv", 4 / 255), "EroSeg7-AT @4/255"),
        (TrainingMethod("PGD", "multi_step", 3, "clean_plus_adv", 0.03), "PGD3-AT @0.03"),
    ],
)
def test_labels_name_the_attack_its_steps_the_mode_the_objective_and_another_eps(method, label):
    assert method.label == label


def stored_config(attack_target: str | None, **adversarial) -> dict:
    attack = {} if attack_target is None else {"_target_": attack_target, "eps": "8/255", "steps": 10}
    return {"attack": attack, "adversarial": adversarial}


@pytest.mark.parametrize(
    ("config", "label"),
    [
        (stored_config(None), "standard"),
        # attack_steps wins over the attack's own steps, as training read them.
        (stored_config("eroseg_at.attacks.EroSeg", mode="multi_step", attack_steps=3), "EroSeg3-AT"),
        (stored_config("eroseg_at.attacks.EroSeg", attack_steps=None), "EroSeg10-AT"),
        (stored_config("eroseg_at.attacks.PGD", objective="adv_only", attack_steps=3), "PGD3-AT (adv_only)"),
        (
            stored_config(
                "eroseg_at.attacks.EroSeg",
                mode="accumulated",
                objective="adv_only",
                attack_steps=3,
                accumulated={"steps": 1},
            ),
            "EroSeg-AT accumulated (1 step/visit, adv_only)",
        ),
        # Today's configs: attack.steps is the one home of the steps, per visit in the accumulated mode.
        (
            stored_config(
                "eroseg_at.attacks.EroSeg", mode="accumulated", objective="adv_only", accumulated={}
            ),
            "EroSeg-AT accumulated (10 steps/visit, adv_only)",
        ),
        (
            stored_config(
                "eroseg_at.attacks.PGD",
                mode="single_step",
                objective="adv_only",
                attack_steps=3,
                single_step={"clip": False},
            ),
            "N-FGSM-AT (pgd, adv_only)",
        ),
    ],
)
def test_a_checkpoint_without_the_record_gets_the_method_from_its_config(config, label):
    assert TrainingMethod.from_config(config).label == label


def module(attack, **adversarial):
    """What training_method reads of a SegmentationModule: its training attack and adversarial settings."""
    return SimpleNamespace(train_attack=attack, adversarial=AdversarialTraining(**adversarial))


def test_training_reads_the_method_from_the_attack_and_settings_it_trains_with():
    assert training_method(module(None)) == TrainingMethod()
    eroseg = EroSeg(steps=5, eps="4/255")
    assert training_method(module(eroseg)).label == "EroSeg5-AT @4/255"
    accumulated = module(EroSeg(steps=2, eps="4/255"), mode="accumulated", objective="adv_only")
    assert training_method(accumulated).label == "EroSeg-AT accumulated (2 steps/visit, adv_only) @4/255"
    single = module(
        build_attack("pgd", steps=1),
        mode="single_step",
        objective="adv_only",
        single_step=SingleStepSettings(clip=False),
    )
    assert training_method(single) == TrainingMethod("PGD", "single_step", 1, "adv_only", EPS, clip=False)


def test_a_record_of_unknown_fields_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match=r"x\.ckpt.*'eroseg_at_method' holds"):
        TrainingMethod.from_record({"attack": "PGD", "colour": "blue"}, tmp_path / "x.ckpt")


# 32-px images, 16 training images in batches of 4, one epoch, no robust validation: seconds per run.
AMORTISED = (
    "dataset.train_source.num_images=16",
    "dataset.val_source.num_images=4",
    "dataset.train_source.image_size=[32,32]",
    "dataset.crop_size=[32,32]",
    "dataset.batch_size=4",
    "dataset.val_batch_size=4",
    "logger=none",
    "schedule.max_epochs=1",
    "validation.attacks=null",
    "callbacks.erosion=null",
    "adversarial.objective=adv_only",
)


@pytest.mark.parametrize(
    ("overrides", "label"),
    [
        (
            ("attack=eroseg", "adversarial.mode=accumulated", "attack.steps=1"),
            "EroSeg-AT accumulated (1 step/visit, adv_only)",
        ),
        (("attack=pgd", "adversarial.mode=single_step", "attack.steps=1"), "N-FGSM-AT (pgd, adv_only)"),
    ],
    ids=["accumulated", "single_step"],
)
def test_amortised_checkpoints_carry_their_true_method(tmp_path, overrides, label):
    result = train(compose_train_config([*AMORTISED, *overrides], output_dir=tmp_path))
    stored = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)[METHOD_KEY]
    assert TrainingMethod(**stored).label == label
    assert load_checkpoint(result.last_checkpoint).method.label == label
    # The evaluation reports it under that label.
    evaluation = [f"ckpt_path={result.last_checkpoint}", *ONE_STEP_PGD]
    (report,) = evaluate(compose_evaluate_config(evaluation, tmp_path / "evaluation")).reports
    assert report.method == label and report.training_method.mode == overrides[1].split("=")[1]
    assert f"| {label} |" in (tmp_path / "evaluation" / "results.md").read_text()
