"""Datasets and the LightningDataModule that serves them (knows nothing of models or attacks)."""

from eroseg_at.data.datamodule import SegmentationDataModule
from eroseg_at.data.errors import DatasetError
from eroseg_at.data.shapes import ShapesDataset
from eroseg_at.data.source import SegmentationSource

__all__ = ["DatasetError", "SegmentationDataModule", "SegmentationSource", "ShapesDataset"]
