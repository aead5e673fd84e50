"""Each objective's pieces on hand-built tensors, and EroSeg's objective on a confident model's logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from attack_helpers import make_batch, make_model

from eroseg_at.attacks import RPPGD, CosPGD, EroSeg, SegPGD
from eroseg_at.attacks.apgd import (
    APGD_LOSSES,
    apgd_checkpoint_lengths,
    balanced_class_weights,
    image_class_weights,
    tsallis_q,
)
from eroseg_at.attacks.cospgd import cospgd_weights
from eroseg_at.attacks.eroseg import eroseg_class_weights, eroseg_sensitive_set, eroseg_threshold
from eroseg_at.attacks.objectives import (
    image_mean,
    js_divergence,
    margin,
    normalized_label_logit,
    pixel_cross_entropy,
    tsallis_cross_entropy,
    valid_mean,
)
from eroseg_at.attacks.padam import PADAM_LOSSES, padam_cosine_distance
from eroseg_at.attacks.rppgd import prototype_similarity, rppgd_region_weights, rppgd_regions
from eroseg_at.attacks.segpgd import segpgd_lambda
from eroseg_at.attacks.square import remaining_margin
from eroseg_at.predictions import predicted_classes


def logits_from_probabilities(probabilities: list[list[float]]) -> torch.Tensor:
    """Logits [1, C, 1, W] whose softmax at pixel w is ``probabilities[w]``."""
    return torch.tensor(probabilities).log().T.reshape(1, len(probabilities[0]), 1, len(probabilities))


def row(values: list[int]) -> torch.Tensor:
    return torch.tensor([[values]])


def test_valid_mean_averages_over_valid_pixels_and_gives_zero_without_any():
    loss = torch.tensor([[[1.0, 3.0, 100.0]], [[5.0, 5.0, 5.0]]], requires_grad=True)
    valid = torch.tensor([[[True, True, False]], [[False, False, False]]])
    mean = valid_mean(loss, valid)
    assert mean.tolist() == [2.0, 0.0]
    (gradient,) = torch.autograd.grad(mean.sum(), loss)
    assert gradient.tolist() == [[[0.5, 0.5, 0.0]], [[0.0, 0.0, 0.0]]]


def test_image_mean_averages_over_all_pixels_counting_invalid_ones_as_zero():
    loss = torch.tensor([[[1.0, 3.0, 100.0, 4.0]], [[5.0, 5.0, 5.0, 5.0]]])
    valid = torch.tensor([[[True, True, False, True]], [[False, False, False, False]]])
    assert image_mean(loss, valid).tolist() == [2.0, 0.0]


def test_predicted_classes_is_argmax_over_classes_with_the_first_class_on_ties():
    logits = torch.randn(3, 5, 9, 7)
    logits[0, :, 0, 0] = torch.tensor([0.0, 2.0, 1.0, 2.0, 2.0])  # a three-way tie: class 1
    logits[1, :, 2, 3] = 4.0  # every class tied: class 0
    predicted = predicted_classes(logits)
    assert predicted.dtype == torch.int64 and predicted.shape == (3, 9, 7)
    assert torch.equal(predicted, logits.argmax(1))
    assert predicted[0, 0, 0] == 1 and predicted[1, 2, 3] == 0


def test_pixel_cross_entropy_is_zero_on_ignored_pixels():
    logits = logits_from_probabilities([[0.5, 0.5], [0.25, 0.75]])
    labels = row([0, 255])
    ce = pixel_cross_entropy(logits, labels, labels != 255)
    assert ce[0, 0].tolist() == pytest.approx([math.log(2), 0.0])


def test_segpgd_lambda_grows_from_zero_to_just_below_half():
    assert [segpgd_lambda(step, 4) for step in range(4)] == [0.0, 0.125, 0.25, 0.375]


def test_segpgd_objective_weighs_correct_and_wrong_pixels():
    logits = logits_from_probabilities([[0.8, 0.2], [0.6, 0.4], [0.5, 0.5]])
    labels = row([0, 1, 255])  # pixel 0 correct, pixel 1 wrong, pixel 2 ignored
    valid = labels != 255
    attack = SegPGD(steps=4)
    loss = attack.objective(logits, None, labels, valid, step=2, state={})
    expected = ((1 - 0.25) * -math.log(0.8) + 0.25 * -math.log(0.4)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_eroseg_threshold_schedule_matches_the_paper():
    taus = [round(eroseg_threshold(step, 0.8, 0.8), 3) for step in range(6)]
    assert taus == [0.8, 0.91, 0.96, 0.982, 0.992, 0.996]
    assert eroseg_threshold(0, 0.8, 0.8, schedule_offset=1) == pytest.approx(eroseg_threshold(1, 0.8, 0.8))


def test_eroseg_sensitive_set_keeps_correct_uncertain_pixels():
    # correct & uncertain | correct & confident | wrong & uncertain | ignored
    logits = logits_from_probabilities([[0.6, 0.4], [0.95, 0.05], [0.6, 0.4], [0.6, 0.4]])
    labels = row([0, 0, 1, 255])
    sensitive = eroseg_sensitive_set(logits, labels, labels != 255, tau=0.8)
    assert sensitive[0, 0].tolist() == [True, False, False, False]
    # A larger threshold takes in the confident pixel too: the set erodes inwards.
    sensitive = eroseg_sensitive_set(logits, labels, labels != 255, tau=0.99)
    assert sensitive[0, 0].tolist() == [True, True, False, False]


def test_eroseg_empty_set_falls_back_to_correct_then_to_valid_pixels():
    logits = torch.cat(
        [
            logits_from_probabilities([[0.95, 0.05], [0.95, 0.05], [0.6, 0.4]]),  # only confident correct
            logits_from_probabilities([[0.6, 0.4], [0.6, 0.4], [0.6, 0.4]]),  # nothing correct
        ]
    )
    labels = torch.tensor([[[0, 1, 255]], [[1, 1, 255]]])
    sensitive = eroseg_sensitive_set(logits, labels, labels != 255, tau=0.8)
    assert sensitive[0, 0].tolist() == [True, False, False]
    assert sensitive[1, 0].tolist() == [True, True, False]


def test_eroseg_class_weights_foreground_background_and_no_background():
    labels = row([0, 3, 255])
    assert eroseg_class_weights(labels, 0, 0.7)[0, 0].tolist() == pytest.approx([0.3, 0.7, 0.7])
    assert eroseg_class_weights(labels, None, 0.7)[0, 0].tolist() == [1.0, 1.0, 1.0]


def test_cospgd_weight_is_cosine_between_softmax_and_onehot():
    logits = logits_from_probabilities([[0.5, 0.5], [1.0 - 1e-7, 1e-7], [0.2, 0.8]])
    labels = row([0, 0, 0])
    weights = cospgd_weights(logits, labels, labels != 255)
    assert weights[0, 0].tolist() == pytest.approx(
        [0.5 / math.sqrt(0.5), 1.0, 0.2 / math.sqrt(0.68)], rel=1e-5
    )
    probabilities = F.softmax(logits, 1)
    onehot = F.one_hot(labels, 2).permute(0, 3, 1, 2).float()
    assert torch.allclose(weights, F.cosine_similarity(probabilities, onehot, dim=1))


def test_cw_margin_clamps_at_kappa():
    logits = torch.tensor([2.0, 1.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 1, 3).contiguous()
    labels = row([0, 2, 255])
    assert margin(logits, labels, labels != 255)[0, 0].tolist() == [-1.0, 0.0, 0.0]
    assert margin(logits, labels, labels != 255, kappa=5.0)[0, 0].tolist() == [-1.0, 2.0, 0.0]


def test_js_divergence_matches_the_definition():
    probabilities = [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]]
    logits = logits_from_probabilities(probabilities)
    labels = row([0, 0, 2])
    p = torch.tensor(probabilities)
    q = F.one_hot(labels[0, 0], 3).float()
    m = (p + q) / 2
    expected = 0.5 * (torch.special.xlogy(p, p / m).sum(1) + torch.special.xlogy(q, q / m).sum(1))
    assert torch.allclose(js_divergence(logits, labels, labels != 255)[0, 0], expected, atol=1e-6)


def test_js_divergence_gradient_is_finite_when_the_label_probability_underflows():
    logits = torch.tensor([[[[0.0]], [[200.0]]]], requires_grad=True)
    labels = torch.zeros(1, 1, 1, dtype=torch.long)
    value = js_divergence(logits, labels, labels != 255)
    (gradient,) = torch.autograd.grad(value.sum(), logits)
    assert value.item() == pytest.approx(math.log(2))
    assert torch.isfinite(gradient).all()


def test_apgd_masked_losses_drop_wrong_pixels_and_weigh_classes():
    logits = logits_from_probabilities([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = row([0, 0, 1])  # correct, wrong, wrong
    valid = labels != 255
    ce0 = -math.log(0.8)
    assert APGD_LOSSES["mce"](logits, labels, valid, None, 0, 1).item() == pytest.approx(ce0 / 3)
    pixel_weights = torch.tensor([2.0, 5.0])[labels]
    balanced = APGD_LOSSES["mce_balanced"](logits, labels, valid, pixel_weights, 0, 1)
    assert balanced.item() == pytest.approx(2 * ce0 / 3)


def test_apgd_segpgd_and_cospgd_losses_are_the_attacks_objectives():
    logits = torch.randn(2, 3, 4, 5)
    labels = torch.randint(0, 3, (2, 4, 5))
    labels[0, 0] = 255
    valid = labels != 255
    for step in range(4):
        expected = SegPGD(steps=4).objective(logits, None, labels, valid, step, {})
        assert torch.equal(APGD_LOSSES["segpgd"](logits, labels, valid, None, step, 4), expected)
    expected = CosPGD().objective(logits, None, labels, valid, 0, {})
    assert torch.equal(APGD_LOSSES["cospgd"](logits, labels, valid, None, 0, 4), expected)
    # λ_t over the whole budget: at the last of 4 evaluations the wrong pixels weigh 3/8.
    later = APGD_LOSSES["segpgd"](logits, labels, valid, None, 3, 4)
    assert not torch.equal(later, APGD_LOSSES["segpgd"](logits, labels, valid, None, 0, 4))


# The new members' losses against the definitions written out pixel by pixel in plain Python (math, loops), on
# hand-made logits with a wrong pixel, an ignored pixel and a second image.
HAND_LOGITS = [
    [[2.0, -1.0, 0.5], [0.2, 0.3, -2.0], [1.0, 1.0, 3.0], [-0.5, 4.0, 0.0]],
    [[0.0, 0.0, 1.0], [3.0, 2.0, 1.0], [0.1, -0.1, 0.05], [5.0, -5.0, 0.0]],
]
HAND_LABELS = [[0, 0, 255, 1], [2, 1, 0, 0]]  # image 0: correct, wrong, ignored, correct


def hand_tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits [2, 3, 1, 4] (class vectors per pixel as in HAND_LOGITS), labels [2, 1, 4], valid."""
    logits = torch.tensor(HAND_LOGITS).permute(0, 2, 1).unsqueeze(2).contiguous()
    labels = torch.tensor(HAND_LABELS).unsqueeze(1)
    return logits, labels, labels != 255


def hand_pixels():
    """Per image, the (logit vector, label) of its valid pixels."""
    return [
        [(vector, label) for vector, label in zip(vectors, labels, strict=True) if label != 255]
        for vectors, labels in zip(HAND_LOGITS, HAND_LABELS, strict=True)
    ]


def probabilities_of(vector: list[float]) -> list[float]:
    exponentials = [math.exp(value) for value in vector]
    return [value / sum(exponentials) for value in exponentials]


def test_apgd_mask_norm_corrlog_is_minus_the_normalised_label_logit_on_correct_pixels():
    logits, labels, valid = hand_tensors()
    expected = []
    for pixels in hand_pixels():
        total = 0.0
        for vector, label in pixels:
            if max(range(len(vector)), key=lambda k: vector[k]) == label:
                total -= vector[label] / math.sqrt(sum(value * value for value in vector))
        expected.append(total / len(pixels))
    loss = APGD_LOSSES["mask_norm_corrlog"](logits, labels, valid, None, 0, 1)
    assert loss.tolist() == pytest.approx(expected, rel=1e-6)
    assert normalized_label_logit(torch.zeros(1, 3, 1, 1), row([1]), row([1]) != 255).item() == 0.0


def test_tsallis_q_runs_from_minus_two_towards_one():
    assert [tsallis_q(step, 4) for step in range(4)] == [-2.0, -1.25, -0.5, 0.25]


@pytest.mark.parametrize("step", [0, 1, 3])
def test_apgd_tsallis_loss_is_the_tsallis_cross_entropy_at_the_scheduled_q(step):
    logits, labels, valid = hand_tensors()
    q = -2.0 + 3.0 * step / 4
    expected = []
    for pixels in hand_pixels():
        values = [(1 - probabilities_of(vector)[label] ** (1 - q)) / (1 - q) for vector, label in pixels]
        expected.append(sum(values) / len(values))
    loss = APGD_LOSSES["tsallis"](logits, labels, valid, None, step, 4)
    assert loss.tolist() == pytest.approx(expected, rel=1e-5)


def test_tsallis_cross_entropy_is_plain_ce_at_q_one_and_finite_when_the_label_probability_underflows():
    logits, labels, valid = hand_tensors()
    ce = pixel_cross_entropy(logits, labels, valid)
    assert torch.equal(tsallis_cross_entropy(logits, labels, valid, 1.0), ce)
    assert torch.allclose(tsallis_cross_entropy(logits, labels, valid, 1 - 1e-4), ce, rtol=1e-3)
    underflow = torch.tensor([[[[0.0]], [[200.0]]]], requires_grad=True)
    value = tsallis_cross_entropy(underflow, row([0]), row([0]) != 255, -2.0)
    (gradient,) = torch.autograd.grad(value.sum(), underflow)
    assert value.item() == pytest.approx(1 / 3) and torch.isfinite(gradient).all()


def test_padam_losses_are_mean_ce_and_the_cosine_distance_between_logits_and_label():
    logits, labels, valid = hand_tensors()
    expected_ce, expected_cos = [], []
    for pixels in hand_pixels():
        expected_ce.append(sum(-math.log(probabilities_of(v)[y]) for v, y in pixels) / len(pixels))
        # cos(f, e_y) = f·e_y / (‖f‖ ‖e_y‖) with ‖e_y‖ = 1.
        cosines = [v[y] / math.sqrt(sum(value * value for value in v)) for v, y in pixels]
        expected_cos.append(sum(1 - cosine for cosine in cosines) / len(pixels))
    assert PADAM_LOSSES["ce"](logits, labels, valid).tolist() == pytest.approx(expected_ce, rel=1e-6)
    assert PADAM_LOSSES["cos"](logits, labels, valid).tolist() == pytest.approx(expected_cos, rel=1e-6)
    assert padam_cosine_distance(logits, labels, valid)[0, 0, 2] == 0  # the ignored pixel


def test_square_remaining_margin_counts_still_correct_pixels_only():
    logits, labels, valid = hand_tensors()
    expected = []
    for pixels in hand_pixels():
        margins = [max(v[y] - max(v[k] for k in range(len(v)) if k != y), 0.0) for v, y in pixels]
        expected.append(sum(margins) / len(pixels))
    assert remaining_margin(logits, labels, valid).tolist() == pytest.approx(expected, rel=1e-6)


def test_balanced_class_weights_per_row():
    frequencies = torch.tensor([[0.75, 0.25, 0.0], [0.0, 0.0, 0.0]])
    assert balanced_class_weights(frequencies).tolist() == [[pytest.approx(2 / 3), 2.0, 0.0], [0.0, 0.0, 0.0]]
    assert balanced_class_weights(torch.tensor([0.5, 0.5])).tolist() == [1.0, 1.0]


def test_image_class_weights_are_inverse_frequencies_in_each_image():
    # Image 0: class 0 on 3 of 4 valid pixels, class 1 on 1 (one pixel ignored); image 1: one class only.
    labels = torch.tensor([[[0, 0, 0, 1, 255]], [[2, 2, 2, 2, 2]]])
    valid = labels != 255
    weights = image_class_weights(labels, valid, num_classes=3)
    assert weights[0, 0, :4].tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3, 2.0])
    assert weights[1, 0].tolist() == [1.0] * 5
    # Each present class adds up to |V| / C'.
    assert (weights[0, 0, :3].sum().item(), weights[0, 0, 3].item()) == pytest.approx((2.0, 2.0))
    # An image without valid pixels gets weight 0, not NaN.
    assert image_class_weights(labels[:1], torch.zeros_like(valid[:1]), 3).abs().sum() == 0


def test_apgd_checkpoints_follow_autoattack():
    assert apgd_checkpoint_lengths(100) == [22, 19, 16, 13, 10, 7, 6, 6]
    assert apgd_checkpoint_lengths(9) == [1] * 9
    assert apgd_checkpoint_lengths(0) == []


def test_rppgd_region_weights():
    assert rppgd_region_weights(0, 10) == pytest.approx((19 / 20, 0.0, 1 / 20))
    assert rppgd_region_weights(9, 10) == pytest.approx((10 / 20, 9 / 20, 1 / 20))


@pytest.mark.parametrize("normalization", ["image", "valid"])
def test_rppgd_region_loss_divides_by_all_pixels_as_the_paper_or_by_valid_ones(normalization):
    # Two of four pixels ignored: the paper's 1/(HW) halves L_R against 1/|V|, and L_P is added at 0.25.
    logits = logits_from_probabilities([[0.8, 0.2], [0.3, 0.7], [0.5, 0.5], [0.5, 0.5]])
    labels = row([0, 0, 255, 255])
    valid = labels != 255
    features = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]).view(1, 2, 1, 4)
    attack = RPPGD(steps=2, random_start=False, region_normalization=normalization)
    state = attack._init_state(None, None, labels, valid, torch.float32)
    loss = attack.objective(logits, features, labels, valid, 0, state)
    # Step 0 of 2: pixel 0 is True (λ1 = 3/4), pixel 1 False (wrong on the clean image, λ3 = 1/4); the one True
    # pixel gives a single prototype, so L_P = 0.
    region_sum = 3 / 4 * -math.log(0.8) + 1 / 4 * -math.log(0.3)
    expected = 0.75 * region_sum / (4 if normalization == "image" else 2)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_rppgd_region_normalization_defaults_to_the_papers():
    assert RPPGD().region_normalization == "image"


def test_rppgd_regions_partition_valid_pixels():
    clean_correct = torch.tensor([[[True, True, False, False]]])
    ever_wrong = torch.tensor([[[False, True, True, False]]])
    valid = torch.tensor([[[True, True, True, False]]])
    true_region, boundary, false_region = rppgd_regions(clean_correct, ever_wrong, valid)
    assert true_region[0, 0].tolist() == [True, False, False, False]
    assert boundary[0, 0].tolist() == [False, True, False, False]
    assert false_region[0, 0].tolist() == [False, False, True, False]


def test_rppgd_boundary_pixels_stay_boundary_after_turning_correct_again():
    attack = RPPGD(steps=3, random_start=False)
    labels = row([0, 0, 1])
    valid = labels != 255
    features = torch.zeros(1, 2, 1, 3)
    state = attack._init_state(None, None, labels, valid, torch.float32)
    clean = logits_from_probabilities([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1]])  # correct, correct, wrong
    flipped = logits_from_probabilities([[0.9, 0.1], [0.1, 0.9], [0.9, 0.1]])
    for logits in (clean, flipped, clean):
        attack.objective(logits, features, labels, valid, 0, state)
    true_region, boundary, false_region = rppgd_regions(state["clean_correct"], state["ever_wrong"], valid)
    assert true_region[0, 0].tolist() == [True, False, False]
    assert boundary[0, 0].tolist() == [False, True, False]
    assert false_region[0, 0].tolist() == [False, False, True]


def test_prototype_similarity_over_region_pixels_by_predicted_class():
    features = torch.tensor([[1.0, 2.0, 0.0, 5.0], [0.0, 0.0, 3.0, 5.0]]).view(1, 2, 1, 4)
    predicted = row([0, 0, 1, 1])
    everywhere = torch.ones(1, 1, 4, dtype=torch.bool)
    # Prototypes (1.5, 0) and (2.5, 4): cosine 2.5·1.5 / (1.5·√(2.5² + 4²)).
    expected = 2.5 / math.sqrt(2.5**2 + 16)
    assert prototype_similarity(features, predicted, everywhere, 3).item() == pytest.approx(
        expected, rel=1e-6
    )
    # Outside the region the last pixel does not count: orthogonal prototypes.
    region = torch.tensor([[[True, True, True, False]]])
    assert prototype_similarity(features, predicted, region, 3).item() == pytest.approx(0.0)
    # A single class has no pair.
    assert prototype_similarity(features, row([1, 1, 1, 1]), everywhere, 3).item() == 0.0


def test_prototype_similarity_resizes_masks_to_coarse_features():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)  # two cells, orthogonal
    predicted = row([0, 0, 1, 1])  # full resolution: class 0 in cell 0, class 1 in cell 1
    everywhere = torch.ones(1, 1, 4, dtype=torch.bool)
    assert prototype_similarity(features, predicted, everywhere, 2).item() == pytest.approx(0.0)
    mixed = row([0, 1, 1, 1])  # class 1 covers half of cell 0 and all of cell 1
    expected = 1 / math.sqrt(1 + 2**2)  # prototypes (1, 0) and (0.5, 1)/1.5
    assert prototype_similarity(features, mixed, everywhere, 2).item() == pytest.approx(expected, rel=1e-6)


# EroSeg's objective on the logits of a confident model, against the paper's definition written out here: the
# threshold schedule, the sensitive set and the class weights each change its value on these logits.


def eroseg_reference(logits, labels, valid, tau, lam=0.7, background_class=0):
    """``1/|V| Σ 1[c < τ and ŷ = y] · w · CE`` (the sensitive set is non-empty in every image here)."""
    probabilities = logits.softmax(1)
    confidence, predicted = probabilities.max(1)
    sensitive = (confidence < tau) & (predicted == labels) & valid
    assert sensitive.flatten(1).any(1).all(), "the fallback would apply; the reference does not model it"
    weights = torch.where(labels == background_class, 1 - lam, lam)
    cross_entropy = F.cross_entropy(logits, labels.masked_fill(~valid, 0), reduction="none")
    return (sensitive * weights * cross_entropy).flatten(1).sum(1) / valid.flatten(1).sum(1)


@pytest.fixture(scope="module")
def confident_logits():
    """Logits of the confident model, labels = its prediction except every fifth pixel (wrong) and ignored rows."""
    model = make_model(confident=True)
    images, labels = make_batch(batch_size=4, size=16)
    with torch.no_grad():
        logits = model(images)
    predicted = logits.argmax(1)
    wrong = (predicted + 1) % logits.shape[1]
    every_fifth = torch.arange(predicted.numel()).view_as(predicted) % 5 == 0
    labels = torch.where(labels == 255, labels, torch.where(every_fifth, wrong, predicted))
    confidence = logits.softmax(1).amax(1)
    for low, high in [(0.8, 0.91), (0.91, 0.96), (0.96, 0.982), (0.982, 0.992), (0.992, 0.996)]:
        assert ((confidence >= low) & (confidence < high)).sum() >= 20, "a threshold band is nearly empty"
    assert (labels == 0).any() and ((labels > 0) & (labels < 255)).any()
    return logits, labels, labels != 255


@pytest.mark.parametrize("schedule_offset", [0, 1])
def test_eroseg_objective_follows_the_threshold_schedule_on_a_confident_model(
    confident_logits, schedule_offset
):
    logits, labels, valid = confident_logits
    attack = EroSeg(steps=6, schedule_offset=schedule_offset)
    state = attack._init_state(None, None, labels, valid, torch.float32)
    values = []
    for step in range(6):
        tau = 1 - 0.2 * math.exp(-0.8 * (step + schedule_offset))
        value = attack.objective(logits, None, labels, valid, step, state)
        assert torch.allclose(value, eroseg_reference(logits, labels, valid, tau), rtol=1e-5, atol=0), step
        values.append(value)
    # Every iteration attacks a larger set than the one before: each threshold matters on these logits.
    assert all((later > earlier).all() for earlier, later in zip(values, values[1:], strict=False))


def test_eroseg_objective_weighs_background_and_foreground_on_a_confident_model(confident_logits):
    logits, labels, valid = confident_logits
    for background_class, lam in [(0, 0.7), (0, 0.9), (2, 0.7)]:
        attack = EroSeg(lam=lam, background_class=background_class)
        state = attack._init_state(None, None, labels, valid, torch.float32)
        expected = eroseg_reference(logits, labels, valid, 0.8, lam, background_class)
        assert torch.allclose(attack.objective(logits, None, labels, valid, 0, state), expected, rtol=1e-5)


def sensitive_at(logits, labels, valid, k):
    """S_k by the paper's definition: correct pixels below τ_k = 1 − 0.2 exp(−0.8 k) (τ0 = β = 0.8)."""
    confidence, predicted = logits.detach().softmax(1).max(1)
    return (confidence < 1 - 0.2 * math.exp(-0.8 * k)) & (predicted == labels) & valid


@pytest.mark.parametrize("schedule_offset", [0, 1])
def test_each_eroseg_iteration_moves_exactly_its_sensitive_pixels(schedule_offset):
    # A per-pixel confident model: a pixel's input gradient comes from its own loss term only, so iteration k
    # moves a pixel iff it is in S_k at the iterate x_k (and its gradient does not vanish on dead features).
    model = make_model(kernel_size=1, confident=True)
    images, labels = make_batch(batch_size=4, size=16)
    with torch.no_grad():
        predicted = model(images).argmax(1)
    every_fifth = torch.arange(labels.numel()).view_as(labels) % 5 == 0
    labels = torch.where(labels == 255, labels, torch.where(every_fifth, (predicted + 1) % 4, predicted))
    valid = labels != 255
    iterates = [images] + [
        EroSeg(steps=steps, random_start=False, schedule_offset=schedule_offset)(model, images, labels)
        for steps in (1, 2, 3)
    ]
    for k in range(3):
        x = iterates[k].clone().requires_grad_(True)
        logits = model(x)
        (gradient,) = torch.autograd.grad(F.cross_entropy(logits, labels, ignore_index=255), x)
        alive = gradient.abs().amax(1) > 0
        t = k + schedule_offset
        moved = (iterates[k + 1] != iterates[k]).any(1)
        assert torch.equal(moved, sensitive_at(logits, labels, valid, t) & alive), f"iteration {k}"
        # The neighbouring thresholds select other pixels: the test tells them apart.
        assert not torch.equal(moved, sensitive_at(logits, labels, valid, t + 1) & alive)
        assert t == 0 or not torch.equal(moved, sensitive_at(logits, labels, valid, t - 1) & alive)
