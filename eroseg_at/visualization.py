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


def sensitive_overlay(image: torch.Tensor, sensitive: torch.Tensor) -> np.ndarray:
    """The image dimmed to grey, with the pixels of a sensitive set (EroSeg's ``S_t``) in red.

    Shape:
        image: ``[3, H, W]`` in [0, 1]; sensitive: ``[H, W]`` bool; output: ``[H, W, 3]`` float in [0, 1].
    """
    grey = image.float().mean(0).cpu().numpy()
    rgb = np.repeat((0.25 + 0.5 * grey)[..., None], 3, axis=2)
    rgb[sensitive.cpu().numpy()] = (1.0, 0.1, 0.1)
    return rgb


def perturbation_magnitude(delta: torch.Tensor, eps: float) -> np.ndarray:
    """``max_c |δ_c| / eps`` per pixel as grey levels: black is no perturbation, white the ball's surface.

    Shape:
        delta: ``[3, H, W]``; output: ``[H, W, 3]`` float in [0, 1].
    """
    magnitude = (delta.float().abs().amax(0) / eps).clamp(0, 1).cpu().numpy()
    return np.repeat(magnitude[..., None], 3, axis=2)


def mosaic(rows: Sequence[Sequence[np.ndarray]], gap: int = 2) -> np.ndarray:
    """Tiles of one size (``[H, W, 3]`` in [0, 1]) laid out in rows, separated by white gaps of ``gap`` pixels."""
    height, width, _ = rows[0][0].shape
    columns = max(len(row) for row in rows)
    canvas = np.ones((len(rows) * (height + gap) - gap, columns * (width + gap) - gap, 3))
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            top, left = r * (height + gap), c * (width + gap)
            canvas[top : top + height, left : left + width] = tile
    return canvas
