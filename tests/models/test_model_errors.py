"""Every bad model input gets an error that names the file, key or shape and says what was expected."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from eroseg_at.models.adapter import SegmentationAdapter
from eroseg_at.models.sources import (
    adapt_model,
    huggingface_model,
    smp_model,
    torchscript_model,
    torchvision_model,
)
from eroseg_at.models.weights import read_state_dict
from tests.models.conftest import (
    IDENTITY,
    JIT_DEPRECATION,
    NUM_CLASSES,
    Returning,
    logits_of,
    tiny_segformer_config,
    torchvision_network,
)

# Missing files and directories ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda missing: torchvision_model("lraspp_mobilenet_v3_large", NUM_CLASSES, weights=missing),
        lambda missing: huggingface_model(missing),
        lambda missing: torchscript_model(missing),
        lambda missing: smp_model(missing),
    ],
    ids=["torchvision", "huggingface", "torchscript", "smp"],
)
def test_a_missing_file_or_directory_is_named(build, tmp_path):
    missing = tmp_path / "nowhere" / "model.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        build(missing)


@pytest.mark.parametrize("missing_file", ["config.json", "model.safetensors"])
def test_an_smp_directory_without_its_files_names_the_missing_one(smp_deeplabv3plus, tmp_path, missing_file):
    directory = tmp_path / "partial"
    shutil.copytree(smp_deeplabv3plus.path, directory)
    (directory / missing_file).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(directory / missing_file))):
        smp_model(directory)


def test_a_huggingface_directory_without_config_or_weights_is_named(segformer, tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "config.json"))):
        huggingface_model(tmp_path)
    shutil.copy(segformer.path / "config.json", tmp_path)
    with pytest.raises(
        FileNotFoundError, match=rf"model.path={re.escape(str(tmp_path))}: .*model\.safetensors"
    ):
        huggingface_model(tmp_path)


# Weight files ---------------------------------------------------------------------------------------------


def test_a_pickled_module_is_refused_with_how_to_export_a_state_dict(tmp_path):
    path = tmp_path / "whole_model.pth"
    torch.save(torchvision_network("lraspp_mobilenet_v3_large"), path)
    with pytest.raises(ValueError) as caught:
        torchvision_model("lraspp_mobilenet_v3_large", NUM_CLASSES, weights=path)
    message = str(caught.value)
    assert f"{path} holds pickled Python objects (it refers to torchvision." in message
    assert "LRASPP" in message  # the class torch refused to unpickle
    assert "torch.save(model.state_dict(), path)" in message and "safetensors.torch.save_file" in message


def touch(path: str) -> None:
    Path(path).touch()


class TouchesAFileWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return touch, (str(self.marker),)


def test_reading_weights_never_runs_code_from_the_file(tmp_path):
    marker, path = tmp_path / "code_ran", tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "payload": TouchesAFileWhenUnpickled(marker)}, path)
    with pytest.raises(ValueError, match="holds pickled Python objects"):
        read_state_dict(path)
    assert not marker.exists()


def test_a_file_of_other_objects_is_refused_as_not_a_state_dict(tmp_path):
    path = tmp_path / "history.pt"
    torch.save({"epoch": 3, "losses": [0.5, 0.4]}, path)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} does not hold a state dict.*'epoch'"):
        read_state_dict(path)


def test_a_corrupt_safetensors_file_and_an_unknown_suffix_are_named(tmp_path):
    corrupt = tmp_path / "weights.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=f"cannot read the safetensors file {re.escape(str(corrupt))}"):
        read_state_dict(corrupt)
    unknown = tmp_path / "weights.npz"
    unknown.write_bytes(b"")
    with pytest.raises(
        ValueError, match=r"suffix '\.npz'; expected one of \.pth, \.pt, \.bin, \.safetensors"
    ):
        read_state_dict(unknown)


def test_weights_of_another_architecture_list_missing_and_unexpected_keys(deeplabv3):
    with pytest.raises(ValueError) as caught:
        torchvision_model("lraspp_mobilenet_v3_large", NUM_CLASSES, weights=deeplabv3.path)
    message = str(caught.value)
    assert str(deeplabv3.path) in message and "torchvision lraspp_mobilenet_v3_large" in message
    assert "missing keys ['classifier.cbr.0.weight'" in message
    assert "unexpected keys ['classifier.0.convs.0.0.weight'" in message
    assert re.search(r"\.\.\. \(\d+ in all\)", message)


def test_weights_for_another_class_count_list_the_shapes(lraspp):
    with pytest.raises(ValueError) as caught:
        torchvision_model("lraspp_mobilenet_v3_large", NUM_CLASSES + 1, weights=lraspp.path)
    message = str(caught.value)
    assert "is num_classes right?" in message
    assert (
        f"classifier.low_classifier.weight: file [{NUM_CLASSES}, 40, 1, 1], model [{NUM_CLASSES + 1}, 40, 1, 1]"
        in (message)
    )


# Names and classes ----------------------------------------------------------------------------------------


def test_an_unknown_torchvision_name_lists_the_valid_ones():
    with pytest.raises(
        ValueError, match="unknown torchvision segmentation model 'deeplabv4'.*lraspp_mobilenet_v3_large"
    ):
        torchvision_model("deeplabv4", NUM_CLASSES)


def test_a_huggingface_classification_model_lists_the_segmentation_classes(tmp_path):
    from transformers import SegformerForImageClassification

    SegformerForImageClassification(tiny_segformer_config()).save_pretrained(tmp_path)
    with pytest.raises(ValueError) as caught:
        huggingface_model(tmp_path)
    message = str(caught.value)
    assert "SegformerForImageClassification, which is not a semantic segmentation model" in message
    assert "SegformerForSemanticSegmentation" in message and "UperNetForSemanticSegmentation" in message


def test_a_huggingface_config_of_another_model_type_lists_the_segmentation_classes(tmp_path):
    from transformers import ResNetConfig

    ResNetConfig().save_pretrained(tmp_path)
    with pytest.raises(
        ValueError, match="model_type 'resnet', which is not a semantic segmentation model.*Segformer"
    ):
        huggingface_model(tmp_path)


def test_huggingface_weights_missing_a_layer_are_refused_not_randomly_initialised(segformer, tmp_path):
    directory = tmp_path / "incomplete"
    shutil.copytree(segformer.path, directory)
    state = load_file(directory / "model.safetensors")
    save_file(
        {k: v for k, v in state.items() if not k.startswith("decode_head.classifier.")},
        directory / "model.safetensors",
    )
    with pytest.raises(
        ValueError,
        match=r"do not fit the architecture SegformerForSemanticSegmentation: missing keys \['decode_head\.classifier\.bias', 'decode_head\.classifier\.weight'\]",
    ):
        huggingface_model(directory)


def test_huggingface_num_classes_must_match_num_labels(segformer):
    with pytest.raises(ValueError, match=f"num_classes=3 but .*config.json has num_labels={NUM_CLASSES}"):
        huggingface_model(segformer.path, num_classes=3)


def test_an_smp_config_without_a_model_class_is_refused(smp_deeplabv3plus, tmp_path):
    directory = tmp_path / "foreign"
    shutil.copytree(smp_deeplabv3plus.path, directory)
    (directory / "config.json").write_text(json.dumps({"model_type": "segformer"}))
    with pytest.raises(
        ValueError, match="names no segmentation-models-pytorch model class under '_model_class'"
    ):
        smp_model(directory)


@pytest.mark.filterwarnings(JIT_DEPRECATION)
def test_a_state_dict_is_not_a_torchscript_archive(lraspp):
    with pytest.raises(ValueError, match=f"{re.escape(str(lraspp.path))} is not a TorchScript archive"):
        torchscript_model(lraspp.path)


# Outputs --------------------------------------------------------------------------------------------------


def test_logits_of_the_wrong_rank_name_the_shape():
    network = Returning(lambda x: x.mean(1))
    with pytest.raises(
        ValueError, match=r"returned logits of shape \[2, 64, 64\] for images of shape \[2, 3, 64, 64\]"
    ):
        adapt_model(network, NUM_CLASSES, **IDENTITY)
    with pytest.raises(
        ValueError, match=r"logits of shape \[2, 64, 64\] .* expected \[B, num_classes, h, w\]"
    ):
        adapt_model(network, None, **IDENTITY)


def test_a_wrong_class_count_names_the_shape_and_the_expected_count():
    with pytest.raises(
        ValueError, match=r"logits of shape \[2, 5, 64, 64\] .* expected \[2, num_classes=7, h, w\]"
    ):
        adapt_model(Returning(logits_of(5)), NUM_CLASSES, **IDENTITY)


def test_non_finite_logits_are_caught_once_at_build_time():
    network = Returning(lambda x: logits_of(NUM_CLASSES)(x) / 0 * 0)
    with pytest.raises(
        ValueError, match=r"logits of shape \[2, 7, 64, 64\] with 57344 NaN or infinite values"
    ):
        adapt_model(network, NUM_CLASSES, **IDENTITY)
    # forward itself stays free of the device sync a finiteness check costs.
    adapter = SegmentationAdapter(network, NUM_CLASSES, **IDENTITY)
    assert torch.isnan(adapter(torch.rand(1, 3, 8, 8))).all()


def test_non_finite_decoder_features_are_caught_at_build_time():
    class Head(nn.Module):
        """Infinite features, which its classifier ignores: only the feature check can catch them."""

        def __init__(self):
            super().__init__()
            self.classifier = Returning(lambda x: torch.zeros(x.shape[0], NUM_CLASSES, *x.shape[-2:]))

        def forward(self, x):
            return self.classifier(x * float("inf"))

    with pytest.raises(ValueError, match=r"returned features of shape \[2, 3, 64, 64\] with \d+ NaN"):
        adapt_model(Head(), NUM_CLASSES, **IDENTITY, classifier_name="classifier")


def test_logits_larger_than_the_input_are_refused():
    network = Returning(lambda x: logits_of(NUM_CLASSES)(x).repeat_interleave(2, -1))
    with pytest.raises(
        ValueError, match=r"shape \[2, 7, 64, 128\] .* expected a resolution of at most 64x64"
    ):
        adapt_model(network, NUM_CLASSES, **IDENTITY)


def test_an_output_without_logits_names_its_keys():
    network = Returning(lambda x: {"aux": logits_of(NUM_CLASSES)(x)})
    with pytest.raises(
        ValueError,
        match=r"returned a dict with keys \['aux'\]; expected a tensor under one of \['out', 'logits'\]",
    ):
        adapt_model(network, NUM_CLASSES, **IDENTITY)


def test_an_unknown_classifier_name_is_named():
    with pytest.raises(
        ValueError, match="has no submodule 'decoder.classifier' to take decoder features from"
    ):
        adapt_model(
            Returning(logits_of(NUM_CLASSES)), NUM_CLASSES, **IDENTITY, classifier_name="decoder.classifier"
        )


def test_input_of_the_wrong_shape_or_size_is_named():
    adapter = adapt_model(Returning(logits_of(NUM_CLASSES)), NUM_CLASSES, **IDENTITY, input_divisor=8)
    with pytest.raises(ValueError, match=r"expected images of shape \[B, 3, H, W\], got \[2, 1, 64, 64\]"):
        adapter(torch.rand(2, 1, 64, 64))
    with pytest.raises(ValueError, match="image size 60x64 is not divisible by 8"):
        adapter(torch.rand(2, 3, 60, 64))
