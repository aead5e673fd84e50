"""eroseg-at: EroSeg attack and EroSeg-AT adversarial training for semantic segmentation.

The two calls most people need are here: ``evaluate_model(model, data)`` (the robustness report of any model on any
data, :mod:`eroseg_at.evaluation.api`) and ``build_attack(name, eps=...)`` (one attack, :mod:`eroseg_at.attacks`).
They are imported on first use: ``import eroseg_at`` (every console script, ``eroseg_at.__version__``) stays free of
torch, Hydra and matplotlib, which the evaluation pulls in (measured on the loaded 2-core machine:
``python -c "import eroseg_at"`` 0.06 s, ``import eroseg_at.evaluation.api`` 29 s).
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# albumentations asks PyPI for a newer release when it is imported: a network call on every run, and without
# network a UserWarning (an error under the test settings). Set here, before any module of the package (the
# data, the evaluation's transforms) imports it.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.2.0.dev0"

# Public name -> the module that defines it.
EXPORTS = {
    "evaluate_model": "eroseg_at.evaluation.api",
    "RobustnessReport": "eroseg_at.evaluation.api",
    "build_attack": "eroseg_at.attacks",
    "available_attacks": "eroseg_at.attacks",
}
__all__ = ["RobustnessReport", "__version__", "available_attacks", "build_attack", "evaluate_model"]

if TYPE_CHECKING:
    from eroseg_at.attacks import available_attacks, build_attack
    from eroseg_at.evaluation.api import RobustnessReport, evaluate_model


def __getattr__(name: str) -> Any:
    if name not in EXPORTS:
        raise AttributeError(f"module 'eroseg_at' has no attribute {name!r}")
    value = getattr(importlib.import_module(EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *EXPORTS])
