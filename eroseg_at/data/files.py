"""Image/mask file pairs on disk: listing, pairing, reading and label checks.

Cheap checks (the root exists, every image has its mask and the reverse) run when a split
is built; the expensive ones (decoding, sizes, label values) run when a sample is read.
A bad sample always raises :class:`DatasetError`; none is skipped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from eroseg_at.data.errors import DatasetError
from eroseg_at.data.source import SegmentationSource

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class LabelMapping:
    """Maps raw mask values to train ids and rejects values that are not labels.

    Args:
        table: ``{raw value: train id}`` for every raw value that may occur (train ids in
            ``[0, num_classes)`` or ``ignore_index``).
        num_classes: number of train classes.
        description: what the valid raw values are, for error messages.
    """

    def __init__(self, table: dict[int, int], num_classes: int, description: str) -> None:
        self.num_classes = num_classes
        self.description = description
        self._lookup = np.zeros(256, dtype=np.uint8)
        self._valid = np.zeros(256, dtype=bool)
        for raw, train_id in table.items():
            self._lookup[raw] = train_id
            self._valid[raw] = True

    @classmethod
    def identity(cls, num_classes: int, ignore_index: int = 255) -> LabelMapping:
        """Raw values are class indices in ``[0, num_classes)``; ``ignore_index`` is ignore."""
        table = {value: value for value in range(num_classes)}
        table[ignore_index] = ignore_index
        return cls(table, num_classes, f"[0, {num_classes}) or {ignore_index}")

    def __call__(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Train-id mask (uint8) of the raw mask read from ``path``; invalid values raise."""
        if raw.dtype != np.uint8:
            wide = np.unique(raw[(raw < 0) | (raw > 255)])
            if wide.size:
                self._reject(path, wide, np.unique(raw))
            raw = raw.astype(np.uint8)
        present = np.flatnonzero(np.bincount(raw.ravel(), minlength=256))
        invalid = present[~self._valid[present]]
        if invalid.size:
            self._reject(path, invalid, present)
        return self._lookup[raw]

    def _reject(self, path: Path, invalid: np.ndarray, found: np.ndarray) -> None:
        def listing(values: np.ndarray) -> str:
            return ", ".join(str(int(value)) for value in values[:30]) + (" ..." if len(values) > 30 else "")

        raise DatasetError(
            f"{path}: label values {listing(invalid)} are not valid (expected {self.description}; "
            f"values found: {listing(found)})"
        )


def open_image(path: Path, decode: bool = True) -> Image.Image:
    """Open ``path`` and, unless ``decode`` is false (header only), decode it; unreadable or truncated
    files raise naming the file."""
    try:
        image = Image.open(path)
        if decode:
            image.load()
    except FileNotFoundError as error:
        raise DatasetError(f"{path}: file not found") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"{path}: unreadable or truncated image ({error})") from error
    return image


def read_rgb(path: Path) -> np.ndarray:
    """RGB image as uint8 ``[H, W, 3]``."""
    return np.asarray(open_image(path).convert("RGB"))


def read_label(path: Path) -> np.ndarray:
    """Single-channel label image as an ``[H, W]`` array (palette indices for palette PNGs, 0/1 for 1-bit)."""
    image = open_image(path)
    if image.mode not in ("1", "P", "L", "I", "I;16", "I;16B", "I;16L"):
        raise DatasetError(
            f"{path}: mask has mode {image.mode} with {len(image.getbands())} channels; "
            "expected a single-channel (grayscale or palette) image of class indices"
        )
    return np.asarray(image)


def list_files(directory: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """``{stem: path}`` of the files in ``directory`` with one of ``suffixes`` (case-insensitive).

    Two files with the same stem (``a.jpg`` and ``a.png``) raise, since pairing by stem
    would be ambiguous.
    """
    files: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes:
            if path.stem in files:
                raise DatasetError(
                    f"{files[path.stem]} and {path} have the same stem; expected one file per stem"
                )
            files[path.stem] = path
    return files


def require_directory(path: Path, dataset: str, layout: str) -> Path:
    """Return ``path`` if it is a directory; otherwise raise showing the expected layout."""
    if not path.is_dir():
        raise DatasetError(f"{dataset}: directory {path} not found. Expected layout:\n{layout}")
    return path


def read_split_list(path: Path, dataset: str, layout: str) -> list[str]:
    """Sample ids of a split list file, one per line.

    Lines may also be the DeepLab two-column form ``/JPEGImages/x.jpg /SegmentationClassAug/x.png``:
    the id is then the stem of the first column.
    """
    if not path.is_file():
        raise DatasetError(f"{dataset}: split list {path} not found. Expected layout:\n{layout}")
    ids = [Path(line.split()[0]).stem for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"{dataset}: split list {path} is empty")
    return ids


def check_pairs(pairs: Iterable[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    """Every listed image and mask must exist; a missing one names both paths."""
    pairs = list(pairs)
    for image_path, mask_path in pairs:
        missing = [kind for kind, path in (("image", image_path), ("mask", mask_path)) if not path.is_file()]
        if missing:
            raise DatasetError(
                f"{' and '.join(missing)} missing for the pair image={image_path} mask={mask_path}"
            )
    return pairs


def pair_by_key(
    images: dict[str, Path], masks: dict[str, Path], mask_hint: str, image_hint: str
) -> list[tuple[Path, Path]]:
    """Pair images and masks sharing a key; an image without a mask (or the reverse) raises.

    Args:
        images: ``{key: image path}``.
        masks: ``{key: mask path}``.
        mask_hint: format string of the expected mask path, given ``path`` = the image path.
        image_hint: format string of the expected image path, given ``path`` = the mask path.
    """
    for key, image_path in images.items():
        if key not in masks:
            raise DatasetError(
                f"image {image_path} has no mask (expected {mask_hint.format(path=image_path)})"
            )
    for key, mask_path in masks.items():
        if key not in images:
            raise DatasetError(
                f"mask {mask_path} has no image (expected {image_hint.format(path=mask_path)})"
            )
    return [(images[key], masks[key]) for key in sorted(images)]


class PairedFilesSource(SegmentationSource):
    """A split stored as image files with one label file each.

    Args:
        name: dataset name, for messages.
        split: split name, for messages and the cache fingerprint.
        root: dataset root, for the cache fingerprint.
        pairs: ``(image path, mask path)`` per sample; both must exist.
        labels: how raw mask values map to train ids.
    """

    def __init__(
        self, name: str, split: str, root: Path, pairs: Sequence[tuple[Path, Path]], labels: LabelMapping
    ) -> None:
        self.name = name
        self.split = split
        self.root = Path(root).resolve()
        self.pairs = list(pairs)
        self.labels = labels
        self.num_classes = labels.num_classes

    def __len__(self) -> int:
        return len(self.pairs)

    def sample_name(self, index: int) -> str:
        return str(self.pairs[index][0])

    def sample_files(self, index: int) -> tuple[Path, ...]:
        return tuple(self.pairs[index])

    def fingerprint(self) -> dict:
        return {
            "dataset": self.name,
            "split": self.split,
            "root": str(self.root),
            "num_samples": len(self.pairs),
            "masks_sha256": hashlib.sha256(
                "\n".join(str(mask) for _, mask in self.pairs).encode()
            ).hexdigest(),
        }

    def load_mask(self, index: int) -> np.ndarray:
        mask_path = self.pairs[index][1]
        return self.labels(read_label(mask_path), mask_path)

    def sample_size(self, index: int) -> tuple[int, int]:
        width, height = open_image(self.pairs[index][0], decode=False).size
        return height, width

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.pairs[index]
        image = read_rgb(image_path)
        mask = self.load_mask(index)
        if image.shape[:2] != mask.shape:
            raise DatasetError(
                f"{image_path}: image size {image.shape[1]}x{image.shape[0]} (WxH) does not match "
                f"its mask {mask_path} of size {mask.shape[1]}x{mask.shape[0]}"
            )
        return image, mask
