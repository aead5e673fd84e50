"""CW: PGD on the Carlini–Wagner margin of every pixel."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from eroseg_at.attacks.arguments import number
from eroseg_at.attacks.base import IterativeAttack
from eroseg_at.attacks.objectives import margin, valid_mean


class CW(IterativeAttack):
    """PGD on the per-pixel Carlini–Wagner margin loss.

    Objective (ascended): ``L = 1/|V| Σ_{(i,j)∈V} min(max_{k≠y} f_k − f_y, κ)`` on the logits.
    Targeted: ``L = 1/|V| Σ min(f_t − max_{k≠t} f_k, κ)`` towards the target map passed as ``labels``.

    Args:
        kappa: Confidence κ >= 0: pixels already won by more than κ stop contributing, default 0.
        **kwargs: The common arguments of :class:`~eroseg_at.attacks.base.IterativeAttack` (eps, alpha,
            steps, norm, random_start, ignore_index, targeted, track_best, seed).

    Reference:
        Carlini, Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017.
    """

    name = "cw"
    supports_targeted = True

    def __init__(self, kappa: float | str = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kappa = number(kappa, "kappa", minimum=0)

    def objective(
        self, logits: Tensor, features: Tensor | None, labels: Tensor, valid: Tensor, step: int, state: dict
    ) -> Tensor:
        # f_t − max_{k≠t} f_k is minus the unclamped untargeted margin with respect to t.
        if self.targeted:
            return valid_mean(
                (-margin(logits, labels, valid, kappa=float("inf"))).clamp(max=self.kappa), valid
            )
        return valid_mean(margin(logits, labels, valid, self.kappa), valid)
