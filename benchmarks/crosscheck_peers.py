"""Independent public implementations, adapted to segmentation, for the cross-checks and the overhead table.

- ``torchattacks.PGD`` is a classification attack: it crashes on label 255 and averages the cross-entropy
  over a batch of samples. :class:`ValidPixelClassifier` turns the segmentation model into a classifier
  whose "samples" are the valid pixels of the batch, so its mean cross-entropy is the mean over valid
  pixels; it differs from ours (mean per image, summed over images) by a positive factor per image, which
  leaves the sign of the gradient, and so every ℓ∞ step, unchanged.
- The ``cospgd`` package ships only per-step helpers (random start, SegPGD/CosPGD loss scaling, ℓ∞ step);
  :func:`cospgd_package_attack` is the loop around them that the package's README describes.

Both draw their random start from the global torch generator; seeding it with the seed our attacks give
their own generator reproduces the same uniform noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE_INDEX = 255


class ValidPixelClassifier(nn.Module):
    """Wraps a segmentation model as a classifier over the valid pixels of the current batch.

    Shape:
        input: [B, 3, H, W]; output: [N_valid, C] with N_valid = number of valid pixels in ``valid``.
    """

    def __init__(self, model: nn.Module, valid: Tensor) -> None:
        super().__init__()
        self.model = model
        self.valid = valid

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images).permute(0, 2, 3, 1)[self.valid]


def torchattacks_pgd(
    model: nn.Module, images: Tensor, labels: Tensor, eps: float, alpha: float, steps: int, seed: int
) -> Tensor:
    """``torchattacks.PGD`` on a segmentation model through :class:`ValidPixelClassifier`."""
    import torchattacks

    valid = labels != IGNORE_INDEX
    # torchattacks restores the wrapper's own mode after attacking, recursively: a new module is in training
    # mode, which would leave the victim's BatchNorm in training mode.
    classifier = ValidPixelClassifier(model, valid).train(model.training)
    attack = torchattacks.PGD(classifier, eps=eps, alpha=alpha, steps=steps, random_start=True)
    torch.manual_seed(seed)
    return attack(images, labels[valid])


def cospgd_package_attack(
    method: str,
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    eps: float,
    alpha: float,
    steps: int,
    seed: int,
) -> Tensor:
    """SegPGD (``method="segpgd"``) or CosPGD (``"cospgd"``) as a loop over the ``cospgd`` package's functions."""
    from cospgd import functions

    torch.manual_seed(seed)
    adversarial = functions.init_linf(images, eps)
    for iteration in range(steps):
        adversarial.requires_grad_(True)
        logits = model(adversarial)
        loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none")
        if method == "segpgd":
            loss = functions.segpgd_scale(logits, labels, loss, iteration, steps)
        elif method == "cospgd":
            loss = functions.cospgd_scale(logits, labels, loss, num_classes=logits.shape[1]).mean()
        else:
            raise ValueError(f"method must be 'segpgd' or 'cospgd', got {method!r}")
        (gradient,) = torch.autograd.grad(loss, adversarial)
        adversarial = functions.step_inf(adversarial, eps, gradient, images, alpha, targeted=False)
    return adversarial


# Peer name -> (the attack of ours doing the same thing, the peer's callable with our call signature).
PEERS = {
    "torchattacks PGD": ("pgd", torchattacks_pgd),
    "cospgd SegPGD loop": ("segpgd", lambda *args, **kw: cospgd_package_attack("segpgd", *args, **kw)),
    "cospgd CosPGD loop": ("cospgd", lambda *args, **kw: cospgd_package_attack("cospgd", *args, **kw)),
}
