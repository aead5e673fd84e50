"""What a model option costs per training update against another, measured interleaved in one process.

For each model (``--models``, options of ``conf/model``) and each kind of update (standard training and
EroSeg3-AT, ``experiment=shapes_eroseg_at``), the real ``SegmentationModule.training_step`` + backward +
optimizer step runs on one augmented ``shapes`` batch. The four updates run in turn within every round, so a
load that comes and goes on a shared machine touches all of them alike; each round gives one ratio per pair,
and the table prints the median ratio with its range over the rounds (after one warm-up round).

Usage:
    python benchmarks/backbone_cost.py                                 # lite vs EfficientNet-Lite0, 64 px
    python benchmarks/backbone_cost.py --rounds 20 --batch 16 --size 64 --threads 1
    (from a checkout that is not the installed one: PYTHONPATH=. so that its conf/ is the one composed)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable

import torch
from hydra.utils import instantiate

from eroseg_at.configs import build, compose_config
from eroseg_at.training.runner import build_module

KINDS = {"standard": ["attack=none"], "EroSeg3-AT": ["experiment=shapes_eroseg_at"]}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs=2, default=["deeplabv3plus_lite", "deeplabv3plus_effnet_lite0"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


def updates(args: argparse.Namespace, output_dir: str) -> dict[tuple[str, str], Callable[[], None]]:
    """One real training update per (model, kind), each over its own model and AdamW optimizer."""
    data = [
        f"dataset.batch_size={args.batch}",
        f"dataset.train_source.image_size=[{args.size},{args.size}]",
        f"dataset.crop_size=[{args.size},{args.size}]",
        f"paths.output_dir={output_dir}",
    ]
    result = {}
    for model_name in args.models:
        for kind, overrides in KINDS.items():
            cfg = compose_config("train", [*overrides, f"model={model_name}", *data])
            datamodule = build(cfg.dataset)
            datamodule.setup("fit")
            images, labels = next(iter(datamodule.train_dataloader()))[:2]
            torch.manual_seed(0)
            model = instantiate(cfg.model)
            module = build_module(cfg, model, datamodule).train()
            optimizer = instantiate(cfg.schedule.optimizer)(module.parameters())

            def update(module=module, optimizer=optimizer, batch=(images, labels)) -> None:
                optimizer.zero_grad(set_to_none=True)
                module.training_step(batch, 0).backward()
                optimizer.step()

            result[model_name, kind] = update
    return result


def spread(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as output_dir:
        entries = updates(args, output_dir)
        times: dict[tuple[str, str], list[float]] = {key: [] for key in entries}
        with warnings.catch_warnings():
            # SegmentationModule.log() outside a Trainer only warns; the update itself is what is timed.
            warnings.simplefilter("ignore")
            for round_index in range(args.rounds + 1):
                for key, update in entries.items():
                    start = time.perf_counter()
                    update()
                    if round_index:
                        times[key].append(time.perf_counter() - start)
    base, other = args.models
    print(
        f"shapes batch {args.batch}x3x{args.size}x{args.size}, threads={torch.get_num_threads()}, "
        f"{args.rounds} interleaved rounds after 1 warm-up; median (min-max over rounds)"
    )
    print("\n| model | update | ms per update | / standard update of the same model |")
    print("|---|---|---:|---:|")
    for model_name in args.models:
        for kind in KINDS:
            ms = [1000 * t for t in times[model_name, kind]]
            ratios = [
                a / s for a, s in zip(times[model_name, kind], times[model_name, "standard"], strict=True)
            ]
            print(f"| `{model_name}` | {kind} | {spread(ms, 0)} | {spread(ratios)} |")
    print(f"\n| update | `{other}` / `{base}`, per round |")
    print("|---|---:|")
    for kind in KINDS:
        ratios = [o / b for o, b in zip(times[other, kind], times[base, kind], strict=True)]
        print(f"| {kind} | {spread(ratios)} |")


if __name__ == "__main__":
    main()
