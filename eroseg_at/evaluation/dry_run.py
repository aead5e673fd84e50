"""``evaluate.py ... dry_run=true``: what an evaluation would run and about how long it would take, before paying.

Every model's plan is made as the evaluation makes it (so whatever cannot run is refused the same way), the passes
the cache already holds finished are left out, and one attack iteration (a forward and a backward pass of the
model with respect to the input, what every gradient attack pays per step) is timed on the first batch, as is
starting the loader (what every pass pays once). No pass runs.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from eroseg_at.evaluation.cache import PassCache
from eroseg_at.evaluation.data import EvaluationData
from eroseg_at.evaluation.distributed import Processes
from eroseg_at.evaluation.errors import PlanError
from eroseg_at.evaluation.models import ModelToEvaluate
from eroseg_at.evaluation.passes import GradientCounter, PassRunner
from eroseg_at.evaluation.pipeline import models_and_data, plan_model
from eroseg_at.evaluation.report import duration
from eroseg_at.evaluation.settings import EvaluationSettings
from eroseg_at.evaluation.suite import Suite

# Timed iterations after the warm-up; the estimate takes their median.
TIMED_ITERATIONS = 5


@dataclass(frozen=True)
class PlannedPassCost:
    """One pass of the plan: its name, its model evaluations per image (gradient evaluations and the final
    prediction; Square's forward queries count as one each) and the images it evaluates (None: not known before
    the loader runs); ``cached`` where the cache holds it finished."""

    name: str
    evaluations_per_image: int
    images: int | None
    cached: bool


@dataclass(frozen=True)
class CostEstimate:
    """The plan of one model and its timed iteration.

    Attributes:
        model: The model's name; ``dataset`` its data's.
        passes: Every pass of the plan, clean first.
        seconds_per_image_iteration: One forward and backward pass per image, timed on the first batch after a
            warm-up (the median of :data:`TIMED_ITERATIONS`).
        timed_images: The first batch's images.
        seconds_per_pass: What every pass pays once, whatever its iterations: starting the loader and reading the
            first batch, as timed.
    """

    model: str
    dataset: str
    passes: tuple[PlannedPassCost, ...]
    seconds_per_image_iteration: float
    timed_images: int
    seconds_per_pass: float = 0.0

    @property
    def seconds(self) -> float | None:
        """The estimate: every evaluation of every pass not cached, at the timed cost (None: images unknown)."""
        left = [cost for cost in self.passes if not cost.cached]
        if any(cost.images is None for cost in left):
            return None
        evaluations = sum(cost.evaluations_per_image * cost.images for cost in left)
        return evaluations * self.seconds_per_image_iteration + len(left) * self.seconds_per_pass


def timed_iteration(
    model: GradientCounter, data: EvaluationData, runner: PassRunner
) -> tuple[float, int, float]:
    """Seconds per image of one input-gradient evaluation on the first batch (the median of
    :data:`TIMED_ITERATIONS` calls after a warm-up), the batch's image count, and the seconds
    that starting the loader and reading that batch took (every pass pays them)."""
    started = time.perf_counter()
    _, (images, labels) = next(data.batches([0]))
    reading = time.perf_counter() - started
    images, labels = images.to(runner.device), labels.to(runner.device)
    times = []
    # The first call pays one-off costs (allocation, compilation); the median of the next ones is robust to the
    # load spikes of a shared machine.
    for _ in range(1 + TIMED_ITERATIONS):
        started = time.perf_counter()
        inputs = images.clone().requires_grad_(True)
        with runner.autocast():
            logits = model(inputs)
        loss = F.cross_entropy(logits.float(), labels.long(), ignore_index=data.ignore_index)
        torch.autograd.grad(loss, inputs)
        if runner.device.type == "cuda":
            torch.cuda.synchronize(runner.device)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:]) / images.shape[0], images.shape[0], reading


def estimate_costs(
    runner: PassRunner, entries: list[ModelToEvaluate], datasets: list[EvaluationData], suite: Suite
) -> list[CostEstimate]:
    """The plan and timed iteration of every model.

    Raises:
        PlanError: Listing every problem of every model, as the evaluation would.
    """
    estimates, problems = [], []
    for entry, data in zip(entries, datasets, strict=True):
        plan, found = plan_model(runner, entry, data, suite)
        problems += found
        if plan is None:
            continue
        passes = tuple(
            PlannedPassCost(
                name=planned.producer.name,
                evaluations_per_image=planned.producer.evaluations_per_image,
                images=None if planned.batches is None else sum(data.batch_sizes[b] for b in planned.batches),
                cached=planned.finished,
            )
            for planned in plan.passes
        )
        model = runner.prepare(entry.model_for(data))
        seconds, images, reading = timed_iteration(model, data, runner)
        estimates.append(CostEstimate(entry.name, data.name, passes, seconds, images, reading))
    if problems:
        raise PlanError(
            "the evaluation cannot run as planned:\n" + "\n".join(f"- {problem}" for problem in problems)
        )
    return estimates


def plan_text(estimates: list[CostEstimate], suite: Suite) -> str:
    """The plan as ``dry_run=true`` prints it: per model its passes, the iterations per image and the estimate."""
    lines = [f"dry run of suite {suite.name}: nothing is attacked."]
    total = 0.0
    for index, estimate in enumerate(estimates, 1):
        lines += [
            "",
            f"model {index}/{len(estimates)} {estimate.model} on {estimate.dataset}:",
            f"  {'pass':<32} {'evaluations/image':>17} {'images':>7}",
        ]
        for cost in estimate.passes:
            images = "?" if cost.images is None else str(cost.images)
            note = "  (in the cache: not run)" if cost.cached else ""
            lines.append(f"  {cost.name:<32} {cost.evaluations_per_image:>17} {images:>7}{note}")
        evaluations = sum(cost.evaluations_per_image for cost in estimate.passes if not cost.cached)
        lines.append(
            f"  {evaluations} model evaluations per image (attack iterations and predictions); one iteration "
            f"{1000 * estimate.seconds_per_image_iteration:.1f} ms per image (timed on a batch of "
            f"{estimate.timed_images}); {estimate.seconds_per_pass:.1f} s per pass to start the loader"
        )
        seconds = estimate.seconds
        if seconds is None:
            lines.append("  estimate: unknown (the loader's batches are not known before it runs)")
        else:
            total += seconds
            lines.append(f"  estimate: {duration(seconds)}")
    lines += [
        "",
        f"estimate in all: {duration(total)} in one process, rough: forward-only evaluations (predictions, "
        "Square's queries) cost less than the timed iteration and early stop may end attacks sooner, while each "
        "attack step's own work (projection, loss bookkeeping, RP-PGD's features) costs more; docs/EVALUATION.md "
        "compares estimates with measured times.",
    ]
    return "\n".join(lines)


def dry_run(cfg: DictConfig, processes: Processes, cache: PassCache | None) -> str:
    """The plan of the evaluation ``cfg`` (a composed ``conf/evaluate.yaml``) with its estimate, as text."""
    suite = Suite.from_config(cfg.suite, cfg.eps)
    runner = PassRunner(EvaluationSettings.from_config(cfg), processes, cache)
    return plan_text(estimate_costs(runner, *models_and_data(cfg), suite), suite)
