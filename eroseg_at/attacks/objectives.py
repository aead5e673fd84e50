"""Per-pixel pieces that the attack objectives are built from.

Every function takes float32 logits, integer labels and the boolean ``valid`` mask (labels that are not
``ignore_index``); values at invalid pixels are meaningless and are discarded by :func:`valid_mean`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from eroseg_at.predictions import predicted_classes


def valid_mean(pixel_loss: Tensor, valid: Tensor) -> Tensor:
    """Averages a per-pixel map over the valid pixels of each image.

    An image without valid pixels gets 0 (and a zero gradient), never NaN.

    Shape:
        pixel_loss: [B, H, W], float; its value at invalid pixels is discarded.
        valid: [B, H, W], bool.
        output: [B].
    """
    count = valid.flatten(1).sum(1).clamp_min(1)
    return torch.where(valid, pixel_loss, 0.0).flatten(1).sum(1) / count


def image_mean(pixel_loss: Tensor, valid: Tensor) -> Tensor:
    """Averages a per-pixel map over all H·W pixels of each image, invalid pixels counting as 0.

    The papers' ``1/(HW) Σ`` normalisation; unlike :func:`valid_mean` it shrinks an image's loss with the
    share of its pixels that are ignored.

    Shape:
        pixel_loss: [B, H, W], float; its value at invalid pixels is discarded.
        valid: [B, H, W], bool.
        output: [B].
    """
    return torch.where(valid, pixel_loss, 0.0).flatten(1).sum(1) / valid[0].numel()


def correct_pixels(logits: Tensor, labels: Tensor, valid: Tensor) -> Tensor:
    """Valid pixels whose predicted class equals the label.

    Shape:
        logits: [B, C, H, W]; labels: [B, H, W] int64; valid: [B, H, W] bool; output: [B, H, W] bool.
    """
    return (predicted_classes(logits) == labels) & valid


def _safe_labels(labels: Tensor, valid: Tensor) -> Tensor:
    """Labels with invalid pixels set to class 0 so they can index; their values are discarded later."""
    return labels.masked_fill(~valid, 0)


def pixel_cross_entropy(logits: Tensor, labels: Tensor, valid: Tensor) -> Tensor:
    """Cross-entropy ``CE_ij = −log softmax(f)_{y_ij}`` of each pixel; 0 at invalid pixels.

    Shape:
        logits: [B, C, H, W]; labels, valid: [B, H, W]; output: [B, H, W].
    """
    loss = F.cross_entropy(logits, _safe_labels(labels, valid), reduction="none")
    return loss.masked_fill(~valid, 0.0)


def label_log_probability(logits: Tensor, labels: Tensor, valid: Tensor) -> Tensor:
    """``log p_y`` of each pixel's label (0 at invalid pixels).

    Shape:
        logits: [B, C, H, W]; labels, valid: [B, H, W]; output: [B, H, W].
    """
    log_probs = logits.log_softmax(1).gather(1, _safe_labels(labels, valid).unsqueeze(1)).squeeze(1)
    return log_probs.masked_fill(~valid, 0.0)


def margin(logits: Tensor, labels: Tensor, valid: Tensor, kappa: float = 0.0) -> Tensor:
    """Carlini–Wagner margin ``min(max_{k≠y} f_k − f_y, κ)`` of each pixel, on logits.

    Ascending it pushes still-correct pixels across the decision boundary; once a pixel is wrong by more
    than κ it stops contributing.

    Shape:
        logits: [B, C, H, W]; labels, valid: [B, H, W]; output: [B, H, W].
    """
    label_onehot = F.one_hot(_safe_labels(labels, valid), logits.shape[1]).permute(0, 3, 1, 2).bool()
    label_logit = logits.gather(1, _safe_labels(labels, valid).unsqueeze(1)).squeeze(1)
    best_other = logits.masked_fill(label_onehot, float("-inf")).amax(1)
    return (best_other - label_logit).clamp(max=kappa).masked_fill(~valid, 0.0)


def js_divergence(logits: Tensor, labels: Tensor, valid: Tensor) -> Tensor:
    """Jensen–Shannon divergence between ``p = softmax(f)`` and ``onehot(y)`` of each pixel.

    With ``m = (p + onehot(y)) / 2`` it reduces to a function of ``p_y`` alone:
    ``JS = ½ [2 log 2 + p_y log p_y − (1 + p_y) log(1 + p_y)]``, in [0, log 2]. It is computed from
    ``log p_y`` so that a vanishing ``p_y`` gives a zero gradient, not NaN.

    Shape:
        logits: [B, C, H, W]; labels, valid: [B, H, W]; output: [B, H, W].
    """
    log_p = label_log_probability(logits, labels, valid)
    p = log_p.exp()
    divergence = 0.5 * (2 * math.log(2.0) + p * log_p - (1 + p) * torch.log1p(p))
    return divergence.masked_fill(~valid, 0.0)


def normalized_label_logit(logits: Tensor, labels: Tensor, valid: Tensor) -> Tensor:
    """``f_y / ‖f‖₂`` of each pixel: its label's logit after L2 normalisation over the classes (0 at invalid pixels).

    Equal to the cosine similarity between the logit vector and ``onehot(y)``. Logits that are all 0 give 0.

    Shape:
        logits: [B, C, H, W]; labels, valid: [B, H, W]; output: [B, H, W].
    """
    label_logit = logits.gather(1, _safe_labels(labels, valid).unsqueeze(1)).squeeze(1)
    # 1e-12 only guards the all-zero logit vector; it is far below any norm a model produces.
    return (label_logit / logits.norm(dim=1).clamp_min(1e-12)).masked_fill(~valid, 0.0)


def tsallis_cross_entropy(logits: Tensor, labels: Tensor, valid: Tensor, q: float) -> Tensor:
    """Tsallis cross-entropy ``(1 − p_y^(1−q)) / (1 − q)`` of each pixel; ``−log p_y`` (plain CE) at q = 1.

    Its gradient is CE's scaled by ``p_y^(1−q)``: for q < 1 pixels still confidently right weigh most and pixels
    already lost (small ``p_y``) hardly at all. Computed from ``log p_y`` as ``−expm1((1−q) log p_y)/(1−q)``, so a
    vanishing ``p_y`` gives a finite value and gradient.

    Shape:
        logits: [B, C, H, W]; labels, valid: [B, H, W]; output: [B, H, W] (0 at invalid pixels).
    """
    log_p = label_log_probability(logits, labels, valid)
    if q == 1:
        return -log_p
    return -torch.expm1((1 - q) * log_p) / (1 - q)
