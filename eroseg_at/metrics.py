"""Dataset-level segmentation scores from one accumulated confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchmetrics.classification import MulticlassJaccardIndex

from eroseg_at.predictions import predicted_classes


# Not frozen: torchmetrics passes compute()'s result through apply_to_collection, which sets fields.
@dataclass
class SegmentationScores:
    """The scores of one confusion matrix (float64 tensors).

    Attributes:
        miou: Mean IoU over the classes present in labels or predictions (scalar).
        pixel_accuracy: Fraction of valid pixels predicted right (scalar; NaN without valid pixels).
        iou_per_class: ``[C]``, NaN for a class absent from both labels and predictions.
    """

    miou: torch.Tensor
    pixel_accuracy: torch.Tensor
    iou_per_class: torch.Tensor


def scores_from_confusion_matrix(confmat: torch.Tensor) -> SegmentationScores:
    """mIoU, pixel accuracy and per-class IoU from a confusion matrix.

    A class whose union is empty (absent from both target and prediction) has IoU
    NaN and does not count towards the mean, as in the standard VOC/Cityscapes
    protocol; a class present in the target but never predicted counts as 0.

    Args:
        confmat: ``[C, C]`` counts, rows are targets and columns predictions.
    """
    confmat = confmat.double()
    true_positive = confmat.diagonal()
    union = confmat.sum(0) + confmat.sum(1) - true_positive
    iou = torch.where(union > 0, true_positive / union.clamp_min(1), torch.full_like(union, float("nan")))
    total = confmat.sum()
    pixel_accuracy = torch.where(total > 0, true_positive.sum() / total.clamp_min(1), torch.nan)
    return SegmentationScores(miou=iou.nanmean(), pixel_accuracy=pixel_accuracy, iou_per_class=iou)


class SegmentationMetrics(MulticlassJaccardIndex):
    """torchmetrics' ``MulticlassJaccardIndex`` that reports every score of its confusion matrix.

    The confusion matrix accumulates over all ``update`` calls (a whole epoch or
    evaluation run) and is summed across processes at ``compute()``, so the mIoU
    is the dataset-level one, never a mean of per-batch mIoUs. Pixels labelled
    ``ignore_index`` are dropped.

    Shape:
        - ``update(preds, target)``: ``preds`` ``[B, C, H, W]`` logits or ``[B, H, W]``
          labels, ``target`` ``[B, H, W]`` int64.
        - ``compute()``: see :func:`scores_from_confusion_matrix`.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        super().__init__(num_classes=num_classes, ignore_index=ignore_index, average="none")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if preds.ndim == target.ndim + 1:
            preds = predicted_classes(preds)
        super().update(preds, target)

    def compute(self) -> SegmentationScores:
        return scores_from_confusion_matrix(self.confmat)
