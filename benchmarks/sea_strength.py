"""SEA's protocol against fixed-radius APGD, per loss and as worst cases, at several iteration budgets.

For each budget (gradient evaluations per attack) and each of SEA's losses (masked CE, class-balanced masked
CE, JS divergence), runs APGD at a fixed radius and with SEA's protocol (radius 2 / 1.5 / 1 eps over 30 / 30 /
40 % of the iterations, step-size control on CE, early stop) on the same images, then the per-image worst
case (greedy mIoU, SEA's) over each protocol's three members, over both together, and over the default
ensemble of ``conf/suite/sea.yaml`` at that budget. Prints one table per budget (mIoU %, lower is stronger)
and writes the figures as JSON. ``--image-weighting`` adds SEA-protocol class-balanced masked CE with
per-image class weights (the alternative to dataset-level weights) at the first budget.

    python benchmarks/sea_strength.py CHECKPOINT --images 100 --budgets 50 100 300
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from eroseg_at.attacks import build_attack
from eroseg_at.checkpoint import load_checkpoint
from eroseg_at.configs import build, compose_config
from eroseg_at.evaluation.data import from_datamodule
from eroseg_at.evaluation.inference import full_resolution
from eroseg_at.evaluation.suite import Suite
from eroseg_at.evaluation.worst_case import dataset_miou, per_image_statistics, select, worst_case
from eroseg_at.predictions import predicted_classes

LOSSES = ("mce", "mce_balanced", "js")
SEA_PROTOCOL = {
    "track_loss": "ce",
    "early_stop": True,
    "radius_factors": [2.0, 1.5, 1.0],
    "stage_fractions": [0.3, 0.3, 0.4],
}


def victim_parser(description: str, images: int, batch: int) -> argparse.ArgumentParser:
    """The arguments of a benchmark that attacks a :class:`Victim`: its checkpoint, images, batch and budget."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path, help="a training checkpoint (its validation split is used)")
    parser.add_argument("--images", type=int, default=images, help="the first N validation images")
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--eps", default="8/255")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = victim_parser(__doc__, images=100, batch=50)
    parser.add_argument("--budgets", type=int, nargs="+", default=[50, 100, 300])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-weighting", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="where to write the figures")
    return parser.parse_args(argv)


class Victim:
    """The checkpoint's model on its first validation images, and per-image statistics of attacks."""

    def __init__(self, checkpoint: Path, images: int, batch: int, seed: int) -> None:
        loaded = load_checkpoint(checkpoint)
        config = OmegaConf.merge(loaded.config, {"dataset": {"val_batch_size": batch}})
        data = from_datamodule(build(config.dataset))
        network = build(config.model)
        network.load_state_dict(loaded.model_state)
        self.model = full_resolution(network).eval()
        self.data = data
        self.facts = data.facts()
        self.batches = []
        seen = 0
        for image_batch, label_batch in data.loader:
            if seen >= images:
                break
            take = min(images - seen, image_batch.shape[0])
            self.batches.append((image_batch[:take], label_batch[:take]))
            seen += take
        self.seed = seed
        self.cache: dict[str, torch.Tensor] = {}
        self.seconds: dict[str, float] = {}

    def statistics(self, attack_name: str | None = None, **arguments) -> torch.Tensor:
        """``[N, 3, C]`` of the clean images (no attack) or under the attack, computed once per arguments."""
        key = json.dumps([attack_name, arguments], sort_keys=True)
        if key not in self.cache:
            started = time.perf_counter()
            parts = []
            attack = (
                None if attack_name is None else build_attack(attack_name, dataset=self.facts, **arguments)
            )
            for index, (images, labels) in enumerate(self.batches):
                if attack is not None:
                    # The same noise for the same batch, whichever attacks ran before.
                    torch.manual_seed(self.seed * 1_000_003 + index)
                    images = attack(self.model, images, labels)
                with torch.no_grad():
                    predictions = predicted_classes(self.model(images))
                parts.append(
                    per_image_statistics(predictions, labels, self.data.num_classes, self.data.ignore_index)
                )
            self.cache[key] = torch.cat(parts)
            self.seconds[key] = time.perf_counter() - started
        return self.cache[key]


def worst(victim: Victim, members: list[torch.Tensor]) -> float:
    stacked = torch.stack([victim.statistics(), *members])
    return dataset_miou(select(stacked, worst_case(stacked).miou_choice).sum(0))


def default_ensemble(budget: int, eps: str) -> list[tuple[str, dict]]:
    """The members of ``conf/suite/sea.yaml`` at ``suite.steps=budget``: (attack, arguments) each."""
    cfg = compose_config("evaluate", ["suite=sea", f"suite.steps={budget}", "output_dir=unused"])
    suite = Suite.from_config(cfg.suite, [eps])
    return [
        (run.attack, {"eps": eps, **run.arguments})
        for run in suite.runs
        if run.kind == "attack" and run.key in suite.worst_case
    ]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    victim = Victim(args.checkpoint, args.images, args.batch, args.seed)
    clean = dataset_miou(victim.statistics().sum(0))
    print(f"checkpoint {args.checkpoint}, {sum(len(b[0]) for b in victim.batches)} images, eps {args.eps}")
    print(f"clean mIoU {100 * clean:.2f}")
    figures: dict = {"checkpoint": str(args.checkpoint), "eps": args.eps, "clean": clean, "budgets": {}}
    for number, budget in enumerate(args.budgets):
        started = time.perf_counter()
        fixed = {loss: victim.statistics("apgd", eps=args.eps, steps=budget, loss=loss) for loss in LOSSES}
        sea = {
            loss: victim.statistics("apgd", eps=args.eps, steps=budget, loss=loss, **SEA_PROTOCOL)
            for loss in LOSSES
        }
        ensemble = [
            victim.statistics(name, **arguments) for name, arguments in default_ensemble(budget, args.eps)
        ]
        row = {
            **{f"fixed {loss}": dataset_miou(matrix.sum(0)) for loss, matrix in fixed.items()},
            **{f"SEA {loss}": dataset_miou(matrix.sum(0)) for loss, matrix in sea.items()},
            "worst case fixed": worst(victim, list(fixed.values())),
            "worst case SEA": worst(victim, list(sea.values())),
            "worst case both": worst(victim, [*fixed.values(), *sea.values()]),
            "worst case suite=sea": worst(victim, ensemble),
        }
        if args.image_weighting and number == 0:
            image = victim.statistics(
                "apgd",
                eps=args.eps,
                steps=budget,
                loss="mce_balanced",
                class_weighting="image",
                **SEA_PROTOCOL,
            )
            row["SEA mce_balanced, per-image weights"] = dataset_miou(image.sum(0))
        figures["budgets"][budget] = row
        print(f"\n{budget} iterations ({time.perf_counter() - started:.0f} s)")
        print("| member / worst case | mIoU (%) |\n|---|---:|")
        for name, value in row.items():
            print(f"| {name} | {100 * value:.2f} |")
        lowest_other = min(value for name, value in row.items() if name != "worst case suite=sea")
        print(
            f"suite=sea ensemble {100 * row['worst case suite=sea']:.2f} vs lowest of the rest "
            f"{100 * lowest_other:.2f}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
