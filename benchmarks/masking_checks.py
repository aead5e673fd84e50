"""The gradient-masking checks on the masked test models: what each attack finds, and what each check says.

The victim is the small trained shapes model of ``tests/masking_models.py``; the masked models compute its
function but mask its gradients (input quantisation, saturated logits, a random resize-and-pad). For each model
this prints the mIoU (%) under the gradient attacks and Square (both objectives), then runs the checks as an evaluation would
(:func:`run_checks`: the CPU-sized wiring of docs/EVALUATION.md) and prints the verdict and its cost.

    python benchmarks/masking_checks.py --images 8 --queries 200
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from eroseg_at.attacks import build_attack
from eroseg_at.attacks.apgd import APGD_LOSSES
from eroseg_at.evaluation.masking import (
    MaskingVerdict,
    black_box_check,
    budget_check,
    gradient_health,
    gradient_health_check,
    iterations_check,
    repeatability_check,
)
from eroseg_at.evaluation.worst_case import miou, per_image_statistics, select, worst_case
from eroseg_at.predictions import predicted_classes

# The victim and the masked models are test fixtures: the repository root makes tests/ importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.masking_models import (  # noqa: E402
    QuantizedInput,
    RandomResizePad,
    SaturatedLogits,
    load_victim,
    shapes_batch,
)

EPS = 8 / 255
LARGE_EPS = 64 / 255
# SEA's losses without the class weights (the test images have no training split to count them on).
MEMBER_LOSSES = ("mce", "js")
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


def loss_of(name: str):
    """APGD's per-image loss ``name`` as ``(logits, labels, valid) -> [B]``."""
    return lambda logits, labels, valid: APGD_LOSSES[name](logits, labels, valid, None, 0, 1)


def run_checks(model, images: torch.Tensor, labels: torch.Tensor, queries: int = 200) -> MaskingVerdict:
    """Every check on ``model``: SEA's masked-CE and JS members (APGD, 20 iterations, 8/255) and their per-image
    worst case against Square; masked CE at 2/255 and 8/255 for the eps curve and at 64/255 (10 iterations, no
    random start, as noise of that size alone knocks pixels over) for the large budget; 10 against 20 iterations;
    the gradients of both losses at the clean images; a second clean pass."""
    started = time.perf_counter()

    def statistics(attack: str | None = None, **arguments) -> torch.Tensor:
        x = images if attack is None else build_attack(attack, seed=0, **arguments)(model, images, labels)
        with torch.no_grad():
            return per_image_statistics(predicted_classes(model(x)), labels, 7)

    clean = statistics()
    members = {loss: statistics("apgd", eps=EPS, steps=20, loss=loss) for loss in MEMBER_LOSSES}
    stacked = torch.stack([clean, *members.values()])
    white_box = select(stacked, worst_case(stacked).miou_choice)
    checks = (
        black_box_check(statistics("square", eps=EPS, queries=queries), white_box),
        budget_check(
            clean,
            {2 / 255: statistics("apgd", eps=2 / 255, steps=20, loss="mce"), EPS: members["mce"]},
            LARGE_EPS,
            statistics("apgd", eps=LARGE_EPS, steps=10, loss="mce", random_start=False),
        ),
        iterations_check(statistics("apgd", eps=EPS, steps=10, loss="mce"), members["mce"], 10, 20),
        gradient_health_check(
            {loss: gradient_health(model, images, labels, EPS, loss_of(loss)) for loss in MEMBER_LOSSES}
        ),
        repeatability_check(clean, statistics()),
    )
    return MaskingVerdict(checks, time.perf_counter() - started)


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
        verdict = run_checks(wrap(victim), images, labels, args.queries)
        figures[name]["verdict"] = verdict.to_json()
        print(f"\n{name} ({verdict.seconds:.1f} s): {verdict.summary()}")
        for check in verdict.checks:
            print(f"  {check.name}: {check.explanation}")
    return figures


if __name__ == "__main__":
    main()
