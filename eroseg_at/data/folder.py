"""Any folder of images and single-channel masks matched by file stem."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eroseg_at.data.errors import DatasetError
from eroseg_at.data.files import (
    IMAGE_SUFFIXES,
    LabelMapping,
    PairedFilesSource,
    list_files,
    pair_by_key,
    read_split_list,
    require_directory,
)

FOLDER_LAYOUT = """\
<dataset.root>/
  images/<stem>.{jpg,jpeg,png,bmp,tif,tiff,webp}
  masks/<stem>.png                   single-channel PNG (8- or 16-bit) of class indices, 255 = ignore
  train.txt, val.txt                 optional split lists, one <stem> per line (dataset.train_source.split_list=...)"""

MASK_SUFFIXES = (".png", ".tif", ".tiff")


def holdout_split(stems: list[str], split: str, val_fraction: float, seed: int) -> list[str]:
    """Deterministic train/val partition of ``stems`` (a seeded permutation of the sorted stems)."""
    if split not in ("train", "val"):
        raise DatasetError(f"folder: split={split!r} without a split_list: expected 'train' or 'val'")
    if not 0 <= val_fraction < 1:
        raise DatasetError(f"folder: val_fraction={val_fraction}: expected a fraction in [0, 1)")
    order = np.random.default_rng(seed).permutation(len(stems))
    num_val = round(val_fraction * len(stems))
    chosen = order[:num_val] if split == "val" else order[num_val:]
    return [stems[index] for index in sorted(chosen)]


def folder(
    root: str | Path,
    num_classes: int,
    split: str = "train",
    split_list: str | None = None,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    ignore_index: int = 255,
    images: str = "images",
    masks: str = "masks",
) -> PairedFilesSource:
    """A split of a folder dataset.

    Args:
        root: directory holding ``images/`` and ``masks/``.
        num_classes: mask values must be in ``[0, num_classes)`` or ``ignore_index``.
        split: split name (``train`` or ``val`` when no ``split_list`` is given).
        split_list: file of stems (relative to ``root`` or absolute); ``None`` holds out a
            seeded ``val_fraction`` of all pairs as ``val`` and uses the rest as ``train``.
        val_fraction: share of pairs in ``val`` when there is no split list.
        split_seed: seed of that partition (must be the same for both splits).
        ignore_index: mask value that is ignored.
        images: image directory name under ``root``.
        masks: mask directory name under ``root``.
    """
    root = Path(root).expanduser()
    image_dir = require_directory(root / images, "folder", FOLDER_LAYOUT)
    mask_dir = require_directory(root / masks, "folder", FOLDER_LAYOUT)
    if not 1 <= num_classes <= 255 or 0 <= ignore_index < num_classes:
        raise DatasetError(
            f"folder: num_classes={num_classes}, ignore_index={ignore_index}: expected 1-255 classes "
            "and an ignore_index outside [0, num_classes)"
        )
    pairs = pair_by_key(
        list_files(image_dir, IMAGE_SUFFIXES),
        list_files(mask_dir, MASK_SUFFIXES),
        mask_hint=f"{mask_dir}/<stem>.png",
        image_hint=f"{image_dir}/<stem>.<jpg|png|...>",
    )
    by_stem = {image_path.stem: (image_path, mask_path) for image_path, mask_path in pairs}
    if split_list is None:
        stems = holdout_split(sorted(by_stem), split, val_fraction, split_seed)
    else:
        list_path = Path(split_list) if Path(split_list).is_absolute() else root / split_list
        stems = read_split_list(list_path, "folder", FOLDER_LAYOUT)
        for stem in stems:
            if stem not in by_stem:
                raise DatasetError(
                    f"{list_path}: '{stem}' has no image in {image_dir} (expected {image_dir}/{stem}.<jpg|png|...>)"
                )
    labels = LabelMapping.identity(num_classes, ignore_index)
    return PairedFilesSource("folder", split, root, [by_stem[stem] for stem in stems], labels)
