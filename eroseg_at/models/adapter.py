"""One adapter that puts any segmentation network behind the model contract of eroseg-at.

The contract (what attacks, training and evaluation call): ``forward(images)`` takes ``[B, 3, H, W]`` images
in [0, 1] and returns logits ``[B, C, H, W]`` at the input size; the mean/std normalisation happens inside,
so attack budgets are in pixel units; ``num_classes`` and ``input_divisor`` are attributes; and, where the
network's decoder features are known, ``logits_and_features(images)`` returns them too (RP-PGD).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from itertools import chain

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Keys under which libraries return the main logits in a dict: torchvision ("out", beside "aux"),
# Hugging Face ModelOutput (a dict subclass whose "logits" is the field read as ``.logits``).
LOGIT_KEYS = ("out", "logits")
PROBE_SIZE = 64


@dataclass(frozen=True)
class SourceInfo:
    """Where a model came from and how it is adapted, for reports and run records.

    The builders of :mod:`eroseg_at.models.sources` give the provenance fields; the adapter fills in
    ``mean``, ``std``, ``adapter`` and ``features`` when it is built.

    Attributes:
        kind: ``"torchvision"``, ``"huggingface"``, ``"torchscript"``, ``"smp"`` or ``"module"``.
        name: The architecture or class, e.g. ``"lraspp_mobilenet_v3_large"``, ``"SegformerForSemanticSegmentation"``.
        path: The local weights file or model directory, None for a model built in memory.
        sha256: SHA-256 of the weights file, or of every file of the directory (see
            :func:`eroseg_at.models.weights.sha256_of`); None without a file.
        normalization: Where ``mean`` and ``std`` came from, e.g. ``"ImageNet"``, ``"preprocessor_config.json"``,
            ``"given"``.
        mean: Per-channel mean applied inside the adapter, in [0, 1] units.
        std: Per-channel std applied inside the adapter.
        adapter: The adapter's class name.
        features: What ``logits_and_features`` returns (``"input of classifier.4"``), None where the model has
            no decoder features.
    """

    kind: str
    name: str
    path: str | None = None
    sha256: str | None = None
    normalization: str = "given"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    adapter: str = ""
    features: str | None = None

    @property
    def label(self) -> str:
        """``"<kind> model <name>"``, plus ``" from <path>"`` when read from a file; names it in errors."""
        return f"{self.kind} model {self.name}" + (f" from {self.path}" if self.path else "")

    def summary(self) -> str:
        """One line for reports: source, weights digest, adapter, normalisation, features."""
        digest = f", sha256 {self.sha256[:12]}" if self.sha256 else ""
        return (
            f"{self.label}{digest}; {self.adapter}; mean {list(self.mean)}, std {list(self.std)} "
            f"({self.normalization}); features: {self.features or 'none'}"
        )


def check_positive_int(value: object, name: str) -> int:
    """Returns ``value`` if it is an integer >= 1, else raises a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def extract_logits(output: object) -> Tensor:
    """The main logits of whatever a segmentation network returns.

    Accepted: a tensor; a mapping with ``"out"`` (torchvision; the auxiliary ``"aux"`` is dropped) or
    ``"logits"`` (a Hugging Face ``ModelOutput``); an object with a tensor ``.logits``; a tuple or list, whose
    first element is taken (SMP with a classification head, Hugging Face with ``return_dict=False``).

    Raises:
        ValueError: For any other output, naming its type (and keys).

    Shape:
        Returns the logits as the network gives them, ``[B, C, h, w]`` for a segmentation network.
    """
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        for key in LOGIT_KEYS:
            if isinstance(output.get(key), Tensor):
                return output[key]
        raise ValueError(
            f"the network returned a {type(output).__name__} with keys {list(output)}; expected a tensor "
            f"under one of {list(LOGIT_KEYS)}"
        )
    if isinstance(getattr(output, "logits", None), Tensor):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise ValueError(
        f"the network returned a {type(output).__name__}; expected logits as a tensor, a dict with "
        f"{' or '.join(repr(k) for k in LOGIT_KEYS)}, an object with .logits, or a tuple whose first element "
        "is the logits"
    )


def _first_floating_tensor(module: nn.Module) -> Tensor | None:
    return next((t for t in chain(module.parameters(), module.buffers()) if t.is_floating_point()), None)


def probe_images(module: nn.Module, divisor: int) -> Tensor:
    """Two seeded random images on ``module``'s device and dtype, of a size the module accepts.

    A private generator keeps the global RNG untouched, so building a model does not shift a seeded run.

    Shape:
        ``[2, 3, S, S]`` with ``S`` the smallest multiple of ``divisor`` that is at least 64.
    """
    reference = _first_floating_tensor(module)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None else torch.float32
    size = -(-PROBE_SIZE // divisor) * divisor
    generator = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, size, size, generator=generator).to(device=device, dtype=dtype)


@contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients for a probe forward; restores each submodule's own training flag.

    Eval mode keeps BatchNorm statistics untouched (and accepts a batch whose pooled maps are 1x1).
    """
    modes = [(child, child.training) for child in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for child, training in modes:
            child.training = training


def channel_tensor(values: Sequence[float], name: str) -> Tensor:
    """Per-channel statistics as a float32 ``[1, 3, 1, 1]`` tensor; ``std`` must be positive.

    Raises:
        ValueError: Not 3 values, or a non-positive std, naming ``name`` and the values.
    """
    values = [float(v) for v in values]
    if len(values) != 3:
        raise ValueError(f"{name} needs 3 values (RGB), got {values}")
    if name == "std" and any(v <= 0 for v in values):
        raise ValueError(f"std must be positive, got {values}")
    return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1)


def normalize(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(images - mean) / std`` in the images' dtype (statistics kept in float32 are cast, not the images).

    Shape:
        ``images`` ``[B, 3, H, W]``, ``mean`` and ``std`` ``[1, 3, 1, 1]``; returns ``[B, 3, H, W]``.
    """
    return (images - mean.to(images.dtype)) / std.to(images.dtype)


def count_classes(network: nn.Module, mean: Sequence[float], std: Sequence[float], input_divisor: int) -> int:
    """The number of classes ``network`` predicts, read from one probe forward (see :func:`probe_images`).

    Raises:
        ValueError: The output holds no logits (see :func:`extract_logits`) or they are not ``[B, C, h, w]``.

    Shape:
        ``network`` maps normalised ``[2, 3, S, S]`` probe images to ``[2, C, h, w]``; returns ``C``.
    """
    images = probe_images(network, input_divisor)
    mean_t, std_t = (
        channel_tensor(mean, "mean").to(images.device),
        channel_tensor(std, "std").to(images.device),
    )
    with evaluating(network):
        logits = extract_logits(network(normalize(images, mean_t, std_t)))
    if logits.ndim != 4:
        raise ValueError(
            f"the network returned logits of shape {list(logits.shape)} for images of shape "
            f"{list(images.shape)}; expected [B, num_classes, h, w]"
        )
    return logits.shape[1]


class SegmentationAdapter(nn.Module):
    """Puts any segmentation network behind the eroseg-at model contract.

    Normalises ``[0, 1]`` images with ``mean``/``std`` (float32 buffers cast to the input's dtype), runs the
    network, takes the logits out of whatever it returns (:func:`extract_logits`) and upsamples them
    bilinearly (``align_corners=False``) to the input size when the network predicts at a lower resolution.

    Every call checks the output's shape (rank, batch, class count, no larger than the input): these are
    metadata reads, free of any device synchronisation. Finiteness needs a device-to-host sync, which an
    attack would pay at each iteration, so it is checked by :meth:`check_output` instead, which the
    builders of :mod:`eroseg_at.models.sources` run once on a probe batch.

    This class has no ``logits_and_features``, so ``getattr(model, "logits_and_features", None)`` is None
    and feature attacks (RP-PGD) refuse it with their own error; :class:`FeatureSegmentationAdapter` adds it
    for networks whose decoder features are known.

    Args:
        network: Maps normalised ``[B, 3, H, W]`` images to logits, in any form :func:`extract_logits` reads.
        num_classes: Number of classes the network predicts.
        mean: Per-channel mean the network expects, in [0, 1] units.
        std: Per-channel std the network expects.
        input_divisor: H and W of every input must be divisible by it (1: any size).
        source: Provenance for reports; defaults to ``SourceInfo("module", <network class>)``.

    Attributes:
        source_info: The completed :class:`SourceInfo`.

    Shape:
        - Input: ``[B, 3, H, W]`` float in [0, 1], H and W divisible by ``input_divisor``.
        - Output: ``[B, num_classes, H, W]`` logits.
    """

    def __init__(
        self,
        network: nn.Module,
        num_classes: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        input_divisor: int = 1,
        source: SourceInfo | None = None,
    ) -> None:
        super().__init__()
        check_positive_int(num_classes, "num_classes")
        check_positive_int(input_divisor, "input_divisor")
        self.network = network
        self.num_classes = num_classes
        self.input_divisor = input_divisor
        # Buffers, not parameters: they follow .to(device) and are saved, but are never trained.
        self.register_buffer("mean", channel_tensor(mean, "mean"))
        self.register_buffer("std", channel_tensor(std, "std"))
        source = source or SourceInfo("module", type(network).__name__)
        self.source_info = replace(
            source, mean=tuple(map(float, mean)), std=tuple(map(float, std)), adapter=type(self).__name__
        )

    def normalize(self, images: Tensor) -> Tensor:
        return normalize(images, self.mean, self.std)

    def _check_input(self, images: Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {list(images.shape)}")
        height, width = images.shape[-2:]
        if height % self.input_divisor or width % self.input_divisor:
            raise ValueError(
                f"image size {height}x{width} is not divisible by {self.input_divisor}, which "
                f"{self.source_info.label} needs: pad the images (the datamodule's pad_divisor) or change the "
                "crop size"
            )

    def _shape_error(self, what: str, tensor: Tensor, images: Tensor, expected: str) -> ValueError:
        return ValueError(
            f"{self.source_info.label} returned {what} of shape {list(tensor.shape)} for images of shape "
            f"{list(images.shape)}; expected {expected}"
        )

    def forward(self, images: Tensor) -> Tensor:
        self._check_input(images)
        logits = extract_logits(self.network(self.normalize(images)))
        batch, height, width = images.shape[0], *images.shape[-2:]
        if logits.ndim != 4 or logits.shape[0] != batch or logits.shape[1] != self.num_classes:
            raise self._shape_error(
                "logits", logits, images, f"[{batch}, num_classes={self.num_classes}, h, w]"
            )
        if logits.shape[-2] > height or logits.shape[-1] > width:
            raise self._shape_error("logits", logits, images, f"a resolution of at most {height}x{width}")
        if logits.shape[-2:] != images.shape[-2:]:
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        return logits

    def _probe_outputs(self, images: Tensor) -> dict[str, Tensor]:
        return {"logits": self(images)}

    def check_output(self, images: Tensor | None = None) -> None:
        """Runs one forward (eval mode, no gradients) and checks every output thoroughly, finiteness included.

        Costs a device-to-host sync, which is why :meth:`forward` leaves it out; call it once after building.

        Args:
            images: A batch in [0, 1]; None uses :func:`probe_images`.

        Raises:
            ValueError: An output of the wrong shape (from :meth:`forward`), or holding NaN or infinity; the
                message names the source and the shapes.
        """
        if images is None:
            images = probe_images(self, self.input_divisor)
        with evaluating(self):
            outputs = self._probe_outputs(images)
        for what, tensor in outputs.items():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise ValueError(
                    f"{self.source_info.label} returned {what} of shape {list(tensor.shape)} with {bad} NaN or "
                    f"infinite values for images of shape {list(images.shape)} in [0, 1]; check the weights "
                    "and the normalisation"
                )


class FeatureSegmentationAdapter(SegmentationAdapter):
    """A :class:`SegmentationAdapter` that also returns decoder features: the input of the classifier layer.

    The features are caught by a forward pre-hook on ``network.<classifier_name>`` (the layer that maps
    decoder features to logits) during the network's own forward, so logits and features come from one pass
    through exactly the code that :meth:`forward` runs.

    Args:
        network, num_classes, mean, std, input_divisor, source: As for :class:`SegmentationAdapter`.
        classifier_name: Dotted name (as in ``network.named_modules()``) of the classifier layer, which must run
            exactly once per forward, e.g. ``"classifier.4"`` (torchvision DeepLabV3), ``"segmentation_head"``
            (SMP), ``"decode_head.classifier"`` (Hugging Face SegFormer, UperNet).

    Shape:
        - Input: ``[B, 3, H, W]`` float in [0, 1].
        - Output of ``logits_and_features``: logits ``[B, num_classes, H, W]`` and features ``[B, D, h, w]``.
    """

    def __init__(
        self,
        network: nn.Module,
        num_classes: int,
        classifier_name: str,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        input_divisor: int = 1,
        source: SourceInfo | None = None,
    ) -> None:
        super().__init__(network, num_classes, mean, std, input_divisor, source)
        try:
            if not classifier_name:
                raise AttributeError("an empty name is the network itself")
            network.get_submodule(classifier_name)
        except AttributeError as error:
            raise ValueError(
                f"{self.source_info.label} has no submodule {classifier_name!r} to take decoder features from: "
                f"{error}"
            ) from None
        # The name, not the module: a second reference would register it twice in the state dict.
        self.classifier_name = classifier_name
        self.source_info = replace(self.source_info, features=f"input of {classifier_name}")

    def logits_and_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and the decoder features the classifier layer computes them from.

        Shape:
            - Input: ``[B, 3, H, W]`` in [0, 1].
            - Output: logits ``[B, num_classes, H, W]``, features ``[B, D, h, w]``.

        Raises:
            RuntimeError: The classifier layer did not run exactly once.
            ValueError: The features are not ``[B, D, h, w]``.
        """
        caught: list[Tensor] = []
        classifier = self.network.get_submodule(self.classifier_name)
        hook = classifier.register_forward_pre_hook(lambda module, inputs: caught.append(inputs[0]))
        try:
            logits = self(images)
        finally:
            hook.remove()
        if len(caught) != 1:
            raise RuntimeError(
                f"{self.source_info.label}: the classifier layer {self.classifier_name!r} ran {len(caught)} "
                "times in one forward; decoder features need it to run exactly once"
            )
        features = caught[0]
        if not isinstance(features, Tensor) or features.ndim != 4 or features.shape[0] != images.shape[0]:
            shape = list(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(
                f"{self.source_info.label}: the input of {self.classifier_name!r} is {shape} for images of "
                f"shape {list(images.shape)}; expected decoder features [B, D, h, w]"
            )
        return logits, features

    def _probe_outputs(self, images: Tensor) -> dict[str, Tensor]:
        logits, features = self.logits_and_features(images)
        return {"logits": logits, "features": features}
