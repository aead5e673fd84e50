"""How fast candidate models learn ``shapes`` on this machine: the evidence behind the default model.

Each candidate is a list of Hydra overrides of ``conf/train.yaml``; it is trained by the real
``train(cfg)`` (standard training unless ``--overrides`` says otherwise, validation after every epoch,
CSV log) for the same number of optimizer steps, one after the other. Printed per candidate: the
parameters of the model, the wall time of the run, seconds per optimizer step (the run's
time over its steps, validation included), and the clean val mIoU after every epoch, final and best;
with ``--robust``, also the PGD-10 val mIoU after every epoch (the validation's attack, on its first
``validation.attack_batches`` batches). Whole-run times on a shared machine are only indicative: the cost
per update of two models is measured interleaved by ``benchmarks/backbone_cost.py``.

With ``--runs-dir``, each candidate's run is kept in ``<runs-dir>/<candidate>`` and a run that finished
there before is read back instead of trained again, so a comparison can be run in parts, or candidate by
candidate in parallel processes, and printed whole at the end.

Usage:
    python benchmarks/learning_speed.py                       # the default model against U-Net-ResNet-18
    python benchmarks/learning_speed.py --epochs 4 --train-images 256 \\
        --candidates "model=deeplabv3plus_lite" "model=fpn schedule.optimizer.lr=2e-3"
    python benchmarks/learning_speed.py --epochs 5 --train-images 1000 --robust --runs-dir outputs/backbone \\
        --overrides experiment=shapes_eroseg_at \\
        --candidates model=deeplabv3plus_lite model=deeplabv3plus_effnet_lite0   # EroSeg3-AT
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from contextlib import nullcontext
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
    parser.add_argument(
        "--overrides",
        nargs="+",
        default=["attack=none"],
        help="overrides of every candidate (experiment=shapes_eroseg_at: EroSeg3-AT instead of standard training)",
    )
    parser.add_argument("--robust", action="store_true", help="keep the validation's PGD-10 and print it")
    parser.add_argument("--runs-dir", type=Path, default=None, help="keep the runs here; reuse finished ones")
    return parser.parse_args()


def miou_by_epoch(metrics_csv: Path, metric: str) -> list[float]:
    """A val mIoU (%, as logged) of every validation epoch (``metric``: ``clean``, ``pgd10``), from the run's CSV log."""
    with metrics_csv.open() as handle:
        return [float(row[f"val/miou_{metric}"]) for row in csv.DictReader(handle) if row["val/miou_clean"]]


def run_candidate(overrides: list[str], run_dir: Path, epochs: int) -> float:
    """Trains one candidate into ``run_dir`` unless a finished run is there; returns its wall time (s)."""
    seconds_file = run_dir / "wall_seconds.txt"
    metrics_csv = run_dir / "csv" / "metrics.csv"
    if seconds_file.is_file() and len(miou_by_epoch(metrics_csv, "clean")) == epochs:
        return float(seconds_file.read_text())
    cfg = compose_config("train", [*overrides, f"paths.output_dir={run_dir}"])
    started = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - started
    seconds_file.write_text(f"{seconds:.1f}\n")
    return seconds


def main() -> None:
    args = parse_args()
    common = [
        f"schedule.max_epochs={args.epochs}",
        f"dataset.train_source.num_images={args.train_images}",
        f"dataset.val_source.num_images={args.val_images}",
        f"dataset.batch_size={args.batch_size}",
        f"seed={args.seed}",
        *args.overrides,
        *([] if args.robust else ["validation.attacks=null"]),
        "logger=csv",
    ]
    steps = args.epochs * (args.train_images // args.batch_size)
    print(
        f"shapes: {args.train_images} training / {args.val_images} validation images, batch {args.batch_size}, "
        f"{args.epochs} epochs = {steps} optimizer steps per candidate, seed {args.seed}"
    )
    rows = []
    for candidate in args.candidates:
        overrides = [*candidate.split(), *common]
        parameters = sum(
            p.numel() for p in instantiate(compose_config("train", overrides).model).parameters()
        )
        kept = nullcontext(args.runs_dir / candidate.replace(" ", "_")) if args.runs_dir else None
        with kept or tempfile.TemporaryDirectory() as output_dir:
            seconds = run_candidate(overrides, Path(output_dir), args.epochs)
            metrics_csv = Path(output_dir) / "csv" / "metrics.csv"
            history = miou_by_epoch(metrics_csv, "clean")
            robust = miou_by_epoch(metrics_csv, "pgd10") if args.robust else []
        rows.append((candidate, parameters, seconds, history, robust))
        print(
            f"{candidate}: clean val mIoU by epoch " + " ".join(f"{value:.1f}" for value in history),
            flush=True,
        )
        if robust:
            print(f"{candidate}: PGD-10 val mIoU by epoch " + " ".join(f"{value:.1f}" for value in robust))

    robust_columns = " PGD-10 final | PGD-10 best |" if args.robust else ""
    print(f"\n| candidate | parameters | run time (s) | s / step | final mIoU | best mIoU |{robust_columns}")
    print("|---|---:|---:|---:|---:|---:|" + "---:|" * (2 if args.robust else 0))
    for candidate, parameters, seconds, history, robust in rows:
        robust_cells = f" {robust[-1]:.1f} | {max(robust):.1f} |" if robust else ""
        print(
            f"| `{candidate}` | {parameters / 1e6:.2f} M | {seconds:.0f} | {seconds / steps:.3f} | "
            f"{history[-1]:.1f} | {max(history):.1f} |{robust_cells}"
        )


if __name__ == "__main__":
    main()
