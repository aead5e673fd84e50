"""Cost of one adversarial-training step against its floor, measured in one run.

An AT step with a K-step attack cannot cost less than K attack iterations (forward +
input-gradient backward, model in eval mode) plus one ordinary training step over the
images it trains on. This script times, interleaved over ``--repeats`` rounds (median):

- ``attack iteration (M)``: forward + ``torch.autograd.grad`` w.r.t. the input on M images;
- ``clean step (N)``: forward + backward + optimizer step on N images;
- ``AT step``: the real ``SegmentationModule.training_step`` + backward + optimizer step.

The floor is ``K × attack iteration (M) + clean step (N)``, with M the images attacked and N
the images trained on: M = B, N = 2B for ``clean_plus_adv`` (EroSeg-AT's CE(x) + CE(x_adv),
one forward over the clean and adversarial batch), and M = B/2, N = B for ``half_adv``
(SegPGD-AT, which attacks half of each batch).

A second table times whole updates of training recipes on one real ``shapes`` batch of B augmented images with
their sample geometry, each as the real ``training_step`` + backward + optimizer step. A recipe is a name and its
overrides of ``conf/train.yaml`` (``--updates name="attack=eroseg adversarial.objective=adv_only"``; the
defaults cover every mode × objective); ``standard`` (``attack=none``) is the unit. Every round times each recipe
once, in an order rotated from round to round (interleaved, so a slow spell of a shared machine falls on all of
them); each recipe's ratio to standard training is taken within a round, and the table gives the median over
the rounds with the range. ``--json`` writes every round's times and ratios (``make reproduce`` reads them: the
cost axis of its verdicts).

Usage:
    python benchmarks/at_step.py                          # the default model, 8x3x128x128, EroSeg, K=3, CPU
    python benchmarks/at_step.py --steps 7 --attack pgd
    python benchmarks/at_step.py --batch 2 --size 64 --repeats 1   # a quick run
    python benchmarks/at_step.py --objectives --updates standard=attack=none pgd3=attack=pgd --json costs.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.fabric.utilities.apply_func import move_data_to_device

from eroseg_at.attacks import available_attacks, build_attack
from eroseg_at.configs import build, compose_config
from eroseg_at.training.amortised import AccumulatedPerturbations
from eroseg_at.training.module import AdversarialTraining, SegmentationModule
from eroseg_at.training.perturbations import PerturbationStore, training_store_layout
from eroseg_at.training.runner import build_datamodule, build_module

IGNORE_INDEX = 255
# Rows of the update-cost table: name -> overrides of conf/train.yaml (on top of the model, size and batch).
UPDATES = {
    "standard": "attack=none",
    "multi_step/clean_plus_adv": "attack=eroseg",
    "multi_step/adv_only": "attack=eroseg adversarial.objective=adv_only",
    "accumulated/clean_plus_adv": "attack=eroseg attack.steps=1 adversarial.mode=accumulated",
    "accumulated/adv_only": "attack=eroseg attack.steps=1 adversarial.mode=accumulated adversarial.objective=adv_only",
    "accumulated/half_adv": "attack=eroseg attack.steps=1 adversarial.mode=accumulated adversarial.objective=half_adv",
    "single_step/clean_plus_adv": "attack=pgd attack.steps=1 adversarial.mode=single_step",
    "single_step/adv_only": "attack=pgd attack.steps=1 adversarial.mode=single_step adversarial.objective=adv_only",
    "single_step/half_adv": "attack=pgd attack.steps=1 adversarial.mode=single_step adversarial.objective=half_adv",
}
BASELINE = "standard"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="deeplabv3plus_lite", help="an option of conf/model")
    parser.add_argument("--encoder", default=None, help="override the model config's encoder")
    parser.add_argument("--num-classes", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="attack iterations K")
    parser.add_argument("--attack", default="eroseg", choices=available_attacks())
    parser.add_argument(
        "--objectives", nargs="*", default=["clean_plus_adv", "half_adv"], help="none: skip the floor table"
    )
    parser.add_argument(
        "--updates",
        nargs="*",
        default=[f"{name}={overrides}" for name, overrides in UPDATES.items()],
        help="rows of the update-cost table, name=overrides (space-separated); none: skip it",
    )
    parser.add_argument(
        "--overrides", nargs="*", default=[], help="overrides of conf/train.yaml every update row shares"
    )
    parser.add_argument("--json", type=Path, default=None, help="write every round's times and ratios here")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--precision",
        choices=["32", "bf16"],
        default="32",
        help="bf16: every entry under bf16 autocast, as trainer.precision=bf16-mixed runs it",
    )
    return parser.parse_args()


def shared_overrides(args: argparse.Namespace) -> list[str]:
    """What every entry shares: the model (and the encoder and class count asked for), the data's size and
    batch, and ``--overrides``."""
    overrides = [f"model={args.model}", f"model.num_classes={args.num_classes}"]
    if args.encoder is not None:
        overrides.append(f"model.encoder={args.encoder}")
    return [
        *overrides,
        f"dataset.batch_size={args.batch}",
        f"dataset.train_source.image_size=[{args.size},{args.size}]",
        f"dataset.crop_size=[{args.size},{args.size}]",
        "dataset.num_workers=0",
        *args.overrides,
    ]


def update_rows(args: argparse.Namespace) -> dict[str, list[str]]:
    """The update-cost table's rows, name -> overrides, from ``--updates`` (``standard`` first: the unit)."""
    rows = {}
    for entry in args.updates:
        name, separator, overrides = entry.partition("=")
        if not separator or not name:
            raise SystemExit(f"--updates: expected name=overrides, got {entry!r}")
        rows[name] = overrides.split()
    if rows and BASELINE not in rows:
        raise SystemExit(f"--updates: the rows need {BASELINE}=attack=none, the unit of the ratios")
    return {BASELINE: rows.pop(BASELINE), **rows} if rows else {}


def update_modules(
    args: argparse.Namespace, model: torch.nn.Module, store_dir: Path, rows: dict[str, list[str]]
) -> tuple[dict, tuple]:
    """One module per row of the update-cost table, over ``model``, and one augmented shapes batch
    ``(images, labels, geometry)`` (the main job's training data at ``--batch`` and ``--size``)."""
    base = shared_overrides(args)
    # One batch with its geometry for every row (the rows without geometry ignore it).
    datamodule = build(compose_config("train", base).dataset, sample_geometry=True)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    modules = {}
    for name, overrides in rows.items():
        cfg = compose_config(
            "train", [*base, *overrides, f"paths.output_dir={store_dir / name.replace('/', '_')}"]
        )
        datamodule = build_datamodule(cfg)
        datamodule.setup("fit")
        module = build_module(cfg, model, datamodule)
        if module.adversarial.mode == "accumulated" and module.train_attack is not None:
            layout = training_store_layout(datamodule, module.train_attack.eps)
            store = PerturbationStore(cfg.adversarial.accumulated.directory, layout, create=True)
            module.accumulated = AccumulatedPerturbations(
                module.adversarial.accumulated, module.train_attack, store
            )
        modules[name] = module
    return modules, batch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = instantiate(compose_config("train", shared_overrides(args)).model).to(device)
    images = torch.rand(args.batch, 3, args.size, args.size, device=device)
    labels = torch.randint(0, args.num_classes, (args.batch, args.size, args.size), device=device)
    labels[:, :4] = IGNORE_INDEX
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    modules = {
        objective: SegmentationModule(
            model,
            args.num_classes,
            [str(c) for c in range(args.num_classes)],
            train_attack=build_attack(args.attack, steps=args.steps),
            adversarial=AdversarialTraining(objective=objective),
        )
        for objective in args.objectives
    }

    def attack_iteration(n: int) -> Callable[[], None]:
        def iteration() -> None:
            model.eval()
            x = images[:n].clone().requires_grad_(True)
            loss = F.cross_entropy(model(x), labels[:n], ignore_index=IGNORE_INDEX)
            torch.autograd.grad(loss, x)
            model.train()

        return iteration

    def clean_step(n: int) -> Callable[[], None]:
        batch_images = images.repeat(n // args.batch, 1, 1, 1)
        batch_labels = labels.repeat(n // args.batch, 1, 1)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(batch_images), batch_labels, ignore_index=IGNORE_INDEX).backward()
            optimizer.step()

        return step

    def at_step(module: SegmentationModule) -> Callable[[], None]:
        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            module.training_step((images, labels), 0).backward()
            optimizer.step()

        return step

    store_dir = Path(tempfile.mkdtemp(prefix="at_step_"))
    rows = update_rows(args)
    updates, batch = update_modules(args, model, store_dir, rows) if rows else ({}, None)
    batch = None if batch is None else move_data_to_device(batch, device)

    def update(module: SegmentationModule) -> Callable[[], None]:
        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            module.training_step(batch, 0).backward()
            optimizer.step()

        return step

    entries: dict[str, Callable[[], None]] = {}
    if args.objectives:
        entries |= {
            "attack iteration (B)": attack_iteration(args.batch),
            "attack iteration (B/2)": attack_iteration(args.batch // 2),
            "clean step (B)": clean_step(args.batch),
            "clean step (2B)": clean_step(2 * args.batch),
            **{f"AT step {objective}": at_step(module) for objective, module in modules.items()},
        }
    entries |= {f"update {name}": update(module) for name, module in updates.items()}
    model.train()
    names = list(entries)
    times: dict[str, list[float]] = {name: [] for name in names}
    with warnings.catch_warnings():
        # SegmentationModule.log() outside a Trainer only warns; the step itself is what we time.
        warnings.simplefilter("ignore")
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
        with autocast:
            for fn in entries.values():  # warm-up
                fn()
            for repeat in range(args.repeats):
                # Rotated: no entry always follows the same one, or always runs first in a round.
                shift = repeat % len(names)
                for name in names[shift:] + names[:shift]:
                    synchronize(device)
                    start = time.perf_counter()
                    entries[name]()
                    synchronize(device)
                    times[name].append(time.perf_counter() - start)
    shutil.rmtree(store_dir, ignore_errors=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"model={args.model} ({type(model.network).__name__}-{model.network.encoder.__class__.__name__}), "
        f"batch B={args.batch}, {args.size}x{args.size}, device={device}, precision={args.precision}, "
        f"threads={torch.get_num_threads()}, repeats={args.repeats} (median)"
    )
    if args.objectives:
        print_floor_table(args, median)
    if updates:
        ratios = {
            name: [
                t / clean
                for t, clean in zip(times[f"update {name}"], times[f"update {BASELINE}"], strict=True)
            ]
            for name in updates
        }
        print_update_table(args, rows, median, ratios)
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(
                json.dumps(
                    {
                        "command": "python benchmarks/at_step.py " + " ".join(sys.argv[1:]),
                        "rows": {name: " ".join(overrides) for name, overrides in rows.items()},
                        "seconds": {name: times[f"update {name}"] for name in updates},
                        "ratios": ratios,
                        "threads": torch.get_num_threads(),
                    },
                    indent=1,
                )
            )


def print_floor_table(args: argparse.Namespace, median: dict[str, float]) -> None:
    print(f"attack={args.attack}, K={args.steps}")
    for name in ("attack iteration (B)", "attack iteration (B/2)", "clean step (B)", "clean step (2B)"):
        print(f"  {name:<22} {1000 * median[name]:9.1f} ms")
    print("\n| objective | AT step (ms) | floor (ms) | AT step / floor | AT step / clean step (B) |")
    print("|---|---:|---:|---:|---:|")
    for objective in args.objectives:
        # clean_plus_adv attacks all B images and trains on 2B; half_adv attacks B/2 and trains on B.
        attacked, trained = (
            ("attack iteration (B)", "clean step (2B)")
            if objective == "clean_plus_adv"
            else ("attack iteration (B/2)", "clean step (B)")
        )
        floor = args.steps * median[attacked] + median[trained]
        at = median[f"AT step {objective}"]
        print(
            f"| {objective} | {1000 * at:.1f} | {1000 * floor:.1f} (K x {attacked} + {trained}) | {at / floor:.3f} | "
            f"{at / median['clean step (B)']:.2f} |"
        )


def print_update_table(
    args: argparse.Namespace,
    rows: dict[str, list[str]],
    median: dict[str, float],
    ratios: dict[str, list[float]],
) -> None:
    print(
        f"\nWhole updates on one augmented shapes batch (B={args.batch}, {args.size}x{args.size}), ratio to the "
        f"update of standard training within each of {args.repeats} interleaved rounds: median [min, max]\n"
    )
    print("| recipe | overrides | update (ms) | / standard |")
    print("|---|---|---:|---|")
    for name, values in ratios.items():
        print(
            f"| {name} | `{' '.join(rows[name])}` | {1000 * median[f'update {name}']:.1f} | "
            f"{statistics.median(values):.2f} [{min(values):.2f}, {max(values):.2f}] |"
        )


if __name__ == "__main__":
    main()
