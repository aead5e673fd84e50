"""Lightning composition of models, data and attacks: the training module and ``train(cfg)``."""

from eroseg_at.training.module import AdversarialTraining, SegmentationModule, ValidationConfig
from eroseg_at.training.runner import TrainResult, train

__all__ = ["AdversarialTraining", "SegmentationModule", "TrainResult", "ValidationConfig", "train"]
