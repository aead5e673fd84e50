"""SegPGD: cross-entropy split between correctly and wrongly classified pixels."""

from __future__ import annotations

from torch import Tensor

from eroseg_at.attacks.base import IterativeAttack
from eroseg_at.attacks.objectives import correct_pixels, pixel_cross_entropy, valid_mean


def segpgd_lambda(step: int, steps: int) -> float:
    """SegPGD's weight of the wrongly classified pixels at 0-based iteration ``step``: ``λ_t = (t − 1)/(2T)``."""
    return step / (2 * steps)


def segpgd_loss(logits: Tensor, labels: Tensor, valid: Tensor, step: int, steps: int) -> Tensor:
    """SegPGD's per-image loss at 0-based iteration ``step`` of ``steps``.

    ``L_t = 1/|V| [(1 − λ_t) Σ_{ŷ=y} CE_ij + λ_t Σ_{ŷ≠y} CE_ij]`` with ``λ_t`` from :func:`segpgd_lambda`.

    Shape:
        logits: [B, C, H, W]; labels, valid: [B, H, W]; output: [B].
    """
    weight_wrong = segpgd_lambda(step, steps)
    correct = correct_pixels(logits, labels, valid)
    weights = correct * (1 - 2 * weight_wrong) + weight_wrong
    return valid_mean(weights * pixel_cross_entropy(logits, labels, valid), valid)


class SegPGD(IterativeAttack):
    """SegPGD: early iterations attack the correct pixels, later ones shift weight to the wrong ones.

    Objective (ascended) at iteration t = 1..T:
    ``L_t = 1/|V| [(1 − λ_t) Σ_{ŷ=y} CE_ij + λ_t Σ_{ŷ≠y} CE_ij]`` with ``λ_t = (t − 1)/(2T)`` and ŷ the
    current prediction.

    Args:
        **kwargs: The common arguments of :class:`~eroseg_at.attacks.base.IterativeAttack` (eps, alpha,
            steps, norm, random_start, ignore_index, track_best, seed).

    Reference:
        Gu et al., "SegPGD: An Effective and Efficient Adversarial Attack for Evaluating and Boosting
        Segmentation Robustness", ECCV 2022.
    """

    name = "segpgd"

    def objective(
        self, logits: Tensor, features: Tensor | None, labels: Tensor, valid: Tensor, step: int, state: dict
    ) -> Tensor:
        return segpgd_loss(logits, labels, valid, step, self.steps)
