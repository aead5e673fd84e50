"""CosPGD: cross-entropy weighted by the cosine between the prediction and the label."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from eroseg_at.attacks.base import IterativeAttack
from eroseg_at.attacks.objectives import label_log_probability, pixel_cross_entropy, valid_mean


def cospgd_weights(logits: Tensor, labels: Tensor, valid: Tensor) -> Tensor:
    """``cos(softmax(f)_ij, onehot(y_ij)) = p_y / ‖p‖₂`` of each pixel, detached (0 at invalid pixels).

    Shape:
        logits: [B, C, H, W]; labels, valid: [B, H, W]; output: [B, H, W].
    """
    logits = logits.detach()
    probs_norm = F.softmax(logits, 1).norm(dim=1)
    return (label_log_probability(logits, labels, valid).exp() / probs_norm).masked_fill(~valid, 0.0)


def cospgd_loss(logits: Tensor, labels: Tensor, valid: Tensor, targeted: bool = False) -> Tensor:
    """CosPGD's per-image loss: ``1/|V| Σ cos · CE``; targeted ``−1/|V| Σ (1 − cos) · CE(f, t)``.

    The cosine comes from :func:`cospgd_weights` (detached).

    Shape:
        logits: [B, C, H, W]; labels, valid: [B, H, W]; output: [B].
    """
    cosine = cospgd_weights(logits, labels, valid)
    cross_entropy = pixel_cross_entropy(logits, labels, valid)
    if targeted:
        return -valid_mean((1 - cosine) * cross_entropy, valid)
    return valid_mean(cosine * cross_entropy, valid)


class CosPGD(IterativeAttack):
    """CosPGD: pixels the model is still confident and right about get the most weight.

    Objective (ascended): ``L = 1/|V| Σ_{(i,j)∈V} cos(p_ij, onehot(y_ij)) · CE_ij`` with the cosine
    detached. Targeted: ``L = −1/|V| Σ (1 − cos(p_ij, onehot(t_ij))) · CE(f_ij, t_ij)``, which descends
    hardest where the prediction is still far from the target.

    Args:
        **kwargs: The common arguments of :class:`~eroseg_at.attacks.base.IterativeAttack` (eps, alpha,
            steps, norm, random_start, ignore_index, targeted, track_best, seed).

    Reference:
        Agnihotri, Jung, Keuper, "CosPGD: an efficient white-box adversarial attack for pixel-wise
        prediction tasks", ICML 2024.
    """

    name = "cospgd"
    supports_targeted = True

    def objective(
        self, logits: Tensor, features: Tensor | None, labels: Tensor, valid: Tensor, step: int, state: dict
    ) -> Tensor:
        return cospgd_loss(logits, labels, valid, self.targeted)
