"""Full-resolution inference: any image size in, logits at that size out, sliding windows, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eroseg_at.attacks import build_attack
from eroseg_at.evaluation.inference import FullResolutionModel, full_resolution, window_offsets


class DivisibleModel(nn.Module):
    """A stand-in model with decoder features that needs H, W divisible by 8 and pools features by 4.

    With ``pool=1`` every output pixel depends on its input pixel only, so sliding windows must
    reproduce the whole-image logits exactly.
    """

    def __init__(self, pool: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.pool = pool
        self.input_divisor = 8
        self.num_classes = 3
        self.features = nn.Conv2d(3, 5, 1)
        self.head = nn.Conv2d(5, 3, 1)

    def logits_and_features(self, images):
        if images.shape[-2] % 8 or images.shape[-1] % 8:
            raise ValueError(f"not divisible by 8: {tuple(images.shape)}")
        features = self.features(F.avg_pool2d(images, self.pool))
        return F.interpolate(self.head(features), scale_factor=self.pool, mode="nearest"), features

    def forward(self, images):
        return self.logits_and_features(images)[0]


def test_odd_sizes_are_padded_for_the_model_and_cropped_back():
    model = DivisibleModel()
    wrapper = full_resolution(model)
    images = torch.rand(2, 3, 19, 23)
    logits, features = wrapper.logits_and_features(images)
    assert logits.shape == (2, 3, 19, 23)
    assert features.shape == (2, 5, 5, 6)  # ceil(19 / 4), ceil(23 / 4)
    expected = model(F.pad(images, (0, 1, 0, 5)))[..., :19, :23]
    assert torch.allclose(logits, expected)


def test_reflect_padding_differs_from_zero_padding_only_near_the_border():
    images = torch.rand(1, 3, 19, 23)
    zero = FullResolutionModel(DivisibleModel(), pad_mode="constant")(images)
    reflect = FullResolutionModel(DivisibleModel(), pad_mode="reflect")(images)
    assert torch.allclose(zero[..., :16, :20], reflect[..., :16, :20])
    assert not torch.allclose(zero, reflect)


def test_sliding_window_reproduces_a_pixelwise_model_exactly():
    model = DivisibleModel(pool=1)
    images = torch.rand(2, 3, 40, 24)
    whole_logits, whole_features = full_resolution(model).logits_and_features(images)
    windowed = full_resolution(model, window=[16, 16], stride=[8, 8])
    logits, features = windowed.logits_and_features(images)
    assert torch.allclose(logits, whole_logits, atol=1e-6)
    assert torch.allclose(features, whole_features, atol=1e-6)


def test_window_offsets_cover_the_image_and_end_at_its_border():
    assert window_offsets(40, 16, 8) == [0, 8, 16, 24]
    assert window_offsets(44, 16, 16) == [0, 16, 28]
    assert window_offsets(10, 16, 8) == [0]


def test_attack_differentiates_through_padding_and_windows():
    wrapper = FullResolutionModel(DivisibleModel(), window=[16, 16])
    images = torch.rand(2, 3, 21, 30)
    labels = torch.randint(0, 3, (2, 21, 30))
    adversarial = build_attack("pgd", eps="8/255", steps=2, alpha=0.01)(wrapper, images, labels)
    assert adversarial.shape == images.shape
    assert (adversarial - images).abs().max() <= 8 / 255 + 1e-6
    assert (adversarial != images).any()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pad_mode": "wrap"}, "pad_mode must be one of"),
        (
            {"window": [12, 16]},
            r"window must be \[h, w\] of positive multiples of the model's input_divisor 8",
        ),
        ({"stride": [8, 8]}, "stride is only used with a sliding window"),
        ({"window": [16, 16], "stride": [0, 8]}, r"stride must be \[h, w\]"),
    ],
)
def test_bad_inference_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FullResolutionModel(DivisibleModel(), **kwargs)


def test_impossible_reflect_padding_is_refused():
    with pytest.raises(ValueError, match="reflect padding of a 3x16 image"):
        FullResolutionModel(DivisibleModel(), pad_mode="reflect")(torch.rand(1, 3, 3, 16))


class LogitsOnlyModel(DivisibleModel):
    """The same model without ``logits_and_features``: no decoder features (LR-ASPP, TorchScript)."""

    logits_and_features = None

    def forward(self, images):
        return DivisibleModel.logits_and_features(self, images)[0]


def test_a_model_without_decoder_features_is_evaluated_through_its_forward():
    images = torch.rand(2, 3, 19, 23)
    wrapper = full_resolution(LogitsOnlyModel(), window=[16, 16])
    assert getattr(wrapper, "logits_and_features", None) is None
    expected = full_resolution(DivisibleModel(), window=[16, 16])(images)
    assert torch.allclose(wrapper(images), expected)
    labels = torch.randint(0, 3, (2, 19, 23))
    with pytest.raises(TypeError, match="needs decoder features"):
        build_attack("rppgd", steps=1)(wrapper, images, labels)
