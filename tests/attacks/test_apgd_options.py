"""APGD's options: SEA's progressive radius, CE tracking and early stop, the per-iteration losses, class weighting,
and fixed-radius APGD unchanged by them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from attack_helpers import SEA, RecordingModel, assert_inside_ball, make_batch, make_model
from torch import nn

from eroseg_at.attacks import APGD
from eroseg_at.attacks.apgd import APGD_LOSSES, apgd_stages, balanced_class_weights
from eroseg_at.attacks.base import DatasetFacts

EPS = 8 / 255
SEA_STAGES = {key: SEA[key] for key in ("radius_factors", "stage_fractions")}
EXPECTATION = Path(__file__).parent / "data" / "apgd_fixed_radius.pt"


@pytest.mark.parametrize(
    "steps, expected",
    [(10, [3, 3, 4]), (300, [90, 90, 120]), (3, [1, 1, 1]), (4, [1, 1, 2]), (5, [1, 1, 3]), (9, [2, 2, 5])],
)
def test_sea_stages_split_the_gradient_evaluations(steps, expected):
    stages = apgd_stages(steps, (2, 1.5, 1), (0.3, 0.3, 0.4))
    assert stages == [(2, expected[0]), (1.5, expected[1]), (1, expected[2])]
    assert sum(count for _, count in stages) == steps


def test_one_stage_gets_every_evaluation_and_too_few_steps_are_refused():
    assert apgd_stages(10, (1.0,), (1.0,)) == [(1.0, 10)]
    assert [count for _, count in apgd_stages(5, (4, 2, 1), (0.8, 0.1, 0.1))] == [3, 1, 1]
    with pytest.raises(ValueError, match="steps=2 is fewer than the 3 stages"):
        apgd_stages(2, (2, 1.5, 1), (0.3, 0.3, 0.4))
    with pytest.raises(ValueError, match="steps=2 is fewer than the 3 stages"):
        APGD(steps=2, **SEA_STAGES)


def pixel_error(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    valid = labels != 255
    correct = (logits.argmax(1) == labels) & valid
    return correct.flatten(1).sum(1) / valid.flatten(1).sum(1)


def best_of(inputs: list[torch.Tensor], logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Per image, the input of lowest pixel error (the first of equal ones)."""
    errors = torch.stack([pixel_error(each, labels) for each in logits])
    chosen = errors.argmin(0)
    return torch.stack([inputs[index][image] for image, index in enumerate(chosen.tolist())])


def project(x: torch.Tensor, clean: torch.Tensor, radius: float) -> torch.Tensor:
    return x.clamp((clean - radius).clamp(min=0), (clean + radius).clamp(max=1))


def linf_distance(x: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    return (x - clean).flatten(1).abs().amax(1)


@pytest.fixture(scope="module")
def sea_run():
    """A 10-evaluation SEA run (stages of 3, 3, 4 at 2, 1.5, 1 eps) with every model input recorded."""
    model = RecordingModel(make_model())
    images, labels = make_batch(batch_size=4, size=16)
    # initial_step 0.5 keeps each stage's first step inside its ball, so its length shows.
    output = APGD(steps=10, initial_step=0.5, seed=0, **SEA_STAGES)(model, images, labels)
    return images, labels, model.inputs, model.logits, output


def test_each_stage_runs_at_its_radius_with_its_share_of_evaluations(sea_run):
    images, _, inputs, _, _ = sea_run
    assert len(inputs) == 10
    tolerance = 1e-6
    for first, last, radius, smaller in [
        (0, 3, 2 * EPS, 1.5 * EPS),
        (3, 6, 1.5 * EPS, EPS),
        (6, 10, EPS, None),
    ]:
        distances = torch.stack([linf_distance(x, images) for x in inputs[first:last]])
        assert distances.max() <= radius + tolerance
        if smaller is not None:
            assert distances.max() > smaller + tolerance, "the stage never left the next stage's ball"


def test_seas_first_random_start_is_drawn_in_the_first_stages_ball(sea_run):
    # SEA starts in the 2 eps box, not the eps one: the start leaves the eps ball and stays in the 2 eps one.
    images, _, inputs, _, _ = sea_run
    start = linf_distance(inputs[0], images)
    assert (start > 1.5 * EPS).all() and (start <= 2 * EPS + 1e-6).all()


def test_each_stage_restarts_its_step_size_at_its_radius(sea_run):
    # Each stage's first update moves by initial_step · radius = 0.5 r (momentum 1): every element it moves and
    # leaves strictly inside the ball and [0, 1] (so nothing clipped it) moved by exactly that much.
    images, _, inputs, _, _ = sea_run
    for start, radius in [(0, 2 * EPS), (3, 1.5 * EPS), (6, EPS)]:
        after = inputs[start + 1]
        moved = (after - inputs[start]).abs()
        unclipped = (moved > 0) & ((after - images).abs() < radius - 1e-6) & (after > 0) & (after < 1)
        assert unclipped.sum() > 100
        assert torch.allclose(moved[unclipped], torch.tensor(0.5 * radius), atol=1e-6), start
        assert moved.max() <= 0.5 * radius + 1e-6


def test_each_stage_starts_from_the_previous_stages_best_point_projected(sea_run):
    images, labels, inputs, logits, output = sea_run
    for start, previous, radius in [(3, 0, 1.5 * EPS), (6, 3, EPS)]:
        best = best_of(inputs[previous:start], logits[previous:start], labels)
        assert not torch.equal(best, project(best, images, radius)), "the projection would not be tested"
        assert torch.equal(inputs[start], project(best, images, radius))
    # The output is the last stage's best point, inside the eps-ball.
    assert torch.equal(output, best_of(inputs[6:], logits[6:], labels))
    assert_inside_ball(output, images)


@pytest.mark.parametrize("norm, eps", [("linf", EPS), ("l2", 0.5)], ids=["linf", "l2"])
def test_the_output_is_inside_the_final_ball_although_larger_radii_fool_more_pixels(norm, eps):
    # With radii up to 4 eps the early stages find points that fool more pixels than any point of the eps-ball;
    # only points of the last stage may be returned.
    model = RecordingModel(make_model())
    images, labels = make_batch(batch_size=4, size=16)
    attack = APGD(
        norm=norm, eps=eps, steps=9, seed=0, radius_factors=[4, 2, 1], stage_fractions=[0.4, 0.3, 0.3]
    )
    output = attack(model, images, labels)
    assert_inside_ball(output, images, norm, eps)
    with torch.no_grad():
        returned = pixel_error(model.model(output), labels)
    first_stage = torch.stack([pixel_error(each, labels) for each in model.logits[:3]]).amin(0)
    assert (first_stage < returned).any()


@pytest.mark.parametrize("track_loss", [None, "ce"])
def test_step_size_control_keeps_the_best_points_of_the_tracked_loss(track_loss):
    # rho = 1 halves every image's step at every checkpoint and restarts it from its best tracked-loss point b;
    # with 6 evaluations every update ends a checkpoint, and with momentum 1 the next iterate is
    # Π(b + η_k sign ∇L(b)), η_k = 2 eps / 2^k. Which earlier iterate it steps from tells which point was kept:
    # the best masked-CE point when tracking the attacked loss (mce), the best mean-CE point with "ce".
    steps = 6
    model = RecordingModel(make_model())
    images, labels = make_batch(batch_size=4, size=16)
    valid = labels != 255
    APGD(loss="mce", track_loss=track_loss, steps=steps, rho=1.0, momentum=1.0, seed=0)(model, images, labels)
    inputs, logits = model.inputs, model.logits
    gradients = []
    for step, x in enumerate(inputs):
        x = x.clone().requires_grad_(True)
        loss = APGD_LOSSES["mce"](model.model(x), labels, valid, None, step, steps)
        gradients.append(torch.autograd.grad(loss.sum(), x)[0])
    kept = {
        None: torch.stack([APGD_LOSSES["mce"](each, labels, valid, None, 0, steps) for each in logits]),
        "ce": torch.stack([APGD_LOSSES["ce"](each, labels, valid, None, 0, steps) for each in logits]),
    }
    other = "ce" if track_loss is None else None
    told_apart = False
    for k in range(1, steps - 1):
        # Every earlier iterate, stepped as a restart from it would step.
        step_size = torch.tensor(2 * EPS) / 2**k
        candidates = [
            project(x + step_size * g.sign(), images, EPS) for x, g in zip(inputs, gradients, strict=True)
        ]
        for image in range(images.shape[0]):
            best = int(kept[track_loss][: k + 1, image].argmax())
            assert torch.allclose(candidates[best][image], inputs[k + 1][image], atol=1e-6), (k, image)
            alternative = int(kept[other][: k + 1, image].argmax())
            told_apart |= not torch.allclose(candidates[alternative][image], inputs[k + 1][image], atol=1e-6)
    assert told_apart, "the two tracked losses keep the same points here: the test would not tell them apart"


class SplitModel(nn.Module):
    """Per pixel, two classes decided by whether the channel mean is above 0.5: easy to fool within eps 0.1."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        score = 40 * (x.mean(1, keepdim=True) - 0.5)
        return torch.cat([score, -score], 1)


def split_batch(hard_image: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = 0.5 + 0.1 * (torch.rand(3, 3, 8, 8, generator=generator) - 0.5)
    if hard_image:
        images[2] = 0.9  # 0.4 from the decision boundary: no point of the 0.1-ball flips it
    labels = (images.mean(1) <= 0.5).long()  # the clean prediction
    labels[:, 0] = 255
    return images, labels


@pytest.mark.parametrize("stages, calls", [({}, 2), (SEA_STAGES, 4)], ids=["fixed-radius", "sea"])
def test_early_stop_ends_once_the_whole_batch_is_misclassified(stages, calls):
    # The first update fools every pixel. Fixed radius: the start and that update. SEA: the first stage stops
    # after them, and each later stage after evaluating its start (the projection of the fooled point).
    images, labels = split_batch()
    model = SplitModel()
    output = APGD(eps=0.1, steps=10, early_stop=True, seed=0, **stages)(model, images, labels)
    assert model.calls == calls
    assert_inside_ball(output, images, eps=0.1)
    valid = labels != 255
    assert not ((model(output).argmax(1) == labels) & valid).any()
    without = SplitModel()
    assert torch.equal(APGD(eps=0.1, steps=10, seed=0, **stages)(without, images, labels), output)
    assert without.calls == 10


def test_early_stop_waits_for_every_image():
    images, labels = split_batch(hard_image=True)
    model = SplitModel()
    APGD(eps=0.1, steps=10, early_stop=True, seed=0, **SEA_STAGES)(model, images, labels)
    assert model.calls == 10


def test_segpgd_weight_runs_over_all_gradient_evaluations_across_stages(monkeypatch):
    seen = []
    segpgd = APGD_LOSSES["segpgd"]

    def recording(logits, labels, valid, weights, step, steps):
        seen.append((step, steps))
        return segpgd(logits, labels, valid, weights, step, steps)

    monkeypatch.setitem(APGD_LOSSES, "segpgd", recording)
    images, labels = make_batch()
    APGD(loss="segpgd", steps=10, seed=0, **SEA_STAGES)(make_model(), images, labels)
    assert seen == [(step, 10) for step in range(10)]


@pytest.mark.parametrize("loss", ["ce", "mce", "mce_balanced", "js"])
def test_fixed_radius_apgd_is_unchanged_by_the_new_options(loss):
    # Outputs of the code before the progressive radius, CE tracking, early stop and the new losses existed
    # (commit 9057ea9, this test's inputs, 1 thread). Bitwise equal on the machine that saved them; another
    # CPU rounds convolutions differently, which may flip the sign of a near-zero gradient here and there, so
    # 99 % of the values must agree to 1e-6 (a changed algorithm moves most of them by a step or more).
    expected = torch.load(EXPECTATION)
    model = make_model()
    images, labels = make_batch(batch_size=2, size=10)
    kwargs = {"class_weights": [0.5, 1.0, 2.0, 4.0]} if loss == "mce_balanced" else {}
    explicit_defaults = {
        "radius_factors": [1.0],
        "stage_fractions": [1.0],
        "track_loss": None,
        "early_stop": False,
    }
    for options in ({}, explicit_defaults):
        linf = APGD(loss=loss, steps=12, seed=0, **kwargs, **options)(model, images, labels)
        l2 = APGD(loss=loss, steps=12, norm="l2", eps=0.5, random_start=False, **kwargs, **options)(
            model, images, labels
        )
        for output, key in ((linf, f"{loss}/linf"), (l2, f"{loss}/l2")):
            agree = torch.isclose(output, expected[key], rtol=0, atol=1e-6).float().mean()
            assert agree >= 0.99, f"{key}: only {agree:.1%} of the values agree with the old code's"


def test_image_class_weighting_uses_each_images_own_frequencies():
    model = make_model()
    images, labels = make_batch(batch_size=2, size=12)
    valid = labels != 255

    def frequencies(image_labels, image_valid):
        counts = torch.bincount(image_labels[image_valid], minlength=4).float()
        return counts / counts.sum()

    per_image = APGD(loss="mce_balanced", class_weighting="image", steps=6, random_start=False)
    outputs = per_image(model, images, labels)
    for image in range(2):
        weights = balanced_class_weights(frequencies(labels[image], valid[image]))
        alone = APGD(loss="mce_balanced", class_weights=weights, steps=6, random_start=False)
        assert torch.equal(
            outputs[image], alone(model, images[image : image + 1], labels[image : image + 1])[0]
        )
    # The two images' frequencies differ, so no one set of dataset weights would give both outputs.
    pooled = balanced_class_weights(frequencies(labels, valid))
    dataset = APGD(loss="mce_balanced", class_weights=pooled, steps=6, random_start=False)
    assert not torch.equal(dataset(model, images, labels), outputs)


def test_dataset_weights_are_supplied_only_to_dataset_weighting():
    facts = DatasetFacts(255, 0, lambda: torch.tensor([0.75, 0.25]))
    dataset = APGD.dataset_arguments({"loss": "mce_balanced"}, facts)
    assert dataset["class_weights"].tolist() == pytest.approx([2 / 3, 2.0])
    image = APGD.dataset_arguments({"loss": "mce_balanced", "class_weighting": "image"}, facts)
    assert "class_weights" not in image
    assert isinstance(APGD(**{"loss": "mce_balanced", "class_weighting": "image", **image}), APGD)


def test_the_module_has_every_loss_documented():
    assert sorted(APGD_LOSSES) == [
        "ce",
        "cospgd",
        "js",
        "mask_norm_corrlog",
        "mce",
        "mce_balanced",
        "segpgd",
        "tsallis",
    ]
    for name in APGD_LOSSES:
        assert f"``{name}``" in APGD.__doc__
