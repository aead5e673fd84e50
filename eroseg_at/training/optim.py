"""Optimizers and learning-rate schedules of the ``schedule`` config group."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("poly", "cosine", "constant")


def build_optimizer(
    parameters: Iterable[torch.nn.Parameter],
    name: str,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """SGD with Nesterov-free momentum (the DeepLab recipe) or AdamW."""
    if lr <= 0:
        raise ValueError(f"schedule.lr must be > 0, got {lr}")
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    raise ValueError(f"unknown schedule.optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")


def lr_factor(name: str, step: int, total_steps: int, warmup_steps: int = 0, power: float = 0.9) -> float:
    """Multiplier of the base learning rate at optimizer step ``step``.

    ``poly`` is ``(1 - progress) ** power`` (DeepLab), ``cosine`` decays to 0 along
    half a cosine, ``constant`` keeps 1. A linear warm-up over ``warmup_steps``
    comes first for all of them.
    """
    if name not in LR_SCHEDULES:
        raise ValueError(f"unknown schedule.lr_schedule {name!r}; expected one of {', '.join(LR_SCHEDULES)}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if name == "poly":
        return (1.0 - progress) ** power
    if name == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0
