"""``suite=strongest`` against SEA's and Halmosi et al.'s ensembles at equal iterations per member, on trained
checkpoints: the per-image worst case (mIoU and pixel accuracy) at each budget, and which members it takes.

Each suite runs through the evaluation pipeline with every gradient member set to ``--steps`` gradient
evaluations (Square, the one black-box member of ``strongest``, is left out: its queries are not iterations, and
the gradient-masking checks run it anyway; the checks are off here). The three suites share one pass cache, so a
member that two suites hold alike (SEA's, PAdam's, the normalised correct logit) is attacked once. Prints, per
checkpoint, one row per suite and then, per budget, each member of ``strongest`` with its mIoU and the images
the worst case took from it; with ``--marginal``, what each member is worth to ``paper`` and ``sea``: their worst
case without each of their members, and with each member of ``strongest`` they lack (all from the cache).

    PYTHONPATH=. python benchmarks/suite_strength.py CKPT [CKPT ...] --steps 10 --images 32 --output DIR [--marginal]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from omegaconf import DictConfig, open_dict

from eroseg_at.configs import compose_config
from eroseg_at.evaluation.cache import PassCache
from eroseg_at.evaluation.distributed import start_processes
from eroseg_at.evaluation.pipeline import evaluate_models

SUITES = ("strongest", "sea_ensemble", "halmosi_ensemble")
BUDGETS = ("4/255", "8/255")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "checkpoints", nargs="+", type=Path, help="training checkpoints (their validation split)"
    )
    parser.add_argument("--steps", type=int, default=10, help="gradient evaluations of every member")
    parser.add_argument("--images", type=int, default=32, help="the first N validation images (one batch)")
    parser.add_argument("--output", type=Path, required=True, help="the shared pass cache and figures.json")
    parser.add_argument(
        "--marginal",
        action="store_true",
        help="also the worst case of paper and sea without each member and with each of strongest's added",
    )
    return parser.parse_args(argv)


def suite_config(
    checkpoint: Path, suite: str, steps: int, images: int, output: Path, budgets: tuple[str, ...] = BUDGETS
):
    cfg = compose_config(
        "evaluate",
        [
            f"ckpt_path={checkpoint}",
            f"suite={suite}",
            f"eps=[{','.join(budgets)}]",
            f"+dataset.val_batch_size={images}",
            "max_batches=1",
            "example_images=0",
            "masking_checks.enabled=false",
            "device=cpu",
            f"output_dir={output}",
        ],
    )
    with open_dict(cfg):
        attacks = cfg.suite.attacks
        attacks.pop("square", None)
        for key in attacks:
            attacks[key].steps = steps
    return cfg


def worst_cases(cfg, cache: PassCache) -> dict[str, float]:
    """The worst-case mIoU per budget of the suite ``cfg`` describes (its passes read from ``cache``)."""
    (report,) = evaluate_models(cfg, start_processes(cfg), cache)
    return {row.eps_text: row.miou for row in report.rows_of("worst_case")}


def variant(
    args: argparse.Namespace,
    checkpoint: Path,
    base: str,
    budgets: tuple[str, ...],
    cache: PassCache,
    drop: str | None = None,
    add: DictConfig | None = None,
) -> dict[str, float]:
    """The worst case of suite ``base`` at ``--steps`` per member, without member ``drop`` or with member ``add``
    (a member node of ``strongest``, under its own key)."""
    cfg = suite_config(checkpoint, base, args.steps, args.images, args.output, budgets)
    with open_dict(cfg):
        if drop is not None:
            cfg.suite.attacks.pop(drop)
        if add is not None:
            cfg.suite.attacks[add._key()] = add
    return worst_cases(cfg, cache)


def marginal_values(args: argparse.Namespace, checkpoint: Path, cache: PassCache) -> dict:
    """Per base suite (``paper`` at 8/255, ``sea`` at both budgets), the worst-case mIoU without each of its
    members and with each member of ``strongest`` it lacks added, at ``--steps`` each: every pass is one
    ``strongest`` already ran, so all of it comes from the cache."""
    strongest = suite_config(checkpoint, "strongest", args.steps, args.images, args.output).suite.attacks
    values = {}
    for base, budgets in (("paper", ("8/255",)), ("sea", BUDGETS)):
        members = list(suite_config(checkpoint, base, args.steps, args.images, args.output).suite.attacks)
        values[base] = {
            "all": variant(args, checkpoint, base, budgets, cache),
            "without": {key: variant(args, checkpoint, base, budgets, cache, drop=key) for key in members},
            "with": {
                key: variant(args, checkpoint, base, budgets, cache, add=strongest[key])
                for key in strongest
                if key not in members
            },
        }
    return values


def print_marginal(checkpoint: str, values: dict) -> None:
    for base, value in values.items():
        budgets = list(value["all"])
        print(
            f"\n`{checkpoint}`, {base}: worst-case mIoU (%) of the suite at equal iterations "
            + ", ".join(f"{100 * value['all'][b]:.2f} @{b}" for b in budgets)
            + "; change (points) without each member / with each member of strongest added\n"
        )
        print("| member | " + " | ".join(budgets) + " |\n|---|" + "---:|" * len(budgets))
        for kind, sign in (("without", "−"), ("with", "+")):
            for key, scores in value[kind].items():
                cells = " | ".join(f"{100 * (scores[b] - value['all'][b]):+.2f}" for b in budgets)
                print(f"| {sign} {key} | {cells} |")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cache = PassCache(args.output / "cache")
    figures: dict = {}
    for checkpoint in args.checkpoints:
        by_suite = figures.setdefault(str(checkpoint), {})
        for suite in SUITES:
            cfg = suite_config(checkpoint, suite, args.steps, args.images, args.output)
            started = time.perf_counter()
            (report,) = evaluate_models(cfg, start_processes(cfg), cache)
            seconds = time.perf_counter() - started
            members = [row for row in report.rows_of("attack")]
            by_suite[suite] = {
                "images": report.num_images,
                "members": len({row.key for row in members}),
                "steps": sorted({row.steps for row in members}),
                "seconds": seconds,
                "clean": report.row("clean").miou,
                "worst_case": {
                    budget: {
                        "miou": (row := report.row("worst_case", eps_text=budget)).miou,
                        "pixel_accuracy": row.pixel_accuracy,
                        "taken": dict(Counter(row.worst_case.miou_choice)),
                    }
                    for budget in BUDGETS
                },
                "member_miou": {f"{row.label} @{row.eps_text}": row.miou for row in members},
            }
            (args.output / "figures.json").write_text(json.dumps(figures, indent=1))
        if args.marginal:
            by_suite["marginal"] = marginal_values(args, checkpoint, cache)
            (args.output / "figures.json").write_text(json.dumps(figures, indent=1))
    print(
        f"\nworst case at equal iterations ({args.steps} per member), mIoU / pixel accuracy (%)\n\n"
        "| checkpoint | suite | members | images | clean mIoU | 4/255 | 8/255 | seconds (uncached) |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|"
    )
    for checkpoint, by_suite in figures.items():
        for suite in SUITES:
            row = by_suite[suite]
            cells = " | ".join(
                f"{100 * row['worst_case'][b]['miou']:.2f} / {100 * row['worst_case'][b]['pixel_accuracy']:.2f}"
                for b in BUDGETS
            )
            print(
                f"| `{Path(checkpoint).parent.parent.name}` | {suite} | {row['members']} | {row['images']} | "
                f"{100 * row['clean']:.2f} | {cells} | {row['seconds']:.0f} |"
            )
    for checkpoint, by_suite in figures.items():
        strongest = by_suite["strongest"]
        print(f"\n`{checkpoint}`, strongest: member mIoU (%) and images the worst case took\n")
        print("| member | " + " | ".join(BUDGETS) + " |\n|---|" + "---:|" * len(BUDGETS))
        labels = dict.fromkeys(label.rsplit(" @", 1)[0] for label in strongest["member_miou"])
        for label in labels:
            print(
                f"| {label} | "
                + " | ".join(f"{100 * strongest['member_miou'][f'{label} @{b}']:.2f}" for b in BUDGETS)
                + " |"
            )
        for budget in BUDGETS:
            print(f"- taken at {budget}: {strongest['worst_case'][budget]['taken']}")
        if "marginal" in by_suite:
            print_marginal(checkpoint, by_suite["marginal"])
    return figures


if __name__ == "__main__":
    main()
