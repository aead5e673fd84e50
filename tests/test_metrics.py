import math

import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from eroseg_at.metrics import SegmentationMetrics, scores_from_confusion_matrix


def test_scores_match_a_hand_computed_confusion_matrix_with_ignore_and_an_absent_class():
    # 4 classes; class 3 never appears in target or prediction; 255 pixels are ignored.
    target = torch.tensor([[0, 0, 0, 1, 1, 2, 255, 255]])
    preds = torch.tensor([[0, 0, 1, 1, 2, 2, 0, 3]])
    metric = SegmentationMetrics(num_classes=4, ignore_index=255)
    metric.update(preds, target)
    scores = metric.compute()
    # Hand-computed: rows target, cols prediction over the 6 valid pixels.
    #   class 0: TP 2, FP 0, FN 1 -> 2/3 ; class 1: TP 1, FP 1, FN 1 -> 1/3 ; class 2: TP 1, FP 1, FN 0 -> 1/2
    expected = torch.tensor([2 / 3, 1 / 3, 1 / 2])
    assert torch.allclose(scores.iou_per_class[:3].float(), expected)
    assert math.isnan(scores.iou_per_class[3])
    assert scores.miou.item() == pytest.approx(expected.mean().item())
    assert scores.pixel_accuracy.item() == pytest.approx(4 / 6)


def test_a_class_present_but_never_predicted_counts_as_zero():
    confmat = torch.tensor([[5, 0], [3, 0]])
    scores = scores_from_confusion_matrix(confmat)
    assert scores.iou_per_class.tolist() == pytest.approx([5 / 8, 0.0])
    assert scores.miou.item() == pytest.approx(5 / 16)


def test_accumulates_over_batches_not_a_mean_of_batch_mious():
    metric = SegmentationMetrics(num_classes=2)
    # Batch 1: perfect on 1 pixel of class 0. Batch 2: 3 pixels of class 1, one predicted 0.
    metric.update(torch.tensor([[0]]), torch.tensor([[0]]))
    metric.update(torch.tensor([[1, 1, 0]]), torch.tensor([[1, 1, 1]]))
    # Dataset-level: class 0 TP1 FP1 -> 1/2; class 1 TP2 FN1 -> 2/3.
    assert metric.compute().miou.item() == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_accepts_logits_and_agrees_with_torchmetrics_macro_jaccard():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 16, 16, generator=generator)
    target = torch.randint(0, 5, (3, 16, 16), generator=generator)
    target[:, :2] = 255
    ours = SegmentationMetrics(num_classes=5)
    reference = MulticlassJaccardIndex(num_classes=5, ignore_index=255, average="macro")
    ours.update(logits, target)
    reference.update(logits.argmax(1), target)
    assert ours.compute().miou.item() == pytest.approx(reference.compute().item(), abs=1e-6)


def test_all_ignored_gives_nan_not_an_error():
    metric = SegmentationMetrics(num_classes=3)
    metric.update(torch.zeros(1, 4, dtype=torch.long), torch.full((1, 4), 255))
    scores = metric.compute()
    assert math.isnan(scores.miou) and math.isnan(scores.pixel_accuracy)
