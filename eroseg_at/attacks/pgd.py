"""PGD on the pixel-wise cross-entropy."""

from __future__ import annotations

from torch import Tensor

from eroseg_at.attacks.base import IterativeAttack
from eroseg_at.attacks.objectives import pixel_cross_entropy, valid_mean


class PGD(IterativeAttack):
    """Projected gradient descent on the mean pixel cross-entropy.

    Objective (ascended): ``L = 1/|V| Σ_{(i,j)∈V} CE_ij`` over the valid pixels V of each image.
    Targeted: ``L = −1/|V| Σ CE(f_ij, t_ij)`` towards the target map passed as ``labels``.

    Args:
        **kwargs: The common arguments of :class:`~eroseg_at.attacks.base.IterativeAttack` (eps, alpha,
            steps, norm, random_start, ignore_index, targeted, track_best, seed).

    Reference:
        Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018.
    """

    name = "pgd"
    supports_targeted = True

    def objective(
        self, logits: Tensor, features: Tensor | None, labels: Tensor, valid: Tensor, step: int, state: dict
    ) -> Tensor:
        loss = valid_mean(pixel_cross_entropy(logits, labels, valid), valid)
        return -loss if self.targeted else loss
