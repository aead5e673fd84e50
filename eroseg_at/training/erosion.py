"""A picture of the erosion: how EroSeg's sensitive set and perturbation spread from uncertain pixels inward.

For a few training images (un-augmented, the first of the split), after every training epoch:

- multi-step: the perturbation ``δ_t`` after t iterations of the training attack from a seeded random start,
  and the sensitive set ``S_t`` iteration t attacks (threshold ``τ_t``), t = 0..T;
- accumulated mode: the image's stored perturbation after this epoch's visit (in the image's frame: the image at
  its held random scale), and the set the next visit attacks (the threshold at the iteration the next visit
  takes: the image's own count, or 0 where that visit restarts).

The :class:`ErosionRecorder` callback saves one :class:`ErosionRecord` per epoch (``erosion/epochNNN.pt``) and
logs them as W&B panels; :func:`erosion_figure` draws the records of a run as the PNG of the docs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from eroseg_at.attacks import EroSeg
from eroseg_at.attacks.base import eval_mode
from eroseg_at.attacks.eroseg import eroseg_sensitive_set, eroseg_threshold
from eroseg_at.visualization import mosaic, perturbation_magnitude, sensitive_overlay


@dataclass(frozen=True)
class ErosionRecord:
    """The erosion of K training images after one epoch.

    Shape:
        images: [K, 3, H, W]; labels: [K, H, W]; deltas: [T + 1, K, 3, H, W] (δ_0 is the random start);
        sensitive: [T, K, H, W] bool; taus: T thresholds. Accumulated mode, else None: stored_images,
        stored_labels: [K, 3, H', W'], [K, H', W'] (the images in the frames of their stored perturbations);
        stored, stored_sensitive: [K, 3, H', W'], [K, H', W']; stored_iteration: [K], the iteration index the
        next visit attacks.
    """

    epoch: int
    eps: float
    ignore_index: int
    indices: list[int]
    images: Tensor
    labels: Tensor
    taus: list[float]
    deltas: Tensor
    sensitive: Tensor
    stored_images: Tensor | None = None
    stored_labels: Tensor | None = None
    stored: Tensor | None = None
    stored_sensitive: Tensor | None = None
    stored_iteration: Tensor | None = None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(asdict(self), path)

    @classmethod
    def load(cls, path: Path | str) -> ErosionRecord:
        return cls(**torch.load(path, map_location="cpu", weights_only=True))


@dataclass(frozen=True)
class StoredPerturbations:
    """The accumulated mode's stored perturbations of the followed images, with the images in their frames.

    Shape:
        images: [K, 3, H', W']; labels: [K, H', W']; deltas: [K, 3, H', W']; next_iteration: [K].
    """

    images: Tensor
    labels: Tensor
    deltas: Tensor
    next_iteration: Tensor


def record_erosion(
    model: torch.nn.Module,
    attack: EroSeg,
    images: Tensor,
    labels: Tensor,
    indices: Sequence[int],
    epoch: int,
    iterations: int,
    stored: StoredPerturbations | None = None,
) -> ErosionRecord:
    """Runs ``iterations`` steps of ``attack`` on ``images`` from a fixed random start, keeping every iterate and
    sensitive set (and the sensitive set the next visit attacks at the ``stored`` perturbations, when given)."""
    generator = torch.Generator().manual_seed(0)
    noise = (torch.rand(images.shape, generator=generator) * 2 - 1).to(images.device) * attack.eps
    x = (images + noise).clamp(0, 1) if attack.random_start else images.clone()

    def sensitive_at(point: Tensor, step: int | Tensor, labels: Tensor = labels) -> Tensor:
        with eval_mode(model), torch.no_grad():
            logits = model(point).float()
        valid = labels != attack.ignore_index
        if isinstance(step, int):
            tau = eroseg_threshold(step, attack.tau0, attack.beta, attack.schedule_offset)
        else:
            tau = torch.tensor(
                [eroseg_threshold(int(k), attack.tau0, attack.beta, attack.schedule_offset) for k in step],
                device=point.device,
            ).view(-1, 1, 1)
        return eroseg_sensitive_set(logits, labels, valid, tau)

    deltas, sets, taus = [x - images], [], []
    for step in range(iterations):
        sets.append(sensitive_at(x, step))
        taus.append(eroseg_threshold(step, attack.tau0, attack.beta, attack.schedule_offset))
        x = attack.step_from(model, images, labels, x, torch.full((len(images),), step, device=images.device))
        deltas.append(x - images)
    accumulated = {}
    if stored is not None:
        point = (stored.images + stored.deltas).clamp(0, 1)
        accumulated = {
            "stored_images": stored.images.cpu(),
            "stored_labels": stored.labels.cpu(),
            "stored": stored.deltas.cpu(),
            "stored_sensitive": sensitive_at(point, stored.next_iteration, stored.labels).cpu(),
            "stored_iteration": stored.next_iteration.cpu(),
        }
    return ErosionRecord(
        epoch=epoch,
        eps=float(attack.eps),
        ignore_index=attack.ignore_index,
        indices=list(indices),
        images=images.cpu(),
        labels=labels.cpu(),
        taus=taus,
        deltas=torch.stack(deltas).cpu(),
        sensitive=torch.stack(sets).cpu(),
        **accumulated,
    )


class ErosionRecorder(Callback):
    """After every training epoch of an EroSeg-trained run (rank 0), records the erosion of the first
    ``images`` training images (:func:`record_erosion`), saves it to ``<dirpath>/epochNNN.pt`` and logs W&B
    panels ``train/erosion_multi_step`` (per image: sensitive sets over what the steps added to the start, one
    column per iteration) and, in the accumulated mode, ``train/erosion_accumulated`` (the stored perturbation and
    the set the next visit attacks). Images of different or large sizes are cut to one window
    (:func:`common_window`), the same for images, labels and stored perturbations (image coordinates).

    Args:
        images: How many training images to follow.
        iterations: Iterations of the multi-step picture (more than the training attack's, to see it spread).
        dirpath: Where the records go; None keeps none.
        max_size: The longest side of the window the pictures show.
    """

    def __init__(
        self, images: int = 4, iterations: int = 7, dirpath: str | None = None, max_size: int = 128
    ) -> None:
        self.count, self.iterations, self.max_size = int(images), int(iterations), int(max_size)
        self.dirpath = None if dirpath is None else Path(dirpath)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        attack = pl_module.train_attack
        if not trainer.is_global_zero or not isinstance(attack, EroSeg) or self.count < 1:
            return
        source = trainer.datamodule.source("train")
        indices = list(range(min(self.count, len(source))))
        samples = [source[i] for i in indices]
        window = common_window(
            [image.shape[-2:] for image, _ in samples],
            self.max_size,
            getattr(pl_module.model, "input_divisor", 1),
        )
        images = torch.stack([image[:, window[0], window[1]] for image, _ in samples]).to(pl_module.device)
        labels = torch.stack([label[window] for _, label in samples]).to(pl_module.device)
        stored = None
        if pl_module.accumulated is not None:
            stored = self.stored_perturbations(trainer, pl_module, indices)
        record = record_erosion(
            pl_module.model, attack, images, labels, indices, trainer.current_epoch, self.iterations, stored
        )
        if self.dirpath is not None:
            record.save(self.dirpath / f"epoch{trainer.current_epoch:03d}.pt")
        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if loggers:
            import wandb

            captions = panel_captions(record)
            panels = {
                key: [
                    wandb.Image(picture, caption=caption)
                    for picture, caption in zip(pictures, captions[key], strict=True)
                ]
                for key, pictures in panels_of(record).items()
            }
            for logger in loggers:
                logger.experiment.log({**panels, "epoch": trainer.current_epoch})

    def stored_perturbations(
        self, trainer: L.Trainer, pl_module: L.LightningModule, indices: list[int]
    ) -> StoredPerturbations:
        """The followed images' stored perturbations, the images in the same frames (cut to one window) and the
        iteration the next epoch's visit takes (0 where it restarts, its frame told by the datamodule)."""
        datamodule, accumulated = trainer.datamodule, pl_module.accumulated
        sources = [datamodule.source("train").sample_size(i) for i in indices]
        frames = [
            frame if frame != (0, 0) else tuple(size)
            for frame, size in zip(accumulated.store.frames(indices), sources, strict=True)
        ]
        samples = [datamodule.train_frame_sample(i, frame) for i, frame in zip(indices, frames, strict=True)]
        deltas = accumulated.store.read(indices, frames, pl_module.train_attack.eps)
        window = common_window(frames, self.max_size, getattr(pl_module.model, "input_divisor", 1))
        next_frames = [datamodule.train_frame(i, trainer.current_epoch + 1) for i in indices]
        device = pl_module.device
        return StoredPerturbations(
            images=torch.stack([image[:, window[0], window[1]] for image, _ in samples]).to(device),
            labels=torch.stack([label[window] for _, label in samples]).to(device),
            deltas=torch.stack([delta[:, window[0], window[1]] for delta in deltas]).to(device),
            next_iteration=accumulated.next_iterations(
                indices, trainer.current_epoch + 1, None if None in next_frames else next_frames
            ),
        )


def common_window(sizes: Sequence[Sequence[int]], max_size: int, divisor: int) -> tuple[slice, slice]:
    """The centred window that images of ``sizes`` share: at most ``max_size`` a side, floored to a multiple of
    ``divisor`` (what the model takes), placed around the centre of the smallest height and width."""
    height, width = (min(int(size[axis]) for size in sizes) for axis in (0, 1))

    def window(length: int) -> slice:
        side = max(divisor, min(length, max_size) // divisor * divisor)
        start = (length - side) // 2
        return slice(start, start + side)

    return window(height), window(width)


def panels_of(record: ErosionRecord) -> dict[str, list[np.ndarray]]:
    """The W&B pictures of a record, one per image: uint8 ``[H', W', 3]`` mosaics."""

    def as_uint8(picture: np.ndarray) -> np.ndarray:
        return (picture * 255).round().astype(np.uint8)

    panels: dict[str, list[np.ndarray]] = {"train/erosion_multi_step": []}
    for k in range(len(record.indices)):
        overlays = [sensitive_overlay(record.images[k], s[k]) for s in record.sensitive]
        magnitudes = [
            perturbation_magnitude(d[k] - record.deltas[0, k], record.eps) for d in record.deltas[1:]
        ]
        panels["train/erosion_multi_step"].append(as_uint8(mosaic([overlays, magnitudes])))
        if record.stored is not None:
            panels.setdefault("train/erosion_accumulated", []).append(
                as_uint8(
                    mosaic(
                        [
                            [sensitive_overlay(record.stored_images[k], record.stored_sensitive[k])],
                            [perturbation_magnitude(record.stored[k], record.eps)],
                        ]
                    )
                )
            )
    return panels


def panel_captions(record: ErosionRecord) -> dict[str, list[str]]:
    """The label of each W&B picture of :func:`panels_of`: which image and epoch, and what each row and column is
    (a mosaic has no room for text)."""
    taus = ", ".join(f"{tau:.3f}" for tau in record.taus)
    captions: dict[str, list[str]] = {"train/erosion_multi_step": []}
    for index in record.indices:
        where = f"training image {index}, after epoch {record.epoch + 1}"
        captions["train/erosion_multi_step"].append(
            f"{where}. Top row, iterations t = 0..{len(record.taus) - 1} left to right: the sensitive set S_t "
            f"(red) over the dimmed image, thresholds tau_t = {taus}. Bottom row: |delta_t - delta_0| / eps after "
            "steps 1.. (black: unchanged, white: eps)."
        )
        if record.stored is not None:
            captions.setdefault("train/erosion_accumulated", []).append(
                f"{where}. Top: the set the next visit attacks (red); bottom: the stored perturbation |delta| / eps "
                "(white: eps)."
            )
    return captions


def erosion_figure(
    multi_step: ErosionRecord, accumulated: Sequence[ErosionRecord], path: Path, images: int = 2
) -> Path:
    """The docs' picture: for ``images`` training images, the multi-step iterations of ``multi_step`` (a
    record of a multi-step run) and the successive visits (epochs) of ``accumulated`` (records of an accumulated
    run): sensitive sets in red over the dimmed image; in grey, what the steps added to the random start,
    |δ_t − δ_0|/eps (a sign step leaves pixels without gradient, outside every S so far, unchanged), and the
    stored perturbation |δ|/eps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iterations = len(multi_step.taus)
    columns = max(iterations, len(accumulated))
    figure, axes = plt.subplots(
        4 * images, columns, figsize=(1.3 * columns, 1.45 * 4 * images), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for k in range(images):
        top = 4 * k
        for t in range(iterations):
            axes[top, t].imshow(sensitive_overlay(multi_step.images[k], multi_step.sensitive[t, k]))
            axes[top, t].set_title(f"S_{t} (τ={multi_step.taus[t]:.3f})", fontsize=6)
            added = multi_step.deltas[t + 1, k] - multi_step.deltas[0, k]
            axes[top + 1, t].imshow(perturbation_magnitude(added, multi_step.eps))
            axes[top + 1, t].set_title(f"|δ−δ0| after step {t + 1}", fontsize=6)
        for v, record in enumerate(accumulated):
            axes[top + 2, v].imshow(sensitive_overlay(record.stored_images[k], record.stored_sensitive[k]))
            axes[top + 2, v].set_title(
                f"visit {record.epoch + 1}: next S_{int(record.stored_iteration[k])}", fontsize=6
            )
            axes[top + 3, v].imshow(perturbation_magnitude(record.stored[k], record.eps))
            axes[top + 3, v].set_title(f"stored |δ| after visit {record.epoch + 1}", fontsize=6)
    figure.suptitle(
        f"Erosion on training images {list(multi_step.indices[:images])}: rows 1-2 per image, multi-step EroSeg "
        f"(epoch {multi_step.epoch + 1} model); rows 3-4, accumulated mode over visits (red: sensitive set; grey: |δ|/eps, white = eps)",
        fontsize=7,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=130)
    plt.close(figure)
    return path


def load_records(directory: Path | str) -> list[ErosionRecord]:
    """A run's records in epoch order (``<run>/erosion/epochNNN.pt``)."""
    return [ErosionRecord.load(path) for path in sorted(Path(directory).glob("epoch*.pt"))]


def describe(record: ErosionRecord) -> dict[str, list[float]]:
    """The numbers behind the picture: per multi-step iteration, the share of valid pixels in the sensitive set
    and the mean of what the steps so far added to the random start, |δ_t − δ_0|/eps; in the accumulated mode,
    the sensitive share and mean |δ|/eps of the stored perturbation."""

    def share(sensitive: Tensor, labels: Tensor = record.labels) -> float:
        valid = labels != record.ignore_index
        return (sensitive & valid).sum().item() / valid.sum().clamp_min(1).item()

    def magnitude(delta: Tensor) -> float:
        return (delta.abs().amax(-3) / record.eps).mean().item()

    numbers = {
        "sensitive_share": [share(s) for s in record.sensitive],
        "mean_added": [magnitude(d - record.deltas[0]) for d in record.deltas[1:]],
    }
    if record.stored is not None:
        numbers["stored_sensitive_share"] = [share(record.stored_sensitive, record.stored_labels)]
        numbers["stored_mean_magnitude"] = [magnitude(record.stored)]
    return numbers
