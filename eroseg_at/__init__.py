"""eroseg-at: EroSeg attack and EroSeg-AT adversarial training for semantic segmentation."""

__version__ = "0.2.0.dev0"
