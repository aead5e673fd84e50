"""Robustness evaluation: models in, a report with every attack and the per-image worst case out."""

from eroseg_at.evaluation.runner import EvaluationResult, evaluate

__all__ = ["EvaluationResult", "evaluate"]
