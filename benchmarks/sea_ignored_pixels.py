"""SEA's counting of ignored pixels, measured on SEA's own code: as published, and with that one rule fixed.

SEA's ``apgd_train`` (``semseg/attacker.py`` of nmndeep/Robust-Segmentation) keeps, per image, the point of lowest
pixel accuracy over all pixels. At the start it scores ignored pixels (label -1) as wrong, since no prediction
equals -1; at every later iterate it sets them correct ("this overestimates accuracy but doesn't change the
order"). The two rules differ by the image's share of ignored pixels, so a later point replaces the start only
where it lowers the accuracy of the valid pixels by more than that share (in accuracy terms), and the point
returned is often the stage's start. This script runs SEA's own ``apgd_largereps`` (its protocol: 2 / 1.5 / 1 eps,
CE tracking, early stop, random start) on a checkpoint's first validation images twice, from the same random
starts: as published, and with only the start's rule changed to the later one's (one inserted line,
``acc[y == ignore_index] = True``). It prints, per loss, the pixel accuracy and mIoU of the returned points over
the valid pixels, the share of images whose last stage returned its own start, and the same figures for this
project's SEA-protocol APGD (``conf/attack/apgd_sea.yaml``) at the same budget.

SEA's code is read from a checkout (``--sea-code``), and the AutoAttack package it imports from another
(``--autoattack-code``, fra31/auto-attack); nothing is downloaded.

    python benchmarks/sea_ignored_pixels.py CHECKPOINT --sea-code DIR --autoattack-code DIR --images 64 --steps 100
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch
from omegaconf import OmegaConf

from eroseg_at.attacks import build_attack
from eroseg_at.attacks.apgd import balanced_class_weights
from eroseg_at.attacks.arguments import parse_number
from eroseg_at.checkpoint import load_checkpoint
from eroseg_at.configs import build
from eroseg_at.evaluation.data import from_datamodule
from eroseg_at.evaluation.inference import full_resolution
from eroseg_at.evaluation.worst_case import dataset_miou, per_image_statistics, pixel_accuracy
from eroseg_at.predictions import predicted_classes

# SEA's losses (its names) and this project's APGD loss of the same definition.
LOSSES = {"mask-ce-avg": "mce", "mask-ce-bal": "mce_balanced", "js-avg": "js"}
# The start's rule in SEA's apgd_train, and the line that makes it the rule of every later iterate.
START_RULE = "    acc = logits.detach().max(1)[1] == y\n"
FIX = "    acc[y == ignore_index] = True\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path, help="a training checkpoint (its validation split is used)")
    parser.add_argument(
        "--sea-code", type=Path, required=True, help="a checkout of nmndeep/Robust-Segmentation"
    )
    parser.add_argument("--autoattack-code", type=Path, required=True, help="a checkout of fra31/auto-attack")
    parser.add_argument("--images", type=int, default=64, help="the first N validation images")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100, help="iterations per loss (SEA: 300)")
    parser.add_argument("--eps", default="8/255")
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def load_sea(sea_code: Path, autoattack_code: Path, fixed: bool) -> types.ModuleType:
    """SEA's ``semseg/attacker.py`` as a module, as published or with the start's rule fixed."""
    path = sea_code / "semseg" / "attacker.py"
    text = path.read_text()
    if text.count(START_RULE) != 1:
        raise SystemExit(
            f"{path}: the start's accuracy rule {START_RULE.strip()!r} is not where this script expects"
        )
    if fixed:
        text = text.replace(START_RULE, START_RULE + FIX)
    if str(autoattack_code) not in sys.path:
        sys.path.insert(0, str(autoattack_code))
    module = types.ModuleType(f"sea_attacker_{'fixed' if fixed else 'published'}")
    module.__file__ = str(path)
    exec(compile(text, str(path), "exec"), module.__dict__)
    return module


def record_last_stage(module: types.ModuleType, starts: list, returned: list) -> None:
    """Wraps the module's ``apgd_train`` so that each stage's start and returned point are kept."""
    train = module.apgd_train

    def recording(*args, **kwargs):
        result = train(*args, **kwargs)
        starts.append(kwargs.get("x_init"))
        returned.append(result[3])
        return result

    module.apgd_train = recording


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    loaded = load_checkpoint(args.checkpoint)
    config = OmegaConf.merge(loaded.config, {"dataset": {"val_batch_size": args.batch}})
    data = from_datamodule(build(config.dataset))
    network = build(config.model)
    network.load_state_dict(loaded.model_state)
    model = full_resolution(network).eval()
    batches, seen = [], 0
    for images, labels in data.loader:
        take = min(args.images - seen, images.shape[0])
        if take <= 0:
            break
        batches.append((images[:take], labels[:take]))
        seen += take
    eps = parse_number(args.eps, "eps")
    weights = balanced_class_weights(data.class_frequencies())
    ignored = sum(int((labels == data.ignore_index).sum()) for _, labels in batches)
    pixels = sum(labels.numel() for _, labels in batches)
    print(
        f"checkpoint {args.checkpoint}, {seen} images, {100 * ignored / pixels:.2f} % of their pixels ignored, "
        f"eps {args.eps}, {args.steps} iterations per loss, torch {torch.__version__}"
    )

    def scores(adversarial: list[torch.Tensor]) -> tuple[float, float]:
        statistics = []
        for (_, labels), images in zip(batches, adversarial, strict=True):
            with torch.no_grad():
                predictions = predicted_classes(model(images))
            statistics.append(per_image_statistics(predictions, labels, data.num_classes, data.ignore_index))
        summed = torch.cat(statistics).sum(0)
        return float(pixel_accuracy(summed)), dataset_miou(summed)

    figures: dict = {}
    print("| loss | rule | pixel accuracy (%) | mIoU (%) | images whose last stage returned its start |")
    print("|---|---|---:|---:|---:|")
    for loss in args.losses:
        for fixed in (False, True):
            module = load_sea(args.sea_code, args.autoattack_code, fixed)
            adversarial, kept, total = [], 0, 0
            for index, (images, labels) in enumerate(batches):
                starts, returned = [], []
                record_last_stage(module, starts, returned)
                torch.manual_seed(args.seed * 1_000_003 + index)
                sea_labels = labels.masked_fill(labels == data.ignore_index, -1)
                output, _, _ = module.apgd_largereps(
                    model,
                    images,
                    sea_labels,
                    weights,
                    norm="Linf",
                    eps=eps,
                    n_iter=args.steps,
                    loss=loss,
                    track_loss="ce-avg",
                    use_rs=True,
                    early_stop=True,
                    num_classes=data.num_classes,
                )
                kept += int((returned[-1] == starts[-1]).flatten(1).all(1).sum())
                total += images.shape[0]
                adversarial.append(output.detach())
            accuracy, miou = scores(adversarial)
            rule = "fixed start" if fixed else "as published"
            figures[(loss, rule)] = (accuracy, miou, kept / total)
            print(f"| {loss} | {rule} | {100 * accuracy:.2f} | {100 * miou:.2f} | {kept}/{total} |")
        ours = build_attack(
            "apgd",
            dataset=data.facts(),
            eps=args.eps,
            steps=args.steps,
            loss=LOSSES[loss],
            track_loss="ce",
            early_stop=True,
            radius_factors=[2.0, 1.5, 1.0],
            stage_fractions=[0.3, 0.3, 0.4],
        )
        adversarial = []
        for index, (images, labels) in enumerate(batches):
            torch.manual_seed(args.seed * 1_000_003 + index)
            adversarial.append(ours(model, images, labels))
        accuracy, miou = scores(adversarial)
        figures[(loss, "eroseg-at")] = (accuracy, miou, None)
        print(f"| {loss} | eroseg-at apgd_sea ({LOSSES[loss]}) | {100 * accuracy:.2f} | {100 * miou:.2f} | |")
    return figures


if __name__ == "__main__":
    main()
