"""Pascal VOC 2012 segmentation and its SBD-augmented training set (``voc_aug``)."""

from __future__ import annotations

from pathlib import Path

from eroseg_at.data.errors import DatasetError
from eroseg_at.data.files import LabelMapping, PairedFilesSource, check_pairs, read_split_list

NUM_CLASSES = 21

# Four lines each, so that an error showing one stays short (docs/DATASETS.md draws the full tree).
VOC_LAYOUT = """\
VOCdevkit/VOC2012/                   dataset.root: VOCdevkit, or VOC2012 itself
  JPEGImages/<id>.jpg
  SegmentationClass/<id>.png         palette PNGs: palette index = class (0-20), 255 = ignore
  ImageSets/Segmentation/train.txt, val.txt   one <id> per line"""

VOC_AUG_LAYOUT = """\
VOCdevkit/VOC2012/                   dataset.root: VOCdevkit, or VOC2012 itself
  JPEGImages/<id>.jpg, SegmentationClass/<id>.png   images, and the VOC labels (used for val)
  SegmentationClassAug/<id>.png      SBD-augmented labels: class indices 0-20, 255 = ignore
  ImageSets/Segmentation/train_aug.txt (10,582 ids, or DeepLab '/JPEGImages/x.jpg /SegmentationClassAug/x.png' lines), val.txt"""


def voc_directory(root: str | Path, layout: str = VOC_LAYOUT) -> Path:
    """The ``VOC2012`` directory, given either ``VOCdevkit`` or ``VOC2012`` itself."""
    root = Path(root).expanduser()
    for candidate in (root / "VOC2012", root):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise DatasetError(f"voc: no VOC2012/JPEGImages under dataset.root={root}. Expected layout:\n{layout}")


def voc(
    root: str | Path, split: str = "train", labels: str = "SegmentationClass", layout: str = VOC_LAYOUT
) -> PairedFilesSource:
    """A split of Pascal VOC 2012 segmentation.

    Args:
        root: ``VOCdevkit`` (or ``VOC2012``) directory.
        split: name of the list ``ImageSets/Segmentation/<split>.txt``.
        labels: label directory under ``VOC2012`` (``SegmentationClassAug`` for the SBD set).
        layout: expected layout, shown when something is missing.
    """
    base = voc_directory(root, layout)
    ids = read_split_list(base / "ImageSets" / "Segmentation" / f"{split}.txt", "voc", layout)
    pairs = check_pairs((base / "JPEGImages" / f"{id_}.jpg", base / labels / f"{id_}.png") for id_ in ids)
    return PairedFilesSource("voc", f"{labels}/{split}", base, pairs, LabelMapping.identity(NUM_CLASSES))


def voc_aug(root: str | Path, split: str = "train_aug") -> PairedFilesSource:
    """The SBD-augmented VOC training set (``SegmentationClassAug`` + ``train_aug.txt``)."""
    return voc(root, split, labels="SegmentationClassAug", layout=VOC_AUG_LAYOUT)
