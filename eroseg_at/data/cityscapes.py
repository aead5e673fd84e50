"""Cityscapes fine annotations, mapped from label ids to the 19 train ids."""

from __future__ import annotations

from pathlib import Path

from eroseg_at.data.files import LabelMapping, PairedFilesSource, pair_by_key, require_directory

CITYSCAPES_LAYOUT = """\
<dataset.root>/
  leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png   label ids 0-33"""

# labelId -> trainId of cityscapesScripts' labels.py; the 15 unused ids go to ignore.
LABEL_ID_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10}
LABEL_ID_TO_TRAIN_ID |= {24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
NUM_CLASSES = 19


def label_mapping(ignore_index: int = 255) -> LabelMapping:
    """Label ids 0-33 to train ids; 255 (the license plate's -1 stored as a byte) is ignore."""
    table = {label_id: LABEL_ID_TO_TRAIN_ID.get(label_id, ignore_index) for label_id in range(34)}
    table[255] = ignore_index
    return LabelMapping(table, NUM_CLASSES, "Cityscapes label ids 0-33 or 255")


def cityscapes(root: str | Path, split: str = "train", annotations: str = "gtFine") -> PairedFilesSource:
    """A split of Cityscapes.

    Args:
        root: directory holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``train``, ``val`` (or ``train_extra`` with ``annotations=gtCoarse``).
        annotations: ``gtFine`` or ``gtCoarse``.
    """
    root = Path(root).expanduser()
    require_directory(root, "cityscapes", CITYSCAPES_LAYOUT)
    image_dir = require_directory(root / "leftImg8bit" / split, "cityscapes", CITYSCAPES_LAYOUT)
    label_dir = require_directory(root / annotations / split, "cityscapes", CITYSCAPES_LAYOUT)
    image_suffix, label_suffix = "_leftImg8bit.png", f"_{annotations}_labelIds.png"
    images = {
        str(path.relative_to(image_dir))[: -len(image_suffix)]: path
        for path in image_dir.glob(f"*/*{image_suffix}")
    }
    labels = {
        str(path.relative_to(label_dir))[: -len(label_suffix)]: path
        for path in label_dir.glob(f"*/*{label_suffix}")
    }
    pairs = pair_by_key(
        images,
        labels,
        mask_hint=f"{label_dir}/<city>/<name>{label_suffix}",
        image_hint=f"{image_dir}/<city>/<name>{image_suffix}",
    )
    return PairedFilesSource("cityscapes", f"{annotations}/{split}", root, pairs, label_mapping())
