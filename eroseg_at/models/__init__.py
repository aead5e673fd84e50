"""Segmentation models: SMP architectures behind one wrapper that takes images in [0, 1]."""

from eroseg_at.models.factory import available_models, build_model
from eroseg_at.models.wrapper import SegmentationModel

__all__ = ["SegmentationModel", "available_models", "build_model"]
