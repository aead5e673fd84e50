"""A small trained segmentation model, and models that compute its function but mask its gradients.

The victim (:func:`load_victim`) is a four-layer CNN trained on 32×32 ``shapes`` images; its weights are
``tests/masking_victim.pt``, made by ``PYTHONPATH=. python tests/masking_models.py`` (about 3 minutes on one
CPU thread; clean mIoU 48 % on 32 validation images). The wrappers keep its predictions on the images it is
evaluated on (8-bit images for the quantiser; up to the wrapper's own randomness for the random one), so a
robustness measured on them above the victim's is an artefact of the attacks, which the gradient-masking checks
must catch:

- :class:`QuantizedInput`: non-differentiable preprocessing. ``round(x·255)/255`` changes no pixel of an 8-bit
  image, and its gradient is 0 everywhere (no straight-through estimator).
- :class:`SaturatedLogits`: logits scaled so that softmax saturates in float32. The argmax is the same; the
  softmax is exactly one-hot, so every softmax-based loss and its gradient vanish, at every pixel won by more
  than about 0.01 logits: only pixels already wrong still carry a cross-entropy gradient.
- :class:`RandomResizePad`: a random input transform at every call (Xie et al., ICLR 2018, for segmentation):
  the image is enlarged by a random number of pixels and placed at a random offset in a padded canvas, and the
  logits are cut out and resized back. The gradient of one call belongs to that call's transform.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eroseg_at.data.shapes import ShapesDataset
from eroseg_at.evaluation.data import EvaluationData

WEIGHTS = Path(__file__).with_name("masking_victim.pt")
IMAGE_SIZE = 32
TRAIN = {"images": 512, "seed": 0, "steps": 2000, "batch": 16, "learning_rate": 4e-3, "init_seed": 0}
VALIDATION_SEED = 1


class Victim(nn.Module):
    """conv → stride-2 conv → two dilated convs (BatchNorm, ReLU each) → ×2 bilinear → 1×1 head, ``width`` wide.

    Shape:
        x: [B, 3, H, W] in [0, 1], H and W even; output: [B, 7, H, W] logits.
    """

    # The stride-2 convolution and the ×2 upsampling give the input size back for even sizes only.
    input_divisor = 2

    def __init__(self, width: int = 16, num_classes: int = ShapesDataset.num_classes) -> None:
        super().__init__()
        self.num_classes = num_classes

        def block(dilation: int = 1, stride: int = 1, inputs: int = width) -> list[nn.Module]:
            return [
                nn.Conv2d(inputs, width, 3, padding=dilation, dilation=dilation, stride=stride),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            ]

        self.layers = nn.Sequential(
            *block(inputs=3),
            *block(stride=2),
            *block(dilation=2),
            *block(dilation=4),
            nn.Upsample(scale_factor=2, mode="bilinear"),
            nn.Conv2d(width, num_classes, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def shapes_batch(images: int, seed: int = VALIDATION_SEED) -> tuple[Tensor, Tensor]:
    """The first ``images`` 32×32 ``shapes`` samples of a split: 8-bit images [N, 3, 32, 32], labels [N, 32, 32]."""
    dataset = ShapesDataset(num_images=images, image_size=IMAGE_SIZE, seed=seed)
    samples, labels = zip(*(dataset[index] for index in range(images)), strict=True)
    return torch.stack(samples), torch.stack(labels)


def victim_evaluation_data(images: int = 8, batch: int = 4) -> EvaluationData:
    """The first ``images`` validation images in batches of ``batch``, as an evaluation reads them, with the class
    frequencies of 64 training images (SEA's class-balanced loss weighs by them)."""
    samples, labels = shapes_batch(images)
    batches = [(samples[i : i + batch], labels[i : i + batch]) for i in range(0, images, batch)]
    train_labels = shapes_batch(64, seed=TRAIN["seed"])[1]
    return EvaluationData(
        name=f"shapes{IMAGE_SIZE}",
        loader=batches,
        num_classes=ShapesDataset.num_classes,
        class_names=[f"class {index}" for index in range(ShapesDataset.num_classes)],
        background_class=0,
        class_frequencies=lambda: torch.bincount(
            train_labels[train_labels != 255], minlength=ShapesDataset.num_classes
        ).float(),
        batch_sizes=[len(labels) for _, labels in batches],
        batch_loader=lambda indices: [batches[index] for index in indices],
    )


def load_victim() -> Victim:
    """The trained victim in eval mode."""
    victim = Victim()
    victim.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return victim.eval()


def train_victim() -> Victim:
    """Trains the victim from scratch (AdamW, one-cycle, cross-entropy) and returns it in eval mode."""
    images, labels = shapes_batch(TRAIN["images"], TRAIN["seed"])
    torch.manual_seed(TRAIN["init_seed"])
    victim = Victim()
    optimizer = torch.optim.AdamW(victim.parameters(), TRAIN["learning_rate"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, TRAIN["learning_rate"], total_steps=TRAIN["steps"]
    )
    generator = torch.Generator().manual_seed(TRAIN["init_seed"])
    victim.train()
    for _ in range(TRAIN["steps"]):
        batch = torch.randint(0, len(images), (TRAIN["batch"],), generator=generator)
        loss = F.cross_entropy(victim(images[batch]), labels[batch], ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return victim.eval()


class Wrapper(nn.Module):
    """A wrapped model under the model contract: its ``num_classes`` and ``input_divisor`` are the wrapped one's."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.num_classes = model.num_classes
        self.input_divisor = model.input_divisor


class QuantizedInput(Wrapper):
    """``model(round(x · levels) / levels)``: the input rounded to ``levels + 1`` values, gradient 0."""

    def __init__(self, model: nn.Module, levels: int = 255) -> None:
        super().__init__(model)
        self.levels = levels

    def forward(self, x: Tensor) -> Tensor:
        return self.model(torch.round(x * self.levels) / self.levels)


class SaturatedLogits(Wrapper):
    """``scale · model(x)``: the same argmax, a softmax that is exactly one-hot in float32 almost everywhere."""

    def __init__(self, model: nn.Module, scale: float = 1e4) -> None:
        super().__init__(model)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) * self.scale


class RandomResizePad(Wrapper):
    """At each call: resize the batch by ``r`` pixels (r uniform in 0..``max_pad``), place it at a random offset
    in a zero canvas ``max_pad`` pixels larger, run ``model``, cut the image's logits out and resize them back
    (bilinear both ways).

    Shape:
        x: [B, 3, H, W]; output: [B, C, H, W].
    """

    def __init__(self, model: nn.Module, max_pad: int = 4, seed: int = 0) -> None:
        super().__init__(model)
        self.max_pad = max_pad
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        grow = int(torch.randint(0, self.max_pad + 1, (), generator=self.generator))
        top, left = torch.randint(0, self.max_pad - grow + 1, (2,), generator=self.generator).tolist()
        resized = F.interpolate(x, size=(height + grow, width + grow), mode="bilinear", align_corners=False)
        padding = (left, self.max_pad - grow - left, top, self.max_pad - grow - top)
        logits = self.model(F.pad(resized, padding))[
            ..., top : top + height + grow, left : left + width + grow
        ]
        return F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.save(train_victim().state_dict(), WEIGHTS)
    print(f"wrote {WEIGHTS}")
