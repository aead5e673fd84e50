"""Base class of every dataset: samples as numpy arrays, optionally as tensors."""

from __future__ import annotations

import abc
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset


def to_tensors(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a numpy sample to the tensors models and attacks consume.

    Args:
        image: uint8 RGB image.
        mask: integer class-index mask (255 = ignore).

    Returns:
        ``(image, mask)``: image float32 in [0, 1], mask int64.

    Shape:
        - image: ``[H, W, 3]`` -> ``[3, H, W]``
        - mask: ``[H, W]`` -> ``[H, W]``
    """
    # Writable too: decoded files are read-only arrays, which torch.from_numpy warns about.
    image_tensor = torch.from_numpy(np.require(image, requirements="CW")).permute(2, 0, 1).float().div_(255.0)
    mask_tensor = torch.from_numpy(np.require(mask, requirements="CW")).long()
    return image_tensor, mask_tensor


class SegmentationSource(Dataset, abc.ABC):
    """A split of a segmentation dataset, read without augmentation.

    Subclasses implement :meth:`load` (and :meth:`load_mask` when reading the mask alone
    is cheaper); the datamodule applies the albumentations pipeline to what :meth:`load`
    returns. Indexing the source directly gives un-augmented tensors.

    Attributes:
        num_classes: number of classes; mask values are in ``[0, num_classes)`` or 255.
    """

    num_classes: int

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Return sample ``index`` as ``(image uint8 [H,W,3], mask uint8 [H,W])``."""

    def load_mask(self, index: int) -> np.ndarray:
        """Return the mask of sample ``index`` as uint8 ``[H, W]`` (255 = ignore)."""
        return self.load(index)[1]

    def sample_size(self, index: int) -> tuple[int, int]:
        """``(height, width)`` of sample ``index``; subclasses answer without decoding where they can."""
        return self.load_mask(index).shape[:2]

    @abc.abstractmethod
    def sample_name(self, index: int) -> str:
        """A human-readable identifier of sample ``index`` (file path or generator seed)."""

    def sample_files(self, index: int) -> tuple[Path, ...]:
        """The files sample ``index`` is read from (image first, then its label file).

        Empty for a generated sample, whose content :meth:`fingerprint` and the index determine.
        """
        return ()

    @abc.abstractmethod
    def fingerprint(self) -> dict:
        """JSON-serialisable description that changes whenever the split's content may change."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return to_tensors(*self.load(index))
