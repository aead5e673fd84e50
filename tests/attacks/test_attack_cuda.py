"""The attack contract on a CUDA device, in float32 and under bf16 autocast (``make test-gpu``).

The CPU suite cannot reach these paths: device-side random starts and projection, input gradients of a
model run under autocast, the float32 objective of an attack whose model computes in bf16, the rounding of
bf16/float16 results towards the input (``torch.nextafter`` on the device), and one seeded generator per device.
"""

from __future__ import annotations

import pytest
import torch
from attack_helpers import ATTACK_CONFIGS, CONFIG_IDS, assert_inside_ball, build, make_batch, make_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (make test-gpu)"),
]


def pixel_accuracy(model, images, labels) -> float:
    with torch.no_grad():
        prediction = model(images).argmax(1)
    valid = labels != 255
    return ((prediction == labels) & valid).sum().item() / valid.sum().item()


@pytest.mark.parametrize("config", ATTACK_CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_attack_on_cuda_keeps_the_contract_and_lowers_accuracy(config, autocast):
    model = make_model().cuda()
    images, labels = (t.cuda() for t in make_batch(batch_size=4, size=32))
    # Labels the model gets right everywhere, so every flipped pixel is the attack's doing.
    with torch.no_grad():
        labels = torch.where(labels == 255, labels, model(images).argmax(1))
    model.train()
    marker = torch.full_like(model.head.weight, 3.0)
    model.head.weight.grad = marker.clone()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        adversarial = build(config, steps=10, seed=0)(model, images, labels)
    assert adversarial.device == images.device and adversarial.dtype == torch.float32
    assert torch.isfinite(adversarial).all()
    assert_inside_ball(adversarial, images)
    assert all(module.training for module in model.modules()), "training modes not restored"
    assert torch.equal(model.head.weight.grad, marker)
    model.eval()
    assert pixel_accuracy(model, images, labels) == 1.0
    # 10 steps at 8/255 flip 8-16 % of this model's pixels, in float32 and in bf16 (measured on the CPU).
    assert pixel_accuracy(model, adversarial, labels) < 0.95


@pytest.mark.parametrize("config", ATTACK_CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_images_on_cuda_come_back_inside_the_ball(config, dtype):
    model = make_model().cuda().to(dtype)
    images, labels = (t.cuda() for t in make_batch(batch_size=4, size=32))
    images = images.to(dtype)
    adversarial = build(config, steps=10, seed=0)(model, images, labels)
    assert adversarial.dtype == dtype and adversarial.device == images.device
    assert (adversarial.float() - images.float()).abs().max() <= 8 / 255
    assert adversarial.min() >= 0 and adversarial.max() <= 1


def test_a_seeded_attack_keeps_one_generator_per_device():
    # A call on the CPU does not advance the CUDA generator: the first CUDA call of an attack that ran on the
    # CPU before equals the first CUDA call of a fresh one.
    model = make_model()
    images, labels = make_batch()
    attack, fresh = build(("pgd", {}), steps=3, seed=3), build(("pgd", {}), steps=3, seed=3)
    attack(model, images, labels)
    on_cuda = attack(model.cuda(), images.cuda(), labels.cuda())
    assert torch.equal(on_cuda, fresh(model, images.cuda(), labels.cuda()))


@pytest.mark.parametrize("name", ["pgd", "segpgd", "cospgd", "eroseg", "cw"])
def test_cuda_and_cpu_attacks_agree(name):
    # No random start and float32 without TF32: the two devices run the same arithmetic, so they can only
    # differ where a gradient entry is so close to zero that its sign is a rounding matter.
    torch.backends.cudnn.allow_tf32 = False
    try:
        model = make_model()
        images, labels = make_batch(batch_size=4, size=32)
        attack = build((name, {}), steps=10, random_start=False)
        on_cpu = attack(model, images, labels)
        on_cuda = attack(model.cuda(), images.cuda(), labels.cuda()).cpu()
        model.cpu()
    finally:
        torch.backends.cudnn.allow_tf32 = True
    differing = (on_cpu - on_cuda).abs() > 1e-4
    assert differing.float().mean() < 0.01
    assert pixel_accuracy(model, on_cuda, labels) == pytest.approx(
        pixel_accuracy(model, on_cpu, labels), abs=0.02
    )
