"""From models to reports: acquire the models, plan every pass (refusing at once whatever cannot run), run the
passes, and build each model's rows and worst cases.

:func:`evaluate_models` does it for the models a composed ``conf/evaluate.yaml`` names; ``evaluate(cfg)``
(:mod:`eroseg_at.evaluation.runner`) writes the reports to files. :func:`evaluate_entries` is the same from
typed settings, for models and data given in Python (:mod:`eroseg_at.evaluation.api`).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from omegaconf import DictConfig

from eroseg_at.attacks.base import Attack
from eroseg_at.configs import build
from eroseg_at.errors import UserError
from eroseg_at.evaluation.cache import PassCache
from eroseg_at.evaluation.data import EvaluationData, from_datamodule
from eroseg_at.evaluation.distributed import Processes, start_processes
from eroseg_at.evaluation.errors import PlanError
from eroseg_at.evaluation.example import example
from eroseg_at.evaluation.inference import full_resolution
from eroseg_at.evaluation.keys import DataIdentity, Execution, ModelIdentity, PassKey, code_version
from eroseg_at.evaluation.masking_passes import MaskingChecks, plan_checks
from eroseg_at.evaluation.models import ModelToEvaluate, applied_source, model_identity, models_to_evaluate
from eroseg_at.evaluation.passes import AttackPass, CleanPass, PassProducer, PassRunner, PlannedPass
from eroseg_at.evaluation.results import (
    AttackDescription,
    ModelReport,
    PixelCounts,
    attack_row,
    clean_row,
    worst_case_rows,
)
from eroseg_at.evaluation.settings import EvaluationSettings
from eroseg_at.evaluation.suite import AttackRun, Suite
from eroseg_at.progress import Progress


@dataclass(frozen=True)
class ModelPlan:
    """One model's passes: the clean pass, one per suite run (``runs`` and their ``attacks``), then those of the
    gradient-masking ``checks`` (None where they are disabled)."""

    entry: ModelToEvaluate
    data: EvaluationData
    runs: tuple[AttackRun, ...]
    attacks: tuple[Attack, ...]
    passes: tuple[PlannedPass, ...]
    checks: MaskingChecks | None = None


def pass_keys(
    runner: PassRunner,
    data: EvaluationData,
    identity: ModelIdentity,
    producers: Sequence[PassProducer],
) -> list[PassKey | None]:
    """The cache key of each pass (None each without a cache)."""
    if runner.cache is None:
        return [None] * len(producers)
    settings = runner.settings
    evaluated = runner.evaluated_batches(data)
    # Rank 0 reads (or digests) the data once; every process keys its passes alike.
    digests = runner.processes.on_main(lambda: data.batch_digests(evaluated))
    execution = Execution(
        precision=settings.precision,
        compile=asdict(settings.compile),
        inference=asdict(settings.inference),
        device=runner.device.type,
        threads=torch.get_num_threads() if runner.device.type == "cpu" else None,
    )
    labels = {"num_classes": data.num_classes, "ignore_index": data.ignore_index}
    code = code_version()
    keys = []
    for producer in producers:
        batches = runner.pass_batches(data, producer)
        content = hashlib.sha256(json.dumps(digests[: len(batches)]).encode()).hexdigest()
        keys.append(
            PassKey(
                model=identity,
                data=DataIdentity(content, data.transforms, labels),
                execution=execution,
                member=producer.identity,
                seed=settings.seed,
                code=code,
            )
        )
    return keys


def plan_model(
    runner: PassRunner, entry: ModelToEvaluate, data: EvaluationData, suite: Suite
) -> tuple[ModelPlan | None, list[str]]:
    """The passes of ``entry`` on ``data``, or every problem that keeps them from running.

    Checked before anything runs: the model's classes against the dataset's, its weights and normalisation,
    the inference settings against its input divisor, every member's arguments, and every member against the
    model (:meth:`~eroseg_at.attacks.base.Attack.model_problems`: decoder features, class weights).
    """
    where = f"model {entry.name!r}"
    try:
        model = entry.model_for(data)
    except UserError as error:
        return None, [str(error)]
    problems = []
    inference = runner.settings.inference
    try:
        full_resolution(model, pad_mode=inference.pad_mode, window=inference.window, stride=inference.stride)
    except ValueError as error:
        problems.append(f"{where}: inference settings: {error}")
    facts = data.facts()
    attacks = []
    for run in suite.runs:
        member = f"{run.where} ({run.label} @{run.eps_text})"
        try:
            attack = run.build(facts)
        except (ValueError, TypeError) as error:
            problems.append(f"{member}: {error}")
            continue
        problems += [
            f"{member} on {where}: {problem}; drop it with ~{run.where}"
            for problem in attack.model_problems(model)
        ]
        attacks.append(attack)
    if problems:
        return None, problems
    checks, problems = plan_checks(runner.settings.masking_checks, suite.runs, attacks, data)
    if problems:
        return None, problems
    producers = [
        CleanPass(data.num_classes, data.ignore_index),
        *(
            AttackPass(run, attack, data.num_classes, data.ignore_index)
            for run, attack in zip(suite.runs, attacks, strict=True)
        ),
        *([] if checks is None else checks.producers),
    ]
    keys = pass_keys(runner, data, model_identity(entry, model), producers)
    passes = runner.plan(data, producers, keys)
    return ModelPlan(entry, data, suite.runs, tuple(attacks), tuple(passes), checks), []


def evaluate_plan(
    runner: PassRunner, plan: ModelPlan, suite: Suite, position: tuple[int, int]
) -> ModelReport | None:
    """Every pass of ``plan`` and the worst case per budget, as the model's report (None on ranks > 0)."""
    entry, data = plan.entry, plan.data
    network = entry.model_for(data)
    model = runner.prepare(network)
    results = [
        runner.run(
            model,
            data,
            planned,
            f"model {position[0]}/{position[1]} {entry.name}, run {index}/{len(plan.passes)} {planned.producer.name}",
        )
        for index, planned in enumerate(plan.passes, 1)
    ]
    if not runner.processes.is_main:
        return None
    clean, *rest = results
    attacked, extra = rest[: len(plan.runs)], rest[len(plan.runs) :]
    rounds = runner.settings.worst_case_rounds
    rows = [
        clean_row(clean),
        *(
            attack_row(run, AttackDescription.of(attack), result)
            for run, attack, result in zip(plan.runs, plan.attacks, attacked, strict=True)
        ),
    ]
    members = {
        (run.eps_text, run.key): result.statistics
        for run, result in zip(plan.runs, attacked, strict=True)
        if run.kind == "attack" and run.key in suite.worst_case
    }
    rows += worst_case_rows(plan.runs, suite.worst_case, clean.statistics, members, rounds)
    return ModelReport(
        name=entry.name,
        path=entry.path,
        sha256=entry.sha256,
        method=entry.method,
        dataset=data.name,
        class_names=tuple(data.class_names),
        palette=data.colours(),
        ignore_index=data.ignore_index,
        image_names=tuple(data.image_name(index) for index in range(clean.statistics.shape[0])),
        rows=tuple(rows),
        suite=suite.name,
        pixel_counts=PixelCounts.of(clean.statistics),
        training=entry.training,
        source=applied_source(network),
        example=example(runner, model, data, plan.runs, rows, runner.settings.example_images),
        training_method=entry.training_method,
        gradient_masking=None if plan.checks is None else plan.checks.verdict(clean, attacked, extra, rounds),
    )


def evaluate_entries(
    entries: Sequence[ModelToEvaluate],
    datasets: Sequence[EvaluationData],
    suite: Suite,
    settings: EvaluationSettings,
    processes: Processes,
    cache: PassCache | None = None,
) -> list[ModelReport] | None:
    """Per model, the clean, attacked and worst-case scores on its data.

    Raises:
        PlanError: Listing every problem of every model, before any pass runs.

    Returns:
        The reports on rank 0; None on the other processes.
    """
    runner = PassRunner(settings, processes, cache)
    if runner.processes.world_size > 1 or cache is not None:
        unknown = [data.name for data in datasets if data.batch_sizes is None]
        if unknown:
            raise PlanError(
                f"dataset {unknown[0]}: sharing batches among processes and caching results need "
                "EvaluationData.batch_sizes (the images of each batch, known before the loader runs)"
            )
    plans, problems = [], []
    for entry, data in zip(entries, datasets, strict=True):
        plan, found = plan_model(runner, entry, data, suite)
        plans.append(plan)
        problems += found
    if problems:
        raise PlanError(
            "the evaluation cannot run as planned (nothing was attacked):\n"
            + "\n".join(f"- {p}" for p in problems)
        )
    shares = [runner.work(plan.data, plan.passes) for plan in plans]
    work = None if None in shares else sum(shares)
    # Rank 0 speaks for all: the others attack their shares at the same pace.
    stream = None if processes.is_main else io.StringIO()
    with Progress("evaluate", work, settings.progress_interval_s, stream=stream) as progress:
        runner.progress = progress
        reports = [
            evaluate_plan(runner, plan, suite, (index, len(plans))) for index, plan in enumerate(plans, 1)
        ]
    return reports if processes.is_main else None


def evaluate_models(
    cfg: DictConfig, processes: Processes | None = None, cache: PassCache | None = None
) -> list[ModelReport] | None:
    """Per model named by ``cfg`` (a composed ``conf/evaluate.yaml``), the clean, attacked and worst-case scores.

    Args:
        cfg: A composed ``conf/evaluate.yaml``.
        processes: This process's place among the evaluation's processes; None: a single process.
        cache: Where finished passes are kept and found; None computes everything.

    Returns:
        The reports on rank 0; None on the other processes.
    """
    processes = processes or start_processes(cfg)
    settings = EvaluationSettings.from_config(cfg)
    suite = Suite.from_config(cfg.suite, cfg.eps)
    entries, datasets = models_and_data(cfg)
    return evaluate_entries(entries, datasets, suite, settings, processes, cache)


def models_and_data(cfg: DictConfig) -> tuple[list[ModelToEvaluate], list[EvaluationData]]:
    """The models ``cfg`` names and each one's evaluation data."""
    entries = models_to_evaluate(cfg)
    return entries, [from_datamodule(build(entry.dataset)) for entry in entries]
