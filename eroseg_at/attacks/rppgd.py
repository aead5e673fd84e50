"""RP-PGD: region-weighted cross-entropy plus a prototype-confusion term on decoder features."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from eroseg_at.attacks.arguments import choice, number
from eroseg_at.attacks.base import IterativeAttack
from eroseg_at.attacks.objectives import correct_pixels, image_mean, pixel_cross_entropy, valid_mean
from eroseg_at.predictions import predicted_classes

# How L_R's sum is normalised per image: "image" by H·W (the paper's), "valid" by the valid-pixel count |V|.
REGION_NORMALIZATIONS = {"image": image_mean, "valid": valid_mean}


def rppgd_region_weights(step: int, steps: int) -> tuple[float, float, float]:
    """Weights ``(λ1, λ2, λ3)`` of the True, Boundary and False regions at 0-based iteration ``step``.

    With t = step + 1: ``λ1 = (2T − t)/(2T)``, ``λ2 = (t − 1)/(2T)``, ``λ3 = 1/(2T)``.
    """
    t = step + 1
    return (2 * steps - t) / (2 * steps), (t - 1) / (2 * steps), 1 / (2 * steps)


def rppgd_regions(clean_correct: Tensor, ever_wrong: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Splits valid pixels into RP-PGD's True, Boundary and False regions.

    True: correct on the clean image and at every iterate so far; Boundary: correct on the clean image but
    wrong at some iterate (it stays Boundary); False: wrong on the clean image.

    Shape:
        clean_correct, ever_wrong, valid: [B, H, W] bool; outputs: three [B, H, W] bool masks.
    """
    true_region = clean_correct & ~ever_wrong
    boundary_region = clean_correct & ever_wrong
    false_region = valid & ~clean_correct
    return true_region, boundary_region, false_region


def prototype_similarity(features: Tensor, predicted: Tensor, region: Tensor, num_classes: int) -> Tensor:
    """Mean pairwise cosine similarity between the class prototypes of each image.

    The prototype of class c is the average decoder feature over ``region`` pixels predicted as c; the
    masks are area-resized to the feature resolution, so a coarse feature cell counts with the fraction of
    its pixels that belong to the class. Images with fewer than two prototypes get 0.

    Shape:
        features: [B, D, h, w]; predicted: [B, H, W] int64; region: [B, H, W] bool; output: [B].
    """
    membership = F.one_hot(predicted, num_classes).permute(0, 3, 1, 2).to(features.dtype)
    membership = membership * region.unsqueeze(1)
    if membership.shape[-2:] != features.shape[-2:]:
        membership = F.interpolate(membership, size=features.shape[-2:], mode="area")
    counts = membership.sum((2, 3))
    prototypes = torch.einsum("bchw,bdhw->bcd", membership, features) / counts.clamp_min(1e-12).unsqueeze(-1)
    prototypes = F.normalize(prototypes, dim=-1)
    similarity = prototypes @ prototypes.transpose(1, 2)
    present = counts > 0
    pairs = present.unsqueeze(2) & present.unsqueeze(1)
    pairs &= ~torch.eye(num_classes, dtype=torch.bool, device=features.device)
    return (similarity * pairs).sum((1, 2)) / pairs.sum((1, 2)).clamp_min(1)


class RPPGD(IterativeAttack):
    """RP-PGD: shifts weight from still-correct pixels to freshly flipped ones, and confuses class prototypes.

    Objective (ascended) at iteration t = 1..T: ``L = w_R · L_R + w_P · L_P`` with
    ``L_R = 1/(HW) (λ1 Σ_True CE + λ2 Σ_Boundary CE + λ3 Σ_False CE)`` (weights from
    :func:`rppgd_region_weights`, regions from :func:`rppgd_regions`) and ``L_P`` the mean pairwise cosine
    similarity of the class prototypes of the decoder features over the True region
    (:func:`prototype_similarity`). Regions are relative to the clean image; with ``random_start`` that
    costs one extra gradient-free forward pass.

    Needs ``model.logits_and_features(x) -> (logits, decoder_features)``.

    Args:
        region_weight: w_R, default 0.75.
        prototype_weight: w_P, default 0.25.
        region_normalization: ``"image"`` (default, the paper's): ``L_R`` divides by H·W, so ignored pixels
            shrink ``L_R`` against ``L_P``; ``"valid"``: by the image's valid-pixel count |V|.
        **kwargs: The common arguments of :class:`~eroseg_at.attacks.base.IterativeAttack` (eps, alpha,
            steps, norm, random_start, ignore_index, track_best, seed).

    Reference:
        Zhang et al., region- and prototype-based PGD (RP-PGD), AAAI 2025; definitions as summarised in
        the project's docs/ATTACKS.md.
    """

    name = "rppgd"
    uses_features = True

    def __init__(
        self,
        region_weight: float | str = 0.75,
        prototype_weight: float | str = 0.25,
        region_normalization: str = "image",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.region_weight = number(region_weight, "region_weight", minimum=0)
        self.prototype_weight = number(prototype_weight, "prototype_weight", minimum=0)
        self.region_normalization = choice(
            region_normalization, "region_normalization", tuple(REGION_NORMALIZATIONS)
        )

    def _init_state(
        self, model: Callable, clean: Tensor, labels: Tensor, valid: Tensor, model_dtype: torch.dtype
    ) -> dict:
        state: dict[str, Tensor | None] = {"ever_wrong": torch.zeros_like(valid), "clean_correct": None}
        if self.random_start:
            with torch.no_grad():
                logits, _ = self._forward(model, clean, clean, model_dtype)
            state["clean_correct"] = correct_pixels(logits, labels, valid)
        return state

    def objective(
        self, logits: Tensor, features: Tensor | None, labels: Tensor, valid: Tensor, step: int, state: dict
    ) -> Tensor:
        correct = correct_pixels(logits, labels, valid)
        if state["clean_correct"] is None:
            # Without a random start the first iterate is the clean image.
            state["clean_correct"] = correct
        state["ever_wrong"] |= state["clean_correct"] & ~correct
        true_region, boundary_region, false_region = rppgd_regions(
            state["clean_correct"], state["ever_wrong"], valid
        )
        weight_true, weight_boundary, weight_false = rppgd_region_weights(step, self.steps)
        weights = true_region * weight_true + boundary_region * weight_boundary + false_region * weight_false
        normalize = REGION_NORMALIZATIONS[self.region_normalization]
        region_loss = normalize(weights * pixel_cross_entropy(logits, labels, valid), valid)
        predicted = predicted_classes(logits)
        prototype_loss = prototype_similarity(features, predicted, true_region, logits.shape[1])
        return self.region_weight * region_loss + self.prototype_weight * prototype_loss
