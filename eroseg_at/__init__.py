"""eroseg-at: EroSeg attack and EroSeg-AT adversarial training for semantic segmentation."""

__version__ = "0.1.0"
