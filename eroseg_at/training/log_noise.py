"""Known noise of Lightning and W&B in a training run's output, silenced where it is emitted, one message at a
time (no blanket filter: every other message still shows).

- Lightning 2.6 advertises LitLogger and LitModels ("💡 Tip: ...") at every ``Trainer`` it builds.
- Lightning's ``WandbLogger`` passes ``anonymous=None`` to ``wandb.init``, which W&B 0.2x answers on every run
  with "The anonymous setting has no effect and will be removed in a future version".

(The model summary's "Total FLOPs: 0" is fixed by giving the module an example input, see
:func:`eroseg_at.training.runner.train`; "`weights_only` was not set" by passing it to ``save_checkpoint``.)
"""

from __future__ import annotations

import logging

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero

TIP_PREFIX = "💡 Tip:"


class LightningTips(logging.Filter):
    """Drops Lightning's advertisements ("💡 Tip: ... try installing litlogger / litmodels")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TIP_PREFIX)


def drop_lightning_tips() -> None:
    """Filters the tips out of the logger Lightning's ``rank_zero_info`` writes to (once per process)."""
    logger = rank_zero.rank_zero_module.log
    if not any(isinstance(existing, LightningTips) for existing in logger.filters):
        logger.addFilter(LightningTips())


def without_anonymous_setting(logger: WandbLogger) -> WandbLogger:
    """``logger`` without the ``anonymous`` argument of ``wandb.init`` (see the module docstring).

    Removed before the logger's first use, which is when it calls ``wandb.init``.
    """
    logger._wandb_init.pop("anonymous", None)
    return logger
