"""Amortised adversarial training: adversarial examples for fewer attack iterations per update.

- ``accumulated`` (ATTA-style, Zheng et al. 2020): each training image keeps its perturbation across epochs
  (:class:`~eroseg_at.training.perturbations.PerturbationStore`); every visit continues it by ``attack.steps``,
  at the image's own iteration count, so EroSeg's threshold τ_k grows over the visits and the perturbation
  erodes inward over epochs instead of within one batch.
- ``single_step`` (N-FGSM, de Jorge et al. 2022): one large step from noise drawn in a box wider than the
  ball, without clipping the result to the ball.

Both call the training attack's :meth:`~eroseg_at.attacks.base.IterativeAttack.step_from`, so they keep the
attack contract (eval mode, modes restored, input gradients only, the raw model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from eroseg_at.attacks import IterativeAttack
from eroseg_at.data.geometry import SampleGeometry
from eroseg_at.training.perturbations import (
    FRAME_HEIGHT,
    FRAME_WIDTH,
    LAST_EPOCH,
    STEPS,
    VISITS,
    PerturbationStore,
)


@dataclass(frozen=True)
class AccumulatedSettings:
    """The ``adversarial.accumulated`` config node. The attack iterations per visit and their step are the
    training attack's own (``attack.steps``, ``attack.alpha``).

    Attributes:
        restart_visits: R: an image's perturbation restarts (from the attack's random start, iteration 0) at its
            first visit and then every R visits; image i's first period is ``i mod R`` visits shorter, so that
            about 1/R of the images restart in each epoch rather than all at once. 1 restarts at every visit
            (plain ``attack.steps``-step AT). Each training image also keeps its random scale for R epochs,
            staggered alike, so that its perturbation stays in one frame between restarts.
        stale_epochs: It restarts too when its last visit is more than this many epochs ago (the model has
            moved on since; every image is visited once per epoch otherwise).
        directory: Where the store's files go (``${paths.output_dir}/perturbations``); under DDP every rank
            maps the same files.
    """

    restart_visits: int = 4
    stale_epochs: int = 2
    directory: str | None = None

    def __post_init__(self) -> None:
        for key in ("restart_visits", "stale_epochs"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"adversarial.accumulated.{key} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class SingleStepSettings:
    """The ``adversarial.single_step`` config node (N-FGSM by default).

    Attributes:
        noise: The start is uniform in the box of half-width ``noise · eps`` around the image (N-FGSM: 2).
        step: The one step is ``step · eps`` (N-FGSM: 1).
        clip: Project the result onto the eps-ball (FGSM with random start) instead of leaving it where the
            step ends (N-FGSM: no clipping, so the perturbation reaches up to ``(noise + step) · eps``).
    """

    noise: float = 2.0
    step: float = 1.0
    clip: bool = False

    def __post_init__(self) -> None:
        if self.noise < 0:
            raise ValueError(f"adversarial.single_step.noise must be >= 0, got {self.noise}")
        if self.step <= 0:
            raise ValueError(f"adversarial.single_step.step must be > 0, got {self.step}")


def single_step_adversarial(
    attack: IterativeAttack,
    settings: SingleStepSettings,
    model: torch.nn.Module,
    images: Tensor,
    labels: Tensor,
) -> Tensor:
    """One step of ``attack``'s objective (its iteration 0) from wide uniform noise around ``images``."""
    eps = attack.eps
    noise = (torch.rand_like(images) * 2 - 1) * (settings.noise * eps)
    start = (images + noise).clamp_(0, 1)
    iterations = torch.zeros(images.shape[0], dtype=torch.int64, device=images.device)
    # For l-inf a radius of 1 is the whole [0, 1] box: no clipping to the ball.
    radius = eps if settings.clip else 1.0
    return attack.step_from(
        model, images, labels, start, iterations, alpha=settings.step * eps, radius=radius
    )


@dataclass(frozen=True)
class VisitStatistics:
    """What a visit did to a batch: the share of images restarted, and the mean iteration index attacked."""

    restarted: float
    mean_iteration: float


class AccumulatedPerturbations:
    """Continues each image's stored perturbation by ``attack.steps`` iterations of ``attack`` at every visit.

    The stored perturbation lives in the image's frame (the image as rescaled, before padding and cropping); it
    is moved into the sample's crop through its :class:`SampleGeometry` (pad, crop, flip: integer moves),
    added to the augmented image (colour jitter included: the perturbation is additive and the ball is around the
    augmented clean image), stepped, and the change made at this visit is moved back and added to the store,
    clipped to eps and rounded to the store's unit. Pixels of the frame outside the crop keep their values. A
    visit in another frame than the stored one (the image's held scale changed) restarts.
    """

    def __init__(
        self, settings: AccumulatedSettings, attack: IterativeAttack, store: PerturbationStore
    ) -> None:
        self.settings = settings
        self.attack = attack
        self.store = store

    def restarts(
        self,
        indices: Tensor,
        counters: Tensor,
        epoch: int,
        frames: Sequence[tuple[int, int]] | None = None,
    ) -> Tensor:
        """Which images start afresh at a visit in ``epoch`` ([B] bool), by the rules of
        :class:`AccumulatedSettings`, and where the visit's ``frames`` differ from the stored ones."""
        visits = counters[:, VISITS]
        periodic = (visits + indices) % self.settings.restart_visits == 0
        stale = epoch - counters[:, LAST_EPOCH] > self.settings.stale_epochs
        restart = (visits == 0) | periodic | stale
        if frames is not None:
            stored = counters[:, [FRAME_HEIGHT, FRAME_WIDTH]]
            restart |= (stored != torch.tensor(frames, dtype=stored.dtype).view(-1, 2)).any(1)
        return restart

    def next_iterations(
        self, indices: Sequence[int], epoch: int, frames: Sequence[tuple[int, int]] | None
    ) -> Tensor:
        """The iteration index (EroSeg's τ_k) a visit of ``indices`` in ``epoch`` attacks, in ``frames`` where
        known: the stored count, or 0 where the visit restarts.

        Shape:
            output: [len(indices)] int64.
        """
        counters = torch.from_numpy(np.array(self.store.counters[list(indices)])).long()
        restart = self.restarts(torch.as_tensor(list(indices)), counters, epoch, frames)
        return torch.where(restart, 0, counters[:, STEPS])

    def adversarial(
        self,
        model: torch.nn.Module,
        images: Tensor,
        labels: Tensor,
        geometry: SampleGeometry,
        epoch: int,
    ) -> tuple[Tensor, VisitStatistics]:
        """Adversarial versions of the augmented ``images``, with the store updated for their source images."""
        attack, device = self.attack, images.device
        indices = geometry.index.cpu()
        rows = indices.numpy()
        frames = geometry.frames()
        counters = torch.from_numpy(np.array(self.store.counters[rows])).long()
        restart = self.restarts(indices, counters, epoch, frames)
        stored = [
            torch.zeros_like(delta) if fresh else delta
            for delta, fresh in zip(
                self.store.read(indices.tolist(), frames, attack.eps), restart.tolist(), strict=True
            )
        ]
        view = geometry.view([delta.to(device) for delta in stored]).to(images.dtype)
        start = images + view
        if attack.random_start and restart.any():
            noise = (torch.rand_like(images) * 2 - 1) * attack.eps
            start = torch.where(restart.to(device).view(-1, 1, 1, 1), images + noise, start)
        iterations = torch.where(restart, 0, counters[:, STEPS])
        x = start.clamp_(0, 1)
        for step in range(attack.steps):
            x = attack.step_from(model, images, labels, x, (iterations + step).to(device))
        change = geometry.pull_back(((x - images).float() - view).cpu())
        self.store.write(
            indices.tolist(), [delta + moved for delta, moved in zip(stored, change, strict=True)]
        )
        self.store.counters[rows, VISITS] = (counters[:, VISITS] + 1).numpy()
        self.store.counters[rows, STEPS] = (iterations + attack.steps).numpy()
        self.store.counters[rows, LAST_EPOCH] = epoch
        statistics = VisitStatistics(
            restarted=restart.float().mean().item(), mean_iteration=iterations.float().mean().item()
        )
        return x, statistics
