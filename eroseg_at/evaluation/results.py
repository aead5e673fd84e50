"""The typed results of an evaluation: one row per clean / attack / curve point / worst case, one report per model.

Rows and reports travel from the evaluator to the report files, the plots, the W&B run and
``scripts/reproduce.py``; :meth:`ModelReport.row` is the one way to look a row up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

# clean: no attack; attack: a suite attack at a budget (a worst-case member); iterations: a point of the
# attack-strength curve; worst_case: the per-image worst case over the members at a budget.
RowKind = Literal["clean", "attack", "iterations", "worst_case"]


@dataclass(frozen=True)
class WorstCaseChoice:
    """Which member the worst case took for each image.

    Attributes:
        members: The ensemble, ``clean`` first, then suite keys.
        greedy_rounds: Rounds of the greedy mIoU choice run.
        miou_choice: Per image (in the report's image order), the member chosen for the mIoU worst case.
        accuracy_choice: Per image, the member of lowest pixel accuracy.
    """

    members: tuple[str, ...]
    greedy_rounds: int
    miou_choice: tuple[str, ...]
    accuracy_choice: tuple[str, ...]


@dataclass(frozen=True)
class ResultRow:
    """One evaluation of one model: its threat model and its scores.

    Attributes:
        kind: See :data:`RowKind`.
        key: The suite entry's key (``pgd10``; curve points ``pgd@5``), or ``clean`` / ``worst_case``.
        label: The column title (``PGD10``).
        eps: The budget (0 for clean); ``eps_text`` as configured (``"8/255"``).
        miou, pixel_accuracy: Dataset-level scores in [0, 1].
        iou_per_class: Per class, NaN for a class absent from labels and predictions.
        per_image_pixel_accuracy: Per image, in the report's image order.
        seconds: Wall time of this row's pass over the images, in the run that computed it (all processes
            together: from the pass's start to its gathered result).
        attack: Registered attack name (None for clean and worst case).
        norm, steps: The attack's norm and iterations (None where there is no attack).
        parameters: Every attribute of the attack as built (JSON types).
        worst_case: For ``worst_case`` rows, the per-image choice.
        images_per_second_per_iteration: Attacked images × ``steps`` / ``seconds`` of the run that computed the
            pass (throughput of one attack iteration); None for rows without an attack.
        cached: The pass was read from the evaluation's cache, finished by an earlier run (nothing computed).
        resumed_images: Images of the pass taken from the per-batch results of an interrupted run.
    """

    kind: RowKind
    key: str
    label: str
    eps: float
    eps_text: str
    miou: float
    pixel_accuracy: float
    iou_per_class: tuple[float, ...]
    per_image_pixel_accuracy: tuple[float, ...]
    seconds: float = 0.0
    attack: str | None = None
    norm: str | None = None
    steps: int | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    worst_case: WorstCaseChoice | None = None
    images_per_second_per_iteration: float | None = None
    cached: bool = False
    resumed_images: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Example:
    """The first images of a model's evaluation set under its most damaging attack, for the example grid.

    Shape:
        clean, adversarial: ``[K, 3, H, W]``; labels, clean_prediction, adversarial_prediction: ``[K, H, W]``.
    """

    attack_label: str
    eps_text: str
    clean: torch.Tensor
    adversarial: torch.Tensor
    labels: torch.Tensor
    clean_prediction: torch.Tensor
    adversarial_prediction: torch.Tensor


@dataclass(frozen=True)
class ModelReport:
    """Everything measured on one model.

    Attributes:
        name: How the report names the model (the checkpoint's file name, or the model source).
        path: The checkpoint or model file; None for a model given in memory.
        sha256: Hex SHA-256 of the weights evaluated.
        method: The training method (``standard``, ``EroSeg3-AT``, ...), ``unknown`` where not recorded.
        dataset: The dataset's name; ``class_names`` and ``palette`` (0-255 RGB per class) are its own.
        ignore_index: The dataset's ignore label.
        image_names: The evaluated images in the order of every per-image list.
        rows: The results, clean first.
        training: The training run's config, where the model comes from a training checkpoint.
        source: How the model was built and adapted (source kind, files, normalisation).
        example: The example grid's images, or None.
    """

    name: str
    path: Path | None
    sha256: str
    method: str
    dataset: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int
    image_names: tuple[str, ...]
    rows: tuple[ResultRow, ...]
    training: Mapping[str, Any] | None = None
    source: Mapping[str, Any] = field(default_factory=dict)
    example: Example | None = None

    @property
    def num_images(self) -> int:
        return len(self.image_names)

    def rows_of(self, kind: RowKind) -> list[ResultRow]:
        return [row for row in self.rows if row.kind == kind]

    def find(self, kind: RowKind, key: str | None = None, eps_text: str | None = None) -> ResultRow | None:
        """The first row of ``kind`` (with ``key`` and ``eps_text`` where given), or None."""
        return next(
            (
                row
                for row in self.rows
                if row.kind == kind
                and (key is None or row.key == key)
                and (eps_text is None or row.eps_text == eps_text)
            ),
            None,
        )

    def row(self, kind: RowKind, key: str | None = None, eps_text: str | None = None) -> ResultRow:
        """:meth:`find`, raising a KeyError that names what is missing and what there is."""
        found = self.find(kind, key, eps_text)
        if found is None:
            present = sorted({(row.kind, row.key, row.eps_text) for row in self.rows})
            raise KeyError(f"{self.name}: no {kind} row with key={key} eps={eps_text}; rows: {present}")
        return found

    def to_json(self) -> dict[str, Any]:
        """The report as ``results.json`` holds it (the example grid's tensors left out)."""
        return {
            "name": self.name,
            "path": None if self.path is None else str(self.path),
            "sha256": self.sha256,
            "method": self.method,
            "dataset": self.dataset,
            "class_names": list(self.class_names),
            "num_images": self.num_images,
            "images": list(self.image_names),
            "source": dict(self.source),
            "training_config": self.training,
            "results": [row.to_json() for row in self.rows],
        }


def palette_tuple(palette: Sequence[Sequence[int]]) -> tuple[tuple[int, int, int], ...]:
    return tuple((int(r), int(g), int(b)) for r, g, b in palette)
