"""The report files of an evaluation run: ``results.json``, ``results.csv`` and ``results.md``.

Scores are percentages in ``results.md`` and ``results.csv`` (columns ``*_percent``); ``results.json`` keeps the
fractions in [0, 1] of :class:`~eroseg_at.evaluation.results.ResultRow`, as its ``units`` entry says, so that
programs read the rows as they were computed.
"""

from __future__ import annotations

import csv
import json
import math
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from eroseg_at.evaluation.results import ModelReport, ResultRow

PACKAGES = (
    "eroseg-at",
    "torch",
    "lightning",
    "segmentation-models-pytorch",
    "hydra-core",
    "numpy",
    "albumentations",
)
CSV_FIELDS = (
    "model",
    "sha256",
    "method",
    "kind",
    "key",
    "label",
    "attack",
    "eps",
    "eps_text",
    "steps",
    "iterations_run",
    "miou_percent",
    "pixel_accuracy_percent",
    "seconds",
    "images_per_second_per_iteration",
    "cached",
)
# The EroSeg paper's own protocol: CW and PGD with 10 and 20 steps, step size 0.01 (None: any step count).
PAPER_PROTOCOL = (("cw", None), ("pgd", 10), ("pgd", 20))
PAPER_ALPHA = 0.01
# A clean mIoU less than this far above the best constant prediction's (the most frequent class everywhere) is
# at its level: a model that learned its classes clears it by far (the demo's 3-epoch model by tens of points).
CONSTANT_MARGIN = 0.05
JSON_UNITS = {
    "miou, pixel_accuracy, iou_per_class, per_image_pixel_accuracy": "fraction in [0, 1]",
    "eps": "l-inf budget in pixel units of [0, 1] images (eps_text as configured)",
    "seconds": "wall-clock seconds",
}


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def percent(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def table_columns(reports: list[ModelReport]) -> list[tuple[str, str, str]]:
    """(kind, key, eps_text) of the table's columns: clean, each suite attack per budget, worst case per budget."""
    columns: list[tuple[str, str, str]] = []
    for report in reports:
        for row in report.rows:
            column = (row.kind, row.key, row.eps_text)
            if row.kind != "iterations" and column not in columns:
                columns.append(column)
    budgets = list(dict.fromkeys(budget for kind, _, budget in columns if kind != "clean"))
    order = {"clean": 0, "worst_case": 1, "attack": 2}
    # Stable sort: the answer first (clean, then the worst case per budget), then per budget the suite's attacks
    # in their order.
    return sorted(columns, key=lambda c: (order[c[0]], 0 if c[0] == "clean" else budgets.index(c[2])))


def column_title(reports: list[ModelReport], column: tuple[str, str, str], several_budgets: bool) -> str:
    kind, key, budget = column
    label = next(row.label for report in reports if (row := report.find(*column)) is not None)
    return f"{label} @{budget}" if several_budgets and kind != "clean" else label


def markdown_table(reports: list[ModelReport]) -> str:
    """mIoU (%) rows per checkpoint: clean, the worst case per budget (bold), then every attack per budget."""
    columns = table_columns(reports)
    several = len({budget for kind, _, budget in columns if kind != "clean"}) > 1
    titles = [column_title(reports, column, several) for column in columns]
    lines = [
        "| model / AT | checkpoint | " + " | ".join(f"{title} (%)" for title in titles) + " |",
        "|---|---|" + "---:|" * len(columns),
    ]
    for report in reports:
        cells = [
            ("**{}**" if row.kind == "worst_case" else "{}").format(percent(row.miou))
            if (row := report.find(*column))
            else ""
            for column in columns
        ]
        lines.append(
            f"| {report.method} | `{report.name}` ({report.sha256[:8]}) | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def per_class_table(report: ModelReport) -> str:
    columns = table_columns([report])
    several = len({budget for kind, _, budget in columns if kind != "clean"}) > 1
    titles = [column_title([report], column, several) for column in columns]
    lines = ["| class | " + " | ".join(titles) + " |", "|---|" + "---:|" * len(columns)]
    rows: list[ResultRow] = [report.row(*column) for column in columns]
    for index, name in enumerate(report.class_names):
        lines.append(f"| {name} | " + " | ".join(percent(row.iou_per_class[index]) for row in rows) + " |")
    return "\n".join(lines)


def iterations_table(report: ModelReport) -> str | None:
    rows = report.rows_of("iterations")
    if not rows:
        return None
    steps = sorted({row.steps for row in rows})
    labels = list(dict.fromkeys(row.label for row in rows))
    lines = ["| attack | " + " | ".join(str(s) for s in steps) + " |", "|---|" + "---:|" * len(steps)]
    for label in labels:
        by_steps = {row.steps: row.miou for row in rows if row.label == label}
        lines.append(
            f"| {label} | " + " | ".join(percent(by_steps[s]) if s in by_steps else "" for s in steps) + " |"
        )
    return "\n".join(lines)


def is_paper_protocol(row: ResultRow) -> bool:
    """Whether ``row`` is one of the paper's CW, PGD10, PGD20 (step 0.01) attacks."""
    description = row.description
    return (
        row.kind == "attack"
        and description is not None
        and description.alpha is not None
        and math.isclose(description.alpha, PAPER_ALPHA)
        and any(
            description.name == attack and steps in (None, description.steps)
            for attack, steps in PAPER_PROTOCOL
        )
    )


def protocol_gap_lines(reports: list[ModelReport]) -> list[str]:
    """Per model and budget, how far the worst case lies below the lowest of the paper's protocol rows."""
    lines = []
    for report in reports:
        for worst in report.rows_of("worst_case"):
            protocol = [
                row for row in report.rows if is_paper_protocol(row) and row.eps_text == worst.eps_text
            ]
            if not protocol:
                continue
            lowest = min(protocol, key=lambda row: row.miou)
            lines.append(
                f"- {report.method} (`{report.name}`) @{worst.eps_text}: the worst case ({percent(worst.miou)}) "
                f"lies {100 * (lowest.miou - worst.miou):.2f} mIoU points below the paper's protocol (the lowest "
                f"of {', '.join(row.label for row in protocol)}: {lowest.label} {percent(lowest.miou)})."
            )
    if not lines and any(report.rows_of("worst_case") for report in reports):
        lines.append(
            "- The suite has none of the paper's CW, PGD10, PGD20 attacks (step 0.01), so the worst case is not "
            "compared with its protocol."
        )
    return lines


def protocol_note(row: ResultRow) -> str:
    """How a member deviates from a plain run of its attack: SEA's progressive radius, early stop."""
    description = row.description
    if description is None:
        return ""
    notes = []
    if description.progressive:
        notes.append(
            "SEA protocol (radius "
            + " → ".join(f"{stage.radius_factor:g}" for stage in description.stages)
            + " eps over "
            + " / ".join(str(stage.gradient_evaluations) for stage in description.stages)
            + " steps)"
        )
    if description.early_stop:
        notes.append("early stop (steps at most)")
    return "; ".join(notes)


def origin(row: ResultRow) -> str:
    if row.cached:
        return "cache"
    if row.resumed_images:
        return f"computed, {row.resumed_images} images resumed"
    return "computed"


def members_table(reports: list[ModelReport]) -> str:
    """Every pass of every model: its iterations (configured and run), protocol, time, throughput and whether it
    came from the cache."""
    lines = [
        "| model | pass | attack | eps | steps | iterations run | protocol | seconds | images/s per iteration | from |",
        "|---|---|---|---|---:|---:|---|---:|---:|---|",
    ]
    for report in reports:
        for row in report.rows:
            if row.kind == "worst_case":
                continue
            throughput = row.images_per_second_per_iteration
            run = row.iterations_run
            lines.append(
                f"| `{report.name}` | {row.label} | {row.attack or ''} | {row.eps_text} | {row.steps or ''} | "
                f"{'' if run is None else f'{run:.3g}'} | {protocol_note(row)} | {row.seconds:.1f} | "
                f"{'' if throughput is None else f'{throughput:.3g}'} | {origin(row)} |"
            )
    return "\n".join(lines)


def cache_lines(reports: list[ModelReport]) -> list[str]:
    lines = []
    for report in reports:
        cached = [row for row in report.rows if row.cached]
        resumed = [row for row in report.rows if row.resumed_images]
        if cached:
            names = ", ".join(
                f"{row.label} @{row.eps_text}" if row.kind != "clean" else "clean" for row in cached
            )
            lines.append(f"- `{report.name}`: from the cache (finished by an earlier run): {names}.")
        if resumed:
            names = ", ".join(f"{row.label} @{row.eps_text} ({row.resumed_images} images)" for row in resumed)
            lines.append(f"- `{report.name}`: resumed from an interrupted run's batches: {names}.")
    return lines or ["- Nothing came from the cache: every pass was computed by this run."]


def masking_verdict_line(report: ModelReport) -> str | None:
    """The model's gradient-masking verdict (each failed check with its numbers, or that none failed) and the
    checks' cost: seconds, and their share of the model's pass time; None where the checks did not run."""
    verdict = report.gradient_masking
    if verdict is None:
        return None
    passes = sum(row.seconds for row in report.rows if row.kind != "worst_case") + verdict.seconds
    share = verdict.seconds / passes if passes > 0 else 0.0
    return (
        f"- {report.method} (`{report.name}`): **{'SUSPECTED' if verdict.suspected else 'not suspected'}**. "
        f"{verdict.summary()}. Cost: {verdict.seconds:.1f} s, {100 * share:.1f} % of the model's pass time "
        "(as computed, cached passes included)."
    )


def masking_section(reports: list[ModelReport]) -> list[str]:
    """results.md's gradient-masking section: one verdict line per model (nothing where the checks were off)."""
    lines = [line for report in reports if (line := masking_verdict_line(report)) is not None]
    if not lines:
        return []
    return [
        "",
        "## Gradient-masking checks",
        "",
        "Black box vs white box, budget, iterations, gradient health and repeatability on the first images "
        '(docs/EVALUATION.md, "Gradient-masking checks"); results.json holds every check\'s numbers under '
        "`gradient_masking`.",
        "",
        *lines,
    ]


def attack_iterations(report: ModelReport) -> int:
    """Attack iterations per image the suite configured (gradient evaluations; Square's forward queries), every
    member at every budget and every curve point together (early stop may have run fewer)."""
    return sum(row.steps for row in report.rows if row.steps is not None)


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def headline(report: ModelReport) -> str:
    """One line with the answer: the worst-case robust mIoU per budget, clean, and what it cost.

    The gradient-masking verdict is quoted where the report carries one (``gradient_masking``).
    """
    clean = report.row("clean")
    worst = report.rows_of("worst_case")
    if worst:
        members = len(worst[0].worst_case.members) - 1 if worst[0].worst_case else 0
        answer = "robust mIoU " + ", ".join(f"{percent(row.miou)} % at {row.eps_text}" for row in worst)
        answer += f" (worst case over {members} attacks)"
    else:
        answer = f"no worst case (suite {report.suite or '?'} has no attack members)"
    seconds = sum(row.seconds for row in report.rows)
    line = (
        f"{report.method} (`{report.name}`): {answer}; clean {percent(clean.miou)} %; suite {report.suite or '?'}, "
        f"{attack_iterations(report)} attack iterations per image, {report.num_images} images, "
        f"{duration(seconds)}"
    )
    verdict = report.gradient_masking
    if verdict is not None:
        line += f"; {verdict.summary()}"
    return line + "."


def model_warnings(report: ModelReport) -> list[str]:
    """Warnings that the model's scores mean little: it predicts one class, or its clean mIoU is at the level of
    the best constant prediction (within :data:`CONSTANT_MARGIN`)."""
    counts, clean = report.pixel_counts, report.row("clean")
    if counts is None:
        return []
    where = f"{report.method} (`{report.name}`)"
    predicted = counts.predicted_classes
    if len(predicted) == 1:
        name = report.class_names[predicted[0]]
        return [
            f"WARNING: {where} predicts one class ({name}) at every clean pixel: it has collapsed, and its "
            "robust scores say nothing about robustness."
        ]
    constant = counts.constant_miou
    if clean.miou < constant + CONSTANT_MARGIN:
        return [
            f"WARNING: {where} scores a clean mIoU of {percent(clean.miou)} %, at the level of a constant prediction "
            f"(the most frequent class everywhere: {percent(constant)} %): it has barely learned its classes, and "
            "its robust scores say little about robustness."
        ]
    return []


def leading_lines(reports: list[ModelReport]) -> list[str]:
    """The opening of results.md: one headline per model, then any warning on a model."""
    lines = [f"- {headline(report)}" for report in reports]
    warnings = [warning for report in reports for warning in model_warnings(report)]
    return lines + (["", *(f"**{warning}**" for warning in warnings)] if warnings else [])


def write_markdown(reports: list[ModelReport], path: Path, figures: list[Path]) -> None:
    parts = [
        "# Robustness report",
        "",
        *leading_lines(reports),
        "",
        f"mIoU (%) on the validation images of {', '.join(sorted({r.dataset for r in reports}))} "
        f"({', '.join(str(r.num_images) for r in reports)} images). Worst case: per image, the ensemble member "
        "(the clean image or any suite attack at that budget) chosen greedily to minimise the dataset mIoU "
        "(SEA, Croce et al. 2024).",
        "",
        markdown_table(reports),
        "",
        *protocol_gap_lines(reports),
        "",
        "## Passes",
        "",
        "Steps are the gradient evaluations of each attack per image, iterations run those it actually ran per "
        "image (fewer where it stopped early); seconds the wall time of the run that computed the pass (all "
        "processes together), and images/s per iteration its attacked images x iterations run / seconds.",
        "",
        members_table(reports),
        "",
        *cache_lines(reports),
        *masking_section(reports),
    ]
    for report in reports:
        curve = iterations_table(report)
        if curve:
            parts += [
                "",
                f"## Attack strength: mIoU (%) vs iterations, {report.method} (`{report.name}`)",
                "",
                curve,
            ]
    if figures:
        parts += ["", "## Figures", ""] + [f"![{figure.stem}]({figure.name})" for figure in figures]
    parts += ["", "## Appendix: IoU per class (%)"]
    for report in reports:
        parts += ["", f"### {report.method} (`{report.path or report.name}`)", "", per_class_table(report)]
    path.write_text("\n".join(parts) + "\n")


def write_csv(reports: list[ModelReport], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for report in reports:
            for row in report.rows:
                writer.writerow(
                    {
                        "model": report.name,
                        "sha256": report.sha256,
                        "method": report.method,
                        **{key: getattr(row, key) for key in CSV_FIELDS[3:] if not key.endswith("_percent")},
                        "miou_percent": 100 * row.miou,
                        "pixel_accuracy_percent": 100 * row.pixel_accuracy,
                    }
                )


def results_document(
    reports: list[ModelReport], settings: dict[str, Any], processes: int = 1, cache: Path | None = None
) -> dict[str, Any]:
    """``results.json``: settings, command, versions, how it ran (processes, cache) and every model's rows.

    ``cache.members_from_cache`` lists per model the passes read finished from the cache, ``resumed`` those
    continued from an interrupted run's batches.
    """
    return {
        "units": JSON_UNITS,
        "settings": settings,
        "command": sys.argv,
        "versions": package_versions(),
        "processes": processes,
        "cache": {
            "directory": None if cache is None else str(cache),
            "members_from_cache": {
                report.name: [f"{row.key}@{row.eps_text}" for row in report.rows if row.cached]
                for report in reports
            },
            "resumed": {
                report.name: {
                    f"{row.key}@{row.eps_text}": row.resumed_images
                    for row in report.rows
                    if row.resumed_images
                }
                for report in reports
            },
        },
        "models": [report.to_json() for report in reports],
    }


def write_json(document: dict[str, Any], path: Path) -> None:
    # NaN (a class absent from both target and prediction) is written as null: strict JSON has no NaN.
    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(item) for item in value]
        return value

    path.write_text(json.dumps(clean(document), indent=1, allow_nan=False))
