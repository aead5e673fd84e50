"""What the gradient-masking checks cost beside a ``suite=paper`` evaluation of a checkpoint, in one process.

Each round evaluates the checkpoint through the pipeline without a cache (``masking_checks`` as configured, the
defaults unless overridden), timing every pass: the suite's (clean, CW, PGD10, PGD20, the APGD ensemble at 50
iterations) and the checks' (Square, the cheap APGD at 64/255 and 2/255, the half-steps member, one gradient
health pass per loss, the second clean pass) run one after the other in the same process, so both see the
same machine load. Prints, per round, every pass's seconds and the checks' share of the evaluation.

    PYTHONPATH=. python benchmarks/masking_cost.py CKPT --rounds 2 [override ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from eroseg_at.configs import compose_config
from eroseg_at.evaluation.distributed import start_processes
from eroseg_at.evaluation.masking_passes import KIND
from eroseg_at.evaluation.passes import PassRunner
from eroseg_at.evaluation.pipeline import evaluate_models


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="where to write the figures")
    parser.add_argument(
        "overrides", nargs="*", help="settings of conf/evaluate.yaml, e.g. masking_checks.queries=300"
    )
    return parser.parse_args(argv)


def timed_passes() -> list[tuple[str, bool, float]]:
    """Records (pass name, whether it is a check's, seconds) of every pass :class:`PassRunner` runs from now on."""
    timings: list[tuple[str, bool, float]] = []
    run = PassRunner.run

    def timing(self, model, data, planned, where):
        started = time.perf_counter()
        result = run(self, model, data, planned, where)
        identity = planned.producer.identity
        timings.append((planned.producer.name, identity.kind.startswith(KIND), time.perf_counter() - started))
        return result

    PassRunner.run = timing
    return timings


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    cfg = compose_config(
        "evaluate",
        [
            f"ckpt_path={args.checkpoint}",
            "suite=paper",
            "example_images=0",
            "cache=false",
            "device=cpu",
            "output_dir=unused",
            *args.overrides,
        ],
    )
    timings = timed_passes()
    rounds = []
    for round_index in range(1, args.rounds + 1):
        timings.clear()
        (report,) = evaluate_models(cfg, start_processes(cfg))
        suite = sum(seconds for _, check, seconds in timings if not check)
        checks = sum(seconds for _, check, seconds in timings if check)
        print(f"\nround {round_index}: {report.num_images} images, {report.name}\n")
        print("| pass | part | seconds |\n|---|---|---:|")
        for name, check, seconds in timings:
            print(f"| {name} | {'check' if check else 'suite'} | {seconds:.1f} |")
        print(
            f"\nsuite passes {suite:.0f} s, checks {checks:.0f} s: the checks add {100 * checks / suite:.1f} % to "
            f"the suite's time ({100 * checks / (suite + checks):.1f} % of the whole); verdict: "
            f"{report.gradient_masking.summary()}"
        )
        rounds.append(
            {
                "images": report.num_images,
                "passes": [{"name": n, "check": c, "seconds": s} for n, c, s in timings],
                "suite_seconds": suite,
                "check_seconds": checks,
                "verdict": report.gradient_masking.to_json(),
            }
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rounds, indent=1))
    return rounds


if __name__ == "__main__":
    main()
