"""Every override takes effect or is refused, and a plan step lists every problem before any attack runs."""

from __future__ import annotations

import pytest
from torch import nn

from eroseg_at.errors import UserError
from eroseg_at.evaluation import evaluate
from eroseg_at.evaluation.errors import EvaluationError, PlanError
from eroseg_at.evaluation.models import set_normalization
from eroseg_at.evaluation.passes import PassRunner
from tests.data.data_layouts import label_blocks, write_voc
from tests.evaluation.conftest import (
    ONE_STEP_PGD,
    compose_evaluate_config,
    folder_settings,
    save_traced,
    write_folder,
)
from tests.models.conftest import JIT_DEPRECATION

MINIMAL = (*ONE_STEP_PGD, "device=cpu")


@pytest.fixture
def computed(monkeypatch) -> list:
    batches: list = []
    compute = PassRunner.batch

    def recording(self, model, producer, index, images, labels):
        batches.append((producer.name, index))
        return compute(self, model, producer, index, images, labels)

    monkeypatch.setattr(PassRunner, "batch", recording)
    return batches


def folder_model(tmp_path, *extra: str) -> list[str]:
    return [
        *folder_settings(write_folder(tmp_path / "data"), save_traced(tmp_path / "model.pt", 0)),
        *MINIMAL,
        *extra,
    ]


@pytest.mark.filterwarnings(JIT_DEPRECATION)
def test_every_problem_is_listed_before_any_attack_runs(tmp_path, computed):
    # A TorchScript model has no decoder features (RP-PGD), its divisor 4 does not divide the 30-px window, and an
    # APGD member's class weights count 2 classes of the model's 3.
    cfg = compose_evaluate_config(
        folder_model(
            tmp_path,
            "model.input_divisor=4",
            "inference.window=[30,30]",
            "+attack@suite.attacks.rp=rppgd",
            "suite.attacks.rp.steps=1",
            "+attack@suite.attacks.weighted=apgd",
            "suite.attacks.weighted.steps=1",
            "suite.attacks.weighted.loss=mce_balanced",
            "suite.attacks.weighted.class_weights=[1.0,2.0]",
        ),
        tmp_path / "out",
    )
    with pytest.raises(PlanError) as refused:
        evaluate(cfg)
    message = str(refused.value)
    assert "nothing was attacked" in message
    assert (
        "suite.attacks.rp (rp @8/255) on model 'model.pt': attack 'rppgd' needs decoder features" in message
    )
    assert "drop it with ~suite.attacks.rp" in message
    assert (
        "inference settings: window must be [h, w] of positive multiples of the model's input_divisor 4"
        in message
    )
    assert "class_weights has 2 entries but the model predicts 3 classes" in message
    assert computed == [] and isinstance(refused.value, UserError)


def test_initial_weights_for_a_checkpoint_are_refused(trained_run, tmp_path):
    cfg = compose_evaluate_config(
        [
            f"ckpt_path={trained_run / 'last.ckpt'}",
            "+model.encoder_weights_path=/data/resnet18.pth",
            *MINIMAL,
        ],
        tmp_path,
    )
    with pytest.raises(
        EvaluationError, match=r"model.encoder_weights_path=/data/resnet18.pth cannot apply to checkpoint"
    ):
        evaluate(cfg)


def test_a_model_option_with_a_checkpoint_is_refused(trained_run, tmp_path):
    cfg = compose_evaluate_config(
        [f"ckpt_path={trained_run / 'last.ckpt'}", "model=torchvision", *MINIMAL], tmp_path
    )
    with pytest.raises(
        EvaluationError, match=r"with a model option .*: a checkpoint's model comes from its stored config"
    ):
        evaluate(cfg)


def test_normalisation_without_buffers_to_hold_it_is_refused():
    with pytest.raises(EvaluationError, match=r"model.mean=\[0.5, 0.5, 0.5\] is given, but the model has no"):
        set_normalization(nn.Conv2d(3, 2, 1), {"mean": [0.5, 0.5, 0.5]}, "model 'x'", EvaluationError)


def test_a_checkpoint_is_evaluated_on_a_dataset_option(trained_run, tmp_path):
    # The shapes checkpoint (7 classes) on a folder of 3-class images declared with 7 classes: the folder's
    # sources replace the stored shapes sources instead of mixing with them (num_images was a TypeError).
    root = write_folder(tmp_path / "data")
    cfg = compose_evaluate_config(
        [
            f"ckpt_path={trained_run / 'last.ckpt'}",
            "dataset=folder",
            f"dataset.root={root}",
            "dataset.num_classes=7",
            "dataset.num_workers=0",
            "dataset.train_source.split_list=train.txt",
            "dataset.val_source.split_list=val.txt",
            *MINIMAL,
        ],
        tmp_path / "out",
    )
    (report,) = evaluate(cfg).reports
    assert report.dataset == "folder" and report.num_images == 4
    assert all(name.startswith(str(root)) for name in report.image_names)


def test_a_checkpoint_on_a_dataset_of_another_class_count_is_refused_with_both_counts(trained_run, tmp_path):
    root = write_voc(tmp_path / "voc", {"a": label_blocks([0, 15])}, {"b": label_blocks([0, 15])})
    cfg = compose_evaluate_config(
        [f"ckpt_path={trained_run / 'last.ckpt'}", "dataset=voc", f"dataset.root={root}", *MINIMAL],
        tmp_path / "out",
    )
    with pytest.raises(PlanError, match=r"'last.ckpt' .* predicts 7 classes but dataset 'voc' has 21"):
        evaluate(cfg)


def test_evaluation_settings_out_of_range_are_refused_by_name(trained_run, tmp_path):
    for setting, message in (
        ("precision=16", "precision must be one of"),
        ("worst_case_rounds=0", "worst_case_rounds"),
    ):
        cfg = compose_evaluate_config([f"ckpt_path={trained_run / 'last.ckpt'}", *MINIMAL, setting], tmp_path)
        with pytest.raises(EvaluationError, match=message):
            evaluate(cfg)
