"""The example picture of a report: the first images under the suite attack that hurt the model most."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from eroseg_at.evaluation.data import EvaluationData
from eroseg_at.evaluation.passes import GradientCounter, PassRunner, batch_seed
from eroseg_at.evaluation.results import Example, ResultRow
from eroseg_at.evaluation.suite import AttackRun


def example(
    runner: PassRunner,
    model: GradientCounter,
    data: EvaluationData,
    runs: Sequence[AttackRun],
    rows: Sequence[ResultRow],
    count: int,
) -> Example | None:
    """The first ``count`` images under the suite attack of lowest mIoU at the largest budget, attacked again
    with the random start of their batch; None without attack rows or for ``count`` 0."""
    candidates = [row for row in rows if row.kind == "attack"]
    if count <= 0 or not candidates:
        return None
    largest = max(row.eps for row in candidates)
    strongest = min((row for row in candidates if row.eps == largest), key=lambda row: row.miou)
    run = next(run for run in runs if run.key == strongest.key and run.eps_text == strongest.eps_text)
    _, (images, labels) = next(data.batches([0]))
    images, labels = images[:count].to(runner.device), labels[:count].to(runner.device)
    attack = run.build(data.facts())
    torch.manual_seed(batch_seed(runner.settings.seed, (run.key, run.eps_text), 0))
    with runner.autocast():
        adversarial = attack(model, images, labels)
    return Example(
        attack_label=run.label,
        eps_text=run.eps_text,
        clean=images.cpu(),
        adversarial=adversarial.detach().cpu(),
        labels=labels.cpu(),
        clean_prediction=runner.predict(model, images).cpu(),
        adversarial_prediction=runner.predict(model, adversarial).cpu(),
    )
