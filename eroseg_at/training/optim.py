"""Learning-rate schedules of the ``schedule`` config group, as ``(optimizer, total_steps) -> LRScheduler``.

The optimizer itself is any ``torch.optim`` class, built by Hydra as a partial (``schedule.optimizer``);
the schedule is a partial of one of these functions (``schedule.lr_scheduler``), completed by the training
module once the number of optimizer steps is known.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _with_warmup(
    decay: Callable[[float], float], total_steps: int, warmup_steps: int
) -> Callable[[int], float]:
    """The LR multiplier at step ``step``: linear warm-up over ``warmup_steps``, then ``decay(progress)``."""
    if warmup_steps < 0:
        raise ValueError(f"schedule.lr_scheduler.warmup_steps must be >= 0, got {warmup_steps}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return decay(min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))

    return factor


def poly_schedule(
    optimizer: Optimizer, total_steps: int, power: float = 0.9, warmup_steps: int = 0
) -> LambdaLR:
    """DeepLab's poly decay ``(1 − progress) ** power`` per optimizer step, after a linear warm-up."""
    return LambdaLR(
        optimizer, _with_warmup(lambda progress: (1.0 - progress) ** power, total_steps, warmup_steps)
    )


def cosine_schedule(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0) -> LambdaLR:
    """Half a cosine from 1 to 0 over the optimizer steps, after a linear warm-up."""
    return LambdaLR(
        optimizer,
        _with_warmup(lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)), total_steps, warmup_steps),
    )


def constant_schedule(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0) -> LambdaLR:
    """The base learning rate throughout, after a linear warm-up."""
    return LambdaLR(optimizer, _with_warmup(lambda progress: 1.0, total_steps, warmup_steps))
