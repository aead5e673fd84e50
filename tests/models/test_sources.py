"""Each source's adapter computes what its library model computes, given the normalisation by hand.

The reference of every test normalises the images itself, calls the raw library model, takes the logits out
of its output itself (``["out"]``, ``.logits``) and upsamples them itself, so a pass proves the adapter's
normalisation, output extraction and upsampling, and the loader's reading of weights and statistics.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from eroseg_at.attacks import build_attack
from eroseg_at.configs import compose_config
from eroseg_at.models.adapter import IMAGENET_MEAN, IMAGENET_STD
from eroseg_at.models.sources import (
    huggingface_model,
    preprocessor_normalization,
    resolve_normalization,
    smp_model,
    torchscript_model,
    torchvision_model,
)
from tests.models.conftest import (
    JIT_DEPRECATION,
    NUM_CLASSES,
    SEGFORMER_MEAN,
    SEGFORMER_STD,
    UPERNET_PIXEL_MEAN,
    UPERNET_PIXEL_STD,
)

# Odd sizes: families that accept any size must return logits at exactly this size.
ODD = torch.rand(2, 3, 61, 67, generator=torch.Generator().manual_seed(1))
# Divisible by 16, for the SMP DeepLabV3+.
EVEN = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(2))


def normalized(images, mean, std):
    return (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def upsampled(logits, images):
    return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def assert_gradient_reaches_pixels(model, images):
    images = images.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(images).sum(), images)
    assert gradient.shape == images.shape and gradient.abs().sum() > 0


def test_torchvision_lraspp_matches_the_library_model_at_an_odd_size(lraspp):
    model = torchvision_model("lraspp_mobilenet_v3_large", NUM_CLASSES, weights=lraspp.path).eval()
    with torch.no_grad():
        expected = lraspp.network(normalized(ODD, IMAGENET_MEAN, IMAGENET_STD))["out"]
        logits = model(ODD)
    assert logits.shape == (2, NUM_CLASSES, 61, 67)
    torch.testing.assert_close(logits, expected)
    assert (model.num_classes, model.input_divisor) == (NUM_CLASSES, 1)
    assert_gradient_reaches_pixels(model, ODD)


def test_lraspp_has_no_decoder_features_and_rppgd_says_so():
    model = torchvision_model("lraspp_mobilenet_v3_large", NUM_CLASSES)
    assert getattr(model, "logits_and_features", None) is None
    assert model.source_info.features is None
    attack = build_attack("rppgd", eps="8/255", steps=1)
    with pytest.raises(TypeError, match="needs decoder features"):
        attack(model, ODD, torch.zeros(2, 61, 67, dtype=torch.int64))


def test_torchvision_deeplabv3_features_are_the_aspp_output(deeplabv3):
    model = torchvision_model("deeplabv3_mobilenet_v3_large", NUM_CLASSES, weights=deeplabv3.path).eval()
    network = deeplabv3.network
    with torch.no_grad():
        inputs = normalized(ODD, IMAGENET_MEAN, IMAGENET_STD)
        expected_features = torch.nn.Sequential(*list(network.classifier)[:4])(
            network.backbone(inputs)["out"]
        )
        logits, features = model.logits_and_features(ODD)
        torch.testing.assert_close(logits, network(inputs)["out"])
        torch.testing.assert_close(features, expected_features)
        torch.testing.assert_close(model(ODD), logits)
    assert features.shape[:2] == (2, 256)
    assert model.source_info.features == "input of classifier.4"
    assert_gradient_reaches_pixels(model, ODD)


def test_torchvision_mean_and_std_override_imagenet(lraspp):
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    model = torchvision_model("lraspp_mobilenet_v3_large", NUM_CLASSES, lraspp.path, mean, std).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ODD), lraspp.network(normalized(ODD, mean, std))["out"])
    assert (model.source_info.mean, model.source_info.std, model.source_info.normalization) == (
        mean,
        std,
        "given",
    )


@pytest.mark.parametrize("wrapper_key", [None, "state_dict", "model"])
def test_torchvision_weights_load_from_safetensors_and_wrapped_state_dicts(lraspp, tmp_path, wrapper_key):
    from safetensors.torch import save_file

    state = lraspp.network.state_dict()
    if wrapper_key is None:
        path = tmp_path / "weights.safetensors"
        save_file(state, path)
    else:
        path = tmp_path / "weights.pt"
        torch.save({wrapper_key: state, "epoch": 3}, path)
    model = torchvision_model("lraspp_mobilenet_v3_large", NUM_CLASSES, weights=path).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model(ODD), lraspp.network(normalized(ODD, IMAGENET_MEAN, IMAGENET_STD))["out"]
        )
    assert model.source_info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert model.source_info.path == str(path)


def test_torchvision_weights_with_an_auxiliary_head_load_without_it(tmp_path):
    import torchvision

    # torchvision's own COCO weights are saved this way: with aux_classifier.* tensors.
    torch.manual_seed(0)
    network = torchvision.models.get_model(
        "deeplabv3_mobilenet_v3_large",
        weights=None,
        weights_backbone=None,
        num_classes=NUM_CLASSES,
        aux_loss=True,
    ).eval()
    path = tmp_path / "with_aux.pth"
    torch.save(network.state_dict(), path)
    model = torchvision_model("deeplabv3_mobilenet_v3_large", NUM_CLASSES, weights=path).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ODD), network(normalized(ODD, IMAGENET_MEAN, IMAGENET_STD))["out"])
    assert model.network.aux_classifier is None


def test_segformer_uses_the_preprocessor_statistics_and_upsamples_its_quarter_resolution(segformer):
    model = huggingface_model(segformer.path, num_classes=NUM_CLASSES).eval()
    network = segformer.network
    with torch.no_grad():
        low_resolution = network(pixel_values=normalized(ODD, SEGFORMER_MEAN, SEGFORMER_STD)).logits
        logits, features = model.logits_and_features(ODD)
    assert low_resolution.shape[-2:] == (16, 17)
    assert logits.shape == (2, NUM_CLASSES, 61, 67)
    torch.testing.assert_close(logits, upsampled(low_resolution, ODD))
    # The features are what the classifier maps to the logits.
    torch.testing.assert_close(network.decode_head.classifier(features), low_resolution)
    assert model.source_info.mean == pytest.approx(SEGFORMER_MEAN)
    assert model.source_info.normalization == "preprocessor_config.json"
    assert_gradient_reaches_pixels(model, ODD)


def test_upernet_reads_unrescaled_pixel_statistics_and_drops_its_auxiliary_head(upernet):
    model = huggingface_model(upernet.path).eval()
    network = upernet.network
    # The processor's own arithmetic: 0..255 pixels, no rescaling, statistics in pixel units.
    pixels = ODD * 255
    inputs = (pixels - torch.tensor(UPERNET_PIXEL_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        UPERNET_PIXEL_STD
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = network(pixel_values=inputs).logits
        logits, features = model.logits_and_features(ODD)
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(upsampled(network.decode_head.classifier(features), ODD), expected)
    assert model.num_classes == NUM_CLASSES
    assert network.auxiliary_head is not None and model.network.auxiliary_head is None
    assert not any(name.startswith("network.auxiliary_head") for name in model.state_dict())
    assert_gradient_reaches_pixels(model, ODD)


def test_huggingface_without_preprocessor_config_uses_imagenet(segformer, tmp_path):
    directory = tmp_path / "no_processor"
    shutil.copytree(segformer.path, directory)
    (directory / "preprocessor_config.json").unlink()
    model = huggingface_model(directory).eval()
    with torch.no_grad():
        expected = upsampled(segformer.network(normalized(ODD, IMAGENET_MEAN, IMAGENET_STD)).logits, ODD)
        torch.testing.assert_close(model(ODD), expected)
    assert model.source_info.normalization.startswith("ImageNet")
    assert model.source_info.sha256 != huggingface_model(segformer.path).source_info.sha256


@pytest.mark.parametrize(
    ("processor", "mean", "std"),
    [
        ({"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3]}, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)),
        ({"image_mean": 0.5, "image_std": [0.25]}, (0.5,) * 3, (0.25,) * 3),
        ({"do_rescale": False, "image_mean": [127.5] * 3, "image_std": [51.0] * 3}, (0.5,) * 3, (0.2,) * 3),
        (
            {"rescale_factor": 1 / 127.5, "image_mean": [1.0] * 3, "image_std": [1.0] * 3},
            (0.5,) * 3,
            (0.5,) * 3,
        ),
        ({"do_normalize": False}, (0.0,) * 3, (1.0,) * 3),
    ],
    ids=["lists", "scalars", "no-rescale", "rescale-to-minus-one-one", "no-normalize"],
)
def test_preprocessor_statistics_are_converted_to_zero_one_units(tmp_path, processor, mean, std):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(processor))
    found_mean, found_std = preprocessor_normalization(tmp_path)
    assert found_mean == pytest.approx(mean) and found_std == pytest.approx(std)


def test_a_preprocessor_config_with_two_means_is_named(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2], "image_std": 1}))
    with pytest.raises(
        ValueError, match=r"preprocessor_config\.json: image_mean must be a number or a list of 1 or 3"
    ):
        preprocessor_normalization(tmp_path)


def test_partial_overrides_say_which_statistic_came_from_where():
    assert resolve_normalization((0.5,) * 3, None, IMAGENET_MEAN, IMAGENET_STD, "ImageNet") == (
        (0.5,) * 3,
        IMAGENET_STD,
        "mean given, std from ImageNet",
    )


def test_builders_return_training_mode_like_a_fresh_module(segformer, smp_deeplabv3plus):
    # Lightning never calls .train() before fitting: an eval-mode model would train with frozen BatchNorm.
    for model in (huggingface_model(segformer.path), smp_model(smp_deeplabv3plus.path)):
        assert all(module.training for module in model.modules())


def test_smp_directory_matches_the_library_model_with_decoder_features(smp_deeplabv3plus):
    model = smp_model(smp_deeplabv3plus.path).eval()
    network = smp_deeplabv3plus.network
    with torch.no_grad():
        inputs = normalized(EVEN, IMAGENET_MEAN, IMAGENET_STD)
        logits, features = model.logits_and_features(EVEN)
        torch.testing.assert_close(logits, network(inputs))
        torch.testing.assert_close(features, network.decoder(network.encoder(inputs)))
    assert (model.num_classes, model.input_divisor) == (NUM_CLASSES, 16)
    assert model.source_info.name == "DeepLabV3Plus(resnet18)"
    # The fifth ResNet stage, which encoder_depth=4 never runs, is gone (DDP fails on unused parameters).
    assert not any(key.startswith("network.encoder.layer4") for key in model.state_dict())
    assert_gradient_reaches_pixels(model, EVEN)
    with pytest.raises(ValueError, match="61x67 is not divisible by 16"):
        model(ODD)


def test_smp_config_asking_for_pretrained_encoder_weights_and_an_activation_loads_offline_as_logits(
    smp_deeplabv3plus, tmp_path
):
    directory = tmp_path / "imagenet_sigmoid"
    shutil.copytree(smp_deeplabv3plus.path, directory)
    config = json.loads((directory / "config.json").read_text())
    # Built as saved, "imagenet" would download encoder weights and "sigmoid" would return probabilities.
    config.update(encoder_weights="imagenet", activation="sigmoid")
    (directory / "config.json").write_text(json.dumps(config))
    model = smp_model(directory).eval()
    with torch.no_grad():
        expected = smp_deeplabv3plus.network(normalized(EVEN, IMAGENET_MEAN, IMAGENET_STD))
        torch.testing.assert_close(model(EVEN), expected)


def test_smp_classification_head_is_dropped(tmp_path):
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    network = smp.Unet(
        "resnet18",
        encoder_weights=None,
        encoder_depth=3,
        decoder_channels=(16, 8, 8),
        classes=NUM_CLASSES,
        aux_params={"classes": 3},
    ).eval()
    network.save_pretrained(tmp_path)
    model = smp_model(tmp_path).eval()
    with torch.no_grad():
        masks, _ = network(normalized(ODD, IMAGENET_MEAN, IMAGENET_STD))
        torch.testing.assert_close(model(ODD), masks)
    assert model.network.classification_head is None


@pytest.mark.filterwarnings(JIT_DEPRECATION)
def test_torchscript_applies_mean_and_std_only_when_given(traced_unet):
    network = traced_unet.network
    plain = torchscript_model(traced_unet.path).eval()
    normalizing = torchscript_model(traced_unet.path, mean=IMAGENET_MEAN, std=IMAGENET_STD).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(ODD), network(ODD))
        torch.testing.assert_close(normalizing(ODD), network(normalized(ODD, IMAGENET_MEAN, IMAGENET_STD)))
    assert plain.num_classes == NUM_CLASSES  # read from a probe forward
    assert getattr(plain, "logits_and_features", None) is None
    assert plain.source_info.sha256 == hashlib.sha256(traced_unet.path.read_bytes()).hexdigest()
    assert_gradient_reaches_pixels(plain, ODD)


def test_building_leaves_the_global_random_state_alone(segformer):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    huggingface_model(segformer.path)
    torch.testing.assert_close(torch.rand(3), expected)


def test_source_summary_names_source_digest_adapter_and_normalisation(segformer):
    summary = huggingface_model(segformer.path).source_info.summary()
    for part in (
        "huggingface model SegformerForSemanticSegmentation",
        str(segformer.path),
        "sha256 ",
        "FeatureSegmentationAdapter",
        "preprocessor_config.json",
        "input of decode_head.classifier",
    ):
        assert part in summary


@pytest.mark.filterwarnings(JIT_DEPRECATION)
@pytest.mark.parametrize("source", ["torchvision", "huggingface", "torchscript", "smp"])
def test_each_config_option_instantiates_its_builder(
    source, lraspp, segformer, traced_unet, smp_deeplabv3plus
):
    location = {
        "torchvision": f"model.weights={lraspp.path}",
        "huggingface": f"model.path={segformer.path}",
        "torchscript": f"model.path={traced_unet.path}",
        "smp": f"model.path={smp_deeplabv3plus.path}",
    }[source]
    name = ["model.name=lraspp_mobilenet_v3_large"] if source == "torchvision" else []
    cfg = compose_config("train", [f"model={source}", location, *name, f"model.num_classes={NUM_CLASSES}"])
    model = instantiate(cfg.model)
    assert model.source_info.kind == source
    assert model.num_classes == NUM_CLASSES
    assert model(EVEN).shape == (2, NUM_CLASSES, 64, 80)
