"""PNG figures of an evaluation run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from eroseg_at.evaluation.results import ModelReport, RowKind  # noqa: E402
from eroseg_at.evaluation.worst_case import miou, per_image_statistics  # noqa: E402
from eroseg_at.visualization import amplified_perturbation, colourise  # noqa: E402

# Markers and dash patterns cycled over an axis's lines, so that lines on top of one another stay apart: equal lines
# show as nested markers of decreasing size over the worst case, drawn first, wide and pale.
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">")
DASHES = ("-", "--", "-.", ":")
WORST_CASE = "worst case"


def _curves(report: ModelReport, kind: RowKind, x_key: str) -> dict[str, list[tuple[float, float]]]:
    curves: dict[str, list[tuple[float, float]]] = {}
    for row in report.rows_of(kind):
        curves.setdefault(row.label, []).append((getattr(row, x_key), 100 * row.miou))
    return {label: sorted(points) for label, points in curves.items()}


def _line_plot(curves: dict[str, list[tuple[float, float]]], ax: plt.Axes, x_scale: float = 1.0) -> None:
    """One line per curve, the worst case first beneath the others; y from 0 (mIoU %), so noise stays small."""
    ordered = sorted(curves.items(), key=lambda item: item[0] != WORST_CASE)
    attacks = sum(label != WORST_CASE for label, _ in ordered)
    index = 0
    for label, points in ordered:
        xs, ys = zip(*points, strict=True)
        xs = np.asarray(xs) * x_scale
        if label == WORST_CASE:
            ax.plot(xs, ys, color="black", linewidth=5, alpha=0.3, label=label, zorder=1)
            continue
        ax.plot(
            xs,
            ys,
            marker=MARKERS[index % len(MARKERS)],
            linestyle=DASHES[index % len(DASHES)],
            markersize=4 + 6 * (attacks - 1 - index) / max(attacks - 1, 1),
            markerfacecolor="none",
            label=label,
            zorder=2 + index,
        )
        index += 1
    top = max(y for _, points in curves.items() for _, y in points)
    ax.set_ylim(0, max(5.0, 1.08 * top))
    ax.set_ylabel("mIoU (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def panel_title(report: ModelReport) -> str:
    return f"{report.method}: {report.name}\nsuite {report.suite or '?'}, {report.num_images} images"


def miou_vs_eps(reports: list[ModelReport], path: Path) -> Path | None:
    """mIoU against the budget (in /255 units), one line per attack (and the worst case), one panel per model."""
    panels = [
        (
            r,
            {
                **_curves(r, "attack", "eps"),
                **{WORST_CASE: _curves(r, "worst_case", "eps").get(WORST_CASE, [])},
            },
        )
        for r in reports
    ]
    panels = [(r, {label: points for label, points in curves.items() if points}) for r, curves in panels]
    if not any(len(points) > 1 for _, curves in panels for points in curves.values()):
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    for ax, (report, curves) in zip(axes[0], panels, strict=True):
        clean = report.row("clean").miou
        curves = {label: [(0.0, 100 * clean), *points] for label, points in curves.items()}
        _line_plot(curves, ax, x_scale=255)
        ax.set_xlabel("eps (x/255)")
        ax.set_title(panel_title(report), fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def miou_vs_iterations(reports: list[ModelReport], path: Path) -> Path | None:
    """The attack-strength figure: mIoU against attack iterations from the clean point at 0, one line per attack,
    one panel per model."""
    panels = [(r, _curves(r, "iterations", "steps")) for r in reports]
    panels = [(r, curves) for r, curves in panels if curves]
    if not panels:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    for ax, (report, curves) in zip(axes[0], panels, strict=True):
        clean = 100 * report.row("clean").miou
        _line_plot({label: [(0, clean), *points] for label, points in curves.items()}, ax)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        budget = report.rows_of("iterations")[0].eps_text
        ax.set_xlabel(f"attack iterations (eps {budget}; 0: clean)")
        ax.set_title(panel_title(report), fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def image_mious(
    predictions: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int
) -> list[float]:
    """The mIoU of each image on its own (classes it labels or predicts).

    Shape:
        predictions, labels: ``[K, H, W]``.
    """
    return miou(per_image_statistics(predictions, labels, num_classes, ignore_index)).tolist()


def example_grid(report: ModelReport, path: Path) -> Path | None:
    """Rows of images; columns clean, adversarial, amplified perturbation (its factor under it), ground truth, clean
    / adv prediction (each image's own mIoU under it), and a legend of the class colours shown.

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
    classes = len(report.class_names)
    scores = [
        image_mious(predictions, example.labels, classes, report.ignore_index)
        for predictions in (example.clean_prediction, example.adversarial_prediction)
    ]
    count = example.clean.shape[0]
    figure, axes = plt.subplots(
        count, len(titles), figsize=(2.2 * len(titles), 2.4 * count + 0.8), squeeze=False
    )
    for index in range(count):
        clean, adversarial = example.clean[index].float(), example.adversarial[index].float()
        largest = float((adversarial - clean).abs().amax())
        panels = [
            clean.permute(1, 2, 0).numpy(),
            adversarial.permute(1, 2, 0).numpy(),
            amplified_perturbation(clean, adversarial).permute(1, 2, 0).numpy(),
            *(
                colourise(maps[index].numpy(), report.palette, report.ignore_index)
                for maps in (example.labels, example.clean_prediction, example.adversarial_prediction)
            ),
        ]
        notes = [
            "",
            "",
            f"x{0.5 / largest:.0f} (max |δ| {255 * largest:.1f}/255)" if largest > 0 else "no perturbation",
            "",
            f"mIoU {100 * scores[0][index]:.1f} %",
            f"mIoU {100 * scores[1][index]:.1f} %",
        ]
        for column, (ax, panel) in enumerate(zip(axes[index], panels, strict=True)):
            ax.imshow(np.clip(panel, 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(notes[column], fontsize="x-small")
            if index == 0:
                ax.set_title(titles[column], fontsize="small")
    shown = torch.cat(
        [
            maps.flatten()
            for maps in (example.labels, example.clean_prediction, example.adversarial_prediction)
        ]
    ).unique()
    shown = [int(c) for c in shown.tolist() if 0 <= c < classes]
    handles = [
        Patch(facecolor=np.asarray(report.palette[c]) / 255, edgecolor="grey", label=report.class_names[c])
        for c in shown
    ]
    handles.append(Patch(facecolor="white", edgecolor="grey", label=f"ignored ({report.ignore_index})"))
    figure.legend(
        handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize="x-small", frameon=False
    )
    figure.suptitle(
        f"{panel_title(report)}; perturbation: δ x factor around grey; mIoU: each image's own",
        fontsize="small",
    )
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
