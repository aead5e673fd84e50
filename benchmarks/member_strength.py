"""The new members (PAdam-CE, PAdam-Cos, APGD's normalised correct-logit and Tsallis losses) against the existing
ones at equal iterations, and Square's two objectives, on a trained checkpoint.

Every gradient member runs ``--steps`` gradient evaluations at ``--eps`` from a seeded random start (PGD-family
step 0.01, APGD adaptive, PAdam lr 2/255); Square runs ``--queries`` forward passes per image with each
objective. Prints one table (mIoU and pixel accuracy in %, seconds) and the per-image worst case (greedy mIoU,
SEA's) over the existing gradient members, over the new ones, and over both.

    python benchmarks/member_strength.py CHECKPOINT --images 32 --steps 20 --queries 1000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from sea_strength import Victim, victim_parser, worst

from eroseg_at.evaluation.worst_case import dataset_miou, pixel_accuracy

STEP = {"alpha": 0.01}
EXISTING = {
    "PGD": ("pgd", STEP),
    "SegPGD": ("segpgd", STEP),
    "CosPGD": ("cospgd", STEP),
    "CW": ("cw", STEP),
    "APGD-CE": ("apgd", {"loss": "ce"}),
    "APGD-mCE": ("apgd", {"loss": "mce"}),
    "APGD-JS": ("apgd", {"loss": "js"}),
    "APGD-SegPGD (CE tracked)": ("apgd", {"loss": "segpgd", "track_loss": "ce"}),
}
NEW = {
    "PAdam-CE": ("padam", {"loss": "ce"}),
    "PAdam-Cos": ("padam", {"loss": "cos"}),
    "APGD-mask-norm-corrlog": ("apgd", {"loss": "mask_norm_corrlog"}),
    "APGD-Tsallis (CE tracked)": ("apgd", {"loss": "tsallis", "track_loss": "ce"}),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = victim_parser(__doc__, images=32, batch=16)
    parser.add_argument("--steps", type=int, default=20, help="gradient evaluations per gradient member")
    parser.add_argument("--queries", type=int, default=1000, help="Square's forward passes per image")
    parser.add_argument("--skip-square", action="store_true", help="run the gradient members only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="where to write the figures")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    victim = Victim(args.checkpoint, args.images, args.batch, args.seed)
    images = sum(len(batch[0]) for batch in victim.batches)
    print(f"checkpoint {args.checkpoint}, {images} images, eps {args.eps}, {args.steps} gradient evaluations")
    rows: dict[str, dict] = {}

    def measure(label: str, name: str | None, arguments: dict) -> torch.Tensor:
        statistics = victim.statistics(name, **arguments)
        summed = statistics.sum(0)
        rows[label] = {
            "miou": dataset_miou(summed),
            "pixel_accuracy": float(pixel_accuracy(summed)),
            # Victim.statistics keys its cache and timings so.
            "seconds": victim.seconds[json.dumps([name, arguments], sort_keys=True)],
        }
        return statistics

    measure("clean", None, {})
    gradient = {"eps": args.eps, "steps": args.steps}
    existing = [measure(label, name, {**gradient, **extra}) for label, (name, extra) in EXISTING.items()]
    new = [measure(label, name, {**gradient, **extra}) for label, (name, extra) in NEW.items()]
    for objective in () if args.skip_square else ("margin", "accuracy"):
        measure(
            f"Square-{objective} ({args.queries} queries)",
            "square",
            {"eps": args.eps, "queries": args.queries, "objective": objective},
        )
    worst_cases = {
        "worst case, existing members": worst(victim, existing),
        "worst case, new members": worst(victim, new),
        "worst case, both": worst(victim, [*existing, *new]),
    }
    print("\n| member | mIoU (%) | pixel accuracy (%) | seconds |\n|---|---:|---:|---:|")
    for label, row in rows.items():
        print(
            f"| {label} | {100 * row['miou']:.2f} | {100 * row['pixel_accuracy']:.2f} | {row['seconds']:.0f} |"
        )
    for label, value in worst_cases.items():
        print(f"| {label} | {100 * value:.2f} | | |")
    figures = {
        "checkpoint": str(args.checkpoint),
        "images": images,
        "eps": args.eps,
        "steps": args.steps,
        "queries": args.queries,
        "members": rows,
        "worst_cases": worst_cases,
    }
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
