"""Pictures of perturbations and label maps, shared by training's W&B panels and evaluation's figures.

It lives below both (training and evaluation are siblings) and needs torch and numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def amplified_perturbation(clean: torch.Tensor, adversarial: torch.Tensor) -> torch.Tensor:
    """Perturbation scaled so that its largest magnitude maps to 0 or 1 around grey 0.5.

    Shape:
        - Input: two ``[3, H, W]`` images in [0, 1].
        - Output: ``[3, H, W]`` in [0, 1].
    """
    delta = adversarial - clean
    scale = delta.abs().amax().clamp_min(1e-12)
    return 0.5 + 0.5 * delta / scale


def colourise(labels: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int) -> np.ndarray:
    """RGB image in [0, 1] of a label map in the dataset's colours; ``ignore_index`` pixels white.

    Args:
        labels: Class indices, ``ignore_index`` allowed.
        palette: ``[r, g, b]`` (0-255) per class, as ``dataset.palette`` (VOC's, Cityscapes', ...).
        ignore_index: The label drawn white.

    Shape:
        labels: ``[H, W]`` integer; output: ``[H, W, 3]`` float in [0, 1].
    """
    colours = np.asarray(palette, dtype=np.float64) / 255.0
    rgb = np.ones((*labels.shape, 3))
    valid = (labels != ignore_index) & (labels >= 0) & (labels < len(colours))
    rgb[valid] = colours[labels[valid]]
    return rgb
