"""Worst case over an ensemble of attacks, per image, from per-image statistics.

Croce, Singh and Hein (SEA, ECCV 2024) showed that a single attack overestimates segmentation robustness;
the honest figure keeps, for every image, the attack output that hurts most. Pixel accuracy decomposes
over images, so its worst case is the per-image minimum. mIoU does not (it is computed from counts summed
over the dataset), so it is minimised greedily: start from the single attack with the lowest mIoU, then
give each image the attack whose output lowers the dataset mIoU most, for a few rounds.

Every score needs, per image and class, only three counts over the valid pixels: the intersection I (pixels
of the class predicted as it), the label count L and the prediction count P. Over any set of images
``IoU_c = ΣI / (ΣL + ΣP − ΣI)`` and pixel accuracy ``= Σ_c ΣI / Σ_c ΣL``, so an image costs ``3·C`` int64
(24·C bytes: 3.6 KB at ADE20K's 150 classes) per member instead of a ``C × C`` confusion matrix (8·C²: 180 KB).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from eroseg_at.metrics import SegmentationScores

# Rows of a statistics tensor [..., 3, C].
INTERSECTION, LABEL_COUNT, PREDICTION_COUNT = 0, 1, 2


def per_image_statistics(
    predictions: Tensor, labels: Tensor, num_classes: int, ignore_index: int = 255
) -> Tensor:
    """Per image and class: intersection, label count and prediction count over the valid pixels.

    Raises:
        ValueError: If a label other than ``ignore_index``, or a prediction at a valid pixel, lies outside
            ``[0, num_classes)``.

    Shape:
        - predictions, labels: ``[N, H, W]`` integer.
        - output: ``[N, 3, C]`` int64 on the CPU (rows :data:`INTERSECTION`, :data:`LABEL_COUNT`,
          :data:`PREDICTION_COUNT`).
    """
    if predictions.shape != labels.shape:
        raise ValueError(
            f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} differ in shape"
        )
    labels = labels.to(torch.int64)
    predictions = predictions.to(torch.int64)
    valid = labels != ignore_index
    for name, values in (("labels", labels), ("predictions", predictions)):
        bad = valid & ((values < 0) | (values >= num_classes))
        if bad.any():
            raise ValueError(
                f"{name} hold {values[bad].unique().tolist()}, outside [0, {num_classes}) at pixels "
                f"not labelled ignore_index={ignore_index}"
            )
    images = labels.shape[0]
    offsets = torch.arange(images, device=labels.device).view(-1, 1, 1) * num_classes
    label_cells, prediction_cells = (offsets + labels)[valid], (offsets + predictions)[valid]
    cells = images * num_classes
    counts = [
        torch.bincount(label_cells[label_cells == prediction_cells], minlength=cells),
        torch.bincount(label_cells, minlength=cells),
        torch.bincount(prediction_cells, minlength=cells),
    ]
    return torch.stack([count.view(images, num_classes) for count in counts], dim=1).cpu()


def class_iou(statistics: Tensor) -> Tensor:
    """IoU of each class, NaN where the class is absent from labels and predictions.

    The same operations as :func:`eroseg_at.metrics.scores_from_confusion_matrix` on the counts (all exact
    integers in float64), so the values are bitwise those of the confusion-matrix computation.

    Shape:
        - statistics: ``[..., 3, C]``; output: ``[..., C]`` float64.
    """
    counts = statistics.double()
    intersection = counts[..., INTERSECTION, :]
    union = counts[..., PREDICTION_COUNT, :] + counts[..., LABEL_COUNT, :] - intersection
    return torch.where(union > 0, intersection / union.clamp_min(1), torch.full_like(union, float("nan")))


def miou(statistics: Tensor) -> Tensor:
    """mIoU over the classes present in labels or predictions.

    Shape:
        - statistics: ``[..., 3, C]`` (summed over the images it scores); output: ``[...]`` float64.
    """
    return class_iou(statistics).nanmean(-1)


def pixel_accuracy(statistics: Tensor) -> Tensor:
    """Fraction of correct valid pixels (NaN without valid pixels).

    Shape:
        - statistics: ``[..., 3, C]``; output: ``[...]`` float64 (per image for per-image statistics).
    """
    correct = statistics[..., INTERSECTION, :].sum(-1).double()
    total = statistics[..., LABEL_COUNT, :].sum(-1).double()
    return torch.where(total > 0, correct / total.clamp_min(1), torch.nan)


def scores_from_statistics(statistics: Tensor) -> SegmentationScores:
    """mIoU, pixel accuracy and per-class IoU of summed statistics ``[3, C]``."""
    return SegmentationScores(
        miou=miou(statistics), pixel_accuracy=pixel_accuracy(statistics), iou_per_class=class_iou(statistics)
    )


def dataset_miou(statistics: Tensor) -> float:
    """Dataset-level mIoU of summed statistics ``[3, C]``."""
    return float(miou(statistics))


@dataclass
class WorstCase:
    """The per-image choice of ensemble member and what it scores.

    Attributes:
        miou_choice: ``[N]`` index of the member chosen for each image by the greedy mIoU procedure.
        accuracy_choice: ``[N]`` index of the member with the lowest pixel accuracy on each image.
        miou_statistics: ``[3, C]`` summed statistics of the ``miou_choice``.
        accuracy_statistics: ``[3, C]`` summed statistics of the ``accuracy_choice``.
        rounds: Greedy rounds run (the last one changed nothing unless ``max_rounds`` was reached).
    """

    miou_choice: Tensor
    accuracy_choice: Tensor
    miou_statistics: Tensor
    accuracy_statistics: Tensor
    rounds: int


def lowest_accuracy_choice(statistics: Tensor) -> Tensor:
    """Per image, the member with the lowest pixel accuracy (ties: the first member).

    Shape:
        - statistics: ``[A, N, 3, C]``; output: ``[N]`` int64.
    """
    # An image without valid pixels scores the same under every member: any choice is right for it.
    return pixel_accuracy(statistics).nan_to_num(nan=1.0).argmin(0)


def greedy_miou_choice(statistics: Tensor, max_rounds: int = 5) -> tuple[Tensor, int]:
    """SEA's greedy per-image choice of member that lowers the dataset mIoU.

    Starts with every image on the member of lowest dataset mIoU (the first on ties). Each round visits
    the images in order and moves an image to the member whose output lowers the dataset mIoU most (the
    first such member on ties), if any lowers it; rounds repeat until one changes nothing or ``max_rounds``
    have run. The result's mIoU is never above that of any single member.

    Returns:
        The ``[N]`` choice and the number of rounds run.

    Shape:
        - statistics: ``[A, N, 3, C]`` integer.
    """
    if statistics.ndim != 4 or statistics.shape[2] != 3:
        raise ValueError(f"expected per-image statistics [A, N, 3, C], got {tuple(statistics.shape)}")
    if max_rounds < 1:
        raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
    images = statistics.shape[1]
    single = miou(statistics.sum(1))
    # NaN (no valid pixel anywhere) never lowers anything, as a comparison with NaN is false.
    start = int(single.nan_to_num(nan=torch.inf).argmin())
    choice = torch.full((images,), start, dtype=torch.int64)
    total = statistics[start].sum(0)
    current = float(single[start])
    rounds = 0
    while rounds < max_rounds:
        rounds += 1
        changed = False
        for image in range(images):
            member = int(choice[image])
            without = total - statistics[member, image]
            candidates = miou(without + statistics[:, image]).nan_to_num(nan=torch.inf)
            candidates[member] = torch.inf
            best = int(candidates.argmin())  # the first of equal minima, as a strict '<' scan would pick
            if float(candidates[best]) < current:
                choice[image] = best
                total = without + statistics[best, image]
                current = float(candidates[best])
                changed = True
        if not changed:
            break
    return choice, rounds


def select(statistics: Tensor, choice: Tensor) -> Tensor:
    """The per-image statistics of the chosen members.

    Shape:
        - statistics: ``[A, N, 3, C]``; choice: ``[N]``; output: ``[N, 3, C]``.
    """
    return statistics[choice, torch.arange(statistics.shape[1])]


def worst_case(statistics: Tensor, max_rounds: int = 5) -> WorstCase:
    """Worst case over the ensemble members for pixel accuracy and for mIoU.

    Shape:
        - statistics: ``[A, N, 3, C]`` per-image statistics of A members on the same N images.
    """
    miou_choice, rounds = greedy_miou_choice(statistics, max_rounds)
    accuracy_choice = lowest_accuracy_choice(statistics)
    return WorstCase(
        miou_choice=miou_choice,
        accuracy_choice=accuracy_choice,
        miou_statistics=select(statistics, miou_choice).sum(0),
        accuracy_statistics=select(statistics, accuracy_choice).sum(0),
        rounds=rounds,
    )
