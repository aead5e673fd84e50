"""ADE20K (SceneParsing ``ADEChallengeData2016``), 150 classes, label 0 ("other") ignored."""

from __future__ import annotations

from pathlib import Path

from eroseg_at.data.files import LabelMapping, PairedFilesSource, list_files, pair_by_key, require_directory

ADE20K_LAYOUT = """\
<dataset.root>/                      (ADEChallengeData2016, or its parent)
  images/{training,validation}/ADE_<split>_<n>.jpg
  annotations/{training,validation}/ADE_<split>_<n>.png   0 = other (ignored), 1-150 = classes"""

NUM_CLASSES = 150


def label_mapping(ignore_index: int = 255) -> LabelMapping:
    """Raw 0 ("other") to ignore and raw k in 1-150 to class k-1."""
    table = {raw: raw - 1 for raw in range(1, NUM_CLASSES + 1)}
    table[0] = ignore_index
    return LabelMapping(table, NUM_CLASSES, "ADE20K labels 0-150")


def ade20k(root: str | Path, split: str = "training") -> PairedFilesSource:
    """A split (``training`` or ``validation``) of ADE20K."""
    root = Path(root).expanduser()
    if (root / "ADEChallengeData2016").is_dir():
        root = root / "ADEChallengeData2016"
    image_dir = require_directory(root / "images" / split, "ade20k", ADE20K_LAYOUT)
    label_dir = require_directory(root / "annotations" / split, "ade20k", ADE20K_LAYOUT)
    pairs = pair_by_key(
        list_files(image_dir, (".jpg", ".jpeg", ".png")),
        list_files(label_dir, (".png",)),
        mask_hint=f"{label_dir}/<stem>.png",
        image_hint=f"{image_dir}/<stem>.jpg",
    )
    return PairedFilesSource("ade20k", split, root, pairs, label_mapping())
