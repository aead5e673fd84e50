"""The standard segmentation augmentation pipelines, built with albumentations 2.x."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np
from albumentations.augmentations.geometric import functional as fgeometric

from eroseg_at.data.errors import DatasetError

# cv2's INTER_NEAREST samples pixel corners while INTER_LINEAR samples pixel centres, which
# shifts masks against images by up to a pixel when rescaling; NEAREST_EXACT samples centres.
MASK_INTERPOLATION = cv2.INTER_NEAREST_EXACT


@dataclass(frozen=True)
class AugmentConfig:
    """Per-dataset augmentation settings (the ``dataset.augment`` config node).

    Attributes:
        scale_range: ``[min, max]`` random rescale factor applied before cropping.
        hflip: whether to flip horizontally with probability 0.5.
        brightness, contrast, saturation, hue: photometric jitter strengths
            (``ColorJitter`` conventions; 0 disables each).
        jitter_p: probability of applying the photometric jitter.
        val_resize: ``[h, w]`` to resize validation images to, or ``None`` to evaluate
            at full resolution.
    """

    scale_range: Sequence[float] = (0.5, 2.0)
    hflip: bool = True
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    hue: float = 0.05
    jitter_p: float = 0.8
    val_resize: Sequence[int] | None = None

    def __post_init__(self) -> None:
        low, high = self.scale_range
        if not 0 < low <= high:
            raise DatasetError(
                f"dataset.augment.scale_range={list(self.scale_range)}: expected 0 < min <= max"
            )
        if self.val_resize is not None and (len(self.val_resize) != 2 or min(self.val_resize) < 1):
            raise DatasetError(
                f"dataset.augment.val_resize={self.val_resize}: expected null or [height, width]"
            )


def has_random_scale(augment: AugmentConfig) -> bool:
    return tuple(augment.scale_range) != (1.0, 1.0)


def resize_sample(image: np.ndarray, mask: np.ndarray, size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``image`` and ``mask`` resized to ``size`` (height, width) exactly as the train pipeline's random scale
    resizes them (albumentations' resize: bilinear image, ``MASK_INTERPOLATION`` mask)."""
    size = (int(size[0]), int(size[1]))
    return (
        fgeometric.resize(image, size, cv2.INTER_LINEAR),
        fgeometric.resize(mask, size, MASK_INTERPOLATION),
    )


@dataclass(frozen=True)
class HeldScale:
    """A random scale that each training image keeps for ``epochs`` epochs.

    Image i's scale in epoch e is drawn, uniform in ``scale_range``, by a generator seeded with (``seed``, i,
    ``(e + i) // epochs``): the blocks of ``epochs`` epochs are staggered over the images, so that about one image
    in ``epochs`` draws a new scale in each epoch, and the scale of any image in any epoch can be told in
    advance. Each epoch still sees scales uniform in the range; only the crop, flip and colour of an image vary
    from one epoch to the next within its block.
    """

    scale_range: tuple[float, float]
    epochs: int
    seed: int

    def scale(self, index: int, epoch: int) -> float:
        block = (epoch + index) // self.epochs
        return float(np.random.default_rng([self.seed, index, block]).uniform(*self.scale_range))

    def frame_size(self, size: Sequence[int], index: int, epoch: int) -> tuple[int, int]:
        """The size image ``index`` of ``size`` (height, width) takes in ``epoch`` (as albumentations rounds it)."""
        scale = self.scale(index, epoch)
        return int(size[0] * scale), int(size[1] * scale)


def build_train_transform(
    crop_size: Sequence[int],
    augment: AugmentConfig,
    ignore_index: int,
    seed: int | None,
    save_applied_params: bool = False,
    random_scale: bool = True,
) -> A.Compose:
    """Random scale, crop (padded with image 0 / mask ``ignore_index``), flip, photometric jitter.

    Args:
        crop_size: ``[h, w]`` of the training crop.
        augment: augmentation settings.
        ignore_index: mask value written into padding, so padding never counts as a class.
        seed: pipeline seed (re-seeded per DataLoader worker by the datamodule).
        save_applied_params: also return what each transform drew (``applied_transforms``), from which
            :class:`~eroseg_at.data.geometry.SampleGeometry` is read; the draws themselves are the same.
        random_scale: False leaves the random scale out (the caller rescales, as with a :class:`HeldScale`).
    """
    crop_height, crop_width = crop_size
    low, high = augment.scale_range
    steps: list[A.BasicTransform] = []
    if random_scale and has_random_scale(augment):
        steps.append(
            A.RandomScale(scale_limit=(low - 1.0, high - 1.0), mask_interpolation=MASK_INTERPOLATION, p=1.0)
        )
    steps += [
        A.PadIfNeeded(
            min_height=crop_height,
            min_width=crop_width,
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=ignore_index,
        ),
        A.RandomCrop(height=crop_height, width=crop_width),
    ]
    if augment.hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    jitter = (augment.brightness, augment.contrast, augment.saturation, augment.hue)
    if any(jitter) and augment.jitter_p > 0:
        steps.append(
            A.ColorJitter(
                brightness=augment.brightness,
                contrast=augment.contrast,
                saturation=augment.saturation,
                hue=augment.hue,
                p=augment.jitter_p,
            )
        )
    return A.Compose(steps, seed=seed, save_applied_params=save_applied_params)


def build_val_transform(augment: AugmentConfig, pad_divisor: int, ignore_index: int) -> A.Compose:
    """Optional resize, then pad bottom/right so H and W divide ``pad_divisor`` (1: no padding).

    Padding goes to the bottom and right (image 0, mask ``ignore_index``) so predictions
    cropped to the original size line up with the unpadded image.
    """
    steps: list[A.BasicTransform] = []
    if augment.val_resize is not None:
        height, width = augment.val_resize
        steps.append(A.Resize(height=height, width=width, mask_interpolation=MASK_INTERPOLATION))
    if pad_divisor == 1:
        return A.Compose(steps)
    steps.append(
        A.PadIfNeeded(
            min_height=None,
            min_width=None,
            pad_height_divisor=pad_divisor,
            pad_width_divisor=pad_divisor,
            position="top_left",
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=ignore_index,
        )
    )
    return A.Compose(steps)


def transform_description(transform: A.BasicTransform) -> dict:
    """``transform`` as albumentations describes it (every step and argument), for a record or a cache key.

    Here, so that modules above ``data`` need not import albumentations: imported before :mod:`eroseg_at.data`, it
    would ask PyPI for a newer release (see the package's ``__init__``).
    """
    return A.to_dict(transform)
