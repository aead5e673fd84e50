"""Worst case over attacks: per-image statistics, the greedy mIoU choice on a hand-built example, its
guarantees, and the same choices as the confusion-matrix code it replaced (benchmarks/worst_case_memory.py)."""

from __future__ import annotations

import pytest
import torch

from eroseg_at.evaluation.results import worst_case_rows
from eroseg_at.evaluation.suite import AttackRun
from eroseg_at.evaluation.worst_case import (
    dataset_miou,
    greedy_miou_choice,
    lowest_accuracy_choice,
    per_image_statistics,
    pixel_accuracy,
    scores_from_statistics,
    select,
    worst_case,
)
from eroseg_at.metrics import scores_from_confusion_matrix
from tests.conftest import load_script

before = load_script("benchmarks/worst_case_memory.py")


def statistics(*cells: tuple[int, int, int]) -> torch.Tensor:
    """The statistics of one 2-class image from (target, prediction, count) cells."""
    labels = torch.cat([torch.full((count,), target) for target, _, count in cells])
    predictions = torch.cat([torch.full((count,), prediction) for _, prediction, count in cells])
    return per_image_statistics(predictions.view(1, 1, -1), labels.view(1, 1, -1), 2)[0]


def test_per_image_statistics_count_each_image_and_drop_ignore():
    labels = torch.tensor([[[0, 1], [255, 1]], [[2, 2], [0, 255]]])
    predictions = torch.tensor([[[0, 0], [2, 1]], [[2, 1], [0, 0]]])
    counts = per_image_statistics(predictions, labels, num_classes=3)
    # Rows: intersection, label count, prediction count (valid pixels only); columns: classes.
    expected = torch.tensor([[[1, 1, 0], [1, 2, 0], [2, 1, 0]], [[1, 0, 1], [1, 0, 2], [1, 1, 1]]])
    assert torch.equal(counts, expected)


@pytest.mark.parametrize("name", ["labels", "predictions"])
def test_per_image_statistics_refuse_values_outside_the_classes(name):
    values = {
        "labels": torch.zeros(1, 2, 2, dtype=torch.int64),
        "predictions": torch.zeros(1, 2, 2, dtype=torch.int64),
    }
    values[name] = torch.full((1, 2, 2), 7)
    with pytest.raises(ValueError, match=rf"{name} hold \[7\], outside \[0, 3\)"):
        per_image_statistics(values["predictions"], values["labels"], 3)


def random_members(seed: int, members: int = 4, images: int = 12, classes: int = 5, side: int = 6):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (images, side, side), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.1] = 255
    predictions = torch.randint(0, classes, (members, images, side, side), generator=generator)
    return labels, predictions


@pytest.mark.parametrize("seed", range(4))
def test_scores_equal_those_of_the_confusion_matrix_bitwise(seed):
    labels, predictions = random_members(seed, members=1, classes=9)
    counts = per_image_statistics(predictions[0], labels, 9)
    confusion = before.per_image_confusion_matrices(predictions[0], labels, 9)
    ours, theirs = scores_from_statistics(counts.sum(0)), scores_from_confusion_matrix(confusion.sum(0))
    assert float(ours.miou) == float(theirs.miou)
    assert float(ours.pixel_accuracy) == float(theirs.pixel_accuracy)
    assert torch.equal(ours.iou_per_class.nan_to_num(-1), theirs.iou_per_class.nan_to_num(-1))


@pytest.mark.parametrize("seed", range(12))
def test_choices_equal_those_of_the_confusion_matrix_code(seed):
    # Few pixels and classes make exact ties between members common, so the tie-breaking is compared too.
    generator = torch.Generator().manual_seed(100 + seed)
    classes = int(torch.randint(2, 8, (1,), generator=generator))
    side = int(torch.randint(2, 6, (1,), generator=generator))
    labels, predictions = random_members(seed, members=5, images=30, classes=classes, side=side)
    counts = torch.stack([per_image_statistics(p, labels, classes) for p in predictions])
    confusion = torch.stack([before.per_image_confusion_matrices(p, labels, classes) for p in predictions])
    ours = worst_case(counts, max_rounds=5)
    choice, rounds = before.confusion_greedy_miou_choice(confusion, 5)
    assert torch.equal(ours.miou_choice, choice) and ours.rounds == rounds
    assert torch.equal(ours.accuracy_choice, before.confusion_lowest_accuracy_choice(confusion))


def test_greedy_choice_on_a_hand_built_example():
    # Two images, two classes, three members. Image 0 is all class 0 (4 px), image 1 all class 1 (4 px).
    # Member A: image 0 fully wrong, image 1 right. Member B: image 0 right, image 1 half wrong.
    # Member C: both images a quarter wrong.
    members = torch.stack(
        [
            torch.stack([statistics((0, 1, 4)), statistics((1, 1, 4))]),  # A
            torch.stack([statistics((0, 0, 4)), statistics((1, 0, 2), (1, 1, 2))]),  # B
            torch.stack([statistics((0, 0, 3), (0, 1, 1)), statistics((1, 1, 3), (1, 0, 1))]),  # C
        ]
    )
    # Single members, by hand: A: IoU0 = 0/4, IoU1 = 4/8 -> 0.25; B: IoU0 = 4/6, IoU1 = 2/4 -> 0.583;
    # C: IoU0 = 3/5, IoU1 = 3/5 -> 0.6. Greedy starts from A (image 0: A, image 1: A).
    assert dataset_miou(members[0].sum(0)) == pytest.approx(0.25)
    # Image 0 stays on A (B or C there raise IoU0 from 0). Image 1 on B: IoU0 = 0, IoU1 = 2/8 -> 0.125;
    # on C: IoU1 = 3/8 -> 0.1875. B lowers most.
    choice, rounds = greedy_miou_choice(members)
    assert choice.tolist() == [0, 1]
    assert dataset_miou(select(members, choice).sum(0)) == pytest.approx(0.125)
    assert rounds == 2  # the second round changes nothing
    # Pixel accuracy per image: image 0 lowest under A (0/4), image 1 under B (2/4).
    assert lowest_accuracy_choice(members).tolist() == [0, 1]


@pytest.mark.parametrize("seed", range(8))
def test_worst_case_is_never_above_any_single_member(seed):
    labels, predictions = random_members(seed)
    counts = torch.stack([per_image_statistics(p, labels, 5) for p in predictions])
    result = worst_case(counts, max_rounds=3)
    worst_miou = dataset_miou(result.miou_statistics)
    worst_accuracy = pixel_accuracy(select(counts, result.accuracy_choice))
    for member in range(counts.shape[0]):
        assert worst_miou <= dataset_miou(counts[member].sum(0)) + 1e-12
        assert (worst_accuracy <= pixel_accuracy(counts[member]) + 1e-12).all()
    assert torch.equal(result.accuracy_statistics, select(counts, result.accuracy_choice).sum(0))


def test_greedy_choice_refuses_a_malformed_stack():
    with pytest.raises(ValueError, match=r"\[A, N, 3, C\]"):
        greedy_miou_choice(torch.zeros(3, 2, 2, dtype=torch.int64))


def test_the_worst_case_row_reports_what_its_own_choices_score():
    # Random members (the clean image among them) on 16 images: the mIoU choice and the accuracy choice differ,
    # and the clean image is the worst of some images, so a row built from the wrong choice or without the clean
    # member would not score what its own choices say.
    labels, predictions = random_members(3, members=4, images=16, classes=5)
    statistics = [per_image_statistics(p, labels, 5) for p in predictions]
    runs = [
        AttackRun(key, key.upper(), "attack", "pgd", "8/255", 8 / 255, {"steps": 1})
        for key in ("a", "b", "c")
    ]
    attacked = {("8/255", run.key): stats for run, stats in zip(runs, statistics[1:], strict=True)}
    (row,) = worst_case_rows(runs, ["a", "b", "c"], statistics[0], attacked, rounds=5)
    choice = row.worst_case
    assert choice.members == ("clean", "a", "b", "c")
    stacked = torch.stack(statistics)
    index = {name: position for position, name in enumerate(choice.members)}
    by_miou = torch.tensor([index[name] for name in choice.miou_choice])
    by_accuracy = torch.tensor([index[name] for name in choice.accuracy_choice])
    assert not torch.equal(by_miou, by_accuracy), (
        "the two choices must differ for this test to tell them apart"
    )
    assert "clean" in choice.accuracy_choice and "clean" in choice.miou_choice
    chosen = scores_from_statistics(select(stacked, by_miou).sum(0))
    assert row.miou == float(chosen.miou)
    assert torch.equal(
        torch.tensor(row.iou_per_class, dtype=torch.float64).nan_to_num(-1),
        chosen.iou_per_class.nan_to_num(-1),
    )
    assert row.pixel_accuracy == float(pixel_accuracy(select(stacked, by_accuracy).sum(0)))
    assert list(row.per_image_pixel_accuracy) == pixel_accuracy(select(stacked, by_accuracy)).tolist()
    # And the choices are the worst case's own: never above any member.
    for member in stacked:
        assert row.miou <= dataset_miou(member.sum(0)) + 1e-12


def test_the_worst_case_takes_accuracy_and_miou_from_different_choices():
    # Image 0 (8 px of class 0, 2 of class 1): member a makes 4 class-0 pixels wrong (accuracy 0.6), member b the
    # 2 class-1 pixels (accuracy 0.8, but class 1's IoU falls to 0). Image 1 (10 px of class 0) is right under all.
    clean = torch.stack([statistics((0, 0, 8), (1, 1, 2)), statistics((0, 0, 10))])
    a = torch.stack([statistics((0, 0, 4), (0, 1, 4), (1, 1, 2)), statistics((0, 0, 10))])
    b = torch.stack([statistics((0, 0, 8), (1, 0, 2)), statistics((0, 0, 10))])
    runs = [AttackRun(key, key, "attack", "pgd", "8/255", 8 / 255, {"steps": 1}) for key in ("a", "b")]
    (row,) = worst_case_rows(runs, ["a", "b"], clean, {("8/255", "a"): a, ("8/255", "b"): b}, rounds=5)
    # mIoU by hand: b on image 0 gives IoU0 = 18/20, IoU1 = 0 -> 0.45 (a: 14/18 and 2/6 -> 0.556).
    assert row.worst_case.miou_choice[0] == "b" and row.miou == pytest.approx(0.45)
    # Accuracy per image: a on image 0 (0.6); image 1 is right under every member (the first, clean, is kept).
    assert row.worst_case.accuracy_choice == ("a", "clean")
    assert row.per_image_pixel_accuracy == (0.6, 1.0) and row.pixel_accuracy == pytest.approx(16 / 20)
