"""Worst case over attacks: the greedy mIoU choice on a hand-built example, and its guarantees."""

from __future__ import annotations

import pytest
import torch

from eroseg_at.evaluation.worst_case import (
    dataset_miou,
    greedy_miou_choice,
    lowest_accuracy_choice,
    per_image_confusion_matrices,
    pixel_accuracy_per_image,
    select,
    worst_case,
)


def confusion(*cells: tuple[int, int, int]) -> torch.Tensor:
    """A 2-class confusion matrix from (target, prediction, count) cells."""
    matrix = torch.zeros(2, 2, dtype=torch.int64)
    for target, prediction, count in cells:
        matrix[target, prediction] = count
    return matrix


def test_per_image_confusion_matrices_count_each_image_and_drop_ignore():
    labels = torch.tensor([[[0, 1], [255, 1]], [[2, 2], [0, 255]]])
    predictions = torch.tensor([[[0, 0], [2, 1]], [[2, 1], [0, 0]]])
    matrices = per_image_confusion_matrices(predictions, labels, num_classes=3)
    expected = torch.zeros(2, 3, 3, dtype=torch.int64)
    expected[0, 0, 0], expected[0, 1, 0], expected[0, 1, 1] = 1, 1, 1
    expected[1, 2, 2], expected[1, 2, 1], expected[1, 0, 0] = 1, 1, 1
    assert torch.equal(matrices, expected)


def test_per_image_confusion_matrices_refuse_labels_outside_the_classes():
    with pytest.raises(ValueError, match=r"\[7\].*outside \[0, 3\)"):
        per_image_confusion_matrices(torch.zeros(1, 2, 2, dtype=torch.int64), torch.full((1, 2, 2), 7), 3)


def test_greedy_choice_on_a_hand_built_example():
    # Two images, two classes, three members. Image 0 is all class 0 (4 px), image 1 all class 1 (4 px).
    # Member A: image 0 fully wrong, image 1 right. Member B: image 0 right, image 1 half wrong.
    # Member C: both images a quarter wrong.
    members = torch.stack(
        [
            torch.stack([confusion((0, 1, 4)), confusion((1, 1, 4))]),  # A
            torch.stack([confusion((0, 0, 4)), confusion((1, 0, 2), (1, 1, 2))]),  # B
            torch.stack([confusion((0, 0, 3), (0, 1, 1)), confusion((1, 1, 3), (1, 0, 1))]),  # C
        ]
    )
    # Single members, by hand: A: IoU0 = 0/4, IoU1 = 4/8 -> 0.25; B: IoU0 = 4/6, IoU1 = 2/4 -> 0.583;
    # C: IoU0 = 3/5, IoU1 = 3/5 -> 0.6. Greedy starts from A (image 0: A, image 1: A).
    assert dataset_miou(members[0].sum(0)) == pytest.approx(0.25)
    # Image 0 stays on A (B or C there raise IoU0 from 0). Image 1 on B: total [[0, 4], [2, 2]],
    # IoU0 = 0, IoU1 = 2/8 -> 0.125; on C: [[0, 4], [1, 3]], IoU1 = 3/8 -> 0.1875. B lowers most.
    choice, rounds = greedy_miou_choice(members)
    assert choice.tolist() == [0, 1]
    assert dataset_miou(select(members, choice).sum(0)) == pytest.approx(0.125)
    assert rounds == 2  # the second round changes nothing
    # Pixel accuracy per image: image 0 lowest under A (0/4), image 1 under B (2/4).
    assert lowest_accuracy_choice(members).tolist() == [0, 1]


@pytest.mark.parametrize("seed", range(8))
def test_worst_case_is_never_above_any_single_member(seed):
    generator = torch.Generator().manual_seed(seed)
    members, images, classes = 4, 12, 5
    labels = torch.randint(0, classes, (images, 6, 6), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.1] = 255
    predictions = torch.randint(0, classes, (members, images, 6, 6), generator=generator)
    confusions = torch.stack([per_image_confusion_matrices(p, labels, classes) for p in predictions])
    result = worst_case(confusions, max_rounds=3)
    worst_miou = dataset_miou(result.miou_confusion)
    worst_accuracy = pixel_accuracy_per_image(select(confusions, result.accuracy_choice))
    for member in range(members):
        assert worst_miou <= dataset_miou(confusions[member].sum(0)) + 1e-12
        assert (worst_accuracy <= pixel_accuracy_per_image(confusions[member]) + 1e-12).all()
    assert torch.equal(result.accuracy_confusion, select(confusions, result.accuracy_choice).sum(0))


def test_greedy_choice_refuses_a_malformed_stack():
    with pytest.raises(ValueError, match=r"\[A, N, C, C\]"):
        greedy_miou_choice(torch.zeros(3, 2, 2, dtype=torch.int64))
