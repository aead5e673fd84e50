"""The model wrapper every other part of eroseg-at talks to."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SegmentationModel(nn.Module):
    """Wraps a segmentation-models-pytorch model so that it takes images in [0, 1] and normalises them itself.

    Keeping the mean/std normalisation inside the model means that attacks, which
    perturb the model input, work in pixel units: ``eps=8/255`` is 8 grey levels.

    Args:
        network: An SMP model (has ``encoder`` and ``segmentation_head``; no classification head).
        num_classes: Number of output classes.
        mean: Per-channel mean the encoder expects, in [0, 1] units.
        std: Per-channel standard deviation the encoder expects.
        input_divisor: H and W of every input must be divisible by this.

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
        input_divisor: int = 32,
    ) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got mean={list(mean)}, std={list(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.network = network
        self.num_classes = num_classes
        self.input_divisor = input_divisor
        # Buffers, not parameters: they move with .to(device) and are saved, but are never trained.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def _check_input(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {list(images.shape)}")
        height, width = images.shape[-2:]
        if height % self.input_divisor or width % self.input_divisor:
            raise ValueError(
                f"image size {height}x{width} is not divisible by {self.input_divisor}, which this "
                "architecture needs: pad the images (the datamodule's pad_divisor) or change the crop size"
            )

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def logits_and_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the decoder features they are computed from.

        The features are the input of the segmentation head, caught by a forward hook, so that every
        architecture runs its own ``forward`` (DPT's, say, differs from the encoder-decoder-head chain).

        Shape:
            - Input: ``[B, 3, H, W]`` in [0, 1].
            - Output: logits ``[B, C, H, W]`` and decoder features ``[B, D, h, w]``
              (the decoder output before the segmentation head; RP-PGD builds class
              prototypes from them).
        """
        caught: list[torch.Tensor] = []
        hook = self.network.segmentation_head.register_forward_hook(
            lambda module, inputs, output: caught.append(inputs[0])
        )
        try:
            logits = self(images)
        finally:
            hook.remove()
        return logits, caught[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self._check_input(images)
        return self.network(self.normalize(images))
