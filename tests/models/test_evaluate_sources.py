"""Users' models through the whole pipeline: evaluated (evaluate.py and the Python API), attacked, fine-tuned.

The clean mIoU of each source is checked against one computed here from the raw library model with
torchmetrics, sharing no code with the project's adapter, inference or metrics.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassJaccardIndex

from eroseg_at.attacks import available_attacks, build_attack
from eroseg_at.configs import build
from eroseg_at.evaluation import evaluate
from eroseg_at.evaluation.api import evaluate_model
from eroseg_at.evaluation.data import from_datamodule
from eroseg_at.models.adapter import IMAGENET_MEAN, IMAGENET_STD
from eroseg_at.models.sources import huggingface_model, smp_model, torchscript_model, torchvision_model
from eroseg_at.training import train
from tests.conftest import TINY_SHAPES, compose_train_config
from tests.evaluation.conftest import compose_evaluate_config
from tests.models.conftest import (
    JIT_DEPRECATION,
    NUM_CLASSES,
    SEGFORMER_MEAN,
    SEGFORMER_STD,
    UPERNET_PIXEL_MEAN,
    UPERNET_PIXEL_STD,
)

STEPS_TO_FIT = 150
# Eight 64x64 shapes validation images in one batch (the shapes dataset has NUM_CLASSES = 7 classes).
SHAPES = ("dataset=shapes", "dataset.val_source.num_images=8", "dataset.val_batch_size=8")
# These tests are about the sources; the gradient-masking checks have their own (tests/evaluation).
NO_MASKING_CHECKS = "masking_checks.enabled=false"


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    cfg = compose_train_config(list(SHAPES), output_dir=tmp_path_factory.mktemp("unused"))
    return from_datamodule(build(cfg.dataset))


def raw_logits(network, images, mean, std):
    """The library model's logits at the input size, by hand: normalise, call, unpack, upsample."""
    normalized = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    output = network(normalized)
    if hasattr(output, "logits"):  # a transformers ModelOutput (a dict subclass too)
        logits = output.logits
    else:
        logits = output["out"] if isinstance(output, dict) else output
    return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def independent_miou(network, data, mean, std) -> float:
    metric = MulticlassJaccardIndex(num_classes=NUM_CLASSES, ignore_index=data.ignore_index, average="macro")
    with torch.no_grad():
        for images, labels in data.loader:
            metric.update(raw_logits(network, images, mean, std).argmax(1), labels)
    return float(metric.compute())


SOURCES = {
    "lraspp": lambda s: (
        torchvision_model("lraspp_mobilenet_v3_large", NUM_CLASSES, weights=s.path),
        IMAGENET_MEAN,
        IMAGENET_STD,
    ),
    "deeplabv3": lambda s: (
        torchvision_model("deeplabv3_mobilenet_v3_large", NUM_CLASSES, weights=s.path),
        IMAGENET_MEAN,
        IMAGENET_STD,
    ),
    "segformer": lambda s: (huggingface_model(s.path), SEGFORMER_MEAN, SEGFORMER_STD),
    "upernet": lambda s: (
        huggingface_model(s.path),
        tuple(m / 255 for m in UPERNET_PIXEL_MEAN),
        tuple(v / 255 for v in UPERNET_PIXEL_STD),
    ),
    "traced_unet": lambda s: (
        torchscript_model(s.path, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        IMAGENET_MEAN,
        IMAGENET_STD,
    ),
    "smp_deeplabv3plus": lambda s: (smp_model(s.path), IMAGENET_MEAN, IMAGENET_STD),
}


@pytest.mark.filterwarnings(JIT_DEPRECATION)
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_clean_miou_of_every_source_equals_an_independent_computation(source, shapes_data, request):
    saved = request.getfixturevalue(source)
    model, mean, std = SOURCES[source](saved)
    report = evaluate_model(
        model.eval(),
        shapes_data,
        suite="quick",
        overrides=["eps=[4/255]", "suite.iterations=null", NO_MASKING_CHECKS],
    )
    expected = independent_miou(saved.network.eval(), shapes_data, mean, std)
    assert report.row("clean").miou == pytest.approx(expected, abs=1e-6)
    assert report.source.kind == model.source_info.kind and report.sha256 == model.source_info.sha256
    # The worst case (over PGD3, SegPGD3, EroSeg3 and clean) never exceeds clean.
    assert report.row("worst_case").miou <= report.row("clean").miou + 1e-9


@pytest.mark.filterwarnings(JIT_DEPRECATION)
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_registered_attack_runs_on_every_source_and_stays_in_the_ball(source, shapes_data, request):
    model, _, _ = SOURCES[source](request.getfixturevalue(source))
    model.eval()
    images, labels = next(iter(shapes_data.loader))
    images, labels = images[:2], labels[:2]
    facts = shapes_data.facts()
    for name in available_attacks():
        if name == "rppgd" and getattr(model, "logits_and_features", None) is None:
            with pytest.raises(TypeError, match="needs decoder features"):
                build_attack(name, dataset=facts, steps=1)(model, images, labels)
            continue
        adversarial = build_attack(name, dataset=facts, steps=2)(model, images, labels)
        assert (adversarial - images).abs().max() <= 8 / 255 + 1e-6, name
        assert adversarial.min() >= 0 and adversarial.max() <= 1, name
        assert not torch.equal(adversarial, images), name


def test_evaluate_py_on_a_torchvision_file_records_source_digest_and_normalisation(lraspp, tmp_path):
    cfg = compose_evaluate_config(
        [
            "model=torchvision",
            "model.name=lraspp_mobilenet_v3_large",
            f"model.weights={lraspp.path}",
            *SHAPES,
            "suite=quick",
            "eps=[8/255]",
            "suite.iterations=null",
            "example_images=2",
            NO_MASKING_CHECKS,
        ],
        tmp_path,
    )
    result = evaluate(cfg)
    (model,) = json.loads(result.files["results.json"].read_text())["models"]
    assert model["path"] == str(lraspp.path) and model["method"] == "torchvision lraspp_mobilenet_v3_large"
    assert model["source"]["sha256"] == model["sha256"] and len(model["sha256"]) == 64
    assert model["source"]["normalization"] == "ImageNet" and model["source"]["mean"] == list(IMAGENET_MEAN)
    assert model["source"]["adapter"] == "SegmentationAdapter" and model["source"]["features"] is None
    assert model["training_config"] is None and model["num_images"] == 8
    assert "| torchvision lraspp_mobilenet_v3_large |" in result.files["results.md"].read_text()


def test_evaluate_without_a_model_or_a_checkpoint_says_what_to_give(tmp_path):
    with pytest.raises(ValueError, match="nothing to evaluate: give ckpt_path="):
        evaluate(compose_evaluate_config([*SHAPES], tmp_path))
    with pytest.raises(ValueError, match="add dataset=<name>"):
        evaluate(compose_evaluate_config(["model=torchvision"], tmp_path))


def test_a_class_count_that_differs_from_the_datasets_is_refused_before_any_attack(segformer, tmp_path):
    cfg = compose_evaluate_config(
        ["model=huggingface", f"model.path={segformer.path}", "dataset=folder", "dataset.num_classes=3"],
        tmp_path,
    )
    with pytest.raises(ValueError, match="num_classes=3 but .*num_labels=7"):
        evaluate(cfg)


@pytest.mark.parametrize("source", ["torchvision", "huggingface"])
def test_eroseg_at_fine_tunes_a_users_model_and_its_checkpoint_evaluates_like_any_other(
    source, lraspp, segformer, tmp_path
):
    if source == "torchvision":
        weights = tmp_path / "pretrained.pth"
        shutil.copy(lraspp.path, weights)
        model = ["model=torchvision", "model.name=lraspp_mobilenet_v3_large", f"model.weights={weights}"]
    else:
        model = ["model=huggingface", f"model.path={segformer.path}"]
    result = train(
        compose_train_config(
            [
                *TINY_SHAPES,
                *model,
                "attack=eroseg",
                "attack.steps=1",
                "logger=none",
                "schedule.max_epochs=1",
                "trainer.limit_train_batches=2",
                "validation.attack_batches=1",
            ],
            output_dir=tmp_path / "run",
        )
    )
    assert 0 <= result.validation.miou["pgd10"] <= result.validation.miou["clean"] + 1e-4
    if source == "torchvision":
        # The pretrained file only initialised the weights: the checkpoint holds them, so it is not needed.
        weights.unlink()
    cfg = compose_evaluate_config(
        [
            f"ckpt_path={result.last_checkpoint}",
            "suite=quick",
            "eps=[8/255]",
            "suite.iterations=null",
            NO_MASKING_CHECKS,
        ],
        tmp_path / "eval",
    )
    (report,) = evaluate(cfg).reports
    # The same images and weights as the run's last validation (shapes at 64 px: nothing padded).
    assert report.method == "EroSeg1-AT" and report.num_images == 8
    assert 100 * report.row("clean").miou == pytest.approx(result.validation.miou["clean"], abs=1e-4)


@pytest.mark.slow
@pytest.mark.filterwarnings(JIT_DEPRECATION)
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_attack_lowers_the_miou_of_every_source_once_it_has_learned_something(
    source, shapes_data, request
):
    # Fitted to the evaluation images themselves: the cheapest way to a model that predicts the shapes there.
    # In eval mode, with BatchNorm statistics frozen, so that what is fitted is what is evaluated (after a
    # short fit in train mode, MobileNet's BatchNorm, momentum 0.01, keeps running statistics of the start).
    model, _, _ = SOURCES[source](request.getfixturevalue(source))
    images, labels = next(iter(shapes_data.loader))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.eval()
    for _ in range(STEPS_TO_FIT):
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels, ignore_index=255).backward()
        optimizer.step()
    clean = evaluate_model(model, shapes_data, suite="quick", overrides=["suite.iterations=null"]).row(
        "clean"
    )
    # More than predicting background everywhere: the foreground classes are found at all.
    assert max(clean.iou_per_class[1:]) > 0.3, clean.iou_per_class
    facts = shapes_data.facts()
    with torch.no_grad():
        clean_correct = (model(images).argmax(1) == labels).sum()
    for name in available_attacks():
        if name == "rppgd" and getattr(model, "logits_and_features", None) is None:
            continue
        adversarial = build_attack(name, dataset=facts, steps=10)(model, images, labels)
        with torch.no_grad():
            correct = (model(adversarial).argmax(1) == labels).sum()
        assert correct < clean_correct, name
