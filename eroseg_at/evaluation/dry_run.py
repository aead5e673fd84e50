"""``evaluate.py ... dry_run=true``: what an evaluation would run and about how long it would take, before paying.

Every model's plan is made as the evaluation makes it (so whatever cannot run is refused the same way), and the
passes the cache already holds finished are left out. No pass runs; on the first batch the dry run times what the
passes are made of: the prediction (a forward pass without gradients, which every pass ends with), a short run of
each distinct attack (a few iterations, :data:`SHORT_STEPS`: its forward and backward passes and its own work, projection
and loss bookkeeping, which on a small model cost as much again as the passes), starting the loader, and any other
pass as it is. Each pass's estimate is its prediction and its steps at its attack's timed cost per step.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, replace

import torch
from omegaconf import DictConfig
from torch import Tensor

from eroseg_at.evaluation.cache import PassCache
from eroseg_at.evaluation.data import EvaluationData
from eroseg_at.evaluation.distributed import Processes
from eroseg_at.evaluation.errors import PlanError
from eroseg_at.evaluation.models import ModelToEvaluate
from eroseg_at.evaluation.passes import AttackPass, GradientCounter, PassProducer, PassRunner
from eroseg_at.evaluation.pipeline import models_and_data, plan_model
from eroseg_at.evaluation.report import duration
from eroseg_at.evaluation.settings import EvaluationSettings
from eroseg_at.evaluation.suite import Suite

# Iterations of each attack's timed short run: at least SHORT_STEPS (SEA's three radius stages need three) and
# a fiftieth of the attack's own, so that a spike of a loaded machine is not multiplied by more than 50 in the
# estimate; each short run is timed TIMED_SHORT_RUNS times and the median taken. A dry run thus costs
# 3 x max(5, steps / 50) model evaluations of the first batch per distinct attack.
SHORT_STEPS = 5
SHORT_STEPS_SHARE = 50
TIMED_SHORT_RUNS = 3
# Timed predictions; the estimate takes their median (the first call, paying one-off costs, is not counted).
TIMED_PREDICTIONS = 3
# A pass that is not an attack pass is timed as it is only up to this many evaluations per image (the clean
# pass, the checks' gradient health and repeated clean pass); a longer one counts its evaluations at the
# attack steps' median cost rather than run in full.
TIMED_AS_IT_IS = 2


@dataclass(frozen=True)
class PlannedPassCost:
    """One pass of the plan: its name, its model evaluations per image (gradient evaluations and the final
    prediction; Square's forward queries count as one each), the images it evaluates (None: not known before
    the loader runs), ``cached`` where the cache holds it finished, and its timed cost per image in seconds."""

    name: str
    evaluations_per_image: int
    images: int | None
    cached: bool
    seconds_per_image: float


@dataclass(frozen=True)
class CostEstimate:
    """The plan of one model, timed.

    Attributes:
        model: The model's name; ``dataset`` its data's.
        passes: Every pass of the plan, clean first, each with its timed cost per image.
        timed_images: The first batch's images, on which everything was timed.
        seconds_per_pass: What every pass pays once, whatever its iterations: starting the loader and reading the
            first batch, as timed.
    """

    model: str
    dataset: str
    passes: tuple[PlannedPassCost, ...]
    timed_images: int
    seconds_per_pass: float = 0.0

    @property
    def seconds(self) -> float | None:
        """The estimate: every pass not cached at its timed cost (None: images unknown)."""
        left = [cost for cost in self.passes if not cost.cached]
        if any(cost.images is None for cost in left):
            return None
        return sum(cost.seconds_per_image * cost.images for cost in left) + len(left) * self.seconds_per_pass


def attack_kind(producer: AttackPass) -> str:
    """What an attack's cost per step depends on: its class and its arguments but the budget (eps, steps)."""
    arguments = {k: v for k, v in producer.run.arguments.items() if k not in ("steps", "queries")}
    return json.dumps([producer.run.attack, arguments], sort_keys=True, default=str)


def shortened(producer: AttackPass, steps: int, data: EvaluationData) -> AttackPass:
    """``producer`` with its attack built again at ``steps`` iterations (Square: queries)."""
    arguments = {**producer.run.arguments, "steps": steps}
    if arguments.get("queries") is not None:
        arguments["queries"] = steps
    run = replace(producer.run, arguments=arguments)
    return replace(producer, run=run, attack=run.build(data.facts()))


class PlanTimer:
    """Times the passes of one model's plan on the first batch, each distinct attack once."""

    def __init__(self, runner: PassRunner, model: GradientCounter, data: EvaluationData) -> None:
        self.runner, self.model, self.data = runner, model, data
        started = time.perf_counter()
        _, (self.images, self.labels) = next(data.batches([0]))
        self.loader_seconds = time.perf_counter() - started
        self.batch_size = self.images.shape[0]
        images = self.images.to(runner.device)
        # The first input gradient pays one-off costs (allocation, compilation) that no attack's timing should.
        inputs = images.clone().requires_grad_(True)
        with runner.autocast():
            torch.autograd.grad(model(inputs).float().sum(), inputs)
        times = [self.timed(lambda: runner.predict(model, images)) for _ in range(1 + TIMED_PREDICTIONS)]
        self.prediction = statistics.median(times[1:])
        self.per_step: dict[str, float] = {}

    def timed(self, call) -> float:
        started = time.perf_counter()
        call()
        if self.runner.device.type == "cuda":
            torch.cuda.synchronize(self.runner.device)
        return time.perf_counter() - started

    def run(self, producer: PassProducer) -> Tensor:
        return self.runner.batch(self.model, producer, 0, self.images, self.labels)[0]

    def step_seconds(self, producer: AttackPass) -> float:
        """Seconds per step of ``producer``'s attack on the batch: a short run less its final prediction."""
        kind = attack_kind(producer)
        if kind not in self.per_step:
            steps = min(producer.attack.steps, max(SHORT_STEPS, producer.attack.steps // SHORT_STEPS_SHARE))
            short = shortened(producer, steps, self.data)
            seconds = statistics.median(self.timed(lambda: self.run(short)) for _ in range(TIMED_SHORT_RUNS))
            self.per_step[kind] = max(seconds - self.prediction, 0.0) / steps
        return self.per_step[kind]

    def seconds_per_image(self, producer: PassProducer) -> float:
        """The timed cost of one image of ``producer``."""
        if isinstance(producer, AttackPass):
            batch = self.prediction + producer.attack.steps * self.step_seconds(producer)
        elif producer.evaluations_per_image <= TIMED_AS_IT_IS:
            batch = self.timed(lambda: self.run(producer))
        else:
            # Attack steps timed so far, or the prediction where none was (a gradient step costs more).
            step = statistics.median(self.per_step.values()) if self.per_step else self.prediction
            batch = self.prediction + (producer.evaluations_per_image - 1) * step
        return batch / self.batch_size


def estimate_costs(
    runner: PassRunner, entries: list[ModelToEvaluate], datasets: list[EvaluationData], suite: Suite
) -> list[CostEstimate]:
    """The plan of every model, each pass timed on its first batch (attack passes first, so that a longer pass
    of another kind can count its evaluations at the attacks' cost).

    Raises:
        PlanError: Listing every problem of every model, as the evaluation would.
    """
    estimates, problems = [], []
    for entry, data in zip(entries, datasets, strict=True):
        plan, found = plan_model(runner, entry, data, suite)
        problems += found
        if plan is None:
            continue
        timer = PlanTimer(runner, runner.prepare(entry.model_for(data)), data)
        left = [planned.producer for planned in plan.passes if not planned.finished]
        ordered = sorted(left, key=lambda producer: not isinstance(producer, AttackPass))
        seconds = {id(producer): timer.seconds_per_image(producer) for producer in ordered}
        passes = tuple(
            PlannedPassCost(
                name=planned.producer.name,
                evaluations_per_image=planned.producer.evaluations_per_image,
                images=None if planned.batches is None else sum(data.batch_sizes[b] for b in planned.batches),
                cached=planned.finished,
                seconds_per_image=seconds.get(id(planned.producer), 0.0),
            )
            for planned in plan.passes
        )
        estimates.append(CostEstimate(entry.name, data.name, passes, timer.batch_size, timer.loader_seconds))
    if problems:
        raise PlanError(
            "the evaluation cannot run as planned:\n" + "\n".join(f"- {problem}" for problem in problems)
        )
    return estimates


def plan_text(estimates: list[CostEstimate], suite: Suite) -> str:
    """The plan as ``dry_run=true`` prints it: per model its passes, the iterations per image and the estimate."""
    lines = [
        f"dry run of suite {suite.name}: no pass runs; each attack is timed on a short run of the first batch."
    ]
    total = 0.0
    for index, estimate in enumerate(estimates, 1):
        lines += [
            "",
            f"model {index}/{len(estimates)} {estimate.model} on {estimate.dataset}:",
            f"  {'pass':<32} {'evaluations/image':>17} {'images':>7} {'timed s/image':>13}",
        ]
        for cost in estimate.passes:
            images = "?" if cost.images is None else str(cost.images)
            timed = "" if cost.cached else f"{cost.seconds_per_image:.3g}"
            note = "  (in the cache: not run)" if cost.cached else ""
            lines.append(f"  {cost.name:<32} {cost.evaluations_per_image:>17} {images:>7} {timed:>13}{note}")
        evaluations = sum(cost.evaluations_per_image for cost in estimate.passes if not cost.cached)
        lines.append(
            f"  {evaluations} model evaluations per image (attack iterations and predictions), timed on a batch "
            f"of {estimate.timed_images} (each attack on a short run); "
            f"{estimate.seconds_per_pass:.1f} s per pass to start the loader"
        )
        seconds = estimate.seconds
        if seconds is None:
            lines.append("  estimate: unknown (the loader's batches are not known before it runs)")
        else:
            total += seconds
            lines.append(f"  estimate: {duration(seconds)}")
    lines += [
        "",
        f"estimate in all: {duration(total)} in one process, rough: timed on one batch, it cannot know "
        "where early stop ends an attack sooner, nor a loaded machine later; docs/EVALUATION.md compares "
        "estimates with measured times.",
    ]
    return "\n".join(lines)


def dry_run(cfg: DictConfig, processes: Processes, cache: PassCache | None) -> str:
    """The plan of the evaluation ``cfg`` (a composed ``conf/evaluate.yaml``) with its estimate, as text."""
    suite = Suite.from_config(cfg.suite, cfg.eps)
    runner = PassRunner(EvaluationSettings.from_config(cfg), processes, cache)
    return plan_text(estimate_costs(runner, *models_and_data(cfg), suite), suite)
