"""Lightning composition of models, data and attacks: the training module and the train entry point."""

from eroseg_at.training.module import AdversarialTrainingConfig, SegmentationModule

__all__ = ["AdversarialTrainingConfig", "SegmentationModule"]
