"""The adapter's own mechanics, on small in-memory networks: output forms, dtypes, modes, feature hooks."""

from __future__ import annotations

import subprocess
import sys
from collections import namedtuple

import pytest
import torch
from torch import nn

from eroseg_at.models.adapter import FeatureSegmentationAdapter, extract_logits
from eroseg_at.models.sources import adapt_model
from tests.models.conftest import IDENTITY, Returning, logits_of

Output = namedtuple("Output", "logits")


class LowResolution(nn.Module):
    """Features at 1/4 of the input, a 1x1 classifier, and (in train mode) a dropout that must stay off in probes."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 4, stride=4), nn.BatchNorm2d(4), nn.Dropout(0.5))
        self.classifier = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return self.classifier(self.encoder(x))


@pytest.mark.parametrize(
    "wrap",
    [lambda t: t, lambda t: {"aux": -t, "out": t}, lambda t: Output(t), lambda t: (t, "class scores")],
    ids=["tensor", "torchvision-dict", "object-with-logits", "tuple"],
)
def test_extract_logits_reads_every_supported_form(wrap):
    logits = torch.rand(1, 2, 3, 3)
    assert extract_logits(wrap(logits)) is logits


def test_low_resolution_logits_are_upsampled_and_features_come_from_the_classifier_input():
    torch.manual_seed(0)
    network = LowResolution().eval()
    adapter = adapt_model(network, 3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), classifier_name="classifier")
    images = torch.rand(2, 3, 32, 36)
    with torch.no_grad():
        features = network.encoder((images - 0.5) / 0.5)
        expected = nn.functional.interpolate(
            network.classifier(features), size=(32, 36), mode="bilinear", align_corners=False
        )
        logits, caught = adapter.logits_and_features(images)
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(caught, features)
    assert isinstance(adapter, FeatureSegmentationAdapter)


def test_normalisation_buffers_stay_float32_and_are_cast_to_the_input_dtype():
    adapter = adapt_model(LowResolution().to(torch.bfloat16), 3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
    logits = adapter(torch.rand(1, 3, 16, 16, dtype=torch.bfloat16))
    assert logits.dtype == torch.bfloat16
    assert adapter.mean.dtype == adapter.std.dtype == torch.float32
    assert {"mean", "std"} <= set(adapter.state_dict())


def test_the_build_time_probe_leaves_every_module_in_its_own_mode_and_batchnorm_untouched():
    network = LowResolution().train()
    network.encoder[1].eval()  # a frozen BatchNorm, as a user may have it
    statistics = network.encoder[1].running_mean.clone()
    adapter = adapt_model(network, 3, **IDENTITY)
    assert adapter.network.training and network.encoder[2].training and not network.encoder[1].training
    assert torch.equal(network.encoder[1].running_mean, statistics)


def test_a_classifier_that_runs_twice_gives_no_ambiguous_features():
    class Twice(LowResolution):
        def forward(self, x):
            return self.classifier(self.encoder(x)) + self.classifier(self.encoder(x))

    with pytest.raises(RuntimeError, match="'classifier' ran 2 times in one forward"):
        adapt_model(Twice(), 3, **IDENTITY, classifier_name="classifier")


def test_adapting_does_not_register_the_classifier_twice():
    network = LowResolution()
    adapter = adapt_model(network, 3, **IDENTITY, classifier_name="classifier")
    assert set(adapter.state_dict()) == {f"network.{k}" for k in network.state_dict()} | {"mean", "std"}


def test_in_memory_source_info_defaults_to_the_network_class():
    info = adapt_model(Returning(logits_of(2)), None, **IDENTITY).source_info
    assert (info.kind, info.name, info.path, info.adapter, info.features) == (
        "module",
        "Returning",
        None,
        "SegmentationAdapter",
        None,
    )


@pytest.mark.slow
def test_importing_the_model_sources_does_not_import_transformers():
    code = "import sys, eroseg_at.models, eroseg_at.models.sources; sys.exit('transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
