"""The Python API of the evaluation: the robustness report of any model on any data, in this process."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from eroseg_at.configs import compose_config
from eroseg_at.evaluation.data import EvaluationData
from eroseg_at.evaluation.distributed import start_processes
from eroseg_at.evaluation.models import model_to_evaluate
from eroseg_at.evaluation.pipeline import evaluate_entries
from eroseg_at.evaluation.results import ModelReport
from eroseg_at.evaluation.settings import EvaluationSettings
from eroseg_at.evaluation.suite import Suite


def evaluate_model(
    model: nn.Module, data: EvaluationData, suite: str = "paper", overrides: Sequence[str] = ()
) -> ModelReport:
    """The robustness report of any model on any data, as ``evaluate.py`` computes it.

    It runs in this process alone and keeps no cache.

    Args:
        model: Follows the model contract (images in [0, 1] to logits at the input size, ``num_classes``,
            ``input_divisor``; normalisation inside): a model of :mod:`eroseg_at.models`, or any network
            adapted with :func:`eroseg_at.models.adapt_model`.
        data: The images and the facts of their dataset (:class:`~eroseg_at.evaluation.data.EvaluationData`).
        suite: A ``conf/suite`` option (``quick``, ``paper``, ``sea``, ``full``, ``strength``).
        overrides: Further settings of ``conf/evaluate.yaml`` as on the command line, e.g.
            ``["eps=[4/255]", "suite.steps=100", "device=cpu", "max_batches=2"]``.

    Returns:
        The report: one row per clean pass, attack, curve point and worst case (the rows ``results.json``
        holds for ``evaluate.py``).
    """
    cfg = compose_config("evaluate", [f"suite={suite}", "output_dir=unused", *overrides])
    (report,) = evaluate_entries(
        [model_to_evaluate(model)],
        [data],
        Suite.from_config(cfg.suite, cfg.eps),
        EvaluationSettings.from_config(cfg),
        start_processes(cfg),
    )
    return report
