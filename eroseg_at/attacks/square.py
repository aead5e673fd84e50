"""Square: a score-based ℓ∞ attack on random squares that needs the model's outputs only, never its gradients."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from eroseg_at.attacks.arguments import choice, integer, number
from eroseg_at.attacks.base import Attack, BestIterate
from eroseg_at.attacks.objectives import margin, valid_mean

# What a query is scored by, per image (lower is better for the attack): accuracy = the share of valid pixels
# still correct, ties broken by the margin; margin = the mean over valid pixels of the margin f_y − max_{k≠y} f_k
# by which still-correct pixels are right (0 for wrong pixels). Accuracy is the default: at equal queries it
# ended lower on every deterministic model measured (docs/ATTACKS.md, "Square's objective").
SQUARE_OBJECTIVES = ("accuracy", "margin")

# The paper's schedule (as AutoAttack runs it): the share p of the image that a square covers starts at p_init and
# halves each time a 10,000-query run passes one of these queries; shorter and longer budgets rescale it.
SCHEDULE_MILESTONES = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
SCHEDULE_LENGTH = 10_000
# The budget without queries or steps: a CPU-sized check (5000 on a GPU).
DEFAULT_QUERIES = 1000


def square_fraction(update: int, queries: int, p_init: float) -> float:
    """The share of the image covered by the square of 0-based update ``update`` of a ``queries`` budget."""
    progress = int(update / queries * SCHEDULE_LENGTH)
    return p_init / 2 ** sum(progress > milestone for milestone in SCHEDULE_MILESTONES)


def square_side(update: int, queries: int, p_init: float, height: int, width: int) -> int:
    """The side in pixels of the square of ``update``: ``round(√(p·H·W))``, at least 1 and at most ``min(H, W)``."""
    side = round(math.sqrt(square_fraction(update, queries, p_init) * height * width))
    return max(1, min(side, height, width))


def remaining_margin(logits: Tensor, labels: Tensor, valid: Tensor) -> Tensor:
    """Per image, the mean over valid pixels of ``max(f_y − max_{k≠y} f_k, 0)``: how far still-correct pixels
    are from flipping; 0 once every valid pixel is wrong.

    Shape:
        logits: [B, C, H, W]; labels, valid: [B, H, W]; output: [B].
    """
    return valid_mean(-margin(logits, labels, valid, kappa=0.0), valid)


class Square(Attack):
    """Square attack for segmentation: random ±2ε squares, kept per image when they lower the objective.

    Queries the model only under ``torch.no_grad``, so it attacks a model whose gradients are useless or absent
    (non-differentiable preprocessing, saturated logits, a TorchScript module or a forward run without grad):
    a gradient attack fooled by such a model is not fooled here, which makes it the check for gradient
    masking. With ``random_start`` the start is the paper's: every column of every channel moved by +ε or −ε at
    random (then clipped to [0, 1]); without it the clean image. Each later query adds ``±2ε`` (one random sign
    per channel) on one random square of side ``round(√(p·H·W))`` to the current point, projects onto the
    ε-ball and [0, 1] (so each pixel of the square lands on ``clean ± ε``, flipped or kept), and keeps it when
    its objective (``objective``) is strictly lower. ``p`` starts at ``p_init`` and halves on the paper's
    schedule (:func:`square_fraction`), scaled to the budget. Each image has its own squares and signs, drawn
    from a generator of its own seeded from the attack's, so an image's attack does not depend on the others
    in its batch.

    Budget: ``queries`` forward passes per image, the start's included (``queries − 1`` squares); the attack's
    ``steps`` is ``queries``, so reports compare it with a gradient attack's evaluations (each of which costs a
    forward and a backward pass). Returns, per image, the queried point with the fewest correctly classified
    valid pixels (ties keep the earlier one); with the default ``objective="accuracy"`` that is the point kept
    last.

    Args:
        queries: Forward passes per image, at least 1; default 1000. ``steps`` is accepted as the same budget
            (every attack's budget key), not both with different values.
        p_init: Share of the image covered by the first squares, in (0, 1]; default 0.8 (AutoAttack's ℓ∞).
        objective: ``accuracy`` (default: the share of valid pixels still correct, ties broken by the margin)
            or ``margin`` (:func:`remaining_margin` alone).
        eps: Ball radius (ℓ∞), default ``"8/255"``.
        norm: ``"linf"`` only.
        random_start: The striped start (default True) or the clean image.
        ignore_index: Label that never counts, default 255.
        seed: Seed of the squares and signs, default None.

    Reference:
        Andriushchenko, Croce, Flammarion, Hein, "Square Attack: a query-efficient black-box adversarial attack
        via random search", ECCV 2020.
    """

    name = "square"
    uses_gradients = False

    def __init__(
        self,
        queries: int | None = None,
        p_init: float | str = 0.8,
        objective: str = "accuracy",
        **kwargs: Any,
    ) -> None:
        # Suites, iteration curves, training and tests give every attack its budget as steps; Square reads it as
        # its queries, so it runs wherever another attack does.
        steps = kwargs.pop("steps", None)
        if queries is not None and steps is not None and queries != steps:
            raise ValueError(
                f"square got queries={queries!r} and steps={steps!r}: both are its budget (forward passes per "
                "image); give one"
            )
        budget = next((value for value in (queries, steps) if value is not None), DEFAULT_QUERIES)
        super().__init__(steps=integer(budget, "queries", 1), **kwargs)
        if self.norm != "linf":
            raise ValueError(f"square attacks the linf ball only; norm must be 'linf', got {self.norm!r}")
        self.p_init = number(p_init, "p_init", minimum=0, maximum=1, exclusive_minimum=True)
        self.objective = choice(objective, "objective", SQUARE_OBJECTIVES)

    @property
    def queries(self) -> int:
        """The budget: forward passes per image (the same number as ``steps``)."""
        return self.steps

    def _perturb(
        self, model: Callable, clean: Tensor, labels: Tensor, valid: Tensor, model_dtype: torch.dtype
    ) -> Tensor:
        with torch.no_grad():
            return self._search(model, clean, labels, valid, model_dtype)

    def _search(
        self, model: Callable, clean: Tensor, labels: Tensor, valid: Tensor, model_dtype: torch.dtype
    ) -> Tensor:
        batch, channels, height, width = clean.shape
        stripes, corners, signs = self._draws(clean)
        ball = self._ball(clean)
        x = self._project(clean + self.eps * stripes, clean, ball) if self.random_start else clean.clone()
        score, error = self._score(model, x, clean, labels, valid, model_dtype)
        best = BestIterate(x, error)
        rows = torch.arange(height, device=clean.device)
        columns = torch.arange(width, device=clean.device)
        for update in range(self.steps - 1):
            side = square_side(update, self.steps, self.p_init, height, width)
            top = (corners[update, :, 0] * (height - side + 1)).long().view(batch, 1)
            left = (corners[update, :, 1] * (width - side + 1)).long().view(batch, 1)
            in_rows = (rows >= top) & (rows < top + side)
            in_columns = (columns >= left) & (columns < left + side)
            square = (in_rows.unsqueeze(2) & in_columns.unsqueeze(1)).unsqueeze(1)
            step = square * signs[update].view(batch, channels, 1, 1) * (2 * self.eps)
            candidate = self._project(x + step, clean, ball)
            candidate_score, candidate_error = self._score(
                model, candidate, clean, labels, valid, model_dtype
            )
            best.update(candidate, candidate_error)
            keep = self._improves(candidate_score, candidate_error, score, error)
            x = torch.where(keep.view(batch, 1, 1, 1), candidate, x)
            score = torch.where(keep, candidate_score, score)
            error = torch.where(keep, candidate_error, error)
        return best.x

    def _score(
        self,
        model: Callable,
        x: Tensor,
        clean: Tensor,
        labels: Tensor,
        valid: Tensor,
        model_dtype: torch.dtype,
    ) -> tuple[Tensor, Tensor]:
        """The remaining margin and the pixel error of ``x``, per image."""
        logits, _ = self._forward(model, x, clean, model_dtype)
        return remaining_margin(logits, labels, valid), self._pixel_error(logits, labels, valid)

    def _improves(self, score: Tensor, error: Tensor, current_score: Tensor, current_error: Tensor) -> Tensor:
        """Per image, whether a query (``score``, ``error``) is strictly better than the current point."""
        lower_margin = score < current_score
        if self.objective == "margin":
            return lower_margin
        return (error < current_error) | ((error == current_error) & lower_margin)

    def _draws(self, clean: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Each image's random numbers for the whole run, from a CPU generator of its own.

        The images' seeds come from the attack's generator (one draw per image, in batch order), so a seed fixes
        the run and an image gets the same squares whatever else is in its batch.

        Shape:
            clean: [B, C, H, W]; output: the start's signs [B, C, 1, W] (±1), the squares' corners as fractions
            of the free range [Q − 1, B, 2] in [0, 1), and their signs [Q − 1, B, C] (±1); Q = ``queries``.
        """
        batch, channels, _, width = clean.shape
        seeds = torch.randint(
            2**62, (batch,), generator=self._generator(clean.device), device=clean.device
        ).tolist()
        stripes, corners, signs = [], [], []
        for seed in seeds:
            generator = torch.Generator().manual_seed(seed)
            stripes.append(torch.randint(2, (channels, 1, width), generator=generator) * 2.0 - 1.0)
            corners.append(torch.rand(self.steps - 1, 2, generator=generator))
            signs.append(torch.randint(2, (self.steps - 1, channels), generator=generator) * 2.0 - 1.0)
        return (
            torch.stack(stripes).to(clean.device),
            torch.stack(corners, 1).to(clean.device),
            torch.stack(signs, 1).to(clean.device),
        )
