"""The typed results of an evaluation: one row per clean / attack / curve point / worst case, one report per model.

Rows and reports travel from the pass runner to the report files, the plots, the W&B run and
``scripts/reproduce.py``; :meth:`ModelReport.row` is the one way to look a row up. A row's scores come from a
:class:`Scores` record and its attack from an :class:`AttackDescription`, both read by attribute.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from eroseg_at.attacks.base import Attack, IterativeAttack
from eroseg_at.checkpoint import TrainingMethod
from eroseg_at.evaluation.cache import PassResult
from eroseg_at.evaluation.keys import json_value
from eroseg_at.evaluation.masking import MaskingVerdict
from eroseg_at.evaluation.suite import AttackRun
from eroseg_at.evaluation.worst_case import (
    LABEL_COUNT,
    PREDICTION_COUNT,
    pixel_accuracy,
    scores_from_statistics,
    select,
    worst_case,
)
from eroseg_at.models.adapter import SourceInfo

# clean: no attack; attack: a suite attack at a budget (a worst-case member); iterations: a point of the
# attack-strength curve; worst_case: the per-image worst case over the members at a budget.
RowKind = Literal["clean", "attack", "iterations", "worst_case"]


@dataclass(frozen=True)
class Scores:
    """The scores of per-image statistics.

    Attributes:
        miou, pixel_accuracy: Dataset-level scores in [0, 1].
        iou_per_class: Per class, NaN for a class absent from labels and predictions.
        per_image_pixel_accuracy: Per image, in the statistics' order.
    """

    miou: float
    pixel_accuracy: float
    iou_per_class: tuple[float, ...]
    per_image_pixel_accuracy: tuple[float, ...]

    @classmethod
    def of(cls, statistics: torch.Tensor) -> Scores:
        """The scores of per-image statistics ``[N, 3, C]``."""
        summed = scores_from_statistics(statistics.sum(0))
        return cls(
            miou=float(summed.miou),
            pixel_accuracy=float(summed.pixel_accuracy),
            iou_per_class=tuple(float(value) for value in summed.iou_per_class),
            per_image_pixel_accuracy=tuple(pixel_accuracy(statistics).tolist()),
        )


@dataclass(frozen=True)
class Stage:
    """One stage of an attack's radius schedule: its radius as a multiple of eps and its gradient evaluations."""

    radius_factor: float
    gradient_evaluations: int


@dataclass(frozen=True)
class AttackDescription:
    """An attack as it ran, in the fields reports read.

    Attributes:
        name: Its registered name (``apgd``).
        norm: ``linf`` or ``l2``.
        eps: The budget.
        steps: Gradient evaluations per image it may run.
        alpha: The fixed step of the PGD loop; None for attacks that steer their own step (APGD).
        stages: Its radius schedule; more than one stage is SEA's progressive radius.
        early_stop: Whether it may stop before ``steps`` (then ``steps`` is a maximum).
        parameters: Every attribute of the attack as built, in JSON types, for the record.
    """

    name: str
    norm: str
    eps: float
    steps: int
    alpha: float | None
    stages: tuple[Stage, ...]
    early_stop: bool
    parameters: Mapping[str, Any]

    @classmethod
    def of(cls, attack: Attack) -> AttackDescription:
        return cls(
            name=attack.name,
            norm=attack.norm,
            eps=attack.eps,
            steps=attack.steps,
            alpha=attack.alpha if isinstance(attack, IterativeAttack) else None,
            stages=tuple(Stage(factor, count) for factor, count in attack.radius_schedule()),
            early_stop=attack.early_stop,
            parameters=json_value(vars(attack)),
        )

    @property
    def progressive(self) -> bool:
        """Whether the radius shrinks over stages (SEA's protocol)."""
        return len(self.stages) > 1


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
        images_per_second_per_iteration: Attacked images × gradient evaluations actually run / ``seconds`` of
            the run that computed the pass (throughput of one attack iteration; early stop counts what ran);
            None for rows without an attack.
        cached: The pass was read from the evaluation's cache, finished by an earlier run (nothing computed).
        resumed_images: Images of the pass taken from the per-batch results of an interrupted run.
        description: The attack as it ran (typed: step, radius schedule, early stop); None without an attack.
        iterations_run: Gradient evaluations per attacked image actually run, on average, in the run that
            computed the pass (0 for a black-box attack such as Square, whose ``steps`` are forward queries);
            None without an attack or without computed images.
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
    description: AttackDescription | None = None
    iterations_run: float | None = None

    @property
    def scores(self) -> Scores:
        return Scores(self.miou, self.pixel_accuracy, self.iou_per_class, self.per_image_pixel_accuracy)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def clean_row(result: PassResult) -> ResultRow:
    """The report row of the clean pass."""
    return ResultRow(
        kind="clean",
        key="clean",
        label="clean",
        eps=0.0,
        eps_text="0",
        **asdict(Scores.of(result.statistics)),
        seconds=result.seconds,
        cached=result.cached,
        resumed_images=result.resumed_images,
    )


def attack_row(run: AttackRun, description: AttackDescription, result: PassResult) -> ResultRow:
    """The report row of a suite run's finished pass."""
    # A black-box attack (Square) runs no gradient evaluation: it has no such throughput.
    computed = result.computed_images and result.seconds > 0 and result.gradient_evaluations > 0
    return ResultRow(
        kind=run.kind,
        key=run.key,
        label=run.label,
        eps=run.eps,
        eps_text=run.eps_text,
        **asdict(Scores.of(result.statistics)),
        seconds=result.seconds,
        attack=run.attack,
        norm=description.norm,
        steps=description.steps,
        parameters=description.parameters,
        images_per_second_per_iteration=result.gradient_evaluations / result.seconds if computed else None,
        cached=result.cached,
        resumed_images=result.resumed_images,
        description=description,
        iterations_run=result.gradient_evaluations / result.computed_images
        if result.computed_images
        else None,
    )


def worst_case_row(
    budget: str, eps: float, members: Sequence[str], statistics: torch.Tensor, rounds: int
) -> ResultRow:
    """The worst case at one budget over the stacked per-image statistics of ``members``.

    mIoU and per-class IoU are those of the greedy mIoU choice; pixel accuracy decomposes over images, so its
    worst case (and the per-image list) is that of the per-image lowest-accuracy choice.

    Shape:
        statistics: ``[A, N, 3, C]``, one row per name of ``members`` (``clean`` first).
    """
    result = worst_case(statistics, rounds)
    by_miou = Scores.of(select(statistics, result.miou_choice))
    by_accuracy = Scores.of(select(statistics, result.accuracy_choice))
    return ResultRow(
        kind="worst_case",
        key="worst_case",
        label="worst case",
        eps=eps,
        eps_text=budget,
        miou=by_miou.miou,
        iou_per_class=by_miou.iou_per_class,
        pixel_accuracy=by_accuracy.pixel_accuracy,
        per_image_pixel_accuracy=by_accuracy.per_image_pixel_accuracy,
        worst_case=WorstCaseChoice(
            members=tuple(members),
            greedy_rounds=result.rounds,
            miou_choice=tuple(members[i] for i in result.miou_choice.tolist()),
            accuracy_choice=tuple(members[i] for i in result.accuracy_choice.tolist()),
        ),
    )


def worst_case_rows(
    runs: Sequence[AttackRun],
    members: Sequence[str],
    clean: torch.Tensor,
    attacked: Mapping[tuple[str, str], torch.Tensor],
    rounds: int,
) -> list[ResultRow]:
    """Per budget, the worst case over the clean image (δ = 0 is in the threat model) and the members.

    Args:
        runs: The suite's runs (their budgets, in order).
        members: Keys of the worst case's members.
        clean: ``[N, 3, C]`` statistics of the clean pass.
        attacked: ``(eps_text, key)`` -> ``[N, 3, C]`` statistics of each member at each budget.
        rounds: Greedy rounds of the mIoU choice.
    """
    rows = []
    for budget in dict.fromkeys(run.eps_text for run in runs if run.kind == "attack"):
        keys = [key for key in members if (budget, key) in attacked]
        if not keys:
            continue
        stacked = torch.stack([clean, *(attacked[(budget, key)] for key in keys)])
        eps = next(run.eps for run in runs if run.eps_text == budget)
        rows.append(worst_case_row(budget, eps, ["clean", *keys], stacked, rounds))
    return rows


@dataclass(frozen=True)
class PixelCounts:
    """The valid pixels of the clean pass per class, summed over the images: labelled, and predicted by the model.

    The facts behind the report's warnings on a model that has collapsed or learned nothing.
    """

    labelled: tuple[int, ...]
    predicted: tuple[int, ...]

    @classmethod
    def of(cls, statistics: torch.Tensor) -> PixelCounts:
        """The counts of the clean pass's per-image statistics ``[N, 3, C]``."""
        summed = statistics.sum(0)
        return cls(tuple(summed[LABEL_COUNT].tolist()), tuple(summed[PREDICTION_COUNT].tolist()))

    @property
    def predicted_classes(self) -> tuple[int, ...]:
        """The classes the model predicts at one valid pixel or more."""
        return tuple(index for index, count in enumerate(self.predicted) if count > 0)

    @property
    def constant_miou(self) -> float:
        """The mIoU of the best constant prediction: the most frequent labelled class at every valid pixel.

        Predicting class k everywhere scores IoU ``L_k / ΣL`` on k and 0 on every other labelled class; classes
        neither labelled nor predicted do not count, as in every score here. So the best constant prediction
        scores ``max_k L_k / ΣL`` over the number of labelled classes (NaN without a labelled pixel).
        """
        present = [count for count in self.labelled if count > 0]
        return max(present) / sum(present) / len(present) if present else math.nan


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
        method: The row name: the training method's label (``standard``, ``EroSeg3-AT``, ...), or the source
            of a model that does not come from a training checkpoint.
        dataset: The dataset's name; ``class_names`` and ``palette`` (0-255 RGB per class) are its own.
        ignore_index: The dataset's ignore label.
        image_names: The evaluated images in the order of every per-image list.
        rows: The results, clean first.
        suite: The name of the suite that made the rows (``paper``).
        pixel_counts: The labelled and predicted pixels per class of the clean pass.
        training: The training run's config, where the model comes from a training checkpoint.
        source: How the model was built and adapted (source kind, file, digest, adapter, normalisation applied).
        example: The example grid's images, or None.
        training_method: How a training checkpoint's model was trained (its record, or its config's account).
        gradient_masking: The gradient-masking checks' verdict; None where they were disabled.
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
    suite: str = ""
    pixel_counts: PixelCounts | None = None
    training: Mapping[str, Any] | None = None
    source: SourceInfo | None = None
    example: Example | None = None
    training_method: TrainingMethod | None = None
    gradient_masking: MaskingVerdict | None = None

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
            "suite": self.suite,
            "pixel_counts": None if self.pixel_counts is None else asdict(self.pixel_counts),
            "images": list(self.image_names),
            "source": None if self.source is None else asdict(self.source),
            "training_config": self.training,
            "training_method": None if self.training_method is None else self.training_method.to_record(),
            "results": [row.to_json() for row in self.rows],
            "gradient_masking": None if self.gradient_masking is None else self.gradient_masking.to_json(),
        }
