"""Helpers of the attack tests: a tiny segmentation model with BatchNorm (so eval mode matters) and decoder\nfeatures, a confident variant of it, a model that records its inputs, a random batch, and every attack\nconfiguration the contract suite runs over."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from eroseg_at.attacks import Attack, Square, available_attacks, build_attack
from eroseg_at.attacks.registry import ATTACKS

NUM_CLASSES = 4


class TinySegmenter(nn.Module):
    """conv → BatchNorm → ReLU (the "decoder features") → 1×1 head; ``kernel_size=1`` makes it per-pixel.

    Records, for every forward pass, whether any module was in training mode.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, kernel_size: int = 3, width: int = 8) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.body = nn.Sequential(
            nn.Conv2d(3, width, kernel_size, padding=kernel_size // 2), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.head = nn.Conv2d(width, num_classes, 1)
        self.modes_seen: list[bool] = []

    def logits_and_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.modes_seen.append(any(module.training for module in self.modules()))
        features = self.body(x)
        return self.head(features), features

    def forward(self, x: Tensor) -> Tensor:
        return self.logits_and_features(x)[0]


# The plain model never exceeds 0.49 confidence, so EroSeg's confidence thresholds would never matter on it.
# Steeper head weights make it confident: on make_batch(4, 16) 39 % of the pixels (kernel 3; 78 % with kernel
# 1) are above 0.9, and every band between EroSeg's thresholds 0.8, 0.91, 0.96, 0.982, 0.992, 0.996 holds
# pixels.
CONFIDENT_HEAD_SCALE = 16.0


def make_model(kernel_size: int = 3, seed: int = 0, confident: bool = False) -> TinySegmenter:
    torch.manual_seed(seed)
    model = TinySegmenter(kernel_size=kernel_size)
    with torch.no_grad():
        # Non-trivial BatchNorm statistics, so train-mode and eval-mode outputs differ.
        model.body[1].running_mean.uniform_(-0.5, 0.5)
        model.body[1].running_var.uniform_(0.5, 2.0)
        # No head bias and steeper filters: predictions follow the image, so small perturbations flip pixels.
        model.head.bias.zero_()
        model.body[0].weight.mul_(4)
        if confident:
            model.head.weight.mul_(CONFIDENT_HEAD_SCALE)
    return model.eval()


class RecordingModel(nn.Module):
    """Wraps a model and records the input and the logits of every forward pass (detached float32 copies)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.inputs: list[Tensor] = []
        self.logits: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        logits = self.model(x)
        self.inputs.append(x.detach().float().clone())
        self.logits.append(logits.detach().float().clone())
        return logits


def make_batch(batch_size: int = 2, size: int = 12, seed: int = 0) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch_size, 3, size, size, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (batch_size, size, size), generator=generator)
    labels[:, :2] = 255
    return images, labels


# SEA's protocol on one APGD loss (nmndeep/Robust-Segmentation, semseg/attacker.py and tools/infer.py).
SEA = {
    "radius_factors": [2, 1.5, 1],
    "stage_fractions": [0.3, 0.3, 0.4],
    "track_loss": "ce",
    "early_stop": True,
}

# Every registered attack, APGD and PAdam once per loss (and class weighting), APGD under SEA's protocol and
# Square once per objective: no attack, objective or option can skip the contract suite. SEA's three stages
# need steps >= 3.
ATTACK_CONFIGS = [(name, {}) for name in available_attacks()] + [
    ("apgd", {"loss": "mce"}),
    ("apgd", {"loss": "mce_balanced", "class_weights": [0.5, 1.0, 2.0, 4.0]}),
    ("apgd", {"loss": "mce_balanced", "class_weighting": "image"}),
    ("apgd", {"loss": "js"}),
    ("apgd", {"loss": "segpgd"}),
    ("apgd", {"loss": "cospgd"}),
    ("apgd", {"loss": "mask_norm_corrlog"}),
    ("apgd", {"loss": "tsallis", "track_loss": "ce"}),
    ("apgd", {"loss": "mce", **SEA}),
    ("padam", {"loss": "cos"}),
    ("square", {"objective": "margin"}),
]


def config_id(config: tuple[str, dict]) -> str:
    """A short test id: the attack name and its loss or options (``apgd-mce_balanced-image``, ``apgd-mce-sea``)."""
    name, kwargs = config
    if "radius_factors" in kwargs:
        return f"{name}-{kwargs['loss']}-sea"
    shown = ("class_weights", "track_loss")
    return "-".join([name, *(str(value) for key, value in kwargs.items() if key not in shown)])


CONFIG_IDS = [config_id(config) for config in ATTACK_CONFIGS]


# Square's budget is queries (forward passes), a gradient attack's steps (a forward and a backward pass each);
# Square reads steps as queries, and ten queries a step let its random search show it works at the contract
# tests' budgets.
SQUARE_QUERIES_PER_STEP = 10


def is_gradient_free(config: tuple[str, dict]) -> bool:
    """Whether the configured attack queries the model's outputs only (Square)."""
    return ATTACKS[config[0]] is Square


def build(config: tuple[str, dict], **kwargs) -> Attack:
    """The configured attack with ``kwargs``; a ``steps`` budget becomes Square's queries."""
    name, config_kwargs = config
    if is_gradient_free(config) and "steps" in kwargs:
        kwargs["queries"] = kwargs.pop("steps") * SQUARE_QUERIES_PER_STEP
    return build_attack(name, **config_kwargs, **kwargs)


def skip_unless_norm_supported(config: tuple[str, dict], norm: str) -> None:
    """Skips a test of ``norm`` for an attack that refuses it (Square attacks the ℓ∞ ball only)."""
    if norm != "linf" and is_gradient_free(config):
        pytest.skip(f"{config[0]} attacks the linf ball only")


# Projection happens in float32: allow one rounding step beyond the ball.
TOLERANCE = 1e-6


def assert_inside_ball(adversarial, images, norm="linf", eps=8 / 255):
    delta = (adversarial - images).flatten(1)
    if norm == "linf":
        assert delta.abs().max() <= eps + TOLERANCE
    else:
        assert (delta.norm(dim=1) <= eps + TOLERANCE).all()
    assert adversarial.min() >= 0 and adversarial.max() <= 1
