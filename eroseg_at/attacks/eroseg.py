"""EroSeg: cross-entropy on a sensitive set of pixels that grows from uncertain to confident ones."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from eroseg_at.attacks.arguments import integer, number, optional_integer
from eroseg_at.attacks.base import DatasetFacts, IterativeAttack
from eroseg_at.attacks.objectives import correct_pixels, pixel_cross_entropy, valid_mean


def eroseg_threshold(step: int, tau0: float, beta: float, schedule_offset: int = 0) -> float:
    """Confidence threshold of 0-based iteration ``step``: ``τ_k = 1 − (1 − τ0) · exp(−β k)``, k = step + offset.

    With τ0 = β = 0.8 the first iterations use τ ≈ 0.800, 0.910, 0.960, 0.982, 0.992, 0.996.
    """
    return 1.0 - (1.0 - tau0) * math.exp(-beta * (step + schedule_offset))


def eroseg_sensitive_set(logits: Tensor, labels: Tensor, valid: Tensor, tau: float) -> Tensor:
    """Pixels EroSeg attacks: ``S = {c_ij < τ and ŷ_ij = y_ij}`` with ``c_ij = max_c p_c(i, j)``.

    Per image, an empty S falls back to all correctly classified pixels, and if none is correct to all
    valid pixels, so every image with valid pixels keeps a gradient.

    Shape:
        logits: [B, C, H, W]; labels, valid: [B, H, W]; output: [B, H, W] bool.
    """
    logits = logits.detach()
    correct = correct_pixels(logits, labels, valid)
    # max softmax probability = exp(max logit − logsumexp), without materialising the softmax.
    confidence = (logits.amax(1) - logits.logsumexp(1)).exp()
    sensitive = correct & (confidence < tau)

    def nonempty(mask: Tensor) -> Tensor:
        return mask.flatten(1).any(1).view(-1, 1, 1)

    fallback = torch.where(nonempty(correct), correct, valid)
    return torch.where(nonempty(sensitive), sensitive, fallback)


def eroseg_class_weights(labels: Tensor, background_class: int | None, lam: float) -> Tensor:
    """Class-aware weight ``w_ij = λ`` for foreground labels and ``1 − λ`` for the background class.

    Without a background class (``None``) every pixel weighs 1.

    Shape:
        labels: [B, H, W]; output: [B, H, W] float32.
    """
    if background_class is None:
        return torch.ones(labels.shape, device=labels.device)
    return torch.where(labels == background_class, 1.0 - lam, lam).to(torch.float32)


class EroSeg(IterativeAttack):
    """EroSeg: the perturbation "erodes" from low-confidence pixels (boundaries, small objects) inwards.

    Objective (ascended) at 0-based iteration k:
    ``L_k = 1/|V| Σ_{(i,j)∈V} 1[(i,j) ∈ S_k] · w_ij · CE_ij`` with the sensitive set
    ``S_k = {c_ij < τ_k and ŷ_ij = y_ij}``, ``τ_k = 1 − (1 − τ0) exp(−β (k + schedule_offset))`` and
    ``w_ij = λ`` on foreground, ``1 − λ`` on the background class. An empty ``S_k`` falls back, per
    image, to the correct pixels, then to all valid pixels. The paper's step is alpha = 0.001
    (``conf/attack/eroseg_paper.yaml``); the default 0.01 is the baselines' step.

    Args:
        tau0: Initial confidence threshold τ0 in (0, 1], default 0.8.
        beta: Growth rate β >= 0 of the threshold, default 0.8.
        lam: Foreground weight λ in [0, 1], default 0.7.
        background_class: Class weighted 1 − λ, default 0; None: no background, every weight is 1.
        schedule_offset: 0 (default) starts at τ_0 = τ0; 1 starts at τ_1.
        **kwargs: The common arguments of :class:`~eroseg_at.attacks.base.IterativeAttack` (eps, alpha,
            steps, norm, random_start, ignore_index, track_best, seed).

    Reference:
        Song et al., "Erosion Attack for Adversarial Training to Enhance Semantic Segmentation
        Robustness", ICASSP 2026, arXiv 2601.14950.
    """

    name = "eroseg"

    def __init__(
        self,
        tau0: float | str = 0.8,
        beta: float | str = 0.8,
        lam: float | str = 0.7,
        background_class: int | None = 0,
        schedule_offset: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.tau0 = number(tau0, "tau0", minimum=0, maximum=1, exclusive_minimum=True)
        self.beta = number(beta, "beta", minimum=0)
        self.lam = number(lam, "lam", minimum=0, maximum=1)
        self.background_class = optional_integer(background_class, "background_class", 0)
        self.schedule_offset = integer(schedule_offset, "schedule_offset", 0)

    @classmethod
    def dataset_arguments(cls, arguments: Mapping[str, Any], dataset: DatasetFacts) -> dict[str, Any]:
        """The base's, plus the dataset's ``background_class`` (weighted ``1 − λ``) unless given."""
        extra = super().dataset_arguments(arguments, dataset)
        if "background_class" not in arguments:
            extra["background_class"] = dataset.background_class
        return extra

    def _init_state(
        self, model: Callable, clean: Tensor, labels: Tensor, valid: Tensor, model_dtype: torch.dtype
    ) -> dict:
        return {"weights": eroseg_class_weights(labels, self.background_class, self.lam)}

    def objective(
        self, logits: Tensor, features: Tensor | None, labels: Tensor, valid: Tensor, step: int, state: dict
    ) -> Tensor:
        tau = eroseg_threshold(step, self.tau0, self.beta, self.schedule_offset)
        sensitive = eroseg_sensitive_set(logits, labels, valid, tau)
        return valid_mean(sensitive * state["weights"] * pixel_cross_entropy(logits, labels, valid), valid)
