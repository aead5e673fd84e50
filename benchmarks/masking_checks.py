"""The gradient-masking checks on the masked test models: what each attack finds, and what each check says.

The victim is the small trained shapes model of ``tests/masking_models.py``; the masked models compute its
function but mask its gradients (input quantisation, saturated logits, a random resize-and-pad). For each model
this prints the mIoU (%) under the gradient attacks and Square (both objectives), then evaluates it with SEA's
suite at 20 iterations per member, the checks on (:func:`masking_verdict`), and prints their verdict and cost.

    python benchmarks/masking_checks.py --images 8 --queries 200
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from eroseg_at import evaluate_model
from eroseg_at.attacks import build_attack
from eroseg_at.evaluation.masking import MaskingVerdict
from eroseg_at.evaluation.worst_case import miou, per_image_statistics
from eroseg_at.predictions import predicted_classes

# The victim and the masked models are test fixtures: the repository root makes tests/ importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.masking_models import (  # noqa: E402
    QuantizedInput,
    RandomResizePad,
    SaturatedLogits,
    load_victim,
    shapes_batch,
    victim_evaluation_data,
)

EPS = 8 / 255
MODELS = {
    "plain": lambda victim: victim,
    "quantized": QuantizedInput,
    "saturated": SaturatedLogits,
    "random": RandomResizePad,
}
ATTACKS = {
    "PGD10": ("pgd", {"steps": 10, "alpha": 0.01}),
    "APGD20-CE": ("apgd", {"steps": 20, "loss": "ce"}),
    "APGD20-mCE": ("apgd", {"steps": 20, "loss": "mce"}),
    "APGD20-JS": ("apgd", {"steps": 20, "loss": "js"}),
    "CW10": ("cw", {"steps": 10, "alpha": 0.01}),
    "PAdam20-CE": ("padam", {"steps": 20, "loss": "ce"}),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=8, help="the first N validation images")
    parser.add_argument("--queries", type=int, default=200, help="Square's forward passes per image")
    return parser.parse_args(argv)


def masking_verdict(model, images: int, queries: int, steps: int = 20) -> MaskingVerdict:
    """The checks' verdict on ``model`` as the evaluation gives it (:func:`~eroseg_at.evaluate_model`, the checks
    of docs/EVALUATION.md on every image): SEA's suite at 8/255, ``steps`` iterations per member, Square at
    ``queries`` forward passes per image."""
    report = evaluate_model(
        model,
        victim_evaluation_data(images),
        suite="sea",
        eps=EPS,
        device="cpu",
        overrides=[
            f"suite.steps={steps}",
            f"masking_checks.images={images}",
            f"masking_checks.queries={queries}",
            "example_images=0",
        ],
    )
    return report.gradient_masking


def attacked_miou(
    model, images: torch.Tensor, labels: torch.Tensor, attack: str | None, arguments: dict
) -> float:
    x = (
        images
        if attack is None
        else build_attack(attack, eps=EPS, seed=0, **arguments)(model, images, labels)
    )
    with torch.no_grad():
        return float(miou(per_image_statistics(predicted_classes(model(x)), labels, 7).sum(0)))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)
    victim = load_victim()
    images, labels = shapes_batch(args.images)
    columns = {
        "clean": (None, {}),
        **ATTACKS,
        f"Square{args.queries}": ("square", {"queries": args.queries}),
        f"Square{args.queries}-margin": ("square", {"queries": args.queries, "objective": "margin"}),
    }
    print(f"{args.images} images of 32x32 shapes, eps 8/255, mIoU (%)\n")
    print("| model | " + " | ".join(columns) + " |\n|---|" + "---:|" * len(columns))
    figures: dict = {}
    for name, wrap in MODELS.items():
        model = wrap(victim)
        row = {label: attacked_miou(model, images, labels, *attack) for label, attack in columns.items()}
        print(f"| {name} | " + " | ".join(f"{100 * value:.1f}" for value in row.values()) + " |")
        figures[name] = {"miou": row}
    for name, wrap in MODELS.items():
        verdict = masking_verdict(wrap(victim), args.images, args.queries)
        figures[name]["verdict"] = verdict.to_json()
        print(f"\n{name} ({verdict.seconds:.1f} s): {verdict.summary()}")
        for check in verdict.checks:
            print(f"  {check.name}: {check.explanation}")
    return figures


if __name__ == "__main__":
    main()
