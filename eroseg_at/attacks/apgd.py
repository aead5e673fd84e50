"""APGD: PGD with an adaptive step size, momentum and restarts from the best point, over segmentation losses."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from eroseg_at.attacks.arguments import boolean, choice, number, number_sequence
from eroseg_at.attacks.base import Attack, Ball, BestIterate, DatasetFacts
from eroseg_at.attacks.cospgd import cospgd_loss
from eroseg_at.attacks.objectives import (
    correct_pixels,
    js_divergence,
    normalized_label_logit,
    pixel_cross_entropy,
    tsallis_cross_entropy,
    valid_mean,
)
from eroseg_at.attacks.segpgd import segpgd_loss

# An APGD loss maps (logits, labels, valid, class weight per pixel or None, 0-based gradient evaluation, total
# gradient evaluations) to the per-image objective [B]; each loss reads what it needs of them.
APGDLoss = Callable[[Tensor, Tensor, Tensor, Tensor | None, int, int], Tensor]


def _cross_entropy(
    logits: Tensor, labels: Tensor, valid: Tensor, weights: Tensor | None, step: int, steps: int
) -> Tensor:
    return valid_mean(pixel_cross_entropy(logits, labels, valid), valid)


def _masked_cross_entropy(
    logits: Tensor, labels: Tensor, valid: Tensor, weights: Tensor | None, step: int, steps: int
) -> Tensor:
    correct = correct_pixels(logits, labels, valid)
    return valid_mean(correct * pixel_cross_entropy(logits, labels, valid), valid)


def _balanced_masked_cross_entropy(
    logits: Tensor, labels: Tensor, valid: Tensor, weights: Tensor | None, step: int, steps: int
) -> Tensor:
    correct = correct_pixels(logits, labels, valid)
    return valid_mean(correct * weights * pixel_cross_entropy(logits, labels, valid), valid)


def _js_divergence(
    logits: Tensor, labels: Tensor, valid: Tensor, weights: Tensor | None, step: int, steps: int
) -> Tensor:
    return valid_mean(js_divergence(logits, labels, valid), valid)


def _segpgd(
    logits: Tensor, labels: Tensor, valid: Tensor, weights: Tensor | None, step: int, steps: int
) -> Tensor:
    return segpgd_loss(logits, labels, valid, step, steps)


def _cospgd(
    logits: Tensor, labels: Tensor, valid: Tensor, weights: Tensor | None, step: int, steps: int
) -> Tensor:
    return cospgd_loss(logits, labels, valid)


def _masked_normalized_label_logit(
    logits: Tensor, labels: Tensor, valid: Tensor, weights: Tensor | None, step: int, steps: int
) -> Tensor:
    correct = correct_pixels(logits, labels, valid)
    return -valid_mean(correct * normalized_label_logit(logits, labels, valid), valid)


# TsallisPGD's schedule: q rises linearly from Q_START to Q_END over the attack (aam-at/tsallis_pgd, q_linear).
TSALLIS_Q_START = -2.0
TSALLIS_Q_END = 1.0


def tsallis_q(step: int, steps: int) -> float:
    """The Tsallis q at 0-based gradient evaluation ``step`` of ``steps``: ``q_start + (q_end − q_start)·step/steps``.

    From −2 at the first evaluation towards 1 (plain CE), which the evaluation after the last would reach.
    """
    return TSALLIS_Q_START + (TSALLIS_Q_END - TSALLIS_Q_START) * step / steps


def _tsallis(
    logits: Tensor, labels: Tensor, valid: Tensor, weights: Tensor | None, step: int, steps: int
) -> Tensor:
    return valid_mean(tsallis_cross_entropy(logits, labels, valid, tsallis_q(step, steps)), valid)


# Per-image losses to ascend: ce = mean CE; mce = CE on still-correct pixels only; mce_balanced = mce with a
# weight per label class; js = Jensen–Shannon divergence between softmax and onehot(y); segpgd = SegPGD's
# λ_t-split CE over the gradient evaluations; cospgd = CosPGD's cosine-weighted CE; mask_norm_corrlog = minus the
# L2-normalised label logit on still-correct pixels (Halmosi et al.); tsallis = Tsallis CE with q scheduled
# from −2 to 1 over the gradient evaluations (TsallisPGD).
APGD_LOSSES: dict[str, APGDLoss] = {
    "ce": _cross_entropy,
    "mce": _masked_cross_entropy,
    "mce_balanced": _balanced_masked_cross_entropy,
    "js": _js_divergence,
    "segpgd": _segpgd,
    "cospgd": _cospgd,
    "mask_norm_corrlog": _masked_normalized_label_logit,
    "tsallis": _tsallis,
}

# Where mce_balanced's class weights come from: "dataset" = the class_weights argument (one per class, e.g.
# inverse training-split frequencies); "image" = inverse frequencies in each image's own label map.
CLASS_WEIGHTINGS = ("dataset", "image")


def balanced_class_weights(frequencies: Tensor) -> Tensor:
    """Inverse-frequency class weights ``1 / (C' f_c)`` over the C' classes present (0 for absent ones).

    Rare classes then weigh as much in total as frequent ones, and the pixel-weighted mean weight is 1.

    Shape:
        - frequencies: ``[..., C]``, each row summing to 1 (or all 0); output: ``[..., C]`` float32.
    """
    present = frequencies > 0
    weights = 1.0 / (present.sum(-1, keepdim=True) * frequencies.double())
    return torch.where(present, weights, 0.0).float()


def image_class_weights(labels: Tensor, valid: Tensor, num_classes: int) -> Tensor:
    """Per pixel, :func:`balanced_class_weights` of its class among the valid pixels of its own image.

    A class covering n of an image's |V| valid pixels, among C' classes present there, weighs
    ``|V| / (C' n)``: each present class then adds up to |V|/C', whatever its area.

    Shape:
        labels, valid: [B, H, W]; output: [B, H, W] float32, meaningless at invalid pixels.
    """
    safe_labels = labels.masked_fill(~valid, 0).flatten(1)
    counts = torch.zeros(labels.shape[0], num_classes, device=labels.device)
    counts.scatter_add_(1, safe_labels, valid.flatten(1).float())
    frequencies = counts / counts.sum(1, keepdim=True).clamp_min(1)
    return balanced_class_weights(frequencies).gather(1, safe_labels).view_as(labels)


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


def apgd_stages(
    steps: int, radius_factors: Sequence[float], stage_fractions: Sequence[float]
) -> list[tuple[float, int]]:
    """``(radius factor, gradient evaluations)`` of each stage of the progressive-radius schedule.

    Every stage but the last gets ``⌊fraction · steps⌋`` evaluations (SEA's split), at least 1 and few enough
    that each later stage keeps 1; the last stage gets the rest, so the counts sum to ``steps``. With SEA's
    fractions (0.3, 0.3, 0.4): 3/3/4 of 10, 90/90/120 of 300.

    Raises:
        ValueError: If ``steps`` is smaller than the number of stages.
    """
    if steps < len(stage_fractions):
        raise ValueError(
            f"steps={steps} is fewer than the {len(stage_fractions)} stages of radius_factors "
            f"{tuple(radius_factors)!r}: each stage needs at least one gradient evaluation"
        )
    counts, remaining = [], steps
    for index, fraction in enumerate(stage_fractions[:-1]):
        later_stages = len(stage_fractions) - 1 - index
        count = min(max(int(fraction * steps), 1), remaining - later_stages)
        counts.append(count)
        remaining -= count
    counts.append(remaining)
    return list(zip(radius_factors, counts, strict=True))


class APGD(Attack):
    """Auto-PGD: step-size control instead of a fixed ``alpha``, with per-image best iterate.

    Starting from ``η = initial_step · r`` (r the stage's radius), each update is
    ``z = Π(x_k + η sign(∇L))``, ``x_{k+1} = Π(x_k + m (z − x_k) + (1 − m)(x_k − x_{k−1}))`` (m = 1 at the
    first update, ``momentum`` after; the ℓ2 form steps along ``∇L/‖∇L‖₂``). At the end of each checkpoint
    interval (:func:`apgd_checkpoint_lengths`) an image whose tracked loss rose in at most a fraction ``rho``
    of the interval's steps, or whose best tracked loss did not improve while its step was not just reduced,
    halves its step and restarts from its best-tracked-loss point with that point's gradient. The tracked
    loss is the attacked loss, or mean CE with ``track_loss="ce"`` (SEA's; the attacked loss then only gives
    the direction). ``steps`` counts gradient evaluations, the same budget as PGD.

    Progressive radius (SEA's ``apgd_largereps``): ``radius_factors`` and ``stage_fractions`` split the
    ``steps`` evaluations into stages (:func:`apgd_stages`) at radii ``factor · eps``; each stage is a fresh
    APGD run (step size, momentum, checkpoints and best points restart) of its share of evaluations, the
    first from the random start, each later one from the previous stage's best output projected onto its
    smaller ball. The last factor is 1, and only the last stage's points, all inside the eps-ball, can be
    returned. The defaults, one stage at eps, are plain APGD.

    Returns, per image, the last stage's evaluated iterate with the fewest correctly classified pixels (ties
    keep the earlier one). With ``early_stop``, a stage ends once the best points of all images misclassify
    all their valid pixels (one host synchronisation per update).

    Losses (``loss``), per image over valid pixels V: ``ce`` = ``1/|V| Σ CE``; ``mce`` =
    ``1/|V| Σ 1[ŷ=y] CE``; ``mce_balanced`` = ``1/|V| Σ w_y 1[ŷ=y] CE`` (w: ``class_weights``, or per image
    with ``class_weighting="image"``); ``js`` = ``1/|V| Σ JS(softmax(f), onehot(y))``; ``segpgd`` = SegPGD's
    loss with ``λ_t`` over the ``steps`` gradient evaluations (:func:`~eroseg_at.attacks.segpgd.segpgd_loss`);
    ``cospgd`` = CosPGD's loss (:func:`~eroseg_at.attacks.cospgd.cospgd_loss`); ``mask_norm_corrlog`` =
    ``−1/|V| Σ 1[ŷ=y] f_y/‖f‖₂`` (the label's logit after L2 normalisation over classes, on still-correct
    pixels); ``tsallis`` = ``1/|V| Σ (1 − p_y^(1−q_k))/(1 − q_k)`` with ``q_k`` from −2 to 1 over the ``steps``
    gradient evaluations (:func:`tsallis_q`; SegPGD's and Tsallis' losses change with k, so track CE with them).

    Args:
        eps: Ball radius of the output, default ``"8/255"``.
        steps: Gradient evaluations over all stages, default 10.
        norm: ``"linf"`` (default) or ``"l2"``.
        random_start: Uniform random start in the first stage's ball, default True.
        ignore_index: Label that never contributes, default 255.
        loss: One of ``ce`` (default), ``mce``, ``mce_balanced``, ``js``, ``segpgd``, ``cospgd``,
            ``mask_norm_corrlog``, ``tsallis``.
        class_weights: One non-negative weight per class; required by ``mce_balanced`` with
            ``class_weighting="dataset"``, refused otherwise.
        class_weighting: ``mce_balanced`` only: ``"dataset"`` (default, the ``class_weights``) or ``"image"``
            (:func:`image_class_weights`).
        initial_step: Initial step size as a multiple of the stage's radius, default 2.
        momentum: Momentum m, default 0.75.
        rho: Fraction of loss-increasing steps below which the step is halved, default 0.75.
        track_loss: Loss of the step-size control and its best points: None (default) = ``loss``;
            ``"ce"`` = mean CE over valid pixels.
        radius_factors: Radius of each stage as a multiple of eps, ending with 1; default ``(1,)``; SEA
            ``(2, 1.5, 1)``.
        stage_fractions: Share of ``steps`` of each stage, positive and summing to 1, one per radius; default
            ``(1,)``; SEA ``(0.3, 0.3, 0.4)``.
        early_stop: End a stage once every image's best point misclassifies all its valid pixels, default
            False; SEA True.
        seed: Seed of the random start, default None.

    Reference:
        Croce, Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
        parameter-free attacks", ICML 2020; Croce, Singh, Hein, "Towards Reliable Evaluation and Fast
        Training of Robust Semantic Segmentation Models", ECCV 2024 (the segmentation losses, the
        progressive radius, CE tracking and early stop); Halmosi, Mohos, Jelasity, "Evaluating the Adversarial
        Robustness of Semantic Segmentation: Trying Harder Pays Off", ECCV 2024 (``mask_norm_corrlog``);
        Matyasko et al., "TsallisPGD", IJCNN 2026 (``tsallis``).
    """

    name = "apgd"

    def __init__(
        self,
        loss: str = "ce",
        class_weights: Sequence[float] | Tensor | None = None,
        class_weighting: str = "dataset",
        initial_step: float | str = 2.0,
        momentum: float | str = 0.75,
        rho: float | str = 0.75,
        track_loss: str | None = None,
        radius_factors: Sequence[float | str] = (1.0,),
        stage_fractions: Sequence[float | str] = (1.0,),
        early_stop: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.loss = choice(loss, "loss", sorted(APGD_LOSSES))
        self.class_weighting = choice(class_weighting, "class_weighting", CLASS_WEIGHTINGS)
        self.class_weights = _check_class_weights(class_weights, loss, class_weighting)
        self.initial_step = number(initial_step, "initial_step", minimum=0, exclusive_minimum=True)
        self.momentum = number(momentum, "momentum", minimum=0, maximum=1)
        self.rho = number(rho, "rho", minimum=0, maximum=1)
        self.track_loss = choice(track_loss, "track_loss", (None, "ce"))
        self.radius_factors = number_sequence(
            radius_factors, "radius_factors", minimum=0, exclusive_minimum=True
        )
        if self.radius_factors[-1] != 1:
            raise ValueError(
                f"radius_factors must end with 1 (the last stage runs at eps), got {tuple(radius_factors)!r}"
            )
        self.stage_fractions = number_sequence(
            stage_fractions, "stage_fractions", minimum=0, maximum=1, exclusive_minimum=True
        )
        if len(self.stage_fractions) != len(self.radius_factors):
            raise ValueError(
                f"stage_fractions must have one entry per radius factor ({len(self.radius_factors)}), "
                f"got {tuple(stage_fractions)!r}"
            )
        if not math.isclose(sum(self.stage_fractions), 1.0, abs_tol=1e-9):
            raise ValueError(f"stage_fractions must sum to 1, got {tuple(stage_fractions)!r}")
        # A budget too small for the stages is refused here rather than at the first call.
        apgd_stages(self.steps, self.radius_factors, self.stage_fractions)
        self.early_stop = boolean(early_stop, "early_stop")

    @classmethod
    def dataset_arguments(cls, arguments: Mapping[str, Any], dataset: DatasetFacts) -> dict[str, Any]:
        """The base's, plus inverse-frequency ``class_weights`` for dataset-weighted ``mce_balanced`` unless given."""
        extra = super().dataset_arguments(arguments, dataset)
        if (
            arguments.get("loss") == "mce_balanced"
            and arguments.get("class_weighting", "dataset") == "dataset"
            and arguments.get("class_weights") is None
        ):
            extra["class_weights"] = balanced_class_weights(dataset.class_frequencies())
        return extra

    def radius_schedule(self) -> tuple[tuple[float, int], ...]:
        """The progressive-radius stages (:func:`apgd_stages`); one stage at eps by default."""
        return tuple(apgd_stages(self.steps, self.radius_factors, self.stage_fractions))

    def model_problems(self, model: Callable) -> list[str]:
        """The base's, plus ``class_weights`` of another length than the model's classes."""
        problems = super().model_problems(model)
        classes = getattr(model, "num_classes", None)
        if self.class_weights is not None and classes is not None and self.class_weights.numel() != classes:
            problems.append(
                f"class_weights has {self.class_weights.numel()} entries but the model predicts {classes} classes"
            )
        return problems

    def _perturb(
        self, model: Callable, clean: Tensor, labels: Tensor, valid: Tensor, model_dtype: torch.dtype
    ) -> Tensor:
        class_weights = None if self.class_weights is None else self.class_weights.to(clean.device)
        evaluations = 0

        def evaluate(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            """Tracked loss, gradient of the attacked loss and pixel error at ``x``, all per image."""
            nonlocal evaluations
            x.requires_grad_(True)
            logits, _ = self._forward(model, x, clean, model_dtype)
            weights = self._pixel_class_weights(logits, labels, valid, class_weights)
            with torch.autocast(device_type=x.device.type, enabled=False):
                loss = APGD_LOSSES[self.loss](logits, labels, valid, weights, evaluations, self.steps)
                tracked = loss
                if self.track_loss is not None:
                    tracked = APGD_LOSSES[self.track_loss](
                        logits.detach(), labels, valid, weights, evaluations, self.steps
                    )
            (gradient,) = torch.autograd.grad(loss.sum(), x)
            x.requires_grad_(False)
            evaluations += 1
            return tracked.detach(), gradient, self._pixel_error(logits, labels, valid)

        stages = self.radius_schedule()
        x = self._start(clean, stages[0][0] * self.eps)
        for index, (factor, count) in enumerate(stages):
            ball = self._ball(clean, factor * self.eps)
            if index > 0:
                x = self._project(x, clean, ball)
            x = self._stage(evaluate, x, clean, ball, count)
        return x

    def _pixel_class_weights(
        self, logits: Tensor, labels: Tensor, valid: Tensor, class_weights: Tensor | None
    ) -> Tensor | None:
        """``mce_balanced``'s weight of each pixel's class ([B, H, W]); None for the other losses."""
        if self.loss != "mce_balanced":
            return None
        if self.class_weighting == "image":
            return image_class_weights(labels, valid, logits.shape[1])
        if logits.shape[1] != class_weights.numel():
            raise ValueError(
                f"class_weights has {class_weights.numel()} entries but the model predicts "
                f"{logits.shape[1]} classes"
            )
        return class_weights[labels.masked_fill(~valid, 0)]

    def _stage(
        self,
        evaluate: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]],
        x: Tensor,
        clean: Tensor,
        ball: Ball,
        evaluations: int,
    ) -> Tensor:
        """One APGD run of ``evaluations`` gradient evaluations in ``ball`` from ``x``; returns its best output."""
        loss, gradient, error = evaluate(x)
        best_output = BestIterate(x, error)
        best_loss, best_loss_x, best_loss_gradient = loss.clone(), x.clone(), gradient.clone()
        previous_loss, previous_x = loss, x.clone()
        step_size = torch.full((x.shape[0], 1, 1, 1), self.initial_step * ball.radius, device=x.device)
        best_loss_at_check = best_loss.clone()
        reduced_at_check = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        increases = torch.zeros_like(loss)
        checkpoints = apgd_checkpoint_lengths(evaluations - 1)
        since_check = 0
        for update in range(evaluations - 1):
            # The loop's one host synchronisation, paid only with early_stop: a flag read back per update.
            if self.early_stop and not best_output.error.any():
                break
            with torch.no_grad():
                momentum = 1.0 if update == 0 else self.momentum
                proposal = self._project(x + step_size * self._direction(gradient), clean, ball)
                moved = x + momentum * (proposal - x) + (1 - momentum) * (x - previous_x)
                previous_x, x = x, self._project(moved, clean, ball)
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


def _check_class_weights(
    class_weights: Sequence[float] | Tensor | None, loss: str, class_weighting: str
) -> Tensor | None:
    if loss != "mce_balanced":
        if class_weights is not None:
            raise ValueError(f"class_weights is only used by loss='mce_balanced', not by loss={loss!r}")
        if class_weighting != "dataset":
            raise ValueError(
                f"class_weighting is only used by loss='mce_balanced', not by loss={loss!r}; "
                f"got class_weighting={class_weighting!r}"
            )
        return None
    if class_weighting == "image":
        if class_weights is not None:
            raise ValueError(
                "class_weights is only used with class_weighting='dataset'; class_weighting='image' "
                "computes the weights from each image's label map"
            )
        return None
    if class_weights is None:
        raise ValueError("loss='mce_balanced' needs class_weights: one non-negative weight per class")
    weights = torch.as_tensor(class_weights, dtype=torch.float32).detach().cpu()
    if weights.dim() != 1 or weights.numel() == 0 or not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(
            f"class_weights must be a non-empty 1-D sequence of finite non-negative numbers, got {class_weights!r}"
        )
    return weights
