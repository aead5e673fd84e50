"""PAdam's optimiser against AMSGrad written out in numpy, its budget and best iterate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from attack_helpers import RecordingModel, make_batch, make_model

from eroseg_at.attacks import PAdam

EPS = 8 / 255


def reference_padam(model, images, labels, loss, lr, steps, eps=EPS):
    """Halmosi et al.'s protocol with AMSGrad written out in float64 numpy (Reddi et al., Algorithm 2 with Adam's
    bias corrections, as torch applies them): from the clean image, ascend the loss, clip the perturbation to the
    ball and [0, 1] after each step. Returns every iterate and its pixel error."""
    valid = labels != 255
    clean = images.double().numpy()
    delta = np.zeros_like(clean)
    first, second, largest = np.zeros_like(clean), np.zeros_like(clean), np.zeros_like(clean)
    iterates, errors = [], []
    for step in range(1, steps + 2):
        x = torch.from_numpy(clean + delta).float().requires_grad_(True)
        logits = model(x)
        correct = (logits.argmax(1) == labels) & valid
        iterates.append(x.detach().clone())
        errors.append(correct.flatten(1).sum(1) / valid.flatten(1).sum(1))
        if step == steps + 1:
            break
        if loss == "ce":
            pixel = F.cross_entropy(logits, labels.masked_fill(~valid, 0), reduction="none")
        else:
            onehot = F.one_hot(labels.masked_fill(~valid, 0), logits.shape[1]).permute(0, 3, 1, 2).float()
            pixel = 1 - F.cosine_similarity(logits, onehot, dim=1)
        per_image = (pixel * valid).flatten(1).sum(1) / valid.flatten(1).sum(1)
        (gradient,) = torch.autograd.grad(per_image.sum(), x)
        g = gradient.double().numpy()
        first = 0.9 * first + 0.1 * g
        second = 0.999 * second + 0.001 * g * g
        largest = np.maximum(largest, second)
        first_hat = first / (1 - 0.9**step)
        delta = delta + lr * first_hat / (np.sqrt(largest / (1 - 0.999**step)) + 1e-8)
        delta = np.clip(clean + np.clip(delta, -eps, eps), 0, 1) - clean
    return iterates, torch.stack(errors)


@pytest.mark.parametrize("loss", ["ce", "cos"])
def test_padam_follows_amsgrad_and_returns_the_best_iterate(loss):
    model = make_model()
    images, labels = make_batch(batch_size=3, size=12)
    steps, lr = 6, 2 / 255
    iterates, errors = reference_padam(model, images, labels, loss, lr, steps)
    recording = RecordingModel(model)
    output = PAdam(loss=loss, lr=lr, steps=steps, random_start=False)(recording, images, labels)
    # steps gradient evaluations, then the last iterate once more without a gradient.
    assert len(recording.inputs) == steps + 1
    # Float64 against float32, and the cosine computed in another order than torch's cosine_similarity: Adam
    # turns the rounding of a near-zero gradient into a visible move, so a few values differ by up to lr/60.
    for ours, theirs in zip(recording.inputs, iterates, strict=True):
        difference = (ours - theirs).abs()
        assert (difference <= 1e-6).float().mean() >= 0.99 and difference.max() < lr / 20
    # Adam moves elements by less than lr once the moments disagree: not a sign step.
    moves = (iterates[2] - iterates[1]).abs()
    assert ((moves > 1e-4) & (moves < lr - 1e-4)).any()
    # The output is the iterate of fewest correct pixels (the first of equal ones), here not the last one.
    valid = labels != 255
    ours = torch.stack(
        [
            ((logits.argmax(1) == labels) & valid).flatten(1).sum(1) / valid.flatten(1).sum(1)
            for logits in recording.logits
        ]
    )
    assert torch.equal(ours, errors)
    best = errors.argmin(0)
    assert torch.equal(
        output, torch.stack([recording.inputs[int(index)][image] for image, index in enumerate(best)])
    )
    assert (errors[best, torch.arange(3)] < errors[-1]).any(), (
        "the last iterate is best: the test would not tell"
    )


def test_padam_lowers_accuracy_more_with_more_steps():
    model = make_model()
    images, _ = make_batch(batch_size=4, size=16)
    with torch.no_grad():
        labels = model(images).argmax(1)

    def accuracy(steps):
        adversarial = PAdam(steps=steps, eps=16 / 255, seed=0)(model, images, labels)
        with torch.no_grad():
            return (model(adversarial).argmax(1) == labels).float().mean().item()

    assert accuracy(20) < accuracy(2) < 1.0
