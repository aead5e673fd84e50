"""One LightningDataModule serving every dataset through the same augmentation pipeline."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import albumentations as A
import cv2
import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, get_worker_info

from eroseg_at.data.class_frequencies import cached_class_frequencies
from eroseg_at.data.errors import DatasetError
from eroseg_at.data.geometry import SampleGeometry, collate_with_geometry
from eroseg_at.data.source import SegmentationSource, to_tensors
from eroseg_at.data.transforms import (
    AugmentConfig,
    HeldScale,
    build_train_transform,
    build_val_transform,
    has_random_scale,
    resize_sample,
)

SourceSpec = SegmentationSource | Callable[[], SegmentationSource]


class AugmentedDataset(Dataset):
    """Applies an albumentations pipeline to a source and returns tensors.

    With ``geometry`` (the pipeline built with ``save_applied_params=True``) each sample also says where it
    comes from and how it was moved (:class:`SampleGeometry`). With ``held_scale`` the dataset rescales each image
    by its held scale of the current epoch (:meth:`set_epoch`) before the pipeline, which must then leave the
    random scale out.

    The epoch is a tensor in shared memory: DataLoader worker processes, persistent or not, forked or spawned,
    read the value the main process set last.

    Shape:
        - ``dataset[i]``: image ``[3, H, W]`` float32 in [0, 1], mask ``[H, W]`` int64 (and a one-row
          :class:`SampleGeometry` with ``geometry``).
    """

    def __init__(
        self,
        source: SegmentationSource,
        transform: A.Compose,
        geometry: bool = False,
        held_scale: HeldScale | None = None,
    ) -> None:
        self.source = source
        self.transform = transform
        self.geometry = geometry
        self.held_scale = held_scale
        self.epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        self.epoch.fill_(int(epoch))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        image, mask = self.source.load(index)
        size = image.shape[:2]
        applied = []
        if self.held_scale is not None:
            scale = self.held_scale.scale(index, int(self.epoch))
            image, mask = resize_sample(image, mask, (int(size[0] * scale), int(size[1] * scale)))
            applied.append(("RandomScale", {"scale": scale, "interpolation": cv2.INTER_LINEAR}))
        augmented = self.transform(image=image, mask=mask)
        tensors = to_tensors(augmented["image"], augmented["mask"])
        if not self.geometry:
            return tensors
        applied += augmented["applied_transforms"]
        return (*tensors, SampleGeometry.from_applied(index, size, applied))


def reseed_worker_transform(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give each worker its own augmentation stream.

    ``A.Compose(seed=...)`` is copied into every worker, which would otherwise all draw the
    same augmentations; the worker's torch seed differs per worker and per epoch and is
    derived from the global seed, so runs stay reproducible.
    """
    dataset = get_worker_info().dataset
    dataset.transform.set_random_seed(torch.initial_seed() % 2**32)


def pad_collate(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor]], ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack samples of different sizes, padding bottom/right with image 0 and mask ``ignore_index``.

    Every sample is already padded to a multiple of ``pad_divisor``, so the batch size
    (the largest H and W) is too.

    Shape:
        - returns: images ``[B, 3, H_max, W_max]``, masks ``[B, H_max, W_max]``.
    """
    height = max(image.shape[-2] for image, _ in batch)
    width = max(image.shape[-1] for image, _ in batch)
    images, masks = [], []
    for image, mask in batch:
        pad = (0, width - image.shape[-1], 0, height - image.shape[-2])
        images.append(F.pad(image, pad, value=0.0))
        masks.append(F.pad(mask, pad, value=ignore_index))
    return torch.stack(images), torch.stack(masks)


def same_size_batches(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Sample indices grouped by size and cut into batches of at most ``batch_size``.

    Sizes come in the order they first appear, indices ascending within a size, so a dataset of one
    size keeps its order and its usual batches.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for index, size in enumerate(sizes):
        groups.setdefault(tuple(size), []).append(index)
    return [
        indices[start : start + batch_size]
        for indices in groups.values()
        for start in range(0, len(indices), batch_size)
    ]


class _PadCollate:
    """Picklable ``pad_collate`` bound to an ignore index (for spawned workers)."""

    def __init__(self, ignore_index: int) -> None:
        self.ignore_index = ignore_index

    def __call__(
        self, batch: Sequence[tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_collate(batch, self.ignore_index)


def bit_palette(num_classes: int) -> list[list[int]]:
    """The Pascal VOC colour map (bit-interleaved RGB), usable for any number of classes."""
    palette = []
    for index in range(num_classes):
        red = green = blue = 0
        value = index
        for shift in range(7, -1, -1):
            red |= ((value >> 0) & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        palette.append([red, green, blue])
    return palette


class SegmentationDataModule(L.LightningDataModule):
    """Train/val loaders for any :class:`SegmentationSource`, with the standard augmentation.

    Training batches are random crops of ``crop_size`` (``drop_last=True``: SMP's ASPP
    BatchNorm fails on a batch of one); validation batches are whole images, optionally
    resized, padded bottom/right to a multiple of ``pad_divisor`` (image 0, mask
    ``ignore_index``) and, when sizes differ within a batch, padded further to the largest.

    Args:
        name: dataset name (used for messages and the class-frequency cache).
        num_classes: number of classes; must match the source.
        train_source: the training split, or a factory returning it (Hydra ``_partial_: true``)
            so that files are listed only in :meth:`setup`; called with ``root=`` when ``root`` is set.
        val_source: the validation split, likewise.
        class_names: one name per class (``None``: ``class_0``, ``class_1``, ...).
        root: the directory the source factories read (``dataset.root=...`` on the command line);
            ``None`` for generated data, whose factories take no root.
        ignore_index: label ignored everywhere (padding, boundaries, unlabelled pixels).
        background_class: class index treated as background by EroSeg, or ``None``.
        crop_size: ``[h, w]`` of training crops.
        pad_divisor: validation H and W are padded to a multiple of this.
        batch_size: training batch size.
        val_batch_size: validation batch size.
        num_workers: DataLoader worker processes (``persistent_workers`` when positive).
        augment: :class:`AugmentConfig` fields.
        palette: ``[[r, g, b], ...]`` per class (0-255), or ``None`` for the VOC bit palette; the
            colours of label maps in figures.
        seed: seed of the augmentation pipeline.
        stats_cache_dir: directory of the class-frequency cache (``None``: user cache dir).
        sample_geometry: training batches are ``(images, masks, SampleGeometry)``: each sample's index and how
            the augmentation moved it, for state kept per training image (same augmentations either way).
        scale_hold_epochs: each training image keeps its random scale for this many epochs (:class:`HeldScale`,
            staggered over the images; the caller tells the epoch with :meth:`set_epoch`), so that state kept in
            the image's frame can be carried over those epochs; 1 draws a scale at every sample, the standard
            augmentation.
    """

    def __init__(
        self,
        name: str,
        num_classes: int,
        train_source: SourceSpec,
        val_source: SourceSpec,
        class_names: Sequence[str] | None = None,
        root: str | None = None,
        ignore_index: int = 255,
        background_class: int | None = None,
        crop_size: Sequence[int] = (128, 128),
        pad_divisor: int = 32,
        batch_size: int = 8,
        val_batch_size: int = 8,
        num_workers: int = 0,
        augment: Mapping | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        seed: int = 0,
        stats_cache_dir: str | None = None,
        sample_geometry: bool = False,
        scale_hold_epochs: int = 1,
    ) -> None:
        super().__init__()
        if class_names is None:
            class_names = [f"class_{index}" for index in range(num_classes)]
        class_names = [str(class_name) for class_name in class_names]
        if len(class_names) != num_classes:
            raise DatasetError(
                f"dataset {name}: class_names has {len(class_names)} entries but num_classes={num_classes}"
            )
        if 0 <= ignore_index < num_classes:
            raise DatasetError(
                f"dataset {name}: ignore_index={ignore_index} is a valid class index (num_classes={num_classes})"
            )
        if background_class is not None and not 0 <= background_class < num_classes:
            raise DatasetError(
                f"dataset {name}: background_class={background_class}: expected null or a class in [0, {num_classes})"
            )
        if len(crop_size) != 2 or min(crop_size) < 1:
            raise DatasetError(f"dataset {name}: crop_size={list(crop_size)}: expected [height, width]")
        for key, value in (
            ("scale_hold_epochs", scale_hold_epochs),
            ("pad_divisor", pad_divisor),
            ("batch_size", batch_size),
            ("val_batch_size", val_batch_size),
        ):
            if value < 1:
                raise DatasetError(f"dataset {name}: {key}={value}: expected a positive integer")
        palette = bit_palette(num_classes) if palette is None else [list(colour) for colour in palette]
        if len(palette) != num_classes:
            raise DatasetError(
                f"dataset {name}: palette has {len(palette)} colours but num_classes={num_classes}"
            )
        self.name = name
        self.num_classes = int(num_classes)
        self.class_names = class_names
        self.root = root
        self.ignore_index = int(ignore_index)
        self.background_class = background_class
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.pad_divisor = int(pad_divisor)
        self.batch_size = int(batch_size)
        self.val_batch_size = int(val_batch_size)
        self.num_workers = int(num_workers)
        self.augment = AugmentConfig(**dict(augment or {}))
        self.palette = palette
        self.seed = int(seed)
        self.stats_cache_dir = stats_cache_dir
        self.sample_geometry = bool(sample_geometry)
        self.held_scale = (
            HeldScale(tuple(self.augment.scale_range), int(scale_hold_epochs), self.seed)
            if scale_hold_epochs > 1 and has_random_scale(self.augment)
            else None
        )
        self._source_specs = {"train": train_source, "val": val_source}
        self._sources: dict[str, SegmentationSource] = {}
        self.train_set: AugmentedDataset | None = None
        self.val_set: AugmentedDataset | None = None

    def source(self, split: str) -> SegmentationSource:
        """The un-augmented ``"train"`` or ``"val"`` split, built (and checked) on first use."""
        if split not in self._sources:
            spec = self._source_specs[split]
            if isinstance(spec, SegmentationSource):
                source = spec
            else:
                source = spec() if self.root is None else spec(root=self.root)
            if source.num_classes != self.num_classes:
                raise DatasetError(
                    f"dataset {self.name}: num_classes={self.num_classes} but its {split} split "
                    f"has {source.num_classes} classes"
                )
            if len(source) == 0:
                raise DatasetError(f"dataset {self.name}: the {split} split is empty")
            self._sources[split] = source
        return self._sources[split]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            train_source = self.source("train")
            if len(train_source) < self.batch_size:
                raise DatasetError(
                    f"dataset {self.name}: {len(train_source)} training samples < batch_size={self.batch_size} "
                    "(training drops the last incomplete batch, so no batch would remain)"
                )
            transform = build_train_transform(
                self.crop_size,
                self.augment,
                self.ignore_index,
                self.seed,
                save_applied_params=self.sample_geometry,
                random_scale=self.held_scale is None,
            )
            self.train_set = AugmentedDataset(
                train_source, transform, geometry=self.sample_geometry, held_scale=self.held_scale
            )
        if self.val_set is None:
            transform = build_val_transform(self.augment, self.pad_divisor, self.ignore_index)
            self.val_set = AugmentedDataset(self.source("val"), transform)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=reseed_worker_transform if self.num_workers > 0 else None,
            collate_fn=collate_with_geometry if self.sample_geometry else None,
        )

    def set_epoch(self, epoch: int) -> None:
        """Tells the training set the epoch whose held scales it draws (see ``scale_hold_epochs``)."""
        self.train_set.set_epoch(epoch)

    def train_sample_sizes(self) -> list[tuple[int, int]]:
        """``(height, width)`` of every training image before augmentation, in index order."""
        source = self.source("train")
        return [tuple(source.sample_size(index)) for index in range(len(source))]

    def train_largest_frames(self) -> list[tuple[int, int]]:
        """The largest frame (height, width) each training image can take: its size at the largest scale."""
        high = max(self.augment.scale_range) if has_random_scale(self.augment) else 1.0
        return [(int(h * high), int(w * high)) for h, w in self.train_sample_sizes()]

    def train_frame(self, index: int, epoch: int) -> tuple[int, int] | None:
        """The frame training image ``index`` takes in ``epoch`` where it is known in advance (no random scale,
        or a held one); None where every draw rescales anew."""
        size = self.source("train").sample_size(index)
        if not has_random_scale(self.augment):
            return tuple(size)
        if self.held_scale is None:
            return None
        return self.held_scale.frame_size(size, index, epoch)

    def train_frame_sample(self, index: int, frame: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Training image ``index`` rescaled to ``frame`` as the pipeline rescales it, un-augmented otherwise.

        Shape:
            image ``[3, h, w]`` float32 in [0, 1], mask ``[h, w]`` int64 (``frame`` = (h, w)).
        """
        return to_tensors(*resize_sample(*self.source("train").load(index), frame))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set,
            batch_size=self.val_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=_PadCollate(self.ignore_index),
        )

    def full_resolution_dataloader(self) -> DataLoader:
        """Validation images exactly as large as they are, for robustness evaluation.

        Nothing is padded: each batch holds images of one size (``val_batch_size`` at most), so an
        attack perturbs image pixels only, and the evaluated model pads internally to what its
        architecture needs. ``loader.batch_sampler`` lists the sample indices of each batch.
        """
        source = self.source("val")
        if self.augment.val_resize is not None:
            sizes = [tuple(self.augment.val_resize)] * len(source)
        else:
            sizes = [source.sample_size(index) for index in range(len(source))]
        return DataLoader(
            AugmentedDataset(source, build_val_transform(self.augment, 1, self.ignore_index)),
            batch_sampler=same_size_batches(sizes, self.val_batch_size),
            num_workers=self.num_workers,
        )

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def class_frequencies(self) -> torch.Tensor:
        """Pixel frequency of each class over the training split (ignore excluded), cached.

        Shape:
            - returns: ``[C]`` float64 summing to 1.
        """
        counts = cached_class_frequencies(
            self.name, self.source("train"), self.stats_cache_dir, self.num_workers
        )
        return torch.from_numpy(np.asarray(counts, dtype=np.float64))
