"""scripts/reproduce.py: the summary arithmetic, and (slow) the whole reproduction at a toy size."""

from __future__ import annotations

import math

import pytest

from eroseg_at.evaluation.results import ModelReport, ResultRow
from tests.conftest import load_script

reproduce = load_script("scripts/reproduce.py")


def test_mean_spread_is_mean_and_half_range_in_percent():
    assert reproduce.mean_spread([0.30, 0.34]) == "32.0 ± 2.0"
    assert reproduce.mean_spread([0.5]) == "50.0 ± 0.0"
    assert reproduce.mean_spread([math.nan]) == "n/a"


def method(key):
    return next(m for m in reproduce.METHODS if m.key == key)


def run_with(key, seed, value, minutes=1.0, compute_matched=False):
    run = reproduce.Run(method(key), seed, 1, compute_matched, reproduce.REPO_ROOT, minutes=minutes)
    run.scores = {column: value / 100 for column, _ in reproduce.COLUMNS}
    return run


def rows_for(eroseg: float, rival: float) -> list:
    runs = [run_with("standard", s, 10.0) for s in (0, 1)]
    runs += [run_with("pgd3", 0, rival - 1), run_with("pgd3", 1, rival + 1)]
    runs += [run_with("eroseg3", 0, eroseg - 1), run_with("eroseg3", 1, eroseg + 1)]
    return reproduce.table_rows(runs, [0, 1], compute_matched=False)


def test_findings_compare_differences_with_the_seed_spread():
    supported = reproduce.findings(rows_for(eroseg=30.0, rival=25.0), foreground=60.0)
    assert (
        "EroSeg3-AT ranks 1 of 3" in supported
        and "(+5.0) is larger than their summed seed spreads (2.0)" in supported
    )
    assert "barely learned" not in supported
    unsupported = reproduce.findings(rows_for(eroseg=25.0, rival=26.0), foreground=60.0)
    assert "EroSeg3-AT ranks 2 of 3" in unsupported and "(-1.0) is not larger than" in unsupported


def test_findings_flag_models_that_have_not_learned_the_task():
    assert "barely learned the task" in reproduce.findings(rows_for(12.0, 12.0), foreground=0.5)


@pytest.mark.parametrize(
    ("value", "minutes", "verdict"),
    [
        (29.2, 1.8, "**meets the target**"),
        (28.5, 1.8, "does not meet the target (SEA 4/255 -1.5 points; SEA 8/255 -1.5 points)"),
        (31.0, 2.5, "does not meet the target (cost 2.50x standard training > 2.0x)"),
    ],
)
def test_verdicts_apply_the_issue_target_to_the_seed_means(value, minutes, verdict):
    runs = [run_with("standard", s, 10.0) for s in (0, 1)] + [
        run_with("eroseg3", s, 30.0, minutes=4.4) for s in (0, 1)
    ]
    runs += [run_with("accumulated", s, value, minutes=minutes) for s in (0, 1)]
    text = reproduce.verdicts(reproduce.table_rows(runs, [0, 1], False), [], runs)
    assert f"at {minutes / 1.0:.2f}x standard training's wall time: {verdict}." in text


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
def test_reproduction_at_a_toy_size_writes_results_and_figures(tmp_path):
    docs = tmp_path / "docs"
    reproduce.main(
        [
            "--train-images", "32", "--val-images", "8", "--epochs", "1", "--sea-steps", "3",
            "--methods", "standard", "eroseg3", "accumulated",
            "--seeds", "0", "1", "--curve-steps", "1", "2",
            "--output-dir", str(tmp_path / "run"), "--docs", str(docs),
        ]
    )  # fmt: skip
    text = (docs / "RESULTS.md").read_text()
    assert "Partial" not in text and "| EroSeg3-AT (alpha 0.01) |" in text and "| standard | 1 | 1 |" in text
    assert "accumulated EroSeg, adv-only:" in text and "| SEA 4/255 | SEA 8/255 |" in text
    assert "training (min)" in text and "EroSeg is the strongest attack (or tied) at" in text
    for figure in ("attack_strength_standard.png", "examples_standard.png", "erosion.png"):
        assert (docs / "figures" / figure).is_file()
