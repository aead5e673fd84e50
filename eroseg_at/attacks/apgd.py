"""APGD: PGD with an adaptive step size, momentum and restarts from the best point, over segmentation losses."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from eroseg_at.attacks.arguments import choice, number
from eroseg_at.attacks.base import Attack, BestIterate, DatasetFacts
from eroseg_at.attacks.objectives import correct_pixels, js_divergence, pixel_cross_entropy, valid_mean


def _cross_entropy(logits: Tensor, labels: Tensor, valid: Tensor, class_weights: Tensor | None) -> Tensor:
    return valid_mean(pixel_cross_entropy(logits, labels, valid), valid)


def _masked_cross_entropy(
    logits: Tensor, labels: Tensor, valid: Tensor, class_weights: Tensor | None
) -> Tensor:
    correct = correct_pixels(logits, labels, valid)
    return valid_mean(correct * pixel_cross_entropy(logits, labels, valid), valid)


def _balanced_masked_cross_entropy(
    logits: Tensor, labels: Tensor, valid: Tensor, class_weights: Tensor | None
) -> Tensor:
    correct = correct_pixels(logits, labels, valid)
    weights = class_weights[labels.masked_fill(~valid, 0)]
    return valid_mean(correct * weights * pixel_cross_entropy(logits, labels, valid), valid)


def _js_divergence(logits: Tensor, labels: Tensor, valid: Tensor, class_weights: Tensor | None) -> Tensor:
    return valid_mean(js_divergence(logits, labels, valid), valid)


# Per-image losses to ascend: ce = mean CE; mce = CE on still-correct pixels only; mce_balanced = mce with a
# weight per label class; js = Jensen–Shannon divergence between softmax and onehot(y).
APGD_LOSSES: dict[str, Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]] = {
    "ce": _cross_entropy,
    "mce": _masked_cross_entropy,
    "mce_balanced": _balanced_masked_cross_entropy,
    "js": _js_divergence,
}


def balanced_class_weights(frequencies: Tensor) -> Tensor:
    """Inverse-frequency class weights ``1 / (C' f_c)`` over the C' classes present (0 for absent ones).

    Rare classes then weigh as much in total as frequent ones, and the pixel-weighted mean weight is 1.

    Shape:
        - frequencies: ``[C]`` summing to 1; output: ``[C]`` float32.
    """
    present = frequencies > 0
    weights = torch.zeros_like(frequencies, dtype=torch.float64)
    weights[present] = 1.0 / (present.sum() * frequencies[present].double())
    return weights.float()


def apgd_checkpoint_lengths(iterations: int) -> list[int]:
    """Lengths of APGD's checkpoint intervals over ``iterations`` update steps (AutoAttack's schedule).

    The first interval is ``max(⌊0.22 n⌋, 1)``; each next one shrinks by ``max(⌊0.03 n⌋, 1)`` down to
    ``max(⌊0.06 n⌋, 1)``. Only the intervals that end within ``iterations`` are returned.
    """
    length = max(int(0.22 * iterations), 1)
    shrink = max(int(0.03 * iterations), 1)
    shortest = max(int(0.06 * iterations), 1)
    lengths, total = [], 0
    while total + length <= iterations:
        lengths.append(length)
        total += length
        length = max(length - shrink, shortest)
    return lengths


class APGD(Attack):
    """Auto-PGD: step-size control instead of a fixed ``alpha``, with per-image best iterate.

    Starting from ``η = initial_step · eps``, each update is
    ``z = Π(x_k + η sign(∇L))``, ``x_{k+1} = Π(x_k + m (z − x_k) + (1 − m)(x_k − x_{k−1}))`` (m = 1 at the
    first update, ``momentum`` after; the ℓ2 form steps along ``∇L/‖∇L‖₂``). At the end of each checkpoint
    interval (:func:`apgd_checkpoint_lengths`) an image whose loss rose in at most a fraction ``rho`` of the
    interval's steps, or whose best loss did not improve while its step was not just reduced, halves its
    step and restarts from its best-loss point. ``steps`` counts gradient evaluations (the start point and
    ``steps − 1`` updates), the same budget as PGD. Returns, per image, the evaluated iterate with the
    fewest correctly classified pixels.

    Losses (``loss``), per image over valid pixels V: ``ce`` = ``1/|V| Σ CE``; ``mce`` =
    ``1/|V| Σ 1[ŷ=y] CE``; ``mce_balanced`` = ``1/|V| Σ w_y 1[ŷ=y] CE`` with ``class_weights`` w;
    ``js`` = ``1/|V| Σ JS(softmax(f), onehot(y))``.

    Args:
        eps: Ball radius, default ``"8/255"``.
        steps: Gradient evaluations, default 10.
        norm: ``"linf"`` (default) or ``"l2"``.
        random_start: Uniform random start in the ball, default True.
        ignore_index: Label that never contributes, default 255.
        loss: One of ``ce`` (default), ``mce``, ``mce_balanced``, ``js``.
        class_weights: One non-negative weight per class, required by (and only used with) ``mce_balanced``.
        initial_step: Initial step size as a multiple of eps, default 2.
        momentum: Momentum m, default 0.75.
        rho: Fraction of loss-increasing steps below which the step is halved, default 0.75.
        seed: Seed of the random start, default None.

    Reference:
        Croce, Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
        parameter-free attacks", ICML 2020; Croce, Singh, Hein, "Towards Reliable Evaluation and Fast
        Training of Robust Semantic Segmentation Models", ECCV 2024 (the segmentation losses).
    """

    name = "apgd"

    def __init__(
        self,
        loss: str = "ce",
        class_weights: Sequence[float] | Tensor | None = None,
        initial_step: float | str = 2.0,
        momentum: float | str = 0.75,
        rho: float | str = 0.75,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.loss = choice(loss, "loss", sorted(APGD_LOSSES))
        self.class_weights = _check_class_weights(class_weights, loss)
        self.initial_step = number(initial_step, "initial_step", minimum=0, exclusive_minimum=True)
        self.momentum = number(momentum, "momentum", minimum=0, maximum=1)
        self.rho = number(rho, "rho", minimum=0, maximum=1)

    @classmethod
    def dataset_arguments(cls, arguments: Mapping[str, Any], dataset: DatasetFacts) -> dict[str, Any]:
        """The base's, plus inverse-frequency ``class_weights`` for ``mce_balanced`` unless given."""
        extra = super().dataset_arguments(arguments, dataset)
        if arguments.get("loss") == "mce_balanced" and arguments.get("class_weights") is None:
            extra["class_weights"] = balanced_class_weights(dataset.class_frequencies())
        return extra

    def _perturb(
        self, model: Callable, clean: Tensor, labels: Tensor, valid: Tensor, model_dtype: torch.dtype
    ) -> Tensor:
        class_weights = None if self.class_weights is None else self.class_weights.to(clean.device)
        bounds = self._linf_bounds(clean)

        def evaluate(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            x.requires_grad_(True)
            logits, _ = self._forward(model, x, model_dtype)
            if class_weights is not None and logits.shape[1] != class_weights.numel():
                raise ValueError(
                    f"class_weights has {class_weights.numel()} entries but the model predicts "
                    f"{logits.shape[1]} classes"
                )
            with torch.autocast(device_type=x.device.type, enabled=False):
                loss = APGD_LOSSES[self.loss](logits, labels, valid, class_weights)
            (gradient,) = torch.autograd.grad(loss.sum(), x)
            x.requires_grad_(False)
            return loss.detach(), gradient, self._pixel_error(logits, labels, valid)

        x = self._start(clean)
        loss, gradient, error = evaluate(x)
        best_output = BestIterate(x, error)
        best_loss, best_loss_x, best_loss_gradient = loss.clone(), x.clone(), gradient.clone()
        previous_loss, previous_x = loss, x.clone()
        step_size = torch.full((x.shape[0], 1, 1, 1), self.initial_step * self.eps, device=x.device)
        best_loss_at_check = best_loss.clone()
        reduced_at_check = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        increases = torch.zeros_like(loss)
        checkpoints = apgd_checkpoint_lengths(self.steps - 1)
        since_check = 0
        for update in range(self.steps - 1):
            with torch.no_grad():
                momentum = 1.0 if update == 0 else self.momentum
                proposal = self._project(x + step_size * self._direction(gradient), clean, bounds)
                moved = x + momentum * (proposal - x) + (1 - momentum) * (x - previous_x)
                previous_x, x = x, self._project(moved, clean, bounds)
            loss, gradient, error = evaluate(x)
            with torch.no_grad():
                best_output.update(x, error)
                increases += loss > previous_loss
                previous_loss = loss
                improved = loss > best_loss
                best_loss = torch.where(improved, loss, best_loss)
                best_loss_x = torch.where(improved.view(-1, 1, 1, 1), x, best_loss_x)
                best_loss_gradient = torch.where(improved.view(-1, 1, 1, 1), gradient, best_loss_gradient)
                since_check += 1
                if checkpoints and since_check == checkpoints[0]:
                    oscillating = increases <= self.rho * checkpoints.pop(0)
                    stalled = ~reduced_at_check & (best_loss_at_check >= best_loss)
                    reduce = (oscillating | stalled).view(-1, 1, 1, 1)
                    step_size = torch.where(reduce, step_size / 2, step_size)
                    x = torch.where(reduce, best_loss_x, x)
                    gradient = torch.where(reduce, best_loss_gradient, gradient)
                    reduced_at_check = reduce.view(-1)
                    best_loss_at_check = best_loss.clone()
                    increases.zero_()
                    since_check = 0
        return best_output.x


def _check_class_weights(class_weights: Sequence[float] | Tensor | None, loss: str) -> Tensor | None:
    if loss != "mce_balanced":
        if class_weights is not None:
            raise ValueError(f"class_weights is only used by loss='mce_balanced', not by loss={loss!r}")
        return None
    if class_weights is None:
        raise ValueError("loss='mce_balanced' needs class_weights: one non-negative weight per class")
    weights = torch.as_tensor(class_weights, dtype=torch.float32).detach().cpu()
    if weights.dim() != 1 or weights.numel() == 0 or not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(
            f"class_weights must be a non-empty 1-D sequence of finite non-negative numbers, got {class_weights!r}"
        )
    return weights
