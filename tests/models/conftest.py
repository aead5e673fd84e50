"""Real library models, built locally with tiny configs and saved the way their users save them.

Each fixture returns the saved file or directory together with the raw library model it was saved from
(eval mode), so that tests compare the adapter with a computation that shares none of its code.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

NUM_CLASSES = 7
# For adapters of networks that take [0, 1] images as they are.
IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
# torch warns that TorchScript (trace, save, load) is deprecated; harmless for these tests.
JIT_DEPRECATION_MESSAGE = r"`torch\.jit\.\w+` is deprecated"
JIT_DEPRECATION = f"ignore:{JIT_DEPRECATION_MESSAGE}:FutureWarning"
# Deliberately not ImageNet's, so that a test passing proves these statistics were read.
SEGFORMER_MEAN = (0.5, 0.4, 0.3)
SEGFORMER_STD = (0.2, 0.25, 0.3)
# UperNet's processor works on 0..255 pixels without rescaling: the statistics are in pixel units.
UPERNET_PIXEL_MEAN = (120.0, 110.0, 100.0)
UPERNET_PIXEL_STD = (60.0, 58.0, 57.0)


@pytest.fixture(scope="package", autouse=True)
def single_thread() -> Iterator[None]:
    """One intra-op thread: on a busy 2-core host two threads make these tiny forwards up to 100x slower.

    Package scope, so that it is in force before the package-scoped models below are built and ends with
    this folder.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Returning(nn.Module):
    """A network whose output is ``make(images)``: stands in for a broken or unusual library model."""

    def __init__(self, make):
        super().__init__()
        self.make = make
        self.weight = nn.Parameter(torch.ones(()))

    def forward(self, images):
        return self.make(images * self.weight)


def logits_of(num_classes: int):
    """``make`` for :class:`Returning`: ``num_classes`` copies of the channel mean, at the input size."""
    return lambda x: x.mean(1, keepdim=True).repeat(1, num_classes, 1, 1)


@dataclass
class Saved:
    """A model written to ``path`` and the raw library model it was written from."""

    path: Path
    network: nn.Module


def torchvision_network(name: str, seed: int = 0) -> nn.Module:
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.get_model(
        name, weights=None, weights_backbone=None, num_classes=NUM_CLASSES
    ).eval()


def save_torchvision(name: str, directory: Path) -> Saved:
    network = torchvision_network(name)
    path = directory / f"{name}.pth"
    torch.save(network.state_dict(), path)
    return Saved(path, network)


@pytest.fixture(scope="package")
def lraspp(tmp_path_factory) -> Saved:
    return save_torchvision("lraspp_mobilenet_v3_large", tmp_path_factory.mktemp("torchvision"))


@pytest.fixture(scope="package")
def deeplabv3(tmp_path_factory) -> Saved:
    return save_torchvision("deeplabv3_mobilenet_v3_large", tmp_path_factory.mktemp("torchvision"))


def tiny_segformer_config(**overrides):
    from transformers import SegformerConfig

    return SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 1],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        num_labels=NUM_CLASSES,
        **overrides,
    )


@pytest.fixture(scope="package")
def segformer(tmp_path_factory) -> Saved:
    """A two-stage SegFormer (logits at 1/4 of the input size) with a non-ImageNet preprocessor config."""
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    directory = tmp_path_factory.mktemp("segformer")
    torch.manual_seed(0)
    network = SegformerForSemanticSegmentation(tiny_segformer_config()).eval()
    network.save_pretrained(directory)
    SegformerImageProcessor(image_mean=list(SEGFORMER_MEAN), image_std=list(SEGFORMER_STD)).save_pretrained(
        directory
    )
    return Saved(directory, network)


@pytest.fixture(scope="package")
def upernet(tmp_path_factory) -> Saved:
    """UperNet on a four-stage ConvNeXt of 8-16 channels, with an auxiliary head, built offline."""
    from transformers import ConvNextConfig, UperNetConfig, UperNetForSemanticSegmentation

    directory = tmp_path_factory.mktemp("upernet")
    backbone = ConvNextConfig(
        hidden_sizes=[8, 16, 16, 16],
        depths=[1, 1, 1, 1],
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = UperNetConfig(
        backbone_config=backbone,
        hidden_size=16,
        auxiliary_channels=8,
        pool_scales=[1, 2],
        num_labels=NUM_CLASSES,
    )
    torch.manual_seed(0)
    network = UperNetForSemanticSegmentation(config).eval()
    network.save_pretrained(directory)
    processor = {
        "image_processor_type": "SegformerImageProcessor",
        "do_rescale": False,
        "do_normalize": True,
        "image_mean": list(UPERNET_PIXEL_MEAN),
        "image_std": list(UPERNET_PIXEL_STD),
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(processor))
    return Saved(directory, network)


@pytest.fixture(scope="package")
def smp_deeplabv3plus(tmp_path_factory) -> Saved:
    """The project's default SMP model, DeepLabV3+ on four ResNet-18 stages (sizes divisible by 16)."""
    import segmentation_models_pytorch as smp

    directory = tmp_path_factory.mktemp("smp")
    torch.manual_seed(0)
    network = smp.DeepLabV3Plus(
        "resnet18",
        encoder_weights=None,
        encoder_depth=4,
        encoder_output_stride=16,
        decoder_atrous_rates=(1, 2, 3),
        classes=NUM_CLASSES,
    ).eval()
    network.save_pretrained(directory)
    return Saved(directory, network)


@pytest.fixture(scope="package")
def traced_unet(tmp_path_factory) -> Saved:
    """A trace of an SMP U-Net (which expects normalised input), saved with torch.jit.save."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    network = smp.Unet(
        "resnet18", encoder_weights=None, encoder_depth=3, decoder_channels=(16, 8, 8), classes=NUM_CLASSES
    ).eval()
    path = tmp_path_factory.mktemp("torchscript") / "unet.pt"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", JIT_DEPRECATION_MESSAGE, FutureWarning)
        torch.jit.save(torch.jit.trace(network, torch.rand(1, 3, 64, 64)), path)
    return Saved(path, network)
