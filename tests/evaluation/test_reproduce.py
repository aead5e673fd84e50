"""scripts/reproduce.py: the summary arithmetic, and (slow) the whole reproduction at a toy size."""

from __future__ import annotations

import math

import pytest

from eroseg_at.evaluation.results import ModelReport, ResultRow
from tests.conftest import load_script

reproduce = load_script("scripts/reproduce.py")


def test_mean_spread_is_mean_and_half_range():
    assert reproduce.mean_spread([30.0, 34.0]) == "32.0 ± 2.0"
    assert reproduce.mean_spread([50.0]) == "50.0 ± 0.0"
    assert reproduce.mean_spread([math.nan]) == "n/a"


def method(key):
    return next(m for m in reproduce.METHODS if m.key == key)


def run_with(key, seed, value, clean=None, epochs=1, compute_matched=False):
    run = reproduce.Run(method(key), seed, epochs, compute_matched, reproduce.REPO_ROOT, training_minutes=1.0)
    run.scores = {column: value for column, _ in reproduce.COLUMNS}
    if clean is not None:
        run.scores["clean"] = clean
    return run


def rows_for(eroseg: float, rival: float) -> list:
    runs = [run_with("standard", s, 10.0) for s in (0, 1)]
    runs += [run_with("pgd3", 0, rival - 1), run_with("pgd3", 1, rival + 1)]
    runs += [run_with("eroseg3", 0, eroseg - 1), run_with("eroseg3", 1, eroseg + 1)]
    return reproduce.table_rows(runs, compute_matched=False)


def test_findings_compare_differences_with_the_seed_spread():
    supported = reproduce.findings(rows_for(eroseg=30.0, rival=25.0), foreground=60.0)
    assert (
        "EroSeg3-AT ranks 1 of 3" in supported
        and "(+5.0) is larger than their summed seed spreads (2.0)" in supported
    )
    assert "barely learned" not in supported
    assert "Standard training does **not** reach 60 % clean mIoU: 10.0 ± 0.0." in supported
    assert (
        "- PGD3-AT against EroSeg3-AT (alpha 0.01): SEA 8/255 (-5.0) is larger than their summed seed spreads "
        "(2.0); clean (-5.0) is larger" in supported
    )
    unsupported = reproduce.findings(rows_for(eroseg=25.0, rival=26.0), foreground=60.0)
    assert "EroSeg3-AT ranks 2 of 3" in unsupported and "(-1.0) is not larger than" in unsupported
    assert "SEA 8/255 (+1.0) is not larger than their summed seed spreads (2.0)" in unsupported


def test_findings_flag_models_that_have_not_learned_the_task():
    assert "barely learned the task" in reproduce.findings(rows_for(12.0, 12.0), foreground=0.5)


COSTS = {"ratios": {"standard": [1.0, 1.0, 1.0], "eroseg3": [5.0, 5.2, 5.4], "accumulated": [1.8, 1.9, 2.1]}}


@pytest.mark.parametrize(
    ("value", "clean", "epochs", "verdict"),
    [
        (29.2, 59.0, 1, "| 2 | 29.2 ± 0.0 (-0.8) | 29.2 ± 0.0 (-0.8) | 59.0 ± 0.0 (-1.0) | 1.90x [1.80, 2.10] | "
         "**meets the target** (but the cost's range reaches 2.10x) |"),
        (28.5, 59.0, 1, "| short: SEA 4/255 -1.5 points; SEA 8/255 -1.5 points |"),
        (30.0, 57.5, 1, "| short: clean -2.5 points |"),
        (31.0, 60.0, 2, "| compute-matched, 2 epochs | 2 | 31.0 ± 0.0 (+1.0) | 31.0 ± 0.0 (+1.0) | 60.0 ± 0.0 (+0.0) "
         "| 3.80x [3.60, 4.20] | short: cost 3.80x > 2.0x |"),
    ]
)  # fmt: skip
def test_verdicts_apply_the_issue_target_to_the_seed_means_and_the_per_update_cost(
    value, clean, epochs, verdict
):
    runs = [run_with("eroseg3", s, 30.0, clean=60.0) for s in (0, 1)]
    amortised = [
        run_with("accumulated", s, value, clean=clean, epochs=epochs, compute_matched=epochs > 1)
        for s in (0, 1)
    ]
    rows = reproduce.table_rows([*runs, *amortised], False)
    matched = reproduce.table_rows(amortised, True)
    text = reproduce.verdicts(rows, matched, COSTS, epochs=1)
    assert verdict in text
    assert "Reference: EroSeg3-AT (alpha 0.01), epoch-matched, 2 seed(s): SEA 4/255 30.0 ± 0.0" in text


def test_verdicts_say_when_standard_training_has_not_learned_enough():
    runs = [run_with("eroseg3", 0, 30.0, clean=60.0), run_with("accumulated", 0, 30.0, clean=60.0)]
    learned = [*runs, run_with("standard", 0, 10.0, clean=61.0)]
    assert "have not learned enough" not in reproduce.verdicts(
        reproduce.table_rows(learned, False), [], COSTS, 1
    )
    short = [*runs, run_with("standard", 0, 10.0, clean=55.0)]
    text = reproduce.verdicts(reproduce.table_rows(short, False), [], COSTS, 1)
    assert "Standard training reaches only 55.0 % clean mIoU (< 60 %)" in text


def test_runs_are_kept_and_read_back_and_the_plan_scales_the_amortised_epochs(tmp_path):
    run = run_with("accumulated", 2, 25.0, epochs=4, compute_matched=True)
    run.collapses, run.sha256, run.validation_minutes, run.foreground = [3], "ab" * 32, 0.5, 70.0
    reproduce.save_run(run, tmp_path)
    (loaded,) = reproduce.load_runs(tmp_path)
    assert loaded == run and loaded.name == "accumulated_cm_seed2"
    args = reproduce.parse_args(
        ["--epochs", "8", "--seeds", "0", "--methods", "standard", "eroseg3", "accumulated"]
    )
    planned = reproduce.planned_runs(args, tmp_path, COSTS)
    # accumulated at 1.9x per update: 2 standard runs' cost buys floor(8 * 2 / 1.9) = 8 epochs, the
    # epoch-matched run itself, so no second run; at 1.6x it buys 10.
    assert [(r.name, r.epochs) for r in planned] == [
        ("standard_seed0", 8), ("eroseg3_seed0", 8), ("accumulated_seed0", 8)
    ]  # fmt: skip
    cheaper = {"ratios": {**COSTS["ratios"], "accumulated": [1.6]}}
    assert [(r.name, r.epochs) for r in reproduce.planned_runs(args, tmp_path, cheaper)][-1] == (
        "accumulated_cm_seed0",
        10,
    )


def test_a_rerun_with_other_settings_is_refused_naming_them(tmp_path):
    reproduce.check_settings(reproduce.parse_args(["--epochs", "8"]), tmp_path)
    reproduce.check_settings(
        reproduce.parse_args(["--epochs", "8", "--seeds", "3"]), tmp_path
    )  # seeds may grow
    with pytest.raises(SystemExit, match="--epochs 8 -> 6"):
        reproduce.check_settings(reproduce.parse_args(["--epochs", "6"]), tmp_path)


def test_strength_findings_rank_the_attacks_at_each_iteration_count():
    miou = {("PGD", 3): 0.30, ("EroSeg", 3): 0.20, ("PGD", 10): 0.10, ("EroSeg", 10): 0.15}

    def row(kind, label, steps, value):
        return ResultRow(kind, label, label, 8 / 255, "8/255", value, value, (value,), (value,), steps=steps)

    report = ModelReport(
        name="standard.ckpt",
        path=None,
        sha256="0" * 64,
        method="standard",
        dataset="shapes",
        class_names=("background",),
        palette=((0, 0, 0),),
        ignore_index=255,
        image_names=("image",),
        rows=(
            *(row("iterations", label, steps, value) for (label, steps), value in miou.items()),
            row("clean", "clean", None, 0.8),
        ),
    )
    text = reproduce.strength_findings(report)
    assert "- 3 iteration(s), lowest mIoU first: EroSeg 20.0, PGD 30.0." in text
    assert "- 10 iteration(s), lowest mIoU first: PGD 10.0, EroSeg 15.0." in text
    assert "EroSeg is the strongest attack (or tied) at 1 of 2 iteration counts" in text


@pytest.mark.slow
def test_reproduction_at_a_toy_size_writes_results_and_figures_and_resumes(tmp_path, capsys):
    docs = tmp_path / "docs"
    arguments = [
        "--train-images", "32", "--val-images", "8", "--batch-size", "8", "--image-size", "32", "--epochs", "1",
        "--sea-steps", "3", "--cost-rounds", "2", "--methods", "standard", "eroseg3", "accumulated",
        "--seeds", "0", "1", "--curve-steps", "1", "2", "--output-dir", str(tmp_path / "run"), "--docs", str(docs),
    ]  # fmt: skip
    reproduce.main(arguments)
    text = (docs / "RESULTS.md").read_text()
    assert "Partial" not in text and "| EroSeg3-AT (alpha 0.01) |" in text and "| standard | 1 | 1 |" in text
    assert "accumulated EroSeg, adv-only:" in text and "| SEA 4/255 | SEA 8/255 |" in text
    assert "per-update cost / standard" in text and "EroSeg is the strongest attack (or tied) at" in text
    for figure in ("attack_strength_standard.png", "examples_standard.png", "erosion.png"):
        assert (docs / "figures" / figure).is_file()
    # A rerun trains nothing: every run's results were kept.
    capsys.readouterr()
    reproduce.main(arguments)
    assert "] training " not in capsys.readouterr().out
