"""How fast candidate models learn ``shapes`` on this machine: the evidence behind the default model.

Each candidate is a list of Hydra overrides of ``conf/train.yaml``; it is trained by the real
``train(cfg)`` (standard training, clean validation after every epoch, no logger, no checkpoint
kept) for the same number of optimizer steps, one after the other. Printed per candidate: the
parameters of the model, the wall time of the run, seconds per optimizer step (the run's
time over its steps, validation included), and the clean val mIoU after every epoch, final and best.

Usage:
    python benchmarks/learning_speed.py                       # the default model against U-Net-ResNet-18
    python benchmarks/learning_speed.py --epochs 4 --train-images 256 \\
        --candidates "model=deeplabv3plus_lite" "model=fpn schedule.optimizer.lr=2e-3"
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from hydra.utils import instantiate

from eroseg_at.configs import compose_config
from eroseg_at.training.runner import train

DEFAULT_CANDIDATES = ["model=deeplabv3plus_lite", "model=unet schedule.optimizer.lr=2e-3"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--candidates", nargs="+", default=DEFAULT_CANDIDATES, help="one quoted override list each"
    )
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def clean_miou_by_epoch(metrics_csv: Path) -> list[float]:
    """Clean val mIoU (%, as logged) of every validation epoch, from the run's CSV log."""
    with metrics_csv.open() as handle:
        return [float(row["val/miou_clean"]) for row in csv.DictReader(handle) if row["val/miou_clean"]]


def main() -> None:
    args = parse_args()
    common = [
        f"schedule.max_epochs={args.epochs}",
        f"dataset.train_source.num_images={args.train_images}",
        f"dataset.val_source.num_images={args.val_images}",
        f"dataset.batch_size={args.batch_size}",
        f"seed={args.seed}",
        "attack=none",
        "validation.attacks=null",
        "logger=csv",
    ]
    steps = args.epochs * (args.train_images // args.batch_size)
    print(
        f"shapes: {args.train_images} training / {args.val_images} validation images, batch {args.batch_size}, "
        f"{args.epochs} epochs = {steps} optimizer steps per candidate, seed {args.seed}"
    )
    rows = []
    for candidate in args.candidates:
        with tempfile.TemporaryDirectory() as output_dir:
            cfg = compose_config("train", [*candidate.split(), *common, f"paths.output_dir={output_dir}"])
            parameters = sum(p.numel() for p in instantiate(cfg.model).parameters())
            started = time.perf_counter()
            train(cfg)
            seconds = time.perf_counter() - started
            history = clean_miou_by_epoch(Path(output_dir) / "csv" / "metrics.csv")
        rows.append((candidate, parameters, seconds, history))
        print(
            f"{candidate}: clean val mIoU by epoch " + " ".join(f"{value:.1f}" for value in history),
            flush=True,
        )

    print("\n| candidate | parameters | run time (s) | s / step | final mIoU | best mIoU |")
    print("|---|---:|---:|---:|---:|---:|")
    for candidate, parameters, seconds, history in rows:
        print(
            f"| `{candidate}` | {parameters / 1e6:.2f} M | {seconds:.0f} | {seconds / steps:.3f} | "
            f"{history[-1]:.1f} | {max(history):.1f} |"
        )


if __name__ == "__main__":
    main()
