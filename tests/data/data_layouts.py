"""Tiny datasets written in each real on-disk layout (real JPEG/PNG files) for the data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from eroseg_at.data.datamodule import bit_palette

HEIGHT, WIDTH = 48, 64


def random_image(rng: np.random.Generator, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def label_blocks(values: list[int], height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A mask made of vertical stripes, one per value, so every value is present."""
    columns = np.array_split(np.arange(width), len(values))
    mask = np.zeros((height, width), dtype=np.uint8)
    for value, cols in zip(values, columns, strict=True):
        mask[:, cols] = value
    return mask


def save_jpeg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=95)


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def save_palette_png(path: Path, mask: np.ndarray) -> None:
    """A VOC-style palette PNG: pixel values are palette indices."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(mask, mode="P")
    image.putpalette([channel for colour in bit_palette(256) for channel in colour])
    image.save(path)


def write_voc(
    root: Path, train_masks: dict[str, np.ndarray], val_masks: dict[str, np.ndarray], seed: int = 0
) -> Path:
    """``root/VOC2012`` with JPEGImages, palette SegmentationClass PNGs and split lists."""
    rng = np.random.default_rng(seed)
    base = root / "VOC2012"
    for split, masks in (("train", train_masks), ("val", val_masks)):
        for sample_id, mask in masks.items():
            save_jpeg(base / "JPEGImages" / f"{sample_id}.jpg", random_image(rng, *mask.shape))
            save_palette_png(base / "SegmentationClass" / f"{sample_id}.png", mask)
        lists = base / "ImageSets" / "Segmentation"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / f"{split}.txt").write_text("".join(f"{sample_id}\n" for sample_id in masks))
    return root


def default_voc(root: Path) -> Path:
    train = {f"2007_00000{i}": label_blocks([0, 1 + i, 15, 255]) for i in range(4)}
    val = {
        "2008_000001": label_blocks([0, 20, 255]),
        "2008_000002": label_blocks([0, 7], height=40, width=56),
    }
    return write_voc(root, train, val)


def write_voc_aug(root: Path, seed: int = 1) -> Path:
    """VOC plus SBD: grayscale SegmentationClassAug PNGs and a DeepLab-style train_aug.txt."""
    default_voc(root)
    rng = np.random.default_rng(seed)
    base = root / "VOC2012"
    lines = []
    for i in range(5):
        sample_id = f"2009_00010{i}"
        save_jpeg(base / "JPEGImages" / f"{sample_id}.jpg", random_image(rng))
        save_png(base / "SegmentationClassAug" / f"{sample_id}.png", label_blocks([0, 3 + i, 255]))
        lines.append(f"/JPEGImages/{sample_id}.jpg /SegmentationClassAug/{sample_id}.png\n")
    (base / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("".join(lines))
    return root


# Label ids chosen to exercise the mapping: 7 road -> 0, 26 car -> 13, 33 bicycle -> 18,
# 0 unlabeled -> 255, 4 static -> 255, 255 -> 255.
CITYSCAPES_LABEL_IDS = [7, 26, 33, 0, 4, 255]
CITYSCAPES_TRAIN_IDS = [0, 13, 18, 255, 255, 255]


def write_cityscapes(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, cities in (("train", {"aachen": 3, "bremen": 1}), ("val", {"frankfurt": 2})):
        for city, count in cities.items():
            for frame in range(count):
                stem = f"{city}_000000_{frame:06d}"
                save_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", random_image(rng))
                gt = root / "gtFine" / split / city
                save_png(gt / f"{stem}_gtFine_labelIds.png", label_blocks(CITYSCAPES_LABEL_IDS))
                # The other gtFine files exist in the real layout and must be ignored.
                save_png(gt / f"{stem}_gtFine_color.png", random_image(rng))
                (gt / f"{stem}_gtFine_polygons.json").write_text("{}")
    return root


def write_ade20k(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    base = root / "ADEChallengeData2016"
    for split, count in (("training", 4), ("validation", 2)):
        for index in range(count):
            stem = f"ADE_{split[:5] if split == 'training' else 'val'}_{index + 1:08d}"
            height, width = (HEIGHT, WIDTH) if index % 2 == 0 else (40, 72)
            save_jpeg(base / "images" / split / f"{stem}.jpg", random_image(rng, height, width))
            save_png(
                base / "annotations" / split / f"{stem}.png", label_blocks([0, 1, 150, 75], height, width)
            )
    return root


def write_folder(root: Path, num_images: int = 10, num_classes: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for index in range(num_images):
        stem = f"tile_{index:03d}"
        suffix = ".png" if index % 2 else ".jpg"
        image = random_image(rng)
        (save_png if suffix == ".png" else save_jpeg)(root / "images" / f"{stem}{suffix}", image)
        save_png(root / "masks" / f"{stem}.png", label_blocks([index % num_classes, 255, num_classes - 1]))
    return root
