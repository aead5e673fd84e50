"""results.md: every pass's iterations and protocol, the worst case's distance to the paper's protocol, and the
passes that came from the cache (hand-built rows, no evaluation)."""

from __future__ import annotations

import csv
from dataclasses import replace

import pytest

from eroseg_at.evaluation.masking import CheckResult, MaskingVerdict
from eroseg_at.evaluation.report import (
    cache_lines,
    headline,
    leading_lines,
    markdown_table,
    members_table,
    model_warnings,
    protocol_gap_lines,
    write_csv,
)
from eroseg_at.evaluation.results import (
    AttackDescription,
    ModelReport,
    PixelCounts,
    ResultRow,
    Stage,
    WorstCaseChoice,
)


def described(attack, steps, alpha=None, stages=None, early_stop=False) -> AttackDescription:
    stages = stages or ((1.0, steps),)
    return AttackDescription(
        name=attack,
        norm="linf",
        eps=8 / 255,
        steps=steps,
        alpha=alpha,
        stages=tuple(Stage(factor, count) for factor, count in stages),
        early_stop=early_stop,
        parameters={},
    )


def row(kind, key, label, miou, attack=None, steps=None, eps_text="8/255", **extra) -> ResultRow:
    if attack is not None and "description" not in extra:
        extra["description"] = described(attack, steps, extra.pop("alpha", None))
    return ResultRow(
        kind=kind,
        key=key,
        label=label,
        eps=8 / 255,
        eps_text=eps_text,
        miou=miou,
        pixel_accuracy=0.5,
        iou_per_class=(miou,),
        per_image_pixel_accuracy=(0.5,),
        attack=attack,
        steps=steps,
        **extra,
    )


def report(*rows: ResultRow) -> ModelReport:
    return ModelReport(
        name="last.ckpt",
        path=None,
        sha256="0" * 64,
        method="EroSeg3-AT",
        dataset="shapes",
        class_names=("background",),
        palette=((0, 0, 0),),
        ignore_index=255,
        image_names=("image 0",),
        rows=(row("clean", "clean", "clean", 0.8, eps_text="0"), *rows),
    )


SEA = described("apgd", 300, stages=((2.0, 90), (1.5, 90), (1.0, 120)), early_stop=True)
PAPER = (
    row("attack", "cw", "CW", 0.42, "cw", 10, alpha=0.01),
    row("attack", "pgd10", "PGD10", 0.40, "pgd", 10, alpha=0.01),
    row("attack", "pgd20", "PGD20", 0.38, "pgd", 20, alpha=0.01),
)


def test_the_worst_case_is_measured_against_the_lowest_paper_protocol_row():
    model = report(
        *PAPER,
        # A PGD with another step size is not the paper's protocol, however low it goes.
        row("attack", "pgd10_big", "PGD10 big", 0.10, "pgd", 10, alpha=0.05),
        row("attack", "sea_mce", "SEA-mCE", 0.30, "apgd", 300, description=SEA),
        row("worst_case", "worst_case", "worst case", 0.2512),
    )
    assert protocol_gap_lines([model]) == [
        "- EroSeg3-AT (`last.ckpt`) @8/255: the worst case (25.12) lies 12.88 mIoU points below the paper's "
        "protocol (the lowest of CW, PGD10, PGD20: PGD20 38.00)."
    ]


def test_a_suite_without_the_paper_protocol_says_so():
    model = report(
        row("attack", "sea_mce", "SEA-mCE", 0.30, "apgd", 300, description=SEA),
        row("worst_case", "worst_case", "worst case", 0.25),
    )
    (line,) = protocol_gap_lines([model])
    assert "none of the paper's CW, PGD10, PGD20" in line


def test_the_passes_table_gives_steps_protocol_and_origin():
    model = report(
        row("attack", "pgd10", "PGD10", 0.40, "pgd", 10, alpha=0.01, cached=True, iterations_run=10.0),
        row(
            "attack",
            "sea_mce",
            "SEA-mCE",
            0.30,
            "apgd",
            300,
            description=SEA,
            resumed_images=8,
            images_per_second_per_iteration=12.5,
            iterations_run=212.5,
        ),
        row("attack", "apgd", "APGD-mCE", 0.32, "apgd", 50),
    )
    lines = members_table([model]).splitlines()
    assert lines[3] == "| `last.ckpt` | PGD10 | pgd | 8/255 | 10 | 10 |  | 0.0 |  | cache |"
    assert lines[4] == (
        "| `last.ckpt` | SEA-mCE | apgd | 8/255 | 300 | 212 | SEA protocol (radius 2 → 1.5 → 1 eps over 90 / 90 / "
        "120 steps); early stop (steps at most) | 0.0 | 12.5 | computed, 8 images resumed |"
    )
    assert lines[5] == "| `last.ckpt` | APGD-mCE | apgd | 8/255 | 50 |  |  | 0.0 |  | computed |"
    assert cache_lines([model]) == [
        "- `last.ckpt`: from the cache (finished by an earlier run): PGD10 @8/255.",
        "- `last.ckpt`: resumed from an interrupted run's batches: SEA-mCE @8/255 (8 images).",
    ]


def with_pixels(model: ModelReport, labelled, predicted, clean: float) -> ModelReport:
    rows = (replace(model.rows[0], miou=clean), *model.rows[1:])
    names = tuple(f"class {index}" for index in range(len(labelled)))
    return replace(model, rows=rows, class_names=names, pixel_counts=PixelCounts(labelled, predicted))


def worst(miou, eps_text="8/255", members=("clean", "cw", "pgd10", "pgd20")) -> ResultRow:
    choice = WorstCaseChoice(members, 1, ("cw",), ("cw",))
    return row("worst_case", "worst_case", "worst case", miou, eps_text=eps_text, worst_case=choice)


def test_the_best_constant_prediction_scores_the_top_class_share_over_the_labelled_classes():
    # Class 3 is neither labelled nor predicted: it does not count, as in every score.
    assert PixelCounts((60, 30, 10, 0), (100, 0, 0, 0)).constant_miou == pytest.approx(0.6 / 3)
    assert PixelCounts((60, 30, 10, 0), (50, 0, 50, 0)).predicted_classes == (0, 2)


def test_the_headline_gives_the_worst_case_per_budget_the_suite_and_the_cost():
    model = replace(
        report(*PAPER, worst(0.3012, "4/255"), worst(0.2512)), suite="paper", image_names=("a", "b")
    )
    assert headline(model) == (
        "EroSeg3-AT (`last.ckpt`): robust mIoU 30.12 % at 4/255, 25.12 % at 8/255 (worst case over 3 attacks); "
        "clean 80.00 %; suite paper, 40 attack iterations per image, 2 images, 0 s."
    )


def test_the_headline_quotes_a_gradient_masking_verdict_where_the_report_has_one():
    passed = CheckResult(
        "budget", False, {"large_eps_accuracy": 0.01}, "at 64/255 1 % of pixels stay correct"
    )
    failed = CheckResult("black_box", True, {"square_miou": 0.1}, "Square reaches 10.00, white box 20.00")
    model = report(*PAPER, worst(0.25))
    object.__setattr__(model, "gradient_masking", MaskingVerdict((passed,), 2.5))
    assert headline(model).endswith("; gradient masking: no check failed (1 checks, 2.5 s).")
    object.__setattr__(model, "gradient_masking", MaskingVerdict((passed, failed), 2.5))
    assert headline(model).endswith(
        "; gradient masking suspected: black_box: Square reaches 10.00, white box 20.00."
    )


def test_a_collapsed_model_and_one_at_the_level_of_a_constant_prediction_are_warned_about():
    model = report(*PAPER, worst(0.1))
    (collapsed,) = model_warnings(with_pixels(model, (60, 30, 10), (100, 0, 0), clean=0.2))
    assert "predicts one class (class 0) at every clean pixel" in collapsed
    # The best constant prediction scores 20 %: 22 % clean is at its level, 30 % is not.
    (constant,) = model_warnings(with_pixels(model, (60, 30, 10), (80, 20, 0), clean=0.22))
    assert (
        "clean mIoU of 22.00 %, at the level of a constant prediction" in constant and "20.00 %" in constant
    )
    assert model_warnings(with_pixels(model, (60, 30, 10), (80, 20, 0), clean=0.30)) == []
    assert leading_lines([with_pixels(model, (60, 30, 10), (100, 0, 0), clean=0.2)])[-1].startswith(
        "**WARNING"
    )


def test_the_table_puts_clean_and_the_worst_cases_first_in_percent(tmp_path):
    # Budgets in the order the rows first name them, as the suite's eps list runs them.
    model = report(worst(0.3012, "4/255"), *PAPER, worst(0.2512))
    header, _, line = markdown_table([model]).splitlines()
    assert header.split(" | ")[2:5] == ["clean (%)", "worst case @4/255 (%)", "worst case @8/255 (%)"]
    assert line.split(" | ")[2:5] == ["80.00", "**30.12**", "**25.12**"]
    write_csv([model], tmp_path / "results.csv")
    with (tmp_path / "results.csv").open() as handle:
        first = next(csv.DictReader(handle))
    assert float(first["miou_percent"]) == pytest.approx(80.0) and "miou" not in first
