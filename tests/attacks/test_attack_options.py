"""Options of some attacks: targeted forms (``labels`` is the target map) and best-iterate tracking."""

from __future__ import annotations

import pytest
import torch
from attack_helpers import ATTACK_CONFIGS, assert_inside_ball, build, make_batch, make_model

from eroseg_at.attacks import IterativeAttack, build_attack
from eroseg_at.attacks.registry import ATTACKS

TARGETED = sorted(name for name, cls in ATTACKS.items() if cls.supports_targeted)
# APGD always returns its best iterate; the others have the track_best switch.
ITERATIVE_CONFIGS = [config for config in ATTACK_CONFIGS if issubclass(ATTACKS[config[0]], IterativeAttack)]


def test_targeted_attacks_are_the_methods_with_a_targeted_form():
    assert TARGETED == ["cospgd", "cw", "pgd"]


@pytest.mark.parametrize("name", TARGETED)
def test_targeted_attack_moves_predictions_to_the_target(name):
    model = make_model()
    images, labels = make_batch(batch_size=4, size=16)
    with torch.no_grad():
        logits = model(images)
    prediction = logits.argmax(1)
    # The least likely class: an untargeted attack rarely lands there by chance.
    target = logits.argmin(1)
    # Pixels with all-equal logits (dead features) have no least likely class.
    target[(labels == 255) | (target == prediction)] = 255
    valid = target != 255

    def hit_rate(x):
        with torch.no_grad():
            return (model(x).argmax(1) == target)[valid].float().mean()

    budget = {"eps": 64 / 255, "alpha": 16 / 255, "steps": 10, "seed": 0}
    adversarial = build_attack(name, targeted=True, **budget)(model, images, target)
    untargeted = build_attack(name, **budget)(model, images, prediction)
    assert hit_rate(images) == 0
    # Measured: targeted 0.25-0.35 of the pixels reach the target, untargeted 0.14-0.20.
    assert hit_rate(adversarial) > 0.2
    assert hit_rate(adversarial) > 1.4 * hit_rate(untargeted)


def pixel_error(model, images, labels):
    """Per image, the fraction of valid pixels still predicted as their label."""
    with torch.no_grad():
        correct = (model(images).argmax(1) == labels) & (labels != 255)
    return correct.flatten(1).sum(1) / (labels != 255).flatten(1).sum(1)


@pytest.mark.parametrize("config", ITERATIVE_CONFIGS, ids=[name for name, _ in ITERATIVE_CONFIGS])
def test_track_best_returns_no_worse_than_the_last_iterate(config):
    model = make_model()
    images, labels = make_batch(batch_size=4, size=16)
    last = build(config, eps=32 / 255, steps=8, seed=0)(model, images, labels)
    best = build(config, eps=32 / 255, steps=8, seed=0, track_best=True)(model, images, labels)
    assert_inside_ball(best, images, eps=32 / 255)
    assert (pixel_error(model, best, labels) <= pixel_error(model, last, labels)).all()
    start = build(config, eps=32 / 255, steps=1, seed=0, alpha=1e-9)(model, images, labels)
    assert (pixel_error(model, best, labels) < pixel_error(model, start, labels)).any()


@pytest.mark.parametrize("shape", [(3, 1, 1), (3, 2, 2)], ids=["d3", "d12"])
def test_l2_random_start_is_uniform_in_the_ball(shape):
    # Uniform in the d-dimensional ball (d values per image): P(‖δ‖ <= q·eps) = q^d, so in high dimension the
    # start lies near the sphere; a radius uniform in [0, eps] would give P = q.
    eps, count = 0.1, 20000
    dimensions = shape[0] * shape[1] * shape[2]
    clean = torch.full((count, *shape), 0.5)  # eps 0.1 around 0.5: nothing is clipped to [0, 1]
    delta = (build_attack("pgd", norm="l2", eps=eps, seed=0)._start(clean) - clean).flatten(1)
    radius = delta.norm(dim=1) / eps
    assert radius.max() <= 1 + 1e-6
    for q in (0.25, 0.5, 0.75, 0.9, 0.97):
        assert (radius <= q).float().mean().item() == pytest.approx(q**dimensions, abs=0.01), q
    # Directions are uniform: the mean unit vector vanishes.
    assert (delta / delta.norm(dim=1, keepdim=True)).mean(0).abs().max() < 0.03
