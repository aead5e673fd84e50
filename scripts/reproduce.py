"""Small-scale reproduction on the embedded shapes dataset: the EroSeg-AT table and amortised EroSeg-AT.

For each seed, trains (same model, schedule, epochs and attack budget) standard training, PGD3-AT, EroSeg3-AT
with step 0.01 and with the paper's 0.001, EroSeg3-AT on the adversarial-only objective, and the amortised
modes (accumulated EroSeg adv-only, single-step N-FGSM adv-only, and the variants asked for); then every
amortised mode again for the target's budget, twice standard training's cost (compute-matched: its epochs
scaled by 2 over its per-update cost). Every model is evaluated with the paper's attacks (CW, PGD10, PGD20 at
8/255) and with SEA's worst case (three APGD losses, progressive radius, per image) at 4/255 and 8/255.

The cost axis is the per-update cost of each recipe over standard training's, from ``benchmarks/at_step.py``
(interleaved rounds, median and range), measured once at the start of the reproduction. Whole-run wall times of
the training batches (validation timed apart, every run with the same callbacks: ``TrainResult.time``) are
reported beside it.

The script resumes: every finished run and evaluation is kept in ``<output-dir>/results/*.json``; a rerun with
the same ``--output-dir`` continues where the last one stopped (a run cut short continues from its last
checkpoint), and ``--report`` rewrites ``docs/RESULTS.md`` from what is there. ``docs/RESULTS.md`` and the erosion
figure are written after every evaluated run (marked partial until the last), the attack-strength curve and its
figures at the end.

    make reproduce                                   # the default sizes (see docs/RESULTS.md for its time)
    make reproduce ARGS="--epochs 1 --train-images 32 --val-images 16 --sea-steps 3 --seeds 0 --output-dir /tmp/r"
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from statistics import mean, median

import torch
from omegaconf import OmegaConf

from eroseg_at.configs import CONF_DIR, compose_config
from eroseg_at.evaluation import evaluate
from eroseg_at.evaluation.report import iterations_table
from eroseg_at.training import train
from eroseg_at.training.erosion import describe, erosion_figure, load_records

REPO_ROOT = CONF_DIR.parent


@dataclass(frozen=True)
class Method:
    """A training recipe of the comparison: its overrides of ``conf/train.yaml`` and its report label."""

    key: str
    label: str
    overrides: tuple[str, ...]
    amortised: bool = False


METHODS = (
    Method("standard", "standard", ("attack=none",)),
    Method("pgd3", "PGD3-AT", ("attack=pgd",)),
    Method("eroseg3", "EroSeg3-AT (alpha 0.01)", ("attack=eroseg",)),
    Method("eroseg3_paper", "EroSeg3-AT (alpha 0.001, paper)", ("attack=eroseg_paper",)),
    Method("eroseg3_adv_only", "EroSeg3-AT, adv-only", ("attack=eroseg", "adversarial.objective=adv_only")),
    Method(
        "accumulated",
        "accumulated EroSeg, adv-only",
        ("attack=eroseg", "attack.steps=1", "adversarial.mode=accumulated", "adversarial.objective=adv_only"),
        amortised=True,
    ),
    Method(
        "single_step",
        "single-step N-FGSM (CE), adv-only",
        ("attack=pgd", "attack.steps=1", "adversarial.mode=single_step", "adversarial.objective=adv_only"),
        amortised=True,
    ),
    # Variants meant to close the gap to EroSeg3-AT: keep clean training (SegPGD-AT's half-adversarial batch,
    # which also halves the attacked images), or take the single step on EroSeg's objective.
    Method(
        "accumulated_half",
        "accumulated EroSeg, half-adv",
        ("attack=eroseg", "attack.steps=1", "adversarial.mode=accumulated", "adversarial.objective=half_adv"),
        amortised=True,
    ),
    Method(
        "accumulated2",
        "accumulated EroSeg, 2 steps per visit, adv-only",
        ("attack=eroseg", "attack.steps=2", "adversarial.mode=accumulated", "adversarial.objective=adv_only"),
        amortised=True,
    ),
    Method(
        "single_step_eroseg",
        "single-step N-FGSM (EroSeg), half-adv",
        ("attack=eroseg", "attack.steps=1", "adversarial.mode=single_step", "adversarial.objective=half_adv"),
        amortised=True,
    ),
    # The other attacks of the paper's table, for runs that ask for them (--methods).
    Method("segpgd3", "SegPGD3-AT", ("attack=segpgd",)),
    Method("cospgd3", "CosPGD3-AT", ("attack=cospgd",)),
    Method("rppgd3", "RP-PGD3-AT", ("attack=rppgd",)),
)
DEFAULT_METHODS = (
    "standard",
    "pgd3",
    "eroseg3",
    "eroseg3_paper",
    "eroseg3_adv_only",
    "accumulated",
    "single_step",
    "accumulated_half",
)
# The method every amortised mode is measured against, and the one whose cost is the unit.
REFERENCE, BASELINE = "eroseg3", "standard"
# Table columns (percent): the paper's attacks (suite=paper at 8/255) and SEA's worst case at each budget.
COLUMNS = (
    ("clean", "clean"),
    ("cw", "CW"),
    ("pgd10", "PGD10"),
    ("pgd20", "PGD20"),
    ("sea@4/255", "SEA 4/255"),
    ("sea@8/255", "SEA 8/255"),
)
# The paper suite without its APGD members (the ensemble every suite shares): suite=sea evaluates them at
# both budgets instead, and runs the gradient-masking checks once per checkpoint.
PAPER_ONLY = [
    *(
        f"~suite.attacks.{key}"
        for key in OmegaConf.load(CONF_DIR / "suite" / "common" / "apgd_ensemble.yaml").attacks
    ),
    "masking_checks.enabled=false",
]
# The target (issue #15, #20): SEA worst case within MAX_GAP points of EroSeg3-AT's at both budgets, clean mIoU
# within MAX_CLEAN_GAP points, at no more than MAX_COST times standard training's cost per update.
MAX_GAP, MAX_CLEAN_GAP, MAX_COST = 1.0, 2.0, 2.0
# The settings that make a reproduction what it is: a rerun into the same directory must share them.
SETTINGS = (
    "image_size",
    "train_images",
    "val_images",
    "batch_size",
    "epochs",
    "sea_steps",
    "model",
    "schedule",
)


@dataclass
class Run:
    """One training run and what was measured on it (kept as ``results/<name>.json``)."""

    method: Method
    seed: int
    epochs: int
    compute_matched: bool
    directory: Path
    checkpoint: Path | None = None
    training_minutes: float = math.nan
    validation_minutes: float = math.nan
    collapses: list[int] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    foreground: float = math.nan
    sha256: str = ""

    @property
    def name(self) -> str:
        return f"{self.method.key}{'_cm' if self.compute_matched else ''}_seed{self.seed}"

    def to_json(self) -> dict:
        data = asdict(self)
        data["method"] = self.method.key
        data["directory"] = str(self.directory)
        data["checkpoint"] = None if self.checkpoint is None else str(self.checkpoint)
        return data

    @classmethod
    def from_json(cls, data: dict) -> Run:
        key = data.pop("method")
        method = next(m for m in METHODS if m.key == key)
        checkpoint = data.pop("checkpoint")
        return cls(
            method=method,
            directory=Path(data.pop("directory")),
            checkpoint=None if checkpoint is None else Path(checkpoint),
            **data,
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--image-size", type=int, default=64, help="square shapes images (train and val)")
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--val-images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=8, help="epochs of every epoch-matched run")
    parser.add_argument("--sea-steps", type=int, default=10, help="iterations of each SEA member (SEA: 300)")
    parser.add_argument("--curve-steps", type=int, nargs="+", default=[1, 3, 5, 10, 20])
    parser.add_argument(
        "--cost-rounds", type=int, default=15, help="interleaved rounds of the per-update costs"
    )
    parser.add_argument(
        "--no-compute-matched", action="store_true", help="skip the amortised runs at the target's budget"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a shared machine: 1)")
    parser.add_argument(
        "--model",
        nargs="*",
        default=[],
        help="overrides of the model group, e.g. model=unet (default: the project's default model)",
    )
    parser.add_argument(
        "--schedule",
        nargs="*",
        default=[],
        help="overrides of the schedule group, e.g. schedule.optimizer.lr=0.002 (default: the project's default)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        choices=[method.key for method in METHODS],
        help="training recipes (standard: no attack)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=REPO_ROOT / "outputs" / "reproduce",
        help="runs and results; a rerun with the same directory continues",
    )
    parser.add_argument(
        "--docs", type=Path, default=REPO_ROOT / "docs", help="where RESULTS.md and figures/ go"
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="only rewrite RESULTS.md (without the strength curve) from the results kept in --output-dir",
    )
    args = parser.parse_args(argv)
    if BASELINE not in args.methods:
        parser.error(f"--methods needs {BASELINE}: it is the unit of every cost")
    return args


def methods(args: argparse.Namespace) -> list[Method]:
    return [method for method in METHODS if method.key in args.methods]


def shared_overrides(args: argparse.Namespace) -> list[str]:
    """What every run shares: the data's sizes, the batch, logging, and the model and schedule asked for."""
    size = args.image_size
    return [
        f"dataset.train_source.num_images={args.train_images}",
        f"dataset.val_source.num_images={args.val_images}",
        f"dataset.train_source.image_size=[{size},{size}]",
        f"dataset.crop_size=[{size},{size}]",
        f"dataset.batch_size={args.batch_size}",
        f"dataset.val_batch_size={args.batch_size}",
        *args.schedule,
        *args.model,
    ]


def training_overrides(args: argparse.Namespace, run: Run) -> list[str]:
    return [
        *run.method.overrides,
        f"schedule.max_epochs={run.epochs}",
        f"seed={run.seed}",
        *shared_overrides(args),
        # PGD-10 on the first 2 validation batches after every epoch: the collapse guard watches it.
        "validation.attack_batches=2",
        "logger=none",
        "callbacks.progress_bar=null",
        "callbacks.iou_table=null",
        f"paths.output_dir={run.directory}",
    ]


# ------------------------------------------------------------------------------------- keeping results
def results_dir(output_dir: Path) -> Path:
    return output_dir / "results"


def check_settings(args: argparse.Namespace, output_dir: Path) -> None:
    """Keeps the settings of the first start; refuses a rerun into the same directory with other ones."""
    path = output_dir / "settings.json"
    settings = {key: getattr(args, key) for key in SETTINGS}
    if path.is_file():
        kept = json.loads(path.read_text())
        changed = [
            f"--{key.replace('_', '-')} {kept[key]} -> {settings[key]}"
            for key in SETTINGS
            if kept[key] != settings[key]
        ]
        if changed:
            raise SystemExit(
                f"{output_dir} holds a reproduction with other settings ({'; '.join(changed)}): continue it with "
                "its settings or give another --output-dir"
            )
    else:
        output_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=1))


def load_runs(output_dir: Path) -> list[Run]:
    return [
        Run.from_json(json.loads(path.read_text())) for path in sorted(results_dir(output_dir).glob("*.json"))
    ]


def save_run(run: Run, output_dir: Path) -> None:
    path = results_dir(output_dir) / f"{run.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run.to_json(), indent=1))


# ------------------------------------------------------------------------------------ per-update cost
def per_update_costs(args: argparse.Namespace, output_dir: Path) -> dict:
    """Each recipe's cost per update over standard training's (``benchmarks/at_step.py --json``), measured once
    per reproduction, in interleaved rounds on one training batch of this reproduction's size."""
    path = output_dir / "per_update_costs.json"
    if not path.is_file():
        command = [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "at_step.py"),
            "--objectives",
            "--size", str(args.image_size),
            "--batch", str(args.batch_size),
            "--repeats", str(args.cost_rounds),
            "--threads", str(args.threads),
            "--json", str(path),
            "--overrides", *args.model, *args.schedule,
            "--updates", *(f"{m.key}={' '.join(m.overrides)}" for m in methods(args)),
        ]  # fmt: skip
        print("measuring the per-update costs: " + " ".join(command), flush=True)
        environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        subprocess.run(command, check=True, env=environment, cwd=REPO_ROOT)
    return json.loads(path.read_text())


def cost_range(costs: dict, key: str) -> tuple[float, float, float]:
    """The median, least and largest per-update cost of ``key`` over standard training's."""
    ratios = costs["ratios"][key]
    return median(ratios), min(ratios), max(ratios)


def matched_epochs(args: argparse.Namespace, costs: dict, method: Method) -> int:
    """The most epochs that cost no more than ``MAX_COST`` standard-training runs at ``method``'s per-update cost
    (its median)."""
    return max(1, math.floor(args.epochs * MAX_COST / cost_range(costs, method.key)[0]))


# ----------------------------------------------------------------------------------- train, evaluate
def train_run(args: argparse.Namespace, run: Run, started: float) -> Run:
    last = run.directory / "checkpoints" / "last.ckpt"
    resume = [f"ckpt_path={last}"] if last.is_file() else []
    print(
        f"[{time.perf_counter() - started:6.0f}s] training {run.method.label}, seed {run.seed}, {run.epochs} "
        f"epoch(s){' (compute-matched)' if run.compute_matched else ''} -> {run.directory}"
        + (" (continuing from its last checkpoint)" if resume else ""),
        flush=True,
    )
    result = train(compose_config("train", [*training_overrides(args, run), *resume]))
    run.checkpoint = result.last_checkpoint
    run.training_minutes = result.time.training / 60
    run.validation_minutes = result.time.validation / 60
    run.collapses = list(result.collapses)
    # A run that had finished its epochs before it was cut short validates nothing when it continues.
    clean = "n/a" if result.validation is None else f"{result.validation.miou['clean']:.1f}"
    print(
        f"    training {run.training_minutes:.1f} min, validation {run.validation_minutes:.1f} min, last "
        f"validation's clean mIoU {clean}, collapses at epochs {run.collapses or 'none'}",
        flush=True,
    )
    return run


def evaluation(checkpoint: str, suite: str, output_dir: Path, extra: Sequence[str]):
    return evaluate(
        compose_config(
            "evaluate",
            [
                f"ckpt_path={checkpoint}",
                f"suite={suite}",
                "logger.mode=disabled",
                f"output_dir={output_dir}",
                *extra,
            ],
        )
    )


def scores_of(paper, sea) -> dict[str, float]:
    """A run's table cells (mIoU, percent) from its paper-suite and SEA reports."""
    scores = {"clean": 100 * paper.row("clean").miou}
    scores.update({key: 100 * paper.row("attack", key).miou for key in ("cw", "pgd10", "pgd20")})
    for row in sea.rows_of("worst_case"):
        scores[f"sea@{row.eps_text}"] = 100 * row.miou
    return scores


def evaluate_run(args: argparse.Namespace, run: Run) -> Run:
    """Evaluates the run's last checkpoint with the paper's attacks and with SEA (``<run>/evaluate_*``)."""
    paper = evaluation(str(run.checkpoint), "paper", run.directory / "evaluate_paper", PAPER_ONLY)
    sea = evaluation(
        str(run.checkpoint), "sea", run.directory / "evaluate_sea", [f"suite.steps={args.sea_steps}"]
    )
    (report,), (sea_report,) = paper.reports, sea.reports
    run.scores = scores_of(report, sea_report)
    run.foreground = foreground_iou(report)
    run.sha256 = report.sha256
    return run


def strength_curve(args: argparse.Namespace, runs: list[Run], output_dir: Path):
    """The attack-strength curve of the first seed's standard model (evaluated once, then read back)."""
    standard = next((r for r in runs if r.method.key == BASELINE and r.seed == args.seeds[0]), None)
    if standard is None:
        return None, None
    curve_steps = "[" + ",".join(map(str, args.curve_steps)) + "]"
    curve = evaluation(
        str(standard.checkpoint),
        "strength",
        output_dir / "evaluate_strength",
        [f"suite.iterations.steps={curve_steps}"],
    )
    return curve, standard.directory / "evaluate_paper" / "examples_0.png"


def planned_runs(args: argparse.Namespace, output_dir: Path, costs: dict) -> list[Run]:
    """Every run of the reproduction, seed by seed (so that the first seeds' tables complete first)."""
    runs = []
    for seed in args.seeds:
        for method in methods(args):
            runs.append(
                Run(method, seed, args.epochs, False, output_dir / "train" / f"{method.key}_seed{seed}")
            )
        if args.no_compute_matched:
            continue
        for method in methods(args):
            epochs = matched_epochs(args, costs, method) if method.amortised else args.epochs
            if epochs != args.epochs:
                directory = output_dir / "train" / f"{method.key}_cm_seed{seed}"
                runs.append(Run(method, seed, epochs, True, directory))
    return runs


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    output_dir = args.output_dir.resolve()
    check_settings(args, output_dir)
    costs = per_update_costs(args, output_dir)
    done = {run.name: run for run in load_runs(output_dir)}
    if not args.report:
        for run in planned_runs(args, output_dir, costs):
            if run.name in done:
                continue
            train_run(args, run, started)
            print(f"[{time.perf_counter() - started:6.0f}s] evaluating {run.name}", flush=True)
            done[run.name] = evaluate_run(args, run)
            save_run(run, output_dir)
            write_results(args, argv, output_dir, list(done.values()), costs, figures=False)
    runs = list(done.values())
    # The strength curve (an evaluation of its own) once every run is in: a --report of a partial reproduction
    # leaves it out.
    write_results(args, argv, output_dir, runs, costs, figures=not args.report)
    print(
        f"wrote {args.docs / 'RESULTS.md'} from {len(runs)} runs; this part took "
        f"{(time.perf_counter() - started) / 60:.1f} min",
        flush=True,
    )


# --------------------------------------------------------------------------------------------- tables
def mean_spread(values: list[float]) -> str:
    """``mean ± half-range`` (with two seeds the half-range is the distance to either)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    return f"{mean(values):.1f} ± {(max(values) - min(values)) / 2:.1f}"


@dataclass(frozen=True)
class Row:
    """A table row: one method (and whether compute-matched) over the finished seeds."""

    label: str
    runs: tuple[Run, ...]

    @property
    def method(self) -> Method:
        return self.runs[0].method

    def values(self, key: str) -> list[float]:
        return [run.scores[key] for run in self.runs]

    def mean(self, key: str) -> float:
        return mean(self.values(key))

    def half_range(self, key: str) -> float:
        values = self.values(key)
        return (max(values) - min(values)) / 2


def table_rows(runs: list[Run], compute_matched: bool) -> list[Row]:
    rows = []
    for method in METHODS:
        chosen = tuple(
            sorted(
                (r for r in runs if r.method == method and r.compute_matched == compute_matched and r.scores),
                key=lambda r: r.seed,
            )
        )
        if chosen:
            epochs = sorted({r.epochs for r in chosen})
            label = method.label + (f", {'/'.join(map(str, epochs))} epochs" if compute_matched else "")
            rows.append(Row(label, chosen))
    return rows


def run_cost(run: Run, costs: dict, epochs: int) -> tuple[float, float, float]:
    """The run's cost over an epoch-matched standard run's, from the per-update costs: median, least, largest."""
    return tuple(ratio * run.epochs / epochs for ratio in cost_range(costs, run.method.key))


def wall_ratio(run: Run, runs: list[Run]) -> float:
    """The run's training minutes over the epoch-matched standard run's in the same seed."""
    base = next(
        (r for r in runs if r.method.key == BASELINE and r.seed == run.seed and not r.compute_matched), None
    )
    return math.nan if base is None else run.training_minutes / base.training_minutes


def results_table(rows: list[Row], runs: list[Run], costs: dict, epochs: int) -> str:
    lines = [
        "| training | "
        + " | ".join(title for _, title in COLUMNS)
        + " | cost / standard (per update × epochs) | training (min) | wall / standard | validation (min) "
        "| collapses |",
        "|---|" + "---:|" * (len(COLUMNS) + 4) + "---|",
    ]
    for row in rows:
        cells = [mean_spread(row.values(key)) for key, _ in COLUMNS]
        middle, low, high = run_cost(row.runs[0], costs, epochs)
        collapses = (
            "; ".join(f"seed {r.seed}: epoch {r.collapses}" for r in row.runs if r.collapses) or "none"
        )
        cells += [
            f"{middle:.2f} [{low:.2f}, {high:.2f}]",
            mean_spread([r.training_minutes for r in row.runs]),
            mean_spread([wall_ratio(r, runs) for r in row.runs]).replace(" ± ", "x ± ") + "x",
            mean_spread([r.validation_minutes for r in row.runs]),
            collapses,
        ]
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def costs_table(costs: dict) -> str:
    lines = ["| recipe | overrides | per-update cost / standard: median [min, max] |", "|---|---|---|"]
    for key, overrides in costs["rows"].items():
        middle, low, high = cost_range(costs, key)
        label = next((m.label for m in METHODS if m.key == key), key)
        lines.append(f"| {label} | `{overrides}` | {middle:.2f} [{low:.2f}, {high:.2f}] |")
    return "\n".join(lines)


def per_seed_table(runs: list[Run]) -> str:
    lines = [
        "| training | seed | epochs | " + " | ".join(t for _, t in COLUMNS) + " | training min | SHA-256 |",
        "|---|---:|---:|" + "---:|" * (len(COLUMNS) + 1) + "---|",
    ]
    for run in sorted(
        runs, key=lambda r: (r.seed, r.compute_matched, [m.key for m in METHODS].index(r.method.key))
    ):
        if run.scores:
            cells = [f"{run.scores[key]:.1f}" for key, _ in COLUMNS]
            label = run.method.label + (" (compute-matched)" if run.compute_matched else "")
            lines.append(
                f"| {label} | {run.seed} | {run.epochs} | "
                + " | ".join(cells)
                + f" | {run.training_minutes:.1f} | `{run.sha256[:12]}` |"
            )
    return "\n".join(lines)


VERDICT_KEYS = (("sea@4/255", "SEA 4/255"), ("sea@8/255", "SEA 8/255"), ("clean", "clean"))


def verdict_of(row: Row, reference: Row, costs: dict, epochs: int) -> str:
    """The table row of ``row`` against the target set by ``reference`` (seed means): each score with its seed
    spread and its gap, the cost, and whether it meets the target or where it falls short."""
    run = row.runs[0]
    middle, low, high = run_cost(run, costs, epochs)
    gaps = {key: row.mean(key) - reference.mean(key) for key, _ in VERDICT_KEYS}
    short = [
        f"{title} {gaps[key]:+.1f} points"
        for key, title in VERDICT_KEYS
        if gaps[key] < -(MAX_CLEAN_GAP if key == "clean" else MAX_GAP)
    ]
    if middle > MAX_COST:
        short.append(f"cost {middle:.2f}x > {MAX_COST:.1f}x")
    verdict = "**meets the target**" if not short else "short: " + "; ".join(short)
    if not short and high > MAX_COST:
        verdict += f" (but the cost's range reaches {high:.2f}x)"
    view = f"compute-matched, {run.epochs} epochs" if run.compute_matched else "epoch-matched"
    scores = " | ".join(f"{mean_spread(row.values(key))} ({gaps[key]:+.1f})" for key, _ in VERDICT_KEYS)
    return (
        f"| {row.method.label} | {view} | {len(row.runs)} | {scores} | {middle:.2f}x [{low:.2f}, {high:.2f}] "
        f"| {verdict} |"
    )


def verdicts(epoch_rows: list[Row], matched_rows: list[Row], costs: dict, epochs: int) -> str:
    """The target applied to every amortised row of both views (seed means, per-update costs), as a table."""
    reference = next((row for row in epoch_rows if row.method.key == REFERENCE), None)
    if reference is None:
        return "(EroSeg3-AT was not trained: no comparison.)"
    middle, low, high = run_cost(reference.runs[0], costs, epochs)
    titles = " | ".join(f"{title} (gap)" for _, title in VERDICT_KEYS)
    lines = [
        f"Reference: {reference.label}, epoch-matched, {len(reference.runs)} seed(s): "
        + ", ".join(f"{title} {mean_spread(reference.values(key))}" for key, title in VERDICT_KEYS)
        + f", at {middle:.2f}x [{low:.2f}, {high:.2f}] standard training's cost.",
        "",
        f"| mode | view | seeds | {titles} | cost / standard | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---|",
        *(
            verdict_of(row, reference, costs, epochs)
            for row in [*epoch_rows, *matched_rows]
            if row.method.amortised
        ),
    ]
    standard = next((row for row in epoch_rows if row.method.key == BASELINE), None)
    if standard is not None and standard.mean("clean") < 60:
        lines.insert(
            0,
            f"**Standard training reaches only {standard.mean('clean'):.1f} % clean mIoU (< 60 %): the verdicts "
            "below are computed, but the models have not learned enough for them to mean much.**\n",
        )
    return "\n".join(lines)


def difference(row: Row, other: Row, key: str) -> str:
    """``row``'s mean minus ``other``'s, and whether it exceeds their summed seed half-ranges."""
    gap = row.mean(key) - other.mean(key)
    spread = row.half_range(key) + other.half_range(key)
    verdict = "larger" if abs(gap) > spread else "not larger"
    return f"({gap:+.1f}) is {verdict} than their summed seed spreads ({spread:.1f})"


def findings(rows: list[Row], foreground: float) -> str:
    """Statements the measured numbers support or not, computed from them (not written by hand)."""
    lines = []
    if foreground < 20:
        lines.append(
            f"- **The models have barely learned the task** (mean clean IoU of the foreground classes "
            f"{foreground:.1f}%): at this scale the table shows that the pipeline runs end to end, and no "
            "ranking of the training methods can be read from it."
        )
    standard = next((row for row in rows if row.method.key == BASELINE), None)
    if standard is not None:
        learned = "reaches" if standard.mean("clean") >= 60 else "does **not** reach"
        lines.append(
            f"- Standard training {learned} 60 % clean mIoU: {mean_spread(standard.values('clean'))}."
        )
    reference = next((row for row in rows if row.method.key == REFERENCE), None)
    for key, title in COLUMNS:
        ranking = sorted(rows, key=lambda row: -row.mean(key))
        line = f"- {title}: highest {ranking[0].label} ({ranking[0].mean(key):.1f})"
        if reference is not None:
            line += f", EroSeg3-AT ranks {ranking.index(reference) + 1} of {len(ranking)} ({reference.mean(key):.1f})"
            rival = next(
                (row for row in ranking if row is not reference and row.method.key != BASELINE), None
            )
            if rival is not None:
                line += f"; its difference to {rival.label} {difference(reference, rival, key)}"
        lines.append(line + ".")
    if reference is not None:
        # Each variant beside the reference it varies: the paper's step, the adversarial-only objective and the
        # amortised modes (whose target the verdict table applies) move clean and robust mIoU in opposite ways.
        for row in rows:
            if row is not reference and row.method.key != BASELINE:
                lines.append(
                    f"- {row.label} against EroSeg3-AT (alpha 0.01): SEA 8/255 "
                    f"{difference(row, reference, 'sea@8/255')}; clean {difference(row, reference, 'clean')}."
                )
    for row in rows:
        lines.append(
            f"- {row.label}: SEA's worst case at 8/255 is {row.mean('pgd20') - row.mean('sea@8/255'):.1f} mIoU points "
            "below PGD20 (how much the paper's protocol alone overestimates robustness here)."
        )
    return "\n".join(lines)


def strength_findings(report) -> str:
    """Which attack hurts the standard model most at each iteration count, and where EroSeg stands."""
    rows = report.rows_of("iterations")
    steps = sorted({row.steps for row in rows})
    lines, eroseg_first = [], []
    for count in steps:
        ranking = sorted((row for row in rows if row.steps == count), key=lambda row: row.miou)
        labels = [row.label for row in ranking]
        cells = ", ".join(f"{row.label} {100 * row.miou:.1f}" for row in ranking)
        lines.append(f"- {count} iteration(s), lowest mIoU first: {cells}.")
        if "EroSeg" in labels:
            # Compared as printed (0.1 points): a tie at that precision counts as strongest.
            shown = {row.label: round(100 * row.miou, 1) for row in ranking}
            eroseg_first.append(shown["EroSeg"] == min(shown.values()))
    if eroseg_first:
        lines.append(
            f"- EroSeg is the strongest attack (or tied) at {sum(eroseg_first)} of {len(eroseg_first)} "
            "iteration counts (the paper reports it strongest at every count on VOC)."
        )
    return "\n".join(lines)


def curve_section(report) -> str:
    """The strength table, what it says, and the figures drawn with it."""
    return (
        f"{iterations_table(report)}\n\n{strength_findings(report)}\n\n"
        "![attack strength](figures/attack_strength_standard.png)\n\n![examples](figures/examples_standard.png)"
    )


def foreground_iou(report) -> float:
    """Mean clean IoU (%) of the classes other than the dataset's background: has the model learned shapes?"""
    clean = report.row("clean")
    background = report.training["dataset"].get("background_class")
    values = [v for c, v in enumerate(clean.iou_per_class) if c != background and not math.isnan(v)]
    return 100 * mean(values) if values else math.nan


def erosion_section(runs: list[Run], seed: int, figures: Path) -> str:
    """The erosion picture of ``seed``'s EroSeg3-AT and accumulated runs, and the numbers behind it."""

    def run_of(key: str) -> Run | None:
        return next(
            (r for r in runs if r.seed == seed and r.method.key == key and not r.compute_matched), None
        )

    multi, accumulated = run_of(REFERENCE), run_of("accumulated")
    if multi is None or accumulated is None:
        return "(Needs the EroSeg3-AT and accumulated runs.)"
    multi_record = load_records(multi.directory / "erosion")[-1]
    visits = load_records(accumulated.directory / "erosion")
    erosion_figure(multi_record, visits, figures / "erosion.png")
    numbers = describe(multi_record)
    lines = [
        "| multi-step iteration t | " + " | ".join(str(t) for t in range(len(multi_record.taus))) + " |",
        "|---|" + "---:|" * len(multi_record.taus),
        "| τ_t | " + " | ".join(f"{tau:.3f}" for tau in multi_record.taus) + " |",
        "| share of valid pixels in S_t (%) | "
        + " | ".join(f"{100 * v:.1f}" for v in numbers["sensitive_share"])
        + " |",
        "| mean \\|δ_t+1 − δ_0\\|/eps (what the steps added) | "
        + " | ".join(f"{v:.2f}" for v in numbers["mean_added"])
        + " |",
        "",
        "| accumulated mode, visit (epoch) | " + " | ".join(str(r.epoch + 1) for r in visits) + " |",
        "|---|" + "---:|" * len(visits),
        "| mean iteration index of the next visit (restarts applied) | "
        + " | ".join(f"{r.stored_iteration.float().mean():.2f}" for r in visits)
        + " |",
        "| share of valid pixels in the next visit's S (%) | "
        + " | ".join(f"{100 * describe(r)['stored_sensitive_share'][0]:.1f}" for r in visits)
        + " |",
        "| mean stored \\|δ\\|/eps | "
        + " | ".join(f"{describe(r)['stored_mean_magnitude'][0]:.2f}" for r in visits)
        + " |",
    ]
    return (
        f"Seed {seed}, training images {multi_record.indices}. Multi-step: the EroSeg3-AT model after its last epoch, "
        f"{len(multi_record.taus)} iterations of its training attack from one random start on the un-augmented "
        "images (more than the 3 it trains with, to show the spread). Accumulated: the stored perturbation of the "
        "same images after each epoch's visit, over the image at its held scale, and the set the next visit "
        "attacks (at the iteration that visit takes: 0 where it restarts). Numbers over the 4 followed images:\n\n"
        + "\n".join(lines)
        + "\n\n![erosion](figures/erosion.png)"
    )


def write_results(args, argv, output_dir: Path, runs: list[Run], costs: dict, figures: bool) -> None:
    """RESULTS.md and the erosion figure from the evaluated runs; with ``figures``, also the strength curve (an
    evaluation of its own) and its figures."""
    figure_dir = args.docs / "figures"
    figure_dir.mkdir(parents=True, exist_ok=True)
    curve = None
    if figures:
        curve, grid = strength_curve(args, runs, output_dir)
        if curve is not None:
            shutil.copy(curve.files["miou_vs_iterations.png"], figure_dir / "attack_strength_standard.png")
            if grid.is_file():
                shutil.copy(grid, figure_dir / "examples_standard.png")
    epoch_rows = table_rows(runs, compute_matched=False)
    matched_rows = table_rows(runs, compute_matched=True)
    reference = [row for row in epoch_rows if row.method.key == REFERENCE]
    planned = planned_runs(args, output_dir, costs)
    finished = {run.name for run in runs}
    missing = [run.name for run in planned if run.name not in finished]
    shown = [
        argument for argument in argv or [] if argument != "--report"
    ]  # the reproduction, not the rewrite
    command = "make reproduce" + (f' ARGS="{" ".join(shown)}"' if shown else "")
    foreground = [run.foreground for run in runs if run.scores]
    minutes = sum(run.training_minutes + run.validation_minutes for run in runs)
    standard = [
        run.training_minutes for run in runs if run.method.key == BASELINE and not run.compute_matched
    ]
    standard_minutes = (
        f"runs took {min(standard):.1f} to {max(standard):.1f} min" if standard else "runs are still to come"
    )
    text = RESULTS_TEMPLATE.format(
        command=command,
        minutes=minutes,
        standard_minutes=standard_minutes,
        cpus=os.cpu_count(),
        threads=args.threads,
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        size=args.image_size,
        train_images=args.train_images,
        val_images=args.val_images,
        epochs=args.epochs,
        seeds=", ".join(map(str, sorted({run.seed for run in runs}))),
        partial=""
        if not missing
        else f"**Partial: {len(runs)} of {len(planned)} runs finished; still to run: {', '.join(missing)}.**\n\n",
        steps_per_epoch=args.train_images // args.batch_size,
        batch_size=args.batch_size,
        setup=setup_summary(compose_config("train", [*shared_overrides(args), "paths.output_dir=."])),
        sea_steps=args.sea_steps,
        costs=costs_table(costs),
        cost_command=costs["command"],
        table=results_table(epoch_rows, runs, costs, args.epochs),
        matched=results_table([*reference, *matched_rows], runs, costs, args.epochs)
        if matched_rows
        else "(No compute-matched runs yet.)",
        verdicts=verdicts(epoch_rows, matched_rows, costs, args.epochs),
        per_seed=per_seed_table(runs),
        erosion=erosion_section(runs, args.seeds[0], figure_dir),
        curve="(drawn at the end of the reproduction)" if curve is None else curve_section(curve.reports[0]),
        findings=findings(epoch_rows, mean(foreground)) if foreground else "(no runs yet)",
        first_seed=args.seeds[0],
        output_dir=output_dir,
        max_gap=MAX_GAP,
        max_clean_gap=MAX_CLEAN_GAP,
        max_cost=MAX_COST,
    )
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / "RESULTS.md").write_text(text)


def setup_summary(config) -> str:
    """The model and optimisation every method shares, as the composed training config says."""
    model, schedule = config.model, config.schedule
    architecture = ", ".join(f"{key} {value}" for key, value in model.architecture.items())
    weights = model.get("encoder_weights") or model.get("encoder_weights_path") or "random"

    def settings(node) -> str:
        return ", ".join(f"{key} {value}" for key, value in node.items() if not key.startswith("_"))

    accumulated, single = config.adversarial.accumulated, config.adversarial.single_step
    return (
        f"Model `{model.name}` (encoder {model.encoder}, {architecture}; encoder weights: {weights}), "
        f"{schedule.optimizer._target_.rsplit('.', 1)[-1]} ({settings(schedule.optimizer)}) with "
        f"`{schedule.lr_scheduler._target_.rsplit('.', 1)[-1]}` ({settings(schedule.lr_scheduler)}). "
        f"Accumulated mode: `attack.steps` EroSeg step(s) per visit at the attack's alpha, restart every "
        f"{accumulated.restart_visits} visits (staggered; each image keeps its random scale as long), stale after "
        f"{accumulated.stale_epochs} epochs. Single step: noise {single.noise} eps, step {single.step} eps, clip "
        f"{single.clip}"
    )


RESULTS_TEMPLATE = """# Results: amortised EroSeg-AT and the EroSeg-AT table, small scale on shapes

{partial}Generated by `{command}`, last written on {date}; the runs took **{minutes:.0f} minutes** of training
and validation ({cpus} CPU cores shared with other jobs, {threads} torch thread(s); evaluation not counted).
Every number below was measured by it (run directory `{output_dir}`: training runs with their
`evaluate_paper/` and `evaluate_sea/results.json` (threat model, seeds, checkpoint hashes, package versions),
`results/*.json` (what each run measured), `per_update_costs.json`).

**Scale.** {train_images} training images and {val_images} validation images of {size}x{size} pixels,
{epochs} epoch(s) of {steps_per_epoch} steps (batch {batch_size}) for every epoch-matched run, seeds {seeds}.
{setup}. The multi-step AT methods train with `CE(x) + CE(x_adv)` (EroSeg-AT's) unless marked adv-only
(`CE(x_adv)` alone) or half-adv (SegPGD-AT's half-adversarial batch), with 3 attack steps at eps 8/255 (step
0.01 unless marked); every run validates clean and under PGD-10 (2 batches) after each epoch, which the collapse
guard watches. This is a CPU-sized protocol, not the paper's numbers (ResNet-50 DeepLabV3 on Pascal VOC).

**Evaluation.** The paper's attacks at 8/255 (CW, PGD10, PGD20: step 0.01) and `suite=sea`'s worst case per
image (SEA columns) at 4/255 and 8/255: over clean and APGD with masked CE, class-balanced masked CE and JS
divergence, each with SEA's protocol (progressive radius, CE step-size control, early stop) and at a fixed
radius, **{sea_steps} iterations per member** (SEA uses 300; shortened for the CPU), chosen greedily
to minimise the dataset mIoU (Croce et al., ECCV 2024), on the {val_images} validation images.

**Cost.** The cost axis is the cost of one update of each recipe over one update of standard training, measured
by `{cost_command}` on one training batch of this size, in interleaved rounds (median [min, max] over the
rounds); a run's cost is that times its epochs over the epoch-matched runs' epochs. The wall time of each run's
training batches (validation, checkpoints and epoch-end callbacks apart, the same callbacks for every method) is
given beside it, mean ± half-range over the seeds, and as a ratio to standard training's in the same seed. The
runs ran in parts, over several sessions, on a machine shared with other jobs whose load changed from run to run
(standard training's {standard_minutes}): the wall times carry that load as well as the method, which is why the
verdicts use the per-update ratio.

{costs}

## Epoch-matched: mIoU (%), mean ± half-range over seeds

{table}

## Compute-matched: the amortised modes at the target's budget

Each amortised run trained for `floor(epochs × {max_cost:.0f} / its per-update cost)` epochs (cosine schedule over
its own length): what it reaches for at most the cost of {max_cost:.0f} standard training runs, beside EroSeg3-AT
(a mode whose count comes out at the epoch-matched one has no second run):

{matched}

## Does an amortised mode reach 3-step EroSeg-AT's robustness at ≤ {max_cost:.0f}x the cost of clean training?

Target (issues #15, #20): SEA worst case within {max_gap:.0f} point of EroSeg3-AT's (alpha 0.01, epoch-matched, mean
of the seeds) at both budgets, clean mIoU within {max_clean_gap:.0f} points, at no more than {max_cost:.1f}x standard
training's cost (per-update cost × epochs). Computed from the tables above:

{verdicts}

Per seed:

{per_seed}

## The erosion

{erosion}

## Attack strength on the standard model (seed {first_seed}): mIoU (%) vs iterations, eps 8/255

{curve}

## What the numbers support (computed from the numbers above)

± is half the range over the seeds; a difference smaller than the summed spreads is not supported. The paper's
gains of EroSeg-AT over the other AT methods are 0.5 to 2 mIoU points on VOC; a CPU-sized run like this one
cannot resolve differences of that size.

{findings}
"""

if __name__ == "__main__":
    main(sys.argv[1:])
