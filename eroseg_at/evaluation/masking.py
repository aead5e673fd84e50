"""Gradient-masking checks: pure functions over per-image statistics of attack passes, and their verdict.

When a model's gradients are useless (non-differentiable preprocessing, saturated softmax, randomness), every
gradient attack fails together and an evaluation reports a robustness the model does not have. The signs
(Athalye, Carlini, Wagner, ICML 2018; Carlini et al., "On evaluating adversarial robustness", 2019) are checked
here, each from what the evaluation measures anyway or from a cheap extra pass:

1. :func:`black_box_check`: a score-based attack (Square), which never looks at gradients, ends clearly below
   the white-box worst case on the same images.
2. :func:`budget_check`: mIoU rises with eps, or a large eps leaves most correct pixels correct.
3. :func:`iterations_check`: more iterations of the same attack leave the model more accurate.
4. :func:`gradient_health` and :func:`gradient_health_check`: the input gradient of a loss the attacks use
   (mean cross-entropy over valid pixels by default) is zero, non-finite or too small to move the loss within
   the ball.
5. :func:`repeatability_check`: two clean passes over the same images predict differently, so the model is
   random and a gradient taken at one call says little about the next (an attack then needs an expectation over
   the randomness, which none of the members takes).

Every check takes per-image statistics (:func:`~eroseg_at.evaluation.worst_case.per_image_statistics`,
``[N, 3, C]`` per pass) or per-image records, never the evaluator's state, and returns a :class:`CheckResult`;
:class:`MaskingVerdict` gathers them for a report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from eroseg_at.attacks.base import eval_mode
from eroseg_at.attacks.objectives import pixel_cross_entropy, valid_mean
from eroseg_at.evaluation.worst_case import miou, pixel_accuracy

# Check names, as reports list them.
BLACK_BOX = "black_box_vs_white_box"
BUDGET = "budget_monotonicity"
ITERATIONS = "iterations"
GRADIENT_HEALTH = "gradient_health"
REPEATABILITY = "repeatability"

# How far (in [0, 1] units of mIoU and of pixel accuracy) a black-box attack must end below the white-box worst
# case to flag it. Square at the checks' budget is a single, much weaker member than a gradient ensemble on a
# model with useful gradients (measured gaps in docs/ATTACKS.md, "What Square is for"), so ending below it at
# all is suspicious; the margin only absorbs the noise of a small subset.
BLACK_BOX_MARGIN = 0.01
# How much a score may rise with eps or with iterations before it is flagged: random starts alone move a small
# subset's figures by a fraction of a point.
RISE_TOLERANCE = 0.005
# At the large eps, the share of the clean correct pixels that may still be correct.
LARGE_EPS_MAX_SURVIVING = 0.5
# gradient_health: a gradient is vanishing when, to first order, it moves the loss by less than this over the
# whole ℓ∞ ball (eps · ‖∇L‖₁, in the loss's units: nats for the cross-entropies); a model with working
# gradients moves it by orders of magnitude more.
VANISHING_CHANGE = 1e-6
# The share of images (with valid pixels) whose gradient may be unhealthy before the check fires.
GRADIENT_MAX_UNHEALTHY_SHARE = 0.05
# The share of valid pixels whose prediction may differ between two clean passes: room for the rare argmax tie
# that non-deterministic GPU kernels can flip.
MAX_CHANGED_PREDICTIONS = 0.001


@dataclass(frozen=True)
class CheckResult:
    """One gradient-masking check.

    Attributes:
        name: :data:`BLACK_BOX`, :data:`BUDGET`, :data:`ITERATIONS`, :data:`GRADIENT_HEALTH` or
            :data:`REPEATABILITY`.
        flagged: The check found a sign of gradient masking.
        numbers: What it compared, by name (scores in [0, 1], budgets in pixel units, counts).
        explanation: One line saying what was compared and what it showed.
    """

    name: str
    flagged: bool
    numbers: Mapping[str, float | int]
    explanation: str

    @property
    def passed(self) -> bool:
        return not self.flagged


@dataclass(frozen=True)
class MaskingVerdict:
    """The checks run on one model and what they cost.

    Attributes:
        checks: Each check's result, in the order run.
        seconds: Wall time of the checks' extra passes and computations.
        not_run: Checks that had nothing to compare, by name, with the reason (a suite without gradient
            members has no white-box worst case for the black-box check).
    """

    checks: tuple[CheckResult, ...]
    seconds: float
    not_run: Mapping[str, str] = field(default_factory=dict)

    @property
    def suspected(self) -> bool:
        """Whether any check found a sign of gradient masking."""
        return any(check.flagged for check in self.checks)

    def summary(self) -> str:
        """The verdict line: each failed check with its explanation, or that none failed; then those not run."""
        failed = [check for check in self.checks if check.flagged]
        if not failed:
            line = f"gradient masking: no check failed ({len(self.checks)} checks, {self.seconds:.1f} s)"
        else:
            line = "gradient masking suspected: " + "; ".join(
                f"{check.name}: {check.explanation}" for check in failed
            )
        if self.not_run:
            line += "; not run: " + "; ".join(f"{name} ({reason})" for name, reason in self.not_run.items())
        return line

    def to_json(self) -> dict:
        """``{"suspected", "seconds", "summary", "checks": [{"name", "flagged", "numbers", "explanation"}],
        "not_run": {name: reason}}``."""
        return {
            "suspected": self.suspected,
            "seconds": self.seconds,
            "summary": self.summary(),
            "checks": [{**asdict(check), "numbers": dict(check.numbers)} for check in self.checks],
            "not_run": dict(self.not_run),
        }


def _scores(statistics: Tensor) -> tuple[float, float]:
    """Dataset mIoU and pixel accuracy of per-image statistics ``[N, 3, C]``."""
    if statistics.ndim != 3 or statistics.shape[1] != 3:
        raise ValueError(f"expected per-image statistics [N, 3, C], got {tuple(statistics.shape)}")
    summed = statistics.sum(0)
    return float(miou(summed)), float(pixel_accuracy(summed))


def _same_images(first: Tensor, second: Tensor, what: str) -> None:
    if first.shape != second.shape:
        raise ValueError(
            f"{what}: the statistics must cover the same images and classes, got {tuple(first.shape)} and "
            f"{tuple(second.shape)}"
        )
    if not torch.equal(first[:, 1], second[:, 1]):
        raise ValueError(f"{what}: the label counts differ, so the statistics are not of the same images")


def black_box_check(black_box: Tensor, white_box: Tensor, margin: float = BLACK_BOX_MARGIN) -> CheckResult:
    """Flags when the black-box attack ends more than ``margin`` below the white-box worst case.

    Args:
        black_box: Per-image statistics ``[N, 3, C]`` of the black-box attack (Square) on a subset.
        white_box: The white-box worst case's per-image statistics on the same images, in the same order.
        margin: In [0, 1] units, for mIoU and for pixel accuracy alike.
    """
    _same_images(black_box, white_box, "black_box_check")
    black_miou, black_accuracy = _scores(black_box)
    white_miou, white_accuracy = _scores(white_box)
    flagged = black_miou < white_miou - margin or black_accuracy < white_accuracy - margin
    numbers = {
        "images": black_box.shape[0],
        "black_box_miou": black_miou,
        "white_box_miou": white_miou,
        "black_box_pixel_accuracy": black_accuracy,
        "white_box_pixel_accuracy": white_accuracy,
        "margin": margin,
    }
    explanation = (
        f"on {black_box.shape[0]} images the black-box attack leaves mIoU {100 * black_miou:.2f} and pixel accuracy "
        f"{100 * black_accuracy:.2f}, the white-box worst case {100 * white_miou:.2f} and {100 * white_accuracy:.2f}"
        f" ({'more' if flagged else 'not more'} than {100 * margin:.2f} below in either)"
    )
    return CheckResult(BLACK_BOX, flagged, numbers, explanation)


def budget_check(
    clean: Tensor,
    by_eps: Mapping[float, Tensor],
    large_eps: float,
    large: Tensor,
    tolerance: float = RISE_TOLERANCE,
    max_surviving: float = LARGE_EPS_MAX_SURVIVING,
) -> CheckResult:
    """Flags when mIoU rises with eps, or when the attack at ``large_eps`` leaves most correct pixels correct.

    Args:
        clean: Per-image statistics ``[N, 3, C]`` without attack.
        by_eps: Per eps, the statistics of an attack (or of the worst case) at that budget on the same images.
        large_eps: The large budget (e.g. 64/255); ``large`` its attack's statistics on the same images.
        tolerance: How much mIoU may rise from one eps to the next larger one, in [0, 1] units.
        max_surviving: The share of the clean pixel accuracy that may survive at ``large_eps``.
    """
    for eps, statistics in by_eps.items():
        _same_images(clean, statistics, f"budget_check at eps {eps:g}")
    _same_images(clean, large, f"budget_check at eps {large_eps:g}")
    curve = sorted([(float(eps), _scores(statistics)[0]) for eps, statistics in by_eps.items()])
    rises = [
        (low, high)
        for (low, low_miou), (high, high_miou) in zip(curve, curve[1:], strict=False)
        if high_miou > low_miou + tolerance
    ]
    _, clean_accuracy = _scores(clean)
    _, large_accuracy = _scores(large)
    surviving = large_accuracy / clean_accuracy if clean_accuracy > 0 else 0.0
    flagged = bool(rises) or surviving > max_surviving
    numbers: dict[str, float | int] = {f"miou_at_{eps:.6g}": value for eps, value in curve}
    numbers.update(
        {
            "large_eps": large_eps,
            "clean_pixel_accuracy": clean_accuracy,
            "large_eps_pixel_accuracy": large_accuracy,
            "surviving_share": surviving,
            "max_surviving_share": max_surviving,
            "rises": len(rises),
        }
    )
    parts = [f"mIoU rises from eps {low * 255:.3g}/255 to {high * 255:.3g}/255" for low, high in rises] or [
        "mIoU does not rise with eps"
    ]
    parts.append(
        f"at eps {large_eps * 255:.3g}/255 {100 * surviving:.1f} % of the clean pixel accuracy survives "
        f"({'more' if surviving > max_surviving else 'not more'} than {100 * max_surviving:.0f} %)"
    )
    return CheckResult(BUDGET, flagged, numbers, "; ".join(parts))


def iterations_check(
    fewer: Tensor, more: Tensor, fewer_steps: int, more_steps: int, tolerance: float = RISE_TOLERANCE
) -> CheckResult:
    """Flags when ``more_steps`` iterations of an attack leave a higher mIoU or pixel accuracy than ``fewer_steps``.

    Args:
        fewer, more: Per-image statistics ``[N, 3, C]`` of the same attack at the two budgets, same images.
        tolerance: How much a score may rise, in [0, 1] units.
    """
    if not fewer_steps < more_steps:
        raise ValueError(
            f"iterations_check needs fewer_steps < more_steps, got {fewer_steps} and {more_steps}"
        )
    _same_images(fewer, more, "iterations_check")
    fewer_miou, fewer_accuracy = _scores(fewer)
    more_miou, more_accuracy = _scores(more)
    flagged = more_miou > fewer_miou + tolerance or more_accuracy > fewer_accuracy + tolerance
    numbers = {
        "fewer_steps": fewer_steps,
        "more_steps": more_steps,
        "fewer_miou": fewer_miou,
        "more_miou": more_miou,
        "fewer_pixel_accuracy": fewer_accuracy,
        "more_pixel_accuracy": more_accuracy,
        "tolerance": tolerance,
    }
    explanation = (
        f"{more_steps} iterations leave mIoU {100 * more_miou:.2f} and pixel accuracy {100 * more_accuracy:.2f} "
        f"against {100 * fewer_miou:.2f} and {100 * fewer_accuracy:.2f} after {fewer_steps}"
        f" ({'higher' if flagged else 'not higher'}, tolerance {100 * tolerance:.2f})"
    )
    return CheckResult(ITERATIONS, flagged, numbers, explanation)


# A per-image loss of the attacks: (logits [B, C, H, W], labels [B, H, W], valid [B, H, W]) -> [B].
AttackLoss = Callable[[Tensor, Tensor, Tensor], Tensor]


def mean_cross_entropy(logits: Tensor, labels: Tensor, valid: Tensor) -> Tensor:
    """PGD's and APGD-CE's loss: mean cross-entropy over each image's valid pixels."""
    return valid_mean(pixel_cross_entropy(logits, labels, valid), valid)


@dataclass(frozen=True)
class GradientHealth:
    """Per image, what is wrong with the input gradient of one of the attacks' losses at the clean image.

    Attributes:
        zero: Every element is exactly 0, or the model's output does not depend on the input through autograd.
        non_finite: Some element is NaN or infinite.
        vanishing: Finite and not all zero, but ``eps · ‖∇L‖₁`` (the first-order change of the loss over the ℓ∞
            ball) is below the threshold.
        first_order_change: ``eps · ‖∇L‖₁`` per image (NaN where non-finite).
        has_valid_pixels: Images without a valid pixel have no loss; they are never counted as unhealthy.

    Shape:
        Each: ``[N]``.
    """

    zero: Tensor
    non_finite: Tensor
    vanishing: Tensor
    first_order_change: Tensor
    has_valid_pixels: Tensor

    @property
    def unhealthy(self) -> Tensor:
        """``[N]`` bool: zero, non-finite or vanishing, among images with valid pixels."""
        return (self.zero | self.non_finite | self.vanishing) & self.has_valid_pixels

    @staticmethod
    def concatenate(records: Sequence[GradientHealth]) -> GradientHealth:
        """The records of several batches as one, in order."""
        if not records:
            raise ValueError("GradientHealth.concatenate needs at least one record")
        return GradientHealth(
            *(
                torch.cat([getattr(record, name) for record in records])
                for name in GradientHealth.__dataclass_fields__
            )
        )


def gradient_health(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    eps: float,
    loss: AttackLoss = mean_cross_entropy,
    ignore_index: int = 255,
    vanishing_change: float = VANISHING_CHANGE,
) -> GradientHealth:
    """The input gradient of ``loss`` (default: mean cross-entropy over valid pixels) at ``images``.

    One forward and one input-gradient backward pass, in eval mode (each module's mode restored), input
    gradients only, loss in float32; works inside ``torch.no_grad`` and ``torch.inference_mode``. A model whose
    output does not require grad (a forward under ``no_grad``, some exported modules) has a zero gradient.

    Shape:
        images: [N, 3, H, W] in [0, 1]; labels: [N, H, W]; output: per-image records [N].
    """
    with eval_mode(model), torch.inference_mode(False), torch.enable_grad():
        x = images.detach().clone().requires_grad_(True)
        labels = labels.detach().to(torch.int64, copy=True)
        valid = labels != ignore_index
        logits = model(x).float()
        gradient = None
        if logits.requires_grad:
            with torch.autocast(device_type=x.device.type, enabled=False):
                value = loss(logits, labels, valid)
            (gradient,) = torch.autograd.grad(value.sum(), x, allow_unused=True)
    if gradient is None:
        gradient = torch.zeros_like(x)
    gradient = gradient.detach().float().flatten(1)
    finite = torch.isfinite(gradient).all(1)
    zero = (gradient == 0).all(1)
    change = eps * gradient.abs().sum(1)
    return GradientHealth(
        zero=zero,
        non_finite=~finite,
        vanishing=finite & ~zero & (change < vanishing_change),
        first_order_change=torch.where(finite, change, torch.nan),
        has_valid_pixels=valid.flatten(1).any(1),
    )


def gradient_health_check(
    by_loss: Mapping[str, GradientHealth], max_unhealthy_share: float = GRADIENT_MAX_UNHEALTHY_SHARE
) -> CheckResult:
    """Flags when, for some loss, more than ``max_unhealthy_share`` of the images with valid pixels have an
    unhealthy gradient.

    Args:
        by_loss: Per loss name (``ce``, ``mce``, ...), the :func:`gradient_health` records of the same images
            (:meth:`GradientHealth.concatenate` joins batches).
    """
    if not by_loss:
        raise ValueError("gradient_health_check needs the records of at least one loss")
    numbers: dict[str, float | int] = {"max_unhealthy_share": max_unhealthy_share}
    parts, flagged = [], False
    for name, health in by_loss.items():
        images = int(health.has_valid_pixels.sum())
        counts = {
            kind: int((getattr(health, kind) & health.has_valid_pixels).sum())
            for kind in ("zero", "non_finite", "vanishing")
        }
        share = int(health.unhealthy.sum()) / images if images else 0.0
        flagged |= share > max_unhealthy_share
        healthy = health.has_valid_pixels & ~health.unhealthy
        # How far the healthy images are from the vanishing threshold.
        smallest = float(health.first_order_change[healthy].min()) if healthy.any() else float("nan")
        numbers.update(
            {
                f"{name}_images": images,
                f"{name}_unhealthy_share": share,
                f"{name}_smallest_healthy_change": smallest,
            }
        )
        numbers.update({f"{name}_{kind}": count for kind, count in counts.items()})
        parts.append(
            f"{name}: {100 * share:.1f} % of {images} images (zero {counts['zero']}, non-finite "
            f"{counts['non_finite']}, vanishing {counts['vanishing']}; smallest healthy change {smallest:.2g})"
        )
    explanation = (
        "input gradients that are zero, non-finite or vanishing at the clean images, "
        + "; ".join(parts)
        + f" ({'more' if flagged else 'not more'} than {100 * max_unhealthy_share:.0f} % for some loss)"
    )
    return CheckResult(GRADIENT_HEALTH, flagged, numbers, explanation)


def repeatability_check(
    first: Tensor, second: Tensor, max_changed: float = MAX_CHANGED_PREDICTIONS
) -> CheckResult:
    """Flags when two clean passes over the same images predict differently at more than ``max_changed`` of the
    valid pixels.

    The statistics hold counts, not pixels. A pixel whose prediction changes moves two prediction counts by one
    and at most one intersection count by one, so the larger of half the summed absolute difference of the
    prediction counts and the summed absolute difference of the intersections is the least number of pixels
    that changed: the check never overstates a change.

    Args:
        first, second: Per-image statistics ``[N, 3, C]`` of two passes without attack over the same images.
    """
    _same_images(first, second, "repeatability_check")
    valid_pixels = int(first[:, 1].sum())
    changed = max(
        int((first[:, 2] - second[:, 2]).abs().sum()) // 2, int((first[:, 0] - second[:, 0]).abs().sum())
    )
    share = changed / valid_pixels if valid_pixels else 0.0
    flagged = share > max_changed
    numbers = {
        "images": first.shape[0],
        "valid_pixels": valid_pixels,
        "changed_predictions_at_least": changed,
        "changed_share": share,
        "max_changed_share": max_changed,
    }
    explanation = (
        f"two clean passes over {first.shape[0]} images predict differently at {100 * share:.2f} % of the valid "
        f"pixels or more ({'more' if flagged else 'not more'} than {100 * max_changed:.1f} %)"
    )
    return CheckResult(REPEATABILITY, flagged, numbers, explanation)
