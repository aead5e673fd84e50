"""Strength (slow): on Unet-resnet18 trained on ``shapes``, every attack lowers mIoU well below clean, and at
an equal budget (eps 8/255, 10 steps) EroSeg and SegPGD end at or below PGD. Prints the measured mIoUs.

The victim is trained by ``benchmarks/crosscheck_model.py`` on first use (minutes) and cached under
``.cache/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from eroseg_at.attacks import available_attacks, build_attack

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def victim_tools():
    """``(trained_shapes_model, mean_iou)``, imported at run time so collecting the fast suite stays cheap."""
    sys.path.insert(0, str(BENCHMARKS))
    from crosscheck_model import mean_iou, trained_shapes_model

    return trained_shapes_model, mean_iou


def inverse_frequency_weights(masks: torch.Tensor, num_classes: int) -> list[float]:
    counts = torch.bincount(masks[masks != 255], minlength=num_classes).float()
    weights = counts.sum() / counts.clamp_min(1) / num_classes
    return weights.tolist()


def test_every_attack_lowers_miou_and_eroseg_and_segpgd_beat_pgd(victim_tools, capsys):
    trained_shapes_model, mean_iou = victim_tools
    model, images, masks = trained_shapes_model()
    clean = mean_iou(model, images, masks)
    # Measured 35.6 with the default victim settings.
    assert clean > 30, f"the victim did not learn shapes: clean mIoU {clean:.1f}"
    configs = {name: {} for name in available_attacks()}
    configs["eroseg (paper alpha 0.001)"] = {"alpha": 0.001}
    configs.update(
        {
            f"apgd {loss}": {"loss": loss}
            | (
                {"class_weights": inverse_frequency_weights(masks, model.num_classes)}
                if loss == "mce_balanced"
                else {}
            )
            for loss in ("mce", "mce_balanced", "js")
        }
    )
    results = {}
    for label, kwargs in configs.items():
        name = label.split()[0]
        if name != "apgd":
            kwargs = {"alpha": 0.01, **kwargs}
        attack = build_attack(name, eps="8/255", steps=10, seed=0, **kwargs)
        results[label] = mean_iou(model, attack(model, images, masks), masks)
    with capsys.disabled():
        print(f"\nshapes victim, eps 8/255, 10 steps, {len(images)} images: clean mIoU {clean:.2f}")
        for label, miou in results.items():
            print(f"  {label:<28} {miou:6.2f}")
    summary = ", ".join(f"{label} {miou:.1f}" for label, miou in results.items())
    for label, miou in results.items():
        assert miou < clean / 2, f"{label} leaves mIoU {miou:.1f} of clean {clean:.1f}: {summary}"
    assert results["eroseg"] <= results["pgd"], summary
    assert results["segpgd"] <= results["pgd"], summary
