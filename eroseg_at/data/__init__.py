"""Datasets and the LightningDataModule that serves them (knows nothing of models or attacks)."""

import os

# albumentations asks PyPI for a newer release when it is imported: a network call on every run, and
# without network a UserWarning (an error under the test settings). Set before any albumentations import.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from eroseg_at.data.datamodule import SegmentationDataModule
from eroseg_at.data.errors import DatasetError
from eroseg_at.data.shapes import ShapesDataset
from eroseg_at.data.source import SegmentationSource

__all__ = ["DatasetError", "SegmentationDataModule", "SegmentationSource", "ShapesDataset"]
