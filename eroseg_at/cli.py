"""The command-line programs: ``eroseg-train`` (``python train.py`` in a checkout) and ``eroseg-eval``
(``python evaluate.py``), Hydra apps over :func:`eroseg_at.training.runner.train` and
:func:`eroseg_at.evaluation.evaluate` that end in a way a person, a shell or a scheduler can act on:

- a user error (:class:`eroseg_at.errors.UserError`: a missing file or root, a bad value) prints one message,
  ``<program>: error: ...``, without a traceback, and exits with status 2; ``HYDRA_FULL_ERROR=1`` shows Hydra's
  report with the traceback instead (status 1). Any other exception is a bug and keeps Hydra's report.
- SIGTERM or SIGINT ends the run with status 128 + the signal's number (:mod:`eroseg_at.signals`): training after
  the batch it is in and a last checkpoint, evaluation at once with every finished batch in its cache.

The same holds in a ``-m`` sweep, which a user error or a signal ends at the job it stops.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig

# Imported before Hydra configures logging, as train.py always did: Lightning gives its loggers their own handlers
# only when the root logger has none at import time; imported later, each of its messages prints twice.
from eroseg_at.configs import CONF_DIR
from eroseg_at.errors import UserError
from eroseg_at.evaluation import evaluate
from eroseg_at.signals import Interrupted, interrupt_on
from eroseg_at.training.runner import train

USER_ERROR_STATUS = 2


def reports_user_errors(program: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[DictConfig], Any]]:
    """Decorates a Hydra task so that a user error ends the process with one line and status 2 (see the module).

    Hydra wraps whatever its task raises in a report with a traceback: the error is caught inside the task,
    where Hydra has not seen it yet, and the process leaves through ``SystemExit``, which Hydra lets pass.
    Lightning re-raises what its ``fit`` raised, so errors from inside training arrive here unchanged.
    """

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
        @functools.wraps(task)
        def run(cfg: DictConfig) -> Any:
            try:
                return task(cfg)
            except UserError as error:
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                print(f"{program}: error: {error}", file=sys.stderr, flush=True)
                raise SystemExit(USER_ERROR_STATUS) from None
            except KeyboardInterrupt:
                # Ctrl-C where no handler of ours is installed (before training starts, while a model loads).
                raise Interrupted(signal.SIGINT) from None

        return run

    return decorate


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
@reports_user_errors("train")
def train_app(cfg: DictConfig) -> float | None:
    """Train a segmentation model, standard or adversarial: ``eroseg-train attack=eroseg model=deeplabv3``."""
    result = train(cfg)
    mious = {} if result.validation is None else result.validation.miou
    print(f"\nrun directory: {result.output_dir}")
    for name, value in mious.items():
        print(f"final val mIoU ({name}): {value:.2f}")
    for kind, path in (("best", result.best_checkpoint), ("last", result.last_checkpoint)):
        if path is not None and path.is_file():
            print(f"{kind} checkpoint: {path}")
    if result.wandb_dir is not None:
        print(f"W&B run directory (offline runs: `wandb sync {result.wandb_dir}`): {result.wandb_dir}")
    # Returned for Hydra sweepers that optimise a value (percent).
    return mious.get("clean")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
@reports_user_errors("evaluate")
def evaluate_app(cfg: DictConfig) -> None:
    """Robustness report of checkpoints or of any model: ``eroseg-eval ckpt_path=PATH_OR_GLOB [suite=paper]``."""
    try:
        # At once: a batch under attack can take minutes, and the cache writes each finished one atomically.
        with interrupt_on():
            evaluate(cfg)
    except Interrupted as stop:
        resume = (
            f"every finished batch is kept under {cfg.output_dir}/cache: the same command with "
            f"hydra.run.dir={cfg.output_dir} resumes"
            if cfg.cache
            else "cache=false: nothing is kept"
        )
        print(f"evaluate: {stop}; {resume}", file=sys.stderr, flush=True)
        raise
