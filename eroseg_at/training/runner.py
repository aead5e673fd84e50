"""``train(cfg)``: compose data, model, attacks, module, trainer and loggers from a Hydra config.

``train.py`` is a thin ``@hydra.main`` over this function, so tests and notebooks can
call it with a config from ``hydra.compose``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf
from torch import nn

from eroseg_at.configs import build
from eroseg_at.errors import ConfigError
from eroseg_at.training.callbacks import (
    ConfigInCheckpoint,
    InterruptCheckpoint,
    RobustCollapseGuard,
    TrainingTime,
    TrainingTimer,
)
from eroseg_at.training.log_noise import drop_lightning_tips, without_anonymous_setting
from eroseg_at.training.module import AdversarialTraining, SegmentationModule
from eroseg_at.training.store_checkpoints import StoreSnapshotCheckpointIO


@dataclass(frozen=True)
class ValidationScores:
    """A run's last validation, in percent, as logged (``val/miou_<name>``, ``val/pixel_accuracy_<name>``).

    Attributes:
        miou: mIoU per validation: ``clean`` and each robust validation attack (``pgd10``, ...).
        pixel_accuracy: Pixel accuracy, likewise.
        loss: The clean validation loss.
        robust_collapse: The collapse guard's call on that epoch; None where it did not watch.
    """

    miou: dict[str, float]
    pixel_accuracy: dict[str, float]
    loss: float | None = None
    robust_collapse: bool | None = None

    @classmethod
    def from_logged(cls, metrics: Mapping[str, Any]) -> ValidationScores | None:
        """From the trainer's logged metrics; None if nothing was validated."""

        def named(prefix: str) -> dict[str, float]:
            return {
                key.removeprefix(prefix): float(value)
                for key, value in metrics.items()
                if key.startswith(prefix)
            }

        miou = named("val/miou_")
        if not miou:
            return None
        collapse = metrics.get("val/robust_collapse")
        return cls(
            miou=miou,
            pixel_accuracy=named("val/pixel_accuracy_"),
            loss=float(metrics["val/loss"]) if "val/loss" in metrics else None,
            robust_collapse=None if collapse is None else bool(collapse),
        )


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced.

    Attributes:
        output_dir: The run directory.
        best_checkpoint, last_checkpoint: Its checkpoint files (None where none was written).
        validation: The last validation's scores (None without validation).
        time: Where the wall time went, over the whole run including resumed parts (None without the timer).
        collapses: The epochs the collapse guard called a collapse.
        wandb_dir: The W&B run directory (offline runs sync from it).
    """

    output_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    validation: ValidationScores | None = None
    time: TrainingTime | None = None
    collapses: list[int] = field(default_factory=list)
    wandb_dir: Path | None = None


def has_target(node: Any) -> bool:
    """Whether ``node`` describes an object for Hydra to build (``attack=none`` and ``logger=none`` do not)."""
    return isinstance(node, DictConfig) and "_target_" in node


def check_setup(cfg: DictConfig, model: nn.Module, datamodule: Any) -> None:
    """Refuse configurations that would only fail (or silently mislead) mid-training."""
    dataset = cfg.dataset
    if model.num_classes != datamodule.num_classes:
        raise ConfigError(
            f"model.num_classes={model.num_classes} does not match dataset.num_classes="
            f"{datamodule.num_classes} of dataset '{dataset.name}'"
        )
    divisor = model.input_divisor
    crop_h, crop_w = dataset.crop_size
    if crop_h % divisor or crop_w % divisor:
        raise ConfigError(
            f"dataset.crop_size={[crop_h, crop_w]} is not divisible by {divisor}, which the model "
            f"({describe_model_config(cfg.model)}) needs; use a multiple of {divisor}"
        )
    if dataset.pad_divisor % divisor:
        raise ConfigError(
            f"dataset.pad_divisor={dataset.pad_divisor} is not a multiple of {divisor}, which the model "
            f"({describe_model_config(cfg.model)}) needs for validation images"
        )


def describe_model_config(model: DictConfig) -> str:
    """The model config's builder and its identifying settings, for error messages."""
    settings = ", ".join(
        f"{key}={model[key]}" for key in ("name", "encoder", "path", "weights") if model.get(key) is not None
    )
    return f"{model._target_}({settings})"


def build_train_attack(cfg: DictConfig) -> Any:
    """The training attack as the ``attack`` group describes it (``None`` for attack=none)."""
    return instantiate(cfg.attack) if has_target(cfg.attack) else None


def build_adversarial(cfg: DictConfig) -> AdversarialTraining:
    """The ``adversarial`` node, refusing an amortised mode without a training attack to amortise."""
    adversarial = build(cfg.adversarial)
    if adversarial.mode != "multi_step" and not has_target(cfg.attack):
        raise ConfigError(
            f"adversarial.mode={adversarial.mode} needs a training attack (attack=eroseg, attack=pgd, ...); "
            "attack=none is standard training"
        )
    return adversarial


def is_accumulated(cfg: DictConfig) -> bool:
    return has_target(cfg.attack) and build_adversarial(cfg).mode == "accumulated"


def build_datamodule(cfg: DictConfig) -> Any:
    """The ``dataset`` node. For the accumulated mode, batches carry each sample's geometry, and each training
    image keeps its random scale for ``adversarial.accumulated.restart_visits`` epochs (its perturbation's frame
    between restarts)."""
    if is_accumulated(cfg):
        settings = build_adversarial(cfg).accumulated
        return build(cfg.dataset, sample_geometry=True, scale_hold_epochs=settings.restart_visits)
    return build(cfg.dataset)


def build_module(cfg: DictConfig, model: nn.Module, datamodule: Any) -> SegmentationModule:
    adversarial = build_adversarial(cfg)
    # _convert_="all": plain lists in the optimizer's settings (betas), so its state saves in a checkpoint
    # that loads with weights_only=True.
    return SegmentationModule(
        model,
        num_classes=datamodule.num_classes,
        class_names=list(datamodule.class_names),
        ignore_index=datamodule.ignore_index,
        optimizer=instantiate(cfg.schedule.optimizer, _convert_="all"),
        lr_scheduler=instantiate(cfg.schedule.lr_scheduler)
        if has_target(cfg.schedule.get("lr_scheduler"))
        else None,
        train_attack=build_train_attack(cfg),
        adversarial=adversarial,
        validation=instantiate(cfg.validation),
    )


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    """The ``callbacks`` group's callbacks (null entries left out), the one that stores ``cfg`` and the one that
    writes ``checkpoints/last.ckpt`` and sets the exit status when training is asked to stop."""
    configured = [instantiate(node) for node in (cfg.get("callbacks") or {}).values() if has_target(node)]
    return [
        *configured,
        ConfigInCheckpoint(OmegaConf.to_container(cfg, resolve=True)),
        InterruptCheckpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"),
    ]


def build_logger(cfg: DictConfig) -> Any:
    if not has_target(cfg.get("logger")):
        return False
    if cfg.logger._target_.endswith("WandbLogger"):
        # Lightning's offline flag only sets WANDB_MODE, which a W&B setup made earlier in
        # the same process (a multirun, a notebook) ignores: pass the mode to wandb.init too.
        return without_anonymous_setting(
            instantiate(cfg.logger, mode="offline" if cfg.logger.offline else "online")
        )
    return instantiate(cfg.logger)


def train(cfg: DictConfig) -> TrainResult:
    """Train (standard or adversarial) as ``cfg`` says and report where everything went.

    Args:
        cfg: A composed ``conf/train.yaml``; ``cfg.paths.output_dir`` must resolve
            (Hydra sets it; tests pass ``paths.output_dir=...``).

    Returns:
        A :class:`TrainResult` with checkpoint paths and the last validation scores.
    """
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    datamodule = build_datamodule(cfg)
    # The dataset's files are read before Lightning starts (and prints), so that a wrong root is a short error
    # rather than one raised from inside trainer.fit. The sources draw from their own seeded generators.
    for split in ("train", "val"):
        datamodule.source(split)
    L.seed_everything(cfg.seed, workers=True)
    model = build(cfg.model)
    check_setup(cfg, model, datamodule)
    module = build_module(cfg, model, datamodule)
    # The model summary counts FLOPs on this input (without one it prints "Total FLOPs: 0").
    module.example_input_array = torch.zeros(1, 3, *datamodule.crop_size)
    callbacks = build_callbacks(cfg)
    drop_lightning_tips()
    logger = build_logger(cfg)
    # The accumulated mode's store is saved with (and removed with) every checkpoint file.
    plugins = [StoreSnapshotCheckpointIO()] if is_accumulated(cfg) else None
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=logger, default_root_dir=str(output_dir), plugins=plugins
    )
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    finally:
        wandb_dir = close_wandb(logger)

    # Read from disk rather than from the callback: under ddp_spawn the callback state of
    # this process is never updated. save_top_k=1 keeps a single best file.
    checkpoint_dir = output_dir / "checkpoints"
    best = sorted(checkpoint_dir.glob("best-*.ckpt"), key=lambda path: path.stat().st_mtime)
    last = checkpoint_dir / "last.ckpt"
    last = last if last.is_file() else None
    # callback_metrics and the checkpoint, not the module's or the callbacks' attributes: under ddp_spawn only
    # they come back to this process (the metrics already synced across ranks).
    states = callback_states(last)
    timer, guard = states.get(TrainingTimer.__qualname__), states.get(RobustCollapseGuard.__qualname__)
    return TrainResult(
        output_dir=output_dir,
        best_checkpoint=best[-1] if best else None,
        last_checkpoint=last,
        validation=ValidationScores.from_logged(trainer.callback_metrics),
        time=None if timer is None else TrainingTime(**timer),
        collapses=[] if guard is None else list(guard["collapses"]),
        wandb_dir=wandb_dir,
    )


def callback_states(checkpoint: Path | None) -> dict[str, dict[str, Any]]:
    """The callbacks' saved states in ``checkpoint``, by class name (Lightning keys them by class and settings)."""
    if checkpoint is None:
        return {}
    states = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get("callbacks", {})
    return {key.split("{", 1)[0]: state for key, state in states.items()}


def close_wandb(logger: Any) -> Path | None:
    """Finish the W&B run so that the next job of a multirun starts its own."""
    from lightning.pytorch.loggers import WandbLogger

    if not isinstance(logger, WandbLogger):
        return None
    import wandb

    run_dir = Path(logger.experiment.dir).parent if wandb.run is not None else None
    wandb.finish()
    return run_dir
