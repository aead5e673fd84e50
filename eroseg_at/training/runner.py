"""``train(cfg)``: compose data, model, attacks, module, trainer and loggers from a Hydra config.

``train.py`` is a thin ``@hydra.main`` over this function, so tests and notebooks can
call it with a config from ``hydra.compose``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from omegaconf import DictConfig, OmegaConf

from eroseg_at.models import SegmentationModel, build_model
from eroseg_at.training.callbacks import ConfigInCheckpoint, IoUTablePrinter, WandbExamplePanels
from eroseg_at.training.module import (
    AdversarialTrainingConfig,
    OptimizationConfig,
    SegmentationModule,
    ValidationConfig,
)

CONFIG_KEY = "eroseg_at_config"


@dataclass
class TrainResult:
    """What a training run produced."""

    output_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    # Last validation epoch's logged values, e.g. "val/miou_clean", "val/miou_pgd10".
    val_scores: dict[str, float] = field(default_factory=dict)
    wandb_dir: Path | None = None


def has_target(node: Any) -> bool:
    return isinstance(node, DictConfig) and "_target_" in node


def build_model_from_config(cfg: DictConfig) -> SegmentationModel:
    """The model of ``cfg.model``; its ``num_classes`` defaults to the dataset's."""
    model_cfg = cfg.model
    return build_model(
        model_cfg.name,
        num_classes=model_cfg.num_classes,
        encoder=model_cfg.encoder,
        encoder_weights=model_cfg.encoder_weights,
        encoder_weights_path=model_cfg.encoder_weights_path,
        mean=list(model_cfg.mean),
        std=list(model_cfg.std),
        **OmegaConf.to_container(model_cfg.architecture, resolve=True),
    )


def check_setup(cfg: DictConfig, model: SegmentationModel, datamodule: Any) -> None:
    """Refuse configurations that would only fail (or silently mislead) mid-training."""
    dataset = cfg.dataset
    if model.num_classes != datamodule.num_classes:
        raise ValueError(
            f"model.num_classes={model.num_classes} does not match dataset.num_classes="
            f"{datamodule.num_classes} of dataset '{dataset.name}'"
        )
    divisor = model.input_divisor
    crop_h, crop_w = dataset.crop_size
    if crop_h % divisor or crop_w % divisor:
        raise ValueError(
            f"dataset.crop_size={[crop_h, crop_w]} is not divisible by {divisor}, which model "
            f"'{cfg.model.name}' with encoder '{cfg.model.encoder}' needs; use a multiple of {divisor}"
        )
    if dataset.pad_divisor % divisor:
        raise ValueError(
            f"dataset.pad_divisor={dataset.pad_divisor} is not a multiple of {divisor}, which model "
            f"'{cfg.model.name}' needs for validation images"
        )


def build_train_attack(cfg: DictConfig) -> Any:
    """The training attack, with ``schedule.attack_steps`` iterations (``None`` for attack=none)."""
    if not has_target(cfg.attack):
        return None
    overrides = {}
    if cfg.schedule.get("attack_steps") is not None:
        overrides["steps"] = cfg.schedule.attack_steps
    return instantiate(cfg.attack, **overrides)


def build_module(cfg: DictConfig, model: SegmentationModel, datamodule: Any) -> SegmentationModule:
    schedule = cfg.schedule
    validation_attacks = {name: instantiate(node) for name, node in (cfg.validation.attacks or {}).items()}
    return SegmentationModule(
        model,
        num_classes=datamodule.num_classes,
        class_names=list(datamodule.class_names),
        ignore_index=datamodule.ignore_index,
        optimization=OptimizationConfig(
            optimizer=schedule.optimizer,
            lr=schedule.lr,
            weight_decay=schedule.weight_decay,
            momentum=schedule.momentum,
            betas=tuple(schedule.betas),
            lr_schedule=schedule.lr_schedule,
            poly_power=schedule.poly_power,
            warmup_steps=schedule.warmup_steps,
        ),
        train_attack=build_train_attack(cfg),
        adversarial=AdversarialTrainingConfig(
            objective=cfg.adversarial.objective,
            adv_weight=cfg.adversarial.adv_weight,
            eps_warmup_epochs=schedule.eps_warmup_epochs,
        ),
        validation=ValidationConfig(
            attacks=validation_attacks,
            attack_batches=cfg.validation.attack_batches,
            example_images=cfg.validation.example_images,
        ),
    )


def build_callbacks(cfg: DictConfig, output_dir: Path) -> list[Callback]:
    checkpoint_dir = output_dir / "checkpoints"
    best = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="best-epoch{epoch:03d}",
        auto_insert_metric_name=False,
        monitor=cfg.checkpoint.monitor,
        mode=cfg.checkpoint.mode,
        save_top_k=1,
    )
    # A callback of its own, not save_last=True on the one above: since Lightning 2.6,
    # save_last writes last.ckpt only when a top-k file is written in the same step, so
    # last.ckpt went stale whenever the monitored metric did not improve (and a resumed run
    # then restarted from an older epoch). Without a monitor it writes after every validation.
    last = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="last",
        monitor=None,
        save_top_k=1,
        enable_version_counter=False,
    )
    return [
        best,
        last,
        RichProgressBar(leave=True),
        IoUTablePrinter(),
        WandbExamplePanels(),
        ConfigInCheckpoint(OmegaConf.to_container(cfg, resolve=True), key=CONFIG_KEY),
    ]


def build_logger(cfg: DictConfig) -> Any:
    if not has_target(cfg.get("logger")):
        return False
    if cfg.logger._target_.endswith("WandbLogger"):
        # Lightning's offline flag only sets WANDB_MODE, which a W&B setup made earlier in
        # the same process (a multirun, a notebook) ignores: pass the mode to wandb.init too.
        return instantiate(cfg.logger, mode="offline" if cfg.logger.offline else "online")
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
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.dataset)
    model = build_model_from_config(cfg)
    check_setup(cfg, model, datamodule)
    module = build_module(cfg, model, datamodule)
    callbacks = build_callbacks(cfg, output_dir)
    logger = build_logger(cfg)
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=logger, default_root_dir=str(output_dir)
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
    # callback_metrics, not the module's attributes: under ddp_spawn only they come back
    # to this process, already synced across ranks.
    scores = {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("val/")}
    return TrainResult(
        output_dir=output_dir,
        best_checkpoint=best[-1] if best else None,
        last_checkpoint=last if last.is_file() else None,
        val_scores=scores,
        wandb_dir=wandb_dir,
    )


def close_wandb(logger: Any) -> Path | None:
    """Finish the W&B run so that the next job of a multirun starts its own."""
    from lightning.pytorch.loggers import WandbLogger

    if not isinstance(logger, WandbLogger):
        return None
    import wandb

    run_dir = Path(logger.experiment.dir).parent if wandb.run is not None else None
    wandb.finish()
    return run_dir
