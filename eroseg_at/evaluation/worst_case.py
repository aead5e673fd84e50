"""Worst case over an ensemble of attacks, per image, from per-image confusion matrices.

Croce, Singh and Hein (SEA, ECCV 2024) showed that a single attack overestimates segmentation robustness;
the honest figure keeps, for every image, the attack output that hurts most. Pixel accuracy decomposes
over images, so its worst case is the per-image minimum. mIoU does not (it is computed from the summed
confusion matrix), so it is minimised greedily: start from the single attack with the lowest mIoU, then
give each image the attack whose output lowers the dataset mIoU most, for a few rounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from eroseg_at.metrics import scores_from_confusion_matrix


def per_image_confusion_matrices(
    predictions: Tensor, labels: Tensor, num_classes: int, ignore_index: int = 255
) -> Tensor:
    """One confusion matrix per image (rows targets, columns predictions), ``ignore_index`` dropped.

    Raises:
        ValueError: If a label other than ``ignore_index`` lies outside ``[0, num_classes)``.

    Shape:
        - predictions, labels: ``[N, H, W]`` integer.
        - output: ``[N, C, C]`` int64 on the CPU.
    """
    if predictions.shape != labels.shape:
        raise ValueError(
            f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} differ in shape"
        )
    labels = labels.to(torch.int64)
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        raise ValueError(
            f"labels hold {labels[bad].unique().tolist()}, outside [0, {num_classes}) and not ignore_index={ignore_index}"
        )
    images = torch.arange(labels.shape[0], device=labels.device).view(-1, 1, 1).expand_as(labels)
    cells = (images * num_classes + labels) * num_classes + predictions.to(torch.int64)
    counts = torch.bincount(cells[valid], minlength=labels.shape[0] * num_classes * num_classes)
    return counts.view(labels.shape[0], num_classes, num_classes).cpu()


def pixel_accuracy_per_image(confusion: Tensor) -> Tensor:
    """Fraction of correct valid pixels of each image (NaN for an image without valid pixels).

    Shape:
        - confusion: ``[..., N, C, C]``; output: ``[..., N]`` float64.
    """
    correct = confusion.diagonal(dim1=-2, dim2=-1).sum(-1).double()
    total = confusion.sum((-2, -1)).double()
    return torch.where(total > 0, correct / total.clamp_min(1), torch.nan)


def dataset_miou(confusion: Tensor) -> float:
    """Dataset-level mIoU of a summed ``[C, C]`` confusion matrix."""
    return float(scores_from_confusion_matrix(confusion).miou)


@dataclass
class WorstCase:
    """The per-image choice of ensemble member and what it scores.

    Attributes:
        miou_choice: ``[N]`` index of the member chosen for each image by the greedy mIoU procedure.
        accuracy_choice: ``[N]`` index of the member with the lowest pixel accuracy on each image.
        miou_confusion: ``[C, C]`` summed confusion matrix of the ``miou_choice``.
        accuracy_confusion: ``[C, C]`` summed confusion matrix of the ``accuracy_choice``.
        rounds: Greedy rounds run (the last one changed nothing unless ``max_rounds`` was reached).
    """

    miou_choice: Tensor
    accuracy_choice: Tensor
    miou_confusion: Tensor
    accuracy_confusion: Tensor
    rounds: int


def lowest_accuracy_choice(confusion: Tensor) -> Tensor:
    """Per image, the member with the lowest pixel accuracy (ties: the first member).

    Shape:
        - confusion: ``[A, N, C, C]``; output: ``[N]`` int64.
    """
    # An image without valid pixels scores the same under every member: any choice is right for it.
    return pixel_accuracy_per_image(confusion).nan_to_num(nan=1.0).argmin(0)


def greedy_miou_choice(confusion: Tensor, max_rounds: int = 5) -> tuple[Tensor, int]:
    """SEA's greedy per-image choice of member that lowers the dataset mIoU.

    Starts with every image on the member of lowest dataset mIoU (the first on ties). Each round visits
    the images in order and moves an image to the member whose output lowers the dataset mIoU most, if any
    lowers it; rounds repeat until one changes nothing or ``max_rounds`` have run. The result's mIoU is
    never above that of any single member.

    Returns:
        The ``[N]`` choice and the number of rounds run.

    Shape:
        - confusion: ``[A, N, C, C]`` integer.
    """
    if confusion.ndim != 4 or confusion.shape[-1] != confusion.shape[-2]:
        raise ValueError(f"expected confusion matrices [A, N, C, C], got {tuple(confusion.shape)}")
    if max_rounds < 1:
        raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
    members, images = confusion.shape[:2]
    single = [dataset_miou(confusion[member].sum(0)) for member in range(members)]
    start = min(range(members), key=single.__getitem__)
    choice = torch.full((images,), start, dtype=torch.int64)
    total = confusion[start].sum(0)
    current = single[start]
    rounds = 0
    while rounds < max_rounds:
        rounds += 1
        changed = False
        for image in range(images):
            without = total - confusion[choice[image], image]
            best_member, best_miou = None, current
            for member in range(members):
                if member == choice[image]:
                    continue
                candidate = dataset_miou(without + confusion[member, image])
                if candidate < best_miou:
                    best_member, best_miou = member, candidate
            if best_member is not None:
                choice[image] = best_member
                total = without + confusion[best_member, image]
                current = best_miou
                changed = True
        if not changed:
            break
    return choice, rounds


def select(confusion: Tensor, choice: Tensor) -> Tensor:
    """The per-image confusion matrices of the chosen members.

    Shape:
        - confusion: ``[A, N, C, C]``; choice: ``[N]``; output: ``[N, C, C]``.
    """
    return confusion[choice, torch.arange(confusion.shape[1])]


def worst_case(confusion: Tensor, max_rounds: int = 5) -> WorstCase:
    """Worst case over the ensemble members for pixel accuracy and for mIoU.

    Shape:
        - confusion: ``[A, N, C, C]`` per-image confusion matrices of A members on the same N images.
    """
    miou_choice, rounds = greedy_miou_choice(confusion, max_rounds)
    accuracy_choice = lowest_accuracy_choice(confusion)
    return WorstCase(
        miou_choice=miou_choice,
        accuracy_choice=accuracy_choice,
        miou_confusion=select(confusion, miou_choice).sum(0),
        accuracy_confusion=select(confusion, accuracy_choice).sum(0),
        rounds=rounds,
    )
