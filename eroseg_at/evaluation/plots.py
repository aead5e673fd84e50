"""PNG figures of an evaluation run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from eroseg_at.evaluation.results import ModelReport, RowKind  # noqa: E402
from eroseg_at.visualization import amplified_perturbation, colourise  # noqa: E402


def _curves(report: ModelReport, kind: RowKind, x_key: str) -> dict[str, list[tuple[float, float]]]:
    curves: dict[str, list[tuple[float, float]]] = {}
    for row in report.rows_of(kind):
        curves.setdefault(row.label, []).append((getattr(row, x_key), 100 * row.miou))
    return {label: sorted(points) for label, points in curves.items()}


def _line_plot(curves: dict[str, list[tuple[float, float]]], ax: plt.Axes, x_scale: float = 1.0) -> None:
    for label, points in curves.items():
        xs, ys = zip(*points, strict=True)
        ax.plot(np.asarray(xs) * x_scale, ys, marker="o", label=label)
    ax.set_ylabel("mIoU (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def miou_vs_eps(reports: list[ModelReport], path: Path) -> Path | None:
    """mIoU against the budget (in /255 units), one line per attack (and the worst case), one panel per model."""
    panels = [
        (
            r,
            {
                **_curves(r, "attack", "eps"),
                **{"worst case": _curves(r, "worst_case", "eps").get("worst case", [])},
            },
        )
        for r in reports
    ]
    panels = [(r, {label: points for label, points in curves.items() if points}) for r, curves in panels]
    if not any(len(points) > 1 for _, curves in panels for points in curves.values()):
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (report, curves) in zip(axes[0], panels, strict=True):
        clean = report.row("clean").miou
        curves = {label: [(0.0, 100 * clean), *points] for label, points in curves.items()}
        _line_plot(curves, ax, x_scale=255)
        ax.set_xlabel("eps (x/255)")
        ax.set_title(f"{report.method}: {report.name}", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def miou_vs_iterations(reports: list[ModelReport], path: Path) -> Path | None:
    """The attack-strength figure: mIoU against attack iterations, one line per attack, one panel per model."""
    panels = [(r, _curves(r, "iterations", "steps")) for r in reports]
    panels = [(r, curves) for r, curves in panels if curves]
    if not panels:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (report, curves) in zip(axes[0], panels, strict=True):
        _line_plot(curves, ax)
        budget = report.rows_of("iterations")[0].eps_text
        ax.set_xlabel(f"attack iterations (eps {budget})")
        ax.set_title(f"{report.method}: {report.name}", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def example_grid(report: ModelReport, path: Path) -> Path | None:
    """Rows of images; columns clean, adversarial, amplified perturbation, ground truth, clean / adv prediction.

    Label maps are drawn in the dataset's palette (VOC's, Cityscapes', ...), ignored pixels white.
    """
    example = report.example
    if example is None:
        return None
    titles = [
        "clean",
        f"{example.attack_label} @{example.eps_text}",
        "perturbation (amplified)",
        "ground truth",
        "clean prediction",
        "adversarial prediction",
    ]
    count = example.clean.shape[0]
    figure, axes = plt.subplots(count, len(titles), figsize=(2.2 * len(titles), 2.2 * count), squeeze=False)
    for index in range(count):
        clean, adversarial = example.clean[index].float(), example.adversarial[index].float()
        panels = [
            clean.permute(1, 2, 0).numpy(),
            adversarial.permute(1, 2, 0).numpy(),
            amplified_perturbation(clean, adversarial).permute(1, 2, 0).numpy(),
            *(
                colourise(maps[index].numpy(), report.palette, report.ignore_index)
                for maps in (example.labels, example.clean_prediction, example.adversarial_prediction)
            ),
        ]
        for column, (ax, panel) in enumerate(zip(axes[index], panels, strict=True)):
            ax.imshow(np.clip(panel, 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if index == 0:
                ax.set_title(titles[column], fontsize="small")
    figure.suptitle(f"{report.method}: {report.name}", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
