"""The evaluation's user errors: settings, overrides and plans that cannot run as given."""

from eroseg_at.errors import UserError


class EvaluationError(UserError, ValueError):
    """A setting, override or suite member the evaluation cannot honour; the message names the key or value and
    the fix."""


class PlanError(EvaluationError):
    """Every problem the plan step found before any pass ran (members against models, class counts, divisors),
    listed at once."""
