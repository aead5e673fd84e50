"""The files of an evaluation: ``results.json``, ``results.csv``, ``results.md``, the figures and ``report.html``
(results.md with the figures embedded, :mod:`.html`), written alike by
``evaluate.py`` (:func:`eroseg_at.evaluation.runner.evaluate`) and by a report of the Python API
(:meth:`eroseg_at.evaluation.api.RobustnessReport.save`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eroseg_at.evaluation.html import write_html
from eroseg_at.evaluation.plots import example_grid, miou_vs_eps, miou_vs_iterations
from eroseg_at.evaluation.report import results_document, write_csv, write_json, write_markdown
from eroseg_at.evaluation.results import ModelReport


def write_figures(reports: list[ModelReport], output_dir: Path) -> list[Path]:
    figures = [
        miou_vs_eps(reports, output_dir / "miou_vs_eps.png"),
        miou_vs_iterations(reports, output_dir / "miou_vs_iterations.png"),
        *(example_grid(report, output_dir / f"examples_{index}.png") for index, report in enumerate(reports)),
    ]
    return [figure for figure in figures if figure is not None]


def write_report(
    reports: list[ModelReport],
    output_dir: Path,
    settings: Mapping[str, Any],
    processes: int = 1,
    cache: Path | None = None,
) -> dict[str, Path]:
    """Writes the report files of ``reports`` into ``output_dir`` (created where missing).

    Args:
        settings: The composed config, resolved, for ``results.json``.
        processes: How many processes shared the passes; ``cache``: the pass cache's directory, if any.

    Returns:
        Each file by its name (``results.md``, ``miou_vs_eps.png``, ...).
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    files = {name: output_dir / name for name in ("results.json", "results.csv", "results.md")}
    figures = write_figures(reports, output_dir)
    write_json(results_document(reports, dict(settings), processes, cache), files["results.json"])
    write_csv(reports, files["results.csv"])
    write_markdown(reports, files["results.md"], figures)
    files["report.html"] = write_html(files["results.md"], output_dir / "report.html")
    files.update({figure.name: figure for figure in figures})
    return files
