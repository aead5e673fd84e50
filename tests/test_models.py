"""One shared tester; each architecture subclasses it in a few lines."""

from __future__ import annotations

import pytest
import torch

from eroseg_at.models import available_models, build_model

NUM_CLASSES = 5


class ModelTester:
    name: str
    encoder: str = "resnet18"
    architecture: dict = {}
    size: int = 64

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls):
        torch.manual_seed(0)
        return build_model(cls.name, NUM_CLASSES, encoder=cls.encoder, architecture=cls.architecture).eval()

    def test_logits_have_the_input_size_and_one_channel_per_class(self, model):
        images = torch.rand(2, 3, self.size, self.size)
        with torch.no_grad():
            logits = model(images)
        assert logits.shape == (2, NUM_CLASSES, self.size, self.size)
        assert logits.dtype == torch.float32

    def test_logits_and_features_agree_with_forward(self, model):
        images = torch.rand(2, 3, self.size, self.size)
        with torch.no_grad():
            logits, features = model.logits_and_features(images)
            assert torch.equal(logits, model(images))
        assert features.ndim == 4 and features.shape[0] == 2

    def test_normalisation_happens_inside_the_model(self, model):
        images = torch.rand(1, 3, self.size, self.size)
        with torch.no_grad():
            expected = model.network((images - model.mean) / model.std)
            assert torch.allclose(model(images), expected, atol=1e-5)

    def test_input_gradient_flows_to_pixels(self, model):
        images = torch.rand(1, 3, self.size, self.size, requires_grad=True)
        (grad,) = torch.autograd.grad(model(images).sum(), images)
        assert grad.abs().sum() > 0

    def test_size_not_divisible_is_refused_with_the_divisor_named(self, model):
        if model.input_divisor == 1:
            pytest.skip("this architecture accepts any input size")
        bad = self.size + model.input_divisor // 2
        with pytest.raises(ValueError, match=f"not divisible by {model.input_divisor}"):
            model(torch.rand(1, 3, bad, bad))


class TestDeepLabV3(ModelTester):
    name = "deeplabv3"


class TestDeepLabV3Plus(ModelTester):
    name = "deeplabv3plus"


class TestPSPNet(ModelTester):
    name = "pspnet"


class TestUnet(ModelTester):
    name = "unet"
    architecture = {"decoder_channels": (64, 32, 16, 16, 16)}


class TestFPN(ModelTester):
    name = "fpn"


class TestSegformer(ModelTester):
    name = "segformer"
    encoder = "mit_b0"


class TestUnetPlusPlus(ModelTester):
    name = "unetplusplus"
    architecture = {"decoder_channels": (64, 32, 16, 16, 16)}


class TestLinknet(ModelTester):
    name = "linknet"


class TestMAnet(ModelTester):
    name = "manet"
    architecture = {"decoder_channels": (64, 32, 16, 16, 16)}


class TestPAN(ModelTester):
    # Its pyramid attention pools the 1/32 feature map twice more: 64 px would shrink it to nothing.
    name = "pan"
    size = 128


class TestUPerNet(ModelTester):
    name = "upernet"


class TestDPT(ModelTester):
    # DPT needs a ViT encoder with its own forward (encoder tokens into the decoder).
    name = "dpt"
    encoder = "tu-test_vit"
    size = 32


def test_every_smp_architecture_has_a_tester():
    tested = {cls.name for cls in ModelTester.__subclasses__()}
    assert tested == set(available_models())


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(ValueError, match="available models: deeplabv3, deeplabv3plus, dpt, fpn"):
        build_model("deeplabv4", NUM_CLASSES)


def test_local_encoder_weights_are_loaded(tmp_path):
    source = build_model("unet", NUM_CLASSES)
    path = tmp_path / "encoder.pt"
    torch.save(source.network.encoder.state_dict(), path)
    loaded = build_model("unet", NUM_CLASSES, encoder_weights_path=str(path))
    for key, value in source.network.encoder.state_dict().items():
        assert torch.equal(loaded.network.encoder.state_dict()[key], value)


def test_full_model_state_dict_with_encoder_prefix_is_accepted(tmp_path):
    source = build_model("unet", NUM_CLASSES)
    path = tmp_path / "model.pt"
    torch.save({"state_dict": source.network.state_dict()}, path)
    with pytest.raises(ValueError, match="unexpected keys"):
        # decoder./segmentation_head. keys are not encoder keys: refused, not silently dropped.
        build_model("unet", NUM_CLASSES, encoder_weights_path=str(path))
    encoder_only = {k: v for k, v in source.network.state_dict().items() if k.startswith("encoder.")}
    torch.save(encoder_only, path)
    loaded = build_model("unet", NUM_CLASSES, encoder_weights_path=str(path))
    assert torch.equal(loaded.network.encoder.conv1.weight, source.network.encoder.conv1.weight)


def test_mismatched_encoder_weights_list_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "wrong.pt"
    torch.save({"conv1.weight": torch.zeros(1), "not_a_layer.bias": torch.zeros(1)}, path)
    with pytest.raises(
        ValueError, match=r"missing keys \['bn1\.bias'.*unexpected keys \['not_a_layer\.bias'\]"
    ):
        build_model("unet", NUM_CLASSES, encoder_weights_path=str(path))


def test_missing_encoder_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="encoder_weights_path=.*nope.pt does not exist"):
        build_model("unet", NUM_CLASSES, encoder_weights_path=str(tmp_path / "nope.pt"))


def test_a_full_encoder_state_dict_loads_into_a_shallower_encoder(tmp_path):
    # PSPNet runs 3 of resnet18's 5 stages: the file still holds all of them, and the stages
    # that never run are dropped after loading rather than kept as untrained weights.
    source = build_model("unet", NUM_CLASSES)
    path = tmp_path / "encoder.pt"
    torch.save(source.network.encoder.state_dict(), path)
    loaded = build_model(
        "pspnet", NUM_CLASSES, encoder_weights_path=str(path), architecture={"encoder_depth": 3}
    )
    assert torch.equal(
        loaded.network.encoder.layer2[0].conv1.weight, source.network.encoder.layer2[0].conv1.weight
    )
    assert isinstance(loaded.network.encoder.layer3, torch.nn.Identity)
    assert isinstance(loaded.network.encoder.layer4, torch.nn.Identity)


@pytest.mark.parametrize("encoder", ["vgg11", "tu-resnet18"])
def test_encoders_that_do_not_name_their_stages_still_build(encoder):
    # SMP's VGG encoder has no get_stages(); timm encoders build only the stages they run.
    model = build_model("pspnet", NUM_CLASSES, encoder=encoder, architecture={"encoder_depth": 3})
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, NUM_CLASSES, 64, 64)
