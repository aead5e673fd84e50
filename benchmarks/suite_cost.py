"""What each evaluation suite costs: its attack iterations per image and its measured time per image on `shapes`.

Runs ``evaluate(cfg)`` with each suite on the first ``--images`` validation images of a checkpoint's own dataset
(one batch, no cache, no example grid, W&B off) and prints one table row per suite as soon as it finishes:
iterations per image as the suite configures them (every member at every budget and every curve point; Square's
queries counted as iterations), the seconds of all passes per image (the gradient-masking checks' included, as
the estimate includes them), and the 1-minute load average before the suite started (the machine may be shared).
Also prints the dry run's estimate for the same images, to compare.

    PYTHONPATH=. python benchmarks/suite_cost.py --checkpoint CKPT --images 2 --suites quick paper strength sea full
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

from eroseg_at.configs import compose_config
from eroseg_at.evaluation import evaluate
from eroseg_at.evaluation.report import attack_iterations


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--suites", nargs="+", default=["quick", "paper", "strength", "sea", "full"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--estimates-only", action="store_true", help="print the dry runs' estimates alone")
    args = parser.parse_args()
    print(
        f"checkpoint {args.checkpoint}, {args.images} images per suite, device {args.device}, "
        f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}"
    )
    print(
        "| suite | attack iterations per image | images | seconds per image (measured) | dry-run estimate for "
        "those images | load average (1 min) before |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for suite in args.suites:
        load = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as directory:
            overrides = [
                f"ckpt_path={args.checkpoint}",
                f"suite={suite}",
                "max_batches=1",
                f"+dataset.val_batch_size={args.images}",
                "example_images=0",
                "cache=false",
                "logger.mode=disabled",
                f"device={args.device}",
                f"output_dir={directory}",
            ]
            with redirect_stdout(StringIO()) as plan:
                evaluate(compose_config("evaluate", [*overrides, "dry_run=true"]))
            estimate = next(line for line in plan.getvalue().splitlines() if line.startswith("  estimate: "))
            if args.estimates_only:
                print(f"| {suite} | {estimate.removeprefix('  estimate: ')} | {load:.1f} |", flush=True)
                continue
            started = time.perf_counter()
            with redirect_stdout(StringIO()):
                result = evaluate(compose_config("evaluate", overrides))
            wall = time.perf_counter() - started
        (report,) = result.reports
        masking = 0.0 if report.gradient_masking is None else report.gradient_masking.seconds
        passes = sum(row.seconds for row in report.rows) + masking
        print(
            f"| {suite} | {attack_iterations(report)} | {report.num_images} | {passes / report.num_images:.1f} "
            f"(run {wall:.0f} s in all) | {estimate.removeprefix('  estimate: ')} for {report.num_images} | "
            f"{load:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
