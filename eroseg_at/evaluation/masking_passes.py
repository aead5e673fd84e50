"""The gradient-masking checks of :mod:`.masking` as passes of an evaluation, and their verdict per model.

The checks need a few numbers the suite does not measure. Each is a pass (:class:`~.passes.PassProducer`) run
by the same :class:`~.passes.PassRunner` as the suite, so it is seeded per batch, cached, resumed and shared
among processes like any pass; all but the curve read the first batches holding ``masking_checks.images``
images (the subset, ``batch_limit``):

1. black box vs white box: Square (``queries`` forward passes per image) at the suite's largest budget, against
   the per-image worst case of the suite's gradient members at that budget on the same images;
2. budget: the white-box worst case on the subset at each suite budget (plus a cheap attack at ``small_eps``
   where the suite has one budget) must not rise with eps, and the cheap attack (APGD, masked CE, no random
   start) at ``large_eps`` must knock over most correct pixels;
3. iterations: the suite's iterations curve (its first member at its two largest step counts) where it has one;
   else its first gradient member at the largest budget against the same member at half its steps;
4. gradient health: one forward and input-gradient backward per distinct loss of the gradient members (mean CE,
   and each APGD loss) at the clean images;
5. repeatability: a second clean pass, against the first on the same images.

A check with nothing to compare (no gradient member at all) is listed as not run, with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate

import torch
from torch import Tensor, nn

from eroseg_at.attacks.apgd import APGD_LOSSES
from eroseg_at.attacks.arguments import parse_number
from eroseg_at.attacks.base import Attack
from eroseg_at.evaluation.cache import PassResult
from eroseg_at.evaluation.data import EvaluationData
from eroseg_at.evaluation.keys import PassIdentity
from eroseg_at.evaluation.masking import (
    BLACK_BOX,
    ITERATIONS,
    VANISHING_CHANGE,
    GradientHealth,
    MaskingVerdict,
    black_box_check,
    budget_check,
    gradient_health,
    gradient_health_check,
    iterations_check,
    repeatability_check,
)
from eroseg_at.evaluation.passes import AttackPass, CleanPass, PassProducer
from eroseg_at.evaluation.settings import MaskingCheckSettings
from eroseg_at.evaluation.suite import AttackRun
from eroseg_at.evaluation.worst_case import select, worst_case

# The kind of every extra pass in its cache key and of the runs built for them.
KIND = "masking"
# mce_balanced reweights mce's pixels by positive class weights: its gradient is zero or vanishing where mce's
# is, so one backward of mce speaks for both.
SAME_GRADIENT_HEALTH = {"mce_balanced": "mce"}
HEALTH_FIELDS = tuple(GradientHealth.__dataclass_fields__)


def health_losses(attacks: Sequence[Attack]) -> tuple[str, ...]:
    """The distinct losses whose input gradients the checks inspect: mean CE (the PGD family's, PAdam-CE's and
    the default) and the loss of each APGD member."""
    losses = ["ce"]
    for attack in attacks:
        loss = getattr(attack, "loss", None)
        if attack.name == "apgd" and loss in APGD_LOSSES:
            losses.append(SAME_GRADIENT_HEALTH.get(loss, loss))
    return tuple(dict.fromkeys(losses))


@dataclass(frozen=True)
class GradientHealthPass:
    """Per image, the :class:`~.masking.GradientHealth` record of one APGD loss at the clean image, as a row
    ``[zero, non_finite, vanishing, first_order_change, has_valid_pixels]`` (float)."""

    loss: str
    eps: float
    ignore_index: int
    batch_limit: int | None
    evaluations_per_image: int = 1

    @property
    def name(self) -> str:
        return f"gradient health ({self.loss})"

    @property
    def stream(self) -> tuple[str, ...]:
        return (KIND, "gradient_health", self.loss)

    @property
    def identity(self) -> PassIdentity:
        return PassIdentity(
            "masking_gradient_health",
            self.stream,
            parameters={
                "loss": self.loss,
                "vanishing_change": VANISHING_CHANGE,
                "ignore_index": self.ignore_index,
            },
            eps=self.eps,
            steps=1,
        )

    def __call__(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        loss = APGD_LOSSES[self.loss]
        health = gradient_health(
            model,
            images,
            labels,
            self.eps,
            lambda logits, target, valid: loss(logits, target, valid, None, 0, 1),
            self.ignore_index,
        )
        return torch.stack([getattr(health, name).float() for name in HEALTH_FIELDS], 1).cpu()

    @staticmethod
    def record(rows: Tensor) -> GradientHealth:
        """The :class:`~.masking.GradientHealth` of the pass's rows ``[N, 5]``."""
        columns = dict(zip(HEALTH_FIELDS, rows.unbind(1), strict=True))
        return GradientHealth(
            **{
                name: value if name == "first_order_change" else value.bool()
                for name, value in columns.items()
            }
        )


def subset_batches(batch_sizes: Sequence[int], images: int) -> int:
    """The fewest first batches holding at least ``images`` images (all of them where they hold fewer)."""
    ends = list(accumulate(batch_sizes))
    return next((count for count, end in enumerate(ends, 1) if end >= images), len(ends))


def masking_run(key: str, label: str, attack: str, eps_text: str, arguments: dict) -> AttackRun:
    return AttackRun(
        key,
        label,
        KIND,
        attack,
        eps_text,
        parse_number(eps_text, key),
        arguments,
        where=f"masking_checks ({label})",
    )


@dataclass(frozen=True)
class MaskingChecks:
    """One model's gradient-masking passes (:attr:`producers`, run after the suite's) and how their verdict is read.

    Attributes:
        main_eps: The suite's largest budget with a gradient member (``eps_text``); None without one.
        runs: The suite's runs, in the order of their passes; ``gradient`` marks those of gradient attacks.
        black_box: Square at ``main_eps`` on the subset; None without ``main_eps``.
        large, small: The cheap attack at ``large_eps`` and (for a suite with one budget) at ``small_eps``.
        half: Index in ``runs`` of the member run again at half its steps, and that pass; None where the
            suite's curve serves the iterations check or no member has two steps or more.
        curve: Indices in ``runs`` of the curve points compared (fewer, more steps); None without a curve.
        health: One gradient-health pass per loss.
        repeat: The second clean pass on the subset.
        not_run: Checks without anything to compare, with the reason.
    """

    main_eps: str | None
    runs: tuple[AttackRun, ...]
    gradient: tuple[bool, ...]
    black_box: AttackPass | None
    large: AttackPass
    small: AttackPass | None
    half: tuple[int, AttackPass] | None
    curve: tuple[int, int] | None
    health: tuple[GradientHealthPass, ...]
    repeat: CleanPass
    not_run: dict[str, str] = field(default_factory=dict)

    @property
    def producers(self) -> list[PassProducer]:
        optional = [self.black_box, self.small, None if self.half is None else self.half[1]]
        return [
            *(producer for producer in optional if producer is not None),
            self.large,
            *self.health,
            self.repeat,
        ]

    def white_box(
        self, eps_text: str, n: int, clean: Tensor, attacked: Sequence[PassResult], rounds: int
    ) -> Tensor | None:
        """The per-image worst case of the gradient members at ``eps_text`` on the first ``n`` images ``[n, 3, C]``
        (None without a member there)."""
        members = [
            result.statistics[:n]
            for run, gradient, result in zip(self.runs, self.gradient, attacked, strict=True)
            if gradient and run.kind == "attack" and run.eps_text == eps_text
        ]
        if not members:
            return None
        stacked = torch.stack([clean[:n], *members])
        return select(stacked, worst_case(stacked, rounds).miou_choice)

    def verdict(
        self, clean: PassResult, attacked: Sequence[PassResult], extra: Sequence[PassResult], rounds: int
    ) -> MaskingVerdict:
        """The checks on the suite's results (``clean``, ``attacked`` in the order of :attr:`runs`) and the extra
        passes' results (``extra``, in the order of :attr:`producers`); ``rounds`` of the greedy worst case."""
        results = dict(zip(map(id, self.producers), extra, strict=True))
        # The subset's images as evaluated (max_batches may cut it shorter than planned).
        n = results[id(self.repeat)].statistics.shape[0]
        checks = []
        if self.black_box is not None:
            white = self.white_box(self.main_eps, n, clean.statistics, attacked, rounds)
            checks.append(black_box_check(results[id(self.black_box)].statistics, white))
        budgets = dict.fromkeys(run.eps_text for run in self.runs if run.kind == "attack")
        by_eps = {
            run_eps: white
            for run_eps in budgets
            if (white := self.white_box(run_eps, n, clean.statistics, attacked, rounds)) is not None
        }
        by_eps = {parse_number(text, "eps"): statistics for text, statistics in by_eps.items()}
        if self.small is not None:
            by_eps[self.small.run.eps] = results[id(self.small)].statistics
        checks.append(
            budget_check(clean.statistics[:n], by_eps, self.large.run.eps, results[id(self.large)].statistics)
        )
        if self.curve is not None:
            fewer, more = self.curve
            checks.append(
                iterations_check(
                    attacked[fewer].statistics,
                    attacked[more].statistics,
                    self.runs[fewer].steps,
                    self.runs[more].steps,
                )
            )
        elif self.half is not None:
            member, half = self.half
            checks.append(
                iterations_check(
                    results[id(half)].statistics,
                    attacked[member].statistics[:n],
                    half.run.steps,
                    self.runs[member].steps,
                )
            )
        checks.append(
            gradient_health_check(
                {
                    health.loss: GradientHealthPass.record(results[id(health)].statistics)
                    for health in self.health
                }
            )
        )
        checks.append(repeatability_check(clean.statistics[:n], results[id(self.repeat)].statistics))
        seconds = sum(result.seconds for result in extra)
        return MaskingVerdict(tuple(checks), seconds, dict(self.not_run))


def plan_checks(
    settings: MaskingCheckSettings,
    runs: Sequence[AttackRun],
    attacks: Sequence[Attack],
    data: EvaluationData,
) -> tuple[MaskingChecks | None, list[str]]:
    """The checks' passes for a suite's ``runs`` (built as ``attacks``) on ``data``, or the problem that keeps
    them from running; (None, []) where the checks are disabled."""
    if not settings.enabled:
        return None, []
    if data.batch_sizes is None:
        return None, [
            f"masking_checks: dataset {data.name} does not say its batch sizes beforehand "
            "(EvaluationData.batch_sizes), which the checks' subset needs; set masking_checks.enabled=false"
        ]
    batches = subset_batches(data.batch_sizes, settings.images)
    classes, ignore = data.num_classes, data.ignore_index
    gradient = tuple(attack.uses_gradients for attack in attacks)
    members = [
        (index, run)
        for index, (run, uses) in enumerate(zip(runs, gradient, strict=True))
        if uses and run.kind == "attack"
    ]
    budgets = sorted({run.eps_text: run.eps for _, run in members}.items(), key=lambda item: item[1])
    main_eps = budgets[-1][0] if budgets else None
    not_run = {}

    def attack_pass(run: AttackRun) -> AttackPass:
        return AttackPass(run, run.build(data.facts()), classes, ignore, batches)

    cheap = {"loss": "mce", "steps": settings.cheap_steps}
    label = f"APGD-mCE{settings.cheap_steps}"
    black_box = None
    if main_eps is None:
        not_run[BLACK_BOX] = "the suite has no gradient member to compare Square with"
    else:
        black_box = attack_pass(
            masking_run(
                "masking_square", f"Square{settings.queries}", "square", main_eps, {"steps": settings.queries}
            )
        )
    large = attack_pass(
        masking_run("masking_large_eps", label, "apgd", settings.large_eps, {**cheap, "random_start": False})
    )
    small_eps = parse_number(settings.small_eps, "masking_checks.small_eps")
    small = None
    if len(budgets) < 2 and all(small_eps < eps for _, eps in budgets):
        small = attack_pass(masking_run("masking_small_eps", label, "apgd", settings.small_eps, cheap))
    curve_points = [(index, run) for index, run in enumerate(runs) if run.kind == "iterations"]
    curve, half = None, None
    if curve_points:
        first = curve_points[0][1].where
        points = sorted(
            ((run.steps, index) for index, run in curve_points if run.where == first),
            key=lambda item: item[0],
        )
        if len(points) >= 2:
            curve = (points[-2][1], points[-1][1])
    if curve is None:
        stepped = [(index, run) for index, run in members if run.eps_text == main_eps and run.steps >= 2]
        if stepped:
            index, run = stepped[0]
            fewer = masking_run(
                f"masking_half_{run.key}",
                f"{run.label} at {run.steps // 2} steps",
                run.attack,
                run.eps_text,
                {**run.arguments, "steps": run.steps // 2},
            )
            half = (index, AttackPass(fewer, fewer.build(data.facts()), classes, ignore, batches))
        else:
            not_run[ITERATIONS] = "no iterations curve and no gradient member with two steps or more"
    health_eps = budgets[-1][1] if budgets else (curve_points[0][1].eps if curve_points else small_eps)
    health = tuple(
        GradientHealthPass(loss, health_eps, ignore, batches)
        for loss in health_losses([attack for attack, uses in zip(attacks, gradient, strict=True) if uses])
    )
    repeat = CleanPass(
        classes,
        ignore,
        name="clean, repeated",
        stream=(KIND, "repeat"),
        identity=PassIdentity("masking_repeat", (KIND, "repeat")),
        batch_limit=batches,
    )
    checks = MaskingChecks(
        main_eps, tuple(runs), gradient, black_box, large, small, half, curve, health, repeat, not_run
    )
    return checks, []
