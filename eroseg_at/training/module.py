"""The LightningModule: standard and adversarial training, clean and robust validation."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from eroseg_at.attacks import IterativeAttack
from eroseg_at.data.geometry import SampleGeometry
from eroseg_at.metrics import SegmentationMetrics, SegmentationScores
from eroseg_at.predictions import predicted_classes
from eroseg_at.training.amortised import (
    AccumulatedPerturbations,
    AccumulatedSettings,
    SingleStepSettings,
    single_step_adversarial,
)
from eroseg_at.training.perturbations import (
    PerturbationStore,
    check_layout,
    layout_difference,
    training_store_layout,
)
from eroseg_at.training.store_checkpoints import STORE_KEY, StoreSnapshotCheckpointIO, snapshot_path

AT_MODES = ("multi_step", "accumulated", "single_step")
AT_OBJECTIVES = ("clean_plus_adv", "half_adv", "adv_only")

# What Hydra's partials of the ``schedule`` group become: the optimizer over the module's parameters, and
# the LR schedule over that optimizer once the number of optimizer steps is known.
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler]
DEFAULT_OPTIMIZER: OptimizerFactory = partial(torch.optim.SGD, lr=0.01, momentum=0.9, weight_decay=1e-4)


@dataclass(frozen=True)
class AdversarialTraining:
    """How the training attack enters training (the ``adversarial`` config key). The attack's own settings
    (eps, steps, alpha) are the attack's (the ``attack`` group): each setting has one home.

    Attributes:
        mode: How adversarial examples are made. ``multi_step``: ``attack.steps`` iterations of the training
            attack per batch (EroSeg-AT). ``accumulated``: a perturbation kept per training image and
            continued by ``attack.steps`` iterations at each visit. ``single_step``: one large step from
            wide noise (N-FGSM; ``single_step``), for an attack of ``steps=1``.
        objective: ``clean_plus_adv`` is EroSeg-AT's ``CE(x) + adv_weight * CE(x_adv)``
            over the whole batch; ``half_adv`` is SegPGD-AT's form, where the second
            half of each batch is replaced by its adversarial version and the plain
            CE is taken over the mixed batch; ``adv_only`` is ``CE(x_adv)`` alone (PIR-AT's).
        adv_weight: Weight of the adversarial term in ``clean_plus_adv``.
        eps_warmup_epochs: The training attack's eps ramps linearly from
            ``eps / N`` in epoch 0 to the full ``eps`` from epoch ``N - 1`` on; 0 disables.
        accumulated: Settings of ``mode=accumulated``.
        single_step: Settings of ``mode=single_step``.
    """

    mode: str = "multi_step"
    objective: str = "clean_plus_adv"
    adv_weight: float = 1.0
    eps_warmup_epochs: int = 0
    accumulated: AccumulatedSettings = field(default_factory=AccumulatedSettings)
    single_step: SingleStepSettings = field(default_factory=SingleStepSettings)

    def __post_init__(self) -> None:
        if self.mode not in AT_MODES:
            raise ValueError(
                f"unknown adversarial mode {self.mode!r}; expected one of {', '.join(AT_MODES)} (adversarial.mode)"
            )
        if self.objective not in AT_OBJECTIVES:
            raise ValueError(
                f"unknown adversarial objective {self.objective!r}; expected one of {', '.join(AT_OBJECTIVES)} "
                "(adversarial.objective)"
            )
        if self.adv_weight < 0:
            raise ValueError(f"adversarial.adv_weight must be >= 0, got {self.adv_weight}")
        if self.eps_warmup_epochs < 0:
            raise ValueError(f"adversarial.eps_warmup_epochs must be >= 0, got {self.eps_warmup_epochs}")


@dataclass(frozen=True)
class ValidationConfig:
    """Robust validation (the ``validation`` config group).

    Attributes:
        attacks: Name -> attack; each gets its own metric, logged as ``val/miou_<name>`` (percent);
            None or empty validates clean only.
        attack_batches: Only the first N validation batches are attacked (robust
            validation is expensive); ``None`` attacks every batch.
        example_images: How many images of the first validation batch are kept
            for the example panels.
    """

    attacks: Mapping[str, Callable[..., torch.Tensor]] | None = None
    attack_batches: int | None = None
    example_images: int = 4


@dataclass
class ValidationExamples:
    """The first validation images of an epoch, clean and under the first validation attack (W&B panels).

    Shape:
        images, adversarial: ``[K, 3, H, W]``; labels, clean_prediction, adversarial_prediction: ``[K, H, W]``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    clean_prediction: torch.Tensor
    attack: str | None = None
    adversarial: torch.Tensor | None = None
    adversarial_prediction: torch.Tensor | None = None


class SegmentationModule(L.LightningModule):
    """Trains a segmentation model, optionally on adversarial examples, and validates it
    clean and under attack.

    The attack is called on ``self.model``, the raw network, never on the DDP wrapper,
    so that no gradient synchronisation happens inside it; attacks take input
    gradients only and restore every module's train/eval mode themselves.

    Args:
        model: Maps images in [0, 1] ``[B, 3, H, W]`` to logits ``[B, C, H, W]``.
        num_classes: Number of classes.
        class_names: One name per class, for the per-class IoU table and W&B masks.
        ignore_index: Label that never counts in losses or metrics.
        optimizer: Builds the optimizer from the parameters (``schedule.optimizer``, a partial).
        lr_scheduler: Builds the per-step LR schedule from the optimizer and the number of optimizer
            steps (``schedule.lr_scheduler``, a partial); None keeps the learning rate constant.
        train_attack: The attack that builds adversarial training batches; ``None``
            means standard training.
        adversarial: How adversarial examples enter the loss.
        validation: Attacks and limits for robust validation.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        class_names: Sequence[str],
        ignore_index: int = 255,
        optimizer: OptimizerFactory = DEFAULT_OPTIMIZER,
        lr_scheduler: SchedulerFactory | None = None,
        train_attack: Callable[..., torch.Tensor] | None = None,
        adversarial: AdversarialTraining | None = None,
        validation: ValidationConfig | None = None,
    ) -> None:
        super().__init__()
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for num_classes={num_classes}")
        self.model = model
        self.num_classes = num_classes
        self.class_names = list(class_names)
        self.ignore_index = ignore_index
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.train_attack = train_attack
        self.adversarial = adversarial or AdversarialTraining()
        self.validation = validation or ValidationConfig()
        self.validation_attacks = dict(self.validation.attacks or {})
        self._train_attack_eps = float(train_attack.eps) if train_attack is not None else None
        if train_attack is not None and self.adversarial.mode != "multi_step":
            if not isinstance(train_attack, IterativeAttack):
                raise ValueError(
                    f"adversarial.mode={self.adversarial.mode} continues the training attack step by step, which "
                    f"needs an attack on the shared PGD loop (pgd, segpgd, cospgd, rppgd, cw, eroseg); "
                    f"{type(train_attack).__name__} is not one"
                )
            if self.adversarial.mode == "single_step":
                if train_attack.steps != 1:
                    raise ValueError(
                        f"adversarial.mode=single_step takes one step of the training attack, but attack.steps="
                        f"{train_attack.steps}: set attack.steps=1"
                    )
                if not self.adversarial.single_step.clip and train_attack.norm != "linf":
                    raise ValueError(
                        "adversarial.single_step.clip=false (N-FGSM) is defined for attack.norm=linf; "
                        f"got {train_attack.norm}: set adversarial.single_step.clip=true"
                    )
        # Built in setup(), where the training split's image sizes are known.
        self.accumulated: AccumulatedPerturbations | None = None
        self._store_to_restore: Mapping[str, Any] | None = None
        make_metrics = partial(SegmentationMetrics, num_classes=num_classes, ignore_index=ignore_index)
        self.val_metrics = nn.ModuleDict({"clean": make_metrics()})
        for name in self.validation_attacks:
            self.val_metrics[name] = make_metrics()
        self.last_val_scores: dict[str, SegmentationScores] = {}
        self._epoch_scores: dict[str, SegmentationScores] | None = None
        self.val_examples: ValidationExamples | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # float32 under autocast, and a zero rather than NaN for an all-ignore batch.
        per_pixel = F.cross_entropy(logits.float(), labels, ignore_index=self.ignore_index, reduction="sum")
        return per_pixel / (labels != self.ignore_index).sum().clamp_min(1)

    def valid_fraction(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Fraction of the non-ignored pixels of ``labels`` where ``pixels`` is true (0 if none)."""
        valid = labels != self.ignore_index
        return (pixels & valid).sum() / valid.sum().clamp_min(1)

    # ----------------------------------------------------------------- training
    def train_attack_eps(self, epoch: int) -> float:
        """The training attack's eps in ``epoch`` (0-based), after the warm-up ramp."""
        assert self._train_attack_eps is not None
        warmup = self.adversarial.eps_warmup_epochs
        if warmup == 0:
            return self._train_attack_eps
        return self._train_attack_eps * min(1.0, (epoch + 1) / warmup)

    def on_train_epoch_start(self) -> None:
        if self.train_attack is not None:
            self.train_attack.eps = self.train_attack_eps(self.current_epoch)
            self.log("train/attack_eps", self.train_attack.eps, on_step=False, on_epoch=True)
        if self.accumulated is not None:
            # The images' held scales of this epoch (the frames their perturbations live in); the first batch of
            # a run is drawn before this hook, and a visit in another frame than the stored one restarts.
            self.trainer.datamodule.set_epoch(self.current_epoch)

    # ------------------------------------------------- the accumulated mode's store
    def setup(self, stage: str) -> None:
        if stage != "fit" or self.train_attack is None or self.adversarial.mode != "accumulated":
            return
        settings = self.adversarial.accumulated
        if settings.directory is None:
            raise ValueError(
                "adversarial.mode=accumulated needs adversarial.accumulated.directory (a folder)"
            )
        datamodule = self.trainer.datamodule
        if datamodule is None or not getattr(datamodule, "sample_geometry", False):
            raise ValueError(
                "adversarial.mode=accumulated needs training batches with their SampleGeometry: a "
                "SegmentationDataModule built with sample_geometry=True (train(cfg) builds it so)"
            )
        if not isinstance(self.trainer.strategy.checkpoint_io, StoreSnapshotCheckpointIO):
            raise ValueError(
                "adversarial.mode=accumulated needs a Trainer with plugins=[StoreSnapshotCheckpointIO()], which "
                "saves the perturbation store with every checkpoint (train(cfg) builds it so)"
            )
        layout = training_store_layout(datamodule, self._train_attack_eps)
        # Rank 0 writes the files; the others map the same ones (one store shared by every rank). A resumed run
        # refills it from the checkpoint's copy in on_train_start.
        if self.trainer.is_global_zero:
            PerturbationStore(settings.directory, layout, create=True)
        self.trainer.strategy.barrier()
        store = PerturbationStore(settings.directory, layout, create=False)
        self.accumulated = AccumulatedPerturbations(settings, self.train_attack, store)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.accumulated is not None:
            # Every rank's writes reach the files before rank 0's checkpoint IO copies them.
            self.accumulated.store.flush()
            self.trainer.strategy.barrier()
            checkpoint[STORE_KEY] = {
                "directory": str(self.accumulated.store.directory.resolve()),
                "layout": self.accumulated.store.layout,
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._store_to_restore = checkpoint.get(STORE_KEY, {})

    def on_train_start(self) -> None:
        """Resuming an accumulated run: the store continues from the copy saved with the checkpoint
        (``<checkpoint>.perturbations``); a copy of another layout is refused, a missing one restarts every image.

        Here rather than in ``on_load_checkpoint``: every strategy has restored the checkpoint by now, and the
        ranks can wait for rank 0's copy."""
        saved, self._store_to_restore = self._store_to_restore, None
        if self.accumulated is None or saved is None:
            return
        store = self.accumulated.store
        snapshot = snapshot_path(self.trainer.ckpt_path)
        if not saved:
            rank_zero_warn(
                f"the checkpoint {self.trainer.ckpt_path} carries no perturbation store (not an accumulated run): "
                "every image restarts"
            )
            return
        difference = layout_difference(saved["layout"], store.layout)
        if difference is not None:
            raise ValueError(
                f"the checkpoint {self.trainer.ckpt_path} was trained with a perturbation store of another run: it "
                f"holds {difference}"
            )
        if not snapshot.is_dir():
            rank_zero_warn(
                f"the perturbation store saved with {self.trainer.ckpt_path} ({snapshot}) is gone: the store was "
                f"rebuilt empty in {store.directory} (every image restarts)"
            )
            return
        check_layout(snapshot, store.layout)
        if self.trainer.is_global_zero:
            store.restore(snapshot)
        self.trainer.strategy.barrier()

    # ----------------------------------------------------------------- training step
    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        images, labels, *rest = batch
        geometry = rest[0] if rest else None
        if self.train_attack is None:
            loss = self.loss(self.model(images), labels)
            self.log("train/loss", loss, prog_bar=True)
        elif self.adversarial.objective == "clean_plus_adv":
            loss = self._clean_plus_adv_step(images, labels, geometry)
        elif self.adversarial.objective == "half_adv":
            loss = self._half_adv_step(images, labels, geometry)
        else:
            loss = self._adv_only_step(images, labels, geometry)
        self._stop_on_non_finite(loss, batch_idx)
        return loss

    def adversarial_images(
        self, images: torch.Tensor, labels: torch.Tensor, geometry: SampleGeometry | None
    ) -> torch.Tensor:
        """The training attack's adversarial images for a batch, made as ``adversarial.mode`` says."""
        mode = self.adversarial.mode
        if mode == "multi_step":
            return self.train_attack(self.model, images, labels)
        if mode == "single_step":
            return single_step_adversarial(
                self.train_attack, self.adversarial.single_step, self.model, images, labels
            )
        if geometry is None:
            raise ValueError(
                "adversarial.mode=accumulated got a batch without its SampleGeometry (images, labels, geometry)"
            )
        adv_images, visit = self.accumulated.adversarial(
            self.model, images, labels, geometry, self.current_epoch
        )
        self.log_dict({"train/restarted": visit.restarted, "train/attack_iteration": visit.mean_iteration})
        return adv_images

    def _clean_plus_adv_step(
        self, images: torch.Tensor, labels: torch.Tensor, geometry: SampleGeometry | None
    ) -> torch.Tensor:
        adv_images = self.adversarial_images(images, labels, geometry)
        # One forward over clean and adversarial images together: half the kernel launches
        # of two forwards, and BatchNorm sees the same mixed batch as in the paper's objective.
        logits = self.model(torch.cat([images, adv_images]))
        clean_logits, adv_logits = logits.chunk(2)
        loss_clean = self.loss(clean_logits, labels)
        loss_adv = self.loss(adv_logits, labels)
        loss = loss_clean + self.adversarial.adv_weight * loss_adv
        flipped = predicted_classes(clean_logits) != predicted_classes(adv_logits)
        self.log_dict(
            {
                "train/loss": loss,
                "train/loss_clean": loss_clean,
                "train/loss_adv": loss_adv,
                "train/flip_rate": self.valid_fraction(flipped, labels),
            },
            prog_bar=False,
        )
        self.log("loss", loss, prog_bar=True, logger=False)
        return loss

    def _half_adv_step(
        self, images: torch.Tensor, labels: torch.Tensor, geometry: SampleGeometry | None
    ) -> torch.Tensor:
        half = images.shape[0] // 2
        second = slice(half, None)
        adv_images = self.adversarial_images(
            images[second], labels[second], None if geometry is None else geometry.select(second)
        )
        logits = self.model(torch.cat([images[:half], adv_images]))
        loss = self.loss(logits, labels)
        adv_logits, adv_labels = logits[half:], labels[half:]
        self.log_dict(
            {
                "train/loss": loss,
                "train/loss_clean": self.loss(logits[:half], labels[:half]),
                "train/loss_adv": self.loss(adv_logits, adv_labels),
                "train/adv_error_rate": self.valid_fraction(
                    predicted_classes(adv_logits) != adv_labels, adv_labels
                ),
            }
        )
        self.log("loss", loss, prog_bar=True, logger=False)
        return loss

    def _adv_only_step(
        self, images: torch.Tensor, labels: torch.Tensor, geometry: SampleGeometry | None
    ) -> torch.Tensor:
        adv_images = self.adversarial_images(images, labels, geometry)
        adv_logits = self.model(adv_images)
        loss = self.loss(adv_logits, labels)
        self.log_dict(
            {
                "train/loss": loss,
                "train/loss_adv": loss,
                "train/adv_error_rate": self.valid_fraction(predicted_classes(adv_logits) != labels, labels),
            }
        )
        self.log("loss", loss, prog_bar=True, logger=False)
        return loss

    def _stop_on_non_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        # Checked before the optimizer step, so the weights (and last.ckpt) are still good.
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss.item()} at epoch {self.current_epoch}, batch {batch_idx}; "
                "stopping before the optimizer step. The last good checkpoint is last.ckpt in the run's "
                "checkpoint directory; lower schedule.optimizer.lr or check the data."
            )

    # --------------------------------------------------------------- validation
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        clean_logits = self.model(images)
        self.val_metrics["clean"].update(clean_logits, labels)
        self.log("val/loss", self.loss(clean_logits, labels), sync_dist=True)
        limit = self.validation.attack_batches
        attacked = limit is None or batch_idx < limit
        keep_examples = batch_idx == 0 and self.validation.example_images > 0
        if keep_examples:
            n = self.validation.example_images
            self.val_examples = ValidationExamples(
                images=images[:n].detach(),
                labels=labels[:n].detach(),
                clean_prediction=predicted_classes(clean_logits[:n]),
            )
        if not attacked:
            return
        for name, attack in self.validation_attacks.items():
            adv_images = attack(self.model, images, labels)
            with torch.no_grad():
                adv_logits = self.model(adv_images)
            self.val_metrics[name].update(adv_logits, labels)
            if keep_examples and self.val_examples.attack is None:
                n = self.validation.example_images
                self.val_examples.attack = name
                self.val_examples.adversarial = adv_images[:n].detach()
                self.val_examples.adversarial_prediction = predicted_classes(adv_logits[:n])

    def on_validation_epoch_start(self) -> None:
        self._epoch_scores = None

    def validation_scores(self) -> dict[str, SegmentationScores]:
        """This validation epoch's scores, clean and per attack: computed (and summed across processes) on the
        first call of the epoch, by whichever hook needs them first (the collapse guard's runs before this
        module's ``on_validation_epoch_end``)."""
        if self._epoch_scores is None:
            self._epoch_scores = {
                name: metric.compute() for name, metric in self.val_metrics.items() if metric.update_called
            }
        return self._epoch_scores

    def validation_metrics(self) -> dict[str, float]:
        """This validation epoch's logged values, in percent: ``val/miou_<name>``, ``val/pixel_accuracy_<name>``."""
        metrics = {}
        for name, scores in self.validation_scores().items():
            metrics[f"val/miou_{name}"] = 100 * float(scores.miou)
            metrics[f"val/pixel_accuracy_{name}"] = 100 * float(scores.pixel_accuracy)
        return metrics

    def on_validation_epoch_end(self) -> None:
        scores = self.validation_scores()
        for key, value in self.validation_metrics().items():
            self.log(key, value, prog_bar=key.startswith("val/miou_"))
        for metric in self.val_metrics.values():
            metric.reset()
        self.last_val_scores, self._epoch_scores = scores, None

    # ------------------------------------------------------------- optimization
    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(self.parameters())
        if self.lr_scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.lr_scheduler_factory(optimizer, max(1, int(self.trainer.estimated_stepping_batches)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
