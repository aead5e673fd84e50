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

A second table times whole updates of the training modes (``adversarial.mode`` × ``adversarial.objective``) on
one real ``shapes`` batch of B augmented images with their sample geometry, each as the real
``training_step`` + backward + optimizer step, as ratios to the update of standard training, in the same
interleaved rounds (``--modes`` picks the rows).

Usage:
    python benchmarks/at_step.py                          # the default model, 8x3x128x128, EroSeg, K=3, CPU
    python benchmarks/at_step.py --steps 7 --attack pgd
    python benchmarks/at_step.py --batch 2 --size 64 --repeats 1   # a quick run
"""

from __future__ import annotations

import argparse
import shutil
import statistics
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
from eroseg_at.training.perturbations import PerturbationStore
from eroseg_at.training.runner import build_module

IGNORE_INDEX = 255
# Rows of the update-cost table: name -> (adversarial.mode, adversarial.objective); "clean" is standard training.
UPDATES = {
    "clean": (None, None),
    "multi_step/clean_plus_adv": ("multi_step", "clean_plus_adv"),
    "multi_step/adv_only": ("multi_step", "adv_only"),
    "accumulated/clean_plus_adv": ("accumulated", "clean_plus_adv"),
    "accumulated/adv_only": ("accumulated", "adv_only"),
    "accumulated/half_adv": ("accumulated", "half_adv"),
    "single_step/clean_plus_adv": ("single_step", "clean_plus_adv"),
    "single_step/adv_only": ("single_step", "adv_only"),
    "single_step/half_adv": ("single_step", "half_adv"),
}


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
    parser.add_argument("--objectives", nargs="+", default=["clean_plus_adv", "half_adv"])
    parser.add_argument(
        "--modes",
        nargs="*",
        default=list(UPDATES),
        choices=list(UPDATES),
        help="rows of the update-cost table (mode/objective); none: skip it",
    )
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


def model_config(args: argparse.Namespace):
    """``conf/train.yaml`` with ``model=<args.model>`` (and the encoder and class count asked for)."""
    overrides = [f"model={args.model}", f"model.num_classes={args.num_classes}"]
    if args.encoder is not None:
        overrides.append(f"model.encoder={args.encoder}")
    return compose_config("train", overrides)


def update_modules(args: argparse.Namespace, model: torch.nn.Module, store_dir: Path) -> tuple[dict, tuple]:
    """One module per row of the update-cost table, over ``model``, and one augmented shapes batch
    ``(images, labels, geometry)`` (the main job's training data at ``--batch`` and ``--size``)."""
    base = [
        "experiment=shapes_eroseg_at",
        f"model={args.model}",
        f"model.num_classes={args.num_classes}",
        f"adversarial.attack_steps={args.steps}",
        f"dataset.batch_size={args.batch}",
        f"dataset.train_source.image_size=[{args.size},{args.size}]",
        f"dataset.crop_size=[{args.size},{args.size}]",
        f"paths.output_dir={store_dir}",
    ]
    cfg = compose_config("train", base)
    datamodule = build(cfg.dataset, sample_geometry=True)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    modules = {}
    for name in args.modes:
        mode, objective = UPDATES[name]
        extra = (
            ["attack=none"]
            if mode is None
            else [f"adversarial.mode={mode}", f"adversarial.objective={objective}"]
        )
        module = build_module(compose_config("train", [*base, *extra]), model, datamodule)
        if mode == "accumulated":
            store = PerturbationStore(
                store_dir / name.replace("/", "_"),
                datamodule.train_sample_sizes(),
                module.train_attack.eps,
                create=True,
            )
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
    model = instantiate(model_config(args).model).to(device)
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
    updates, batch = update_modules(args, model, store_dir) if args.modes else ({}, None)
    batch = None if batch is None else move_data_to_device(batch, device)

    def update(module: SegmentationModule) -> Callable[[], None]:
        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            module.training_step(batch, 0).backward()
            optimizer.step()

        return step

    entries: dict[str, Callable[[], None]] = {
        "attack iteration (B)": attack_iteration(args.batch),
        "attack iteration (B/2)": attack_iteration(args.batch // 2),
        "clean step (B)": clean_step(args.batch),
        "clean step (2B)": clean_step(2 * args.batch),
        **{f"AT step {objective}": at_step(module) for objective, module in modules.items()},
        **{f"update {name}": update(module) for name, module in updates.items()},
    }
    model.train()
    times: dict[str, list[float]] = {name: [] for name in entries}
    with warnings.catch_warnings():
        # SegmentationModule.log() outside a Trainer only warns; the step itself is what we time.
        warnings.simplefilter("ignore")
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
        with autocast:
            for fn in entries.values():  # warm-up
                fn()
            for _ in range(args.repeats):
                for name, fn in entries.items():
                    synchronize(device)
                    start = time.perf_counter()
                    fn()
                    synchronize(device)
                    times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}

    print(
        f"model={args.model} ({type(model.network).__name__}-{model.network.encoder.__class__.__name__}), batch B={args.batch}, {args.size}x{args.size}, attack={args.attack}, "
        f"K={args.steps}, device={device}, precision={args.precision}, threads={torch.get_num_threads()}, repeats={args.repeats} (median)"
    )
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
    shutil.rmtree(store_dir, ignore_errors=True)
    if not updates:
        return
    attack_steps = {"multi_step": args.steps, "accumulated": 1, "single_step": 1}
    print(
        f"\nWhole updates on one augmented shapes batch (B={args.batch}, {args.size}x{args.size}), ratio to the "
        "update of standard training (clean):"
    )
    print("\n| mode / objective | attack iterations | update (ms) | / clean |")
    print("|---|---:|---:|---:|")
    clean = median.get("update clean")
    for name in updates:
        mode = UPDATES[name][0]
        ratio = f"{median[f'update {name}'] / clean:.2f}" if clean else "n/a"
        print(f"| {name} | {attack_steps.get(mode, 0)} | {1000 * median[f'update {name}']:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
