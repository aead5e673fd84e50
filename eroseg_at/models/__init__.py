"""Segmentation models behind one contract: images in [0, 1] in, logits at the input size out, normalisation
inside (:mod:`.adapter`). SMP architectures by name (:func:`build_model`) and models read from files or given in
memory (:mod:`.sources`: torchvision, Hugging Face, TorchScript, SMP directories, any ``nn.Module``).
"""

from eroseg_at.models.adapter import FeatureSegmentationAdapter, SegmentationAdapter, SourceInfo
from eroseg_at.models.errors import ModelFileNotFoundError, ModelSourceError
from eroseg_at.models.factory import available_models, build_model
from eroseg_at.models.sources import (
    adapt_model,
    huggingface_model,
    smp_model,
    torchscript_model,
    torchvision_model,
)

__all__ = [
    "FeatureSegmentationAdapter",
    "ModelFileNotFoundError",
    "ModelSourceError",
    "SegmentationAdapter",
    "SourceInfo",
    "adapt_model",
    "available_models",
    "build_model",
    "huggingface_model",
    "smp_model",
    "torchscript_model",
    "torchvision_model",
]
