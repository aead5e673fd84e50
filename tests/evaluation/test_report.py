"""results.md: every pass's iterations and protocol, the worst case's distance to the paper's protocol, and the
passes that came from the cache (hand-built rows, no evaluation)."""

from __future__ import annotations

from eroseg_at.evaluation.report import cache_lines, members_table, protocol_gap_lines
from eroseg_at.evaluation.results import AttackDescription, ModelReport, ResultRow, Stage


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
