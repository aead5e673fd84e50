"""Strength (slow): on Unet-resnet18 trained on ``shapes``, every attack lowers mIoU well below clean, and at
an equal budget (eps 8/255, alpha 0.01, 10 steps) SegPGD ends at or below PGD and EroSeg within 0.6 points
of it. Prints the measured mIoUs.

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


def inverse_frequency_weights(masks: torch.Tensor, num_classes: int) -> list[float]:
    counts = torch.bincount(masks[masks != 255], minlength=num_classes).float()
    return (counts.sum() / counts.clamp_min(1) / num_classes).tolist()


@pytest.fixture(scope="module")
def strength():
    """``(clean mIoU, {attack label: adversarial mIoU})`` on the shapes victim, each attack run once."""
    sys.path.insert(0, str(BENCHMARKS))  # imported here so collecting the fast suite stays cheap
    from crosscheck_model import mean_iou, trained_shapes_model

    model, images, masks = trained_shapes_model()
    # Square, the black-box member, has no steps; tests/attacks/test_square.py measures it.
    configs = {name: {} for name in available_attacks() if name != "square"}
    configs["eroseg (paper alpha 0.001)"] = {"alpha": 0.001}
    for loss in ("mce", "mce_balanced", "js", "mask_norm_corrlog"):
        configs[f"apgd {loss}"] = {"loss": loss}
    configs["apgd tsallis"] = {"loss": "tsallis", "track_loss": "ce"}
    configs["apgd mce_balanced"]["class_weights"] = inverse_frequency_weights(masks, model.num_classes)
    configs["padam cos"] = {"loss": "cos"}
    results = {}
    for label, kwargs in configs.items():
        name = label.split()[0]
        if name not in ("apgd", "padam"):
            kwargs = {"alpha": 0.01, **kwargs}
        attack = build_attack(name, eps="8/255", steps=10, seed=0, **kwargs)
        results[label] = mean_iou(model, attack(model, images, masks), masks)
    clean = mean_iou(model, images, masks)
    print(f"\nshapes victim, eps 8/255, 10 steps, {len(images)} images: clean mIoU {clean:.2f}")
    for label, miou in results.items():
        print(f"  {label:<28} {miou:6.2f}")
    return clean, results


def summary(results: dict) -> str:
    return ", ".join(f"{label} {miou:.2f}" for label, miou in results.items())


def test_every_attack_lowers_miou_well_below_clean(strength):
    clean, results = strength
    # Measured 35.6 with the default victim settings.
    assert clean > 30, f"the victim did not learn shapes: clean mIoU {clean:.1f}"
    for label, miou in results.items():
        if label == "eroseg (paper alpha 0.001)":
            continue  # 10 steps of 0.001 cannot even reach the eps = 8/255 boundary; tested below
        assert miou < clean / 2, f"{label} leaves mIoU {miou:.1f} of clean {clean:.1f}: {summary(results)}"


def test_eroseg_with_the_paper_step_lowers_miou(strength):
    clean, results = strength
    # Measured 25.97 of clean 35.63: alpha 0.001 moves at most 0.01 in 10 steps, a third of eps.
    assert results["eroseg (paper alpha 0.001)"] < 0.8 * clean, summary(results)


def test_segpgd_at_or_below_pgd(strength):
    _, results = strength
    assert results["segpgd"] <= results["pgd"], summary(results)


def test_eroseg_on_par_with_pgd(strength):
    # EroSeg vs PGD is within half a point either way here, and which one is lower depends on the machine's
    # float rounding (the victim is trained anew per machine): 10.63/10.54/10.95 vs 10.42/10.39/10.52
    # (seeds 0/1/2) on one machine, 9.82 vs 9.96 (seed 0) on another. Broken on purpose on the second
    # machine, EroSeg ends above PGD by 3.65 (attacking the wrong pixels instead of the correct ones),
    # 0.98 (foreground and background weights swapped) or 0.82 (threshold fixed at tau0).
    _, results = strength
    assert results["eroseg"] <= results["pgd"] + 0.6, summary(results)
