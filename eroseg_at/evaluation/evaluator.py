"""The attack loop of an evaluation: one model, its evaluation images, every run of a suite, the worst cases.

:func:`evaluate_models` turns the models named by ``cfg`` into :class:`~eroseg_at.evaluation.results.ModelReport`
objects; ``evaluate(cfg)`` (:mod:`eroseg_at.evaluation.runner`) writes them to files.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn

from eroseg_at.attacks import DatasetFacts
from eroseg_at.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint_paths
from eroseg_at.configs import build
from eroseg_at.evaluation.inference import FullResolutionModel
from eroseg_at.evaluation.results import Example, ModelReport, ResultRow, WorstCaseChoice, palette_tuple
from eroseg_at.evaluation.suite import AttackRun, build_run_attack, expand_suite, worst_case_members
from eroseg_at.evaluation.worst_case import (
    per_image_confusion_matrices,
    pixel_accuracy_per_image,
    worst_case,
)
from eroseg_at.metrics import scores_from_confusion_matrix
from eroseg_at.predictions import predicted_classes

# fp16 is left out: autograd.grad is not loss-scaled, so input gradients would underflow.
PRECISIONS = {"32": None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class ModelToEvaluate:
    """A model the evaluation attacks, however it was obtained.

    Attributes:
        name: How the report names it.
        path: Its file; None for a model given in memory.
        sha256: Hex SHA-256 of its weights.
        method: Its training method (``standard``, ``EroSeg3-AT``, ...).
        config: The dataset (``config.dataset``) it is evaluated on, and for training checkpoints the run's
            whole config.
        build: Returns the model (images in [0, 1] to logits, ``num_classes``, ``input_divisor``).
        weights: A state dict loaded into the built model once its classes are checked against the dataset
            (a training checkpoint's); None where ``build`` gives the weights.
        training: The training run's config, if it comes from a training checkpoint.
    """

    name: str
    path: Path | None
    sha256: str
    method: str
    config: DictConfig
    build: Callable[[], nn.Module]
    weights: dict[str, torch.Tensor] | None = None
    training: dict[str, Any] | None = None

    def model_for(self, num_classes: int, dataset: str) -> nn.Module:
        """The model with its weights, after checking that it predicts the dataset's ``num_classes``.

        Raises:
            CheckpointError: Naming the model and its file, on a class-count mismatch or weights that do
                not fit the model.
        """
        model = self.build()
        if model.num_classes != num_classes:
            raise CheckpointError(
                f"model {self.name!r} ({self.path}) predicts {model.num_classes} classes but dataset "
                f"'{dataset}' has {num_classes}; evaluate it on the dataset it was trained on "
                "or override the model's and the dataset's classes together"
            )
        if self.weights is not None:
            try:
                model.load_state_dict(self.weights)
            except RuntimeError as error:
                raise CheckpointError(
                    f"model {self.name!r} ({self.path}): its weights do not fit the model its config describes "
                    f"({self.config.model._target_}): {str(error).splitlines()[0]} ..."
                ) from error
        return model


def training_method(config: DictConfig) -> str:
    """The report's row name: ``standard``, or the training attack and its steps such as ``EroSeg3-AT``."""
    attack = config.get("attack")
    if not isinstance(attack, DictConfig) or "_target_" not in attack:
        return "standard"
    name = str(attack._target_).rsplit(".", 1)[-1]
    adversarial = config.get("adversarial") or {}
    steps = adversarial.get("attack_steps") or attack.get("steps")
    objective = adversarial.get("objective", "clean_plus_adv")
    suffix = "" if objective == "clean_plus_adv" else f" ({objective})"
    return f"{name}{steps}-AT{suffix}"


def checkpoint_to_evaluate(path: Path, cfg: DictConfig) -> ModelToEvaluate:
    """A training checkpoint, with the evaluation's dataset / model overrides merged onto its stored config.

    Raises:
        CheckpointError: Naming the file, when it cannot be loaded.
    """
    checkpoint = load_checkpoint(path)
    overrides = {
        "dataset": OmegaConf.to_container(cfg.dataset, resolve=True),
        "model": OmegaConf.to_container(cfg.model, resolve=True),
    }
    config = OmegaConf.merge(checkpoint.config, overrides)
    return ModelToEvaluate(
        name=path.name,
        path=path,
        sha256=checkpoint.sha256,
        method=training_method(config),
        config=config,
        build=lambda: build(config.model),
        weights=checkpoint.model_state,
        training=OmegaConf.to_container(config, resolve=True),
    )


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; use device=cpu or auto")
    return torch.device(device)


def scores(confusion: torch.Tensor) -> dict[str, Any]:
    """The score fields of a row, from per-image confusion matrices ``[N, C, C]``."""
    summed = scores_from_confusion_matrix(confusion.sum(0))
    return {
        "miou": float(summed.miou),
        "pixel_accuracy": float(summed.pixel_accuracy),
        "iou_per_class": tuple(float(v) for v in summed.iou_per_class),
        "per_image_pixel_accuracy": tuple(pixel_accuracy_per_image(confusion).tolist()),
    }


def attack_parameters(attack: Any) -> dict[str, Any]:
    """Every attribute of ``attack`` as built, in JSON types."""
    return {
        key: (value.tolist() if isinstance(value, torch.Tensor) else value)
        for key, value in vars(attack).items()
    }


class Evaluator:
    """Attacks one model on its evaluation batches and keeps per-image confusion matrices."""

    def __init__(self, cfg: DictConfig, progress: Progress, task: Any) -> None:
        self.cfg = cfg
        self.device = resolve_device(str(cfg.device))
        precision = str(cfg.precision)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.autocast_dtype = PRECISIONS[precision]
        self.progress = progress
        self.task = task

    def autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def batches(self, loader: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in islice(loader, self.cfg.max_batches):
            yield images.to(self.device), labels.to(self.device)

    def predict(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self.autocast():
            return predicted_classes(model(images))

    def confusion(
        self, model: nn.Module, loader: Any, num_classes: int, ignore_index: int, attack: Any = None
    ) -> torch.Tensor:
        """Per-image confusion matrices over the evaluated batches, clean (``attack`` None) or attacked.

        Shape:
            output: ``[N, C, C]`` int64 on the CPU.
        """
        matrices = []
        for images, labels in self.batches(loader):
            if attack is not None:
                with self.autocast():
                    images = attack(model, images, labels)
            matrices.append(
                per_image_confusion_matrices(self.predict(model, images), labels, num_classes, ignore_index)
            )
            self.progress.advance(self.task)
        return torch.cat(matrices)

    def evaluate_model(
        self, entry: ModelToEvaluate, runs: list[AttackRun], members: list[str]
    ) -> ModelReport:
        cfg = self.cfg
        datamodule = build(entry.config.dataset)
        model = FullResolutionModel(
            entry.model_for(datamodule.num_classes, datamodule.name),
            pad_mode=cfg.inference.pad_mode,
            window=cfg.inference.window,
            stride=cfg.inference.stride,
        ).to(self.device)
        model.eval()
        loader = datamodule.full_resolution_dataloader()
        num_classes, ignore_index = datamodule.num_classes, datamodule.ignore_index
        facts = DatasetFacts(ignore_index, datamodule.background_class, datamodule.class_frequencies)
        L.seed_everything(cfg.seed, verbose=False)
        started = time.perf_counter()
        clean = self.confusion(model, loader, num_classes, ignore_index)
        rows = [
            ResultRow(
                kind="clean",
                key="clean",
                label="clean",
                eps=0.0,
                eps_text="0",
                seconds=time.perf_counter() - started,
                **scores(clean),
            )
        ]
        evaluated = [index for batch in islice(loader.batch_sampler, cfg.max_batches) for index in batch]
        attacked: dict[tuple[str, str], torch.Tensor] = {}
        for run in runs:
            attack = build_run_attack(run, facts)
            # Reseeded per run, so each run's random starts do not depend on which runs came before it.
            L.seed_everything(cfg.seed, verbose=False)
            started = time.perf_counter()
            confusion = self.confusion(model, loader, num_classes, ignore_index, attack)
            rows.append(
                ResultRow(
                    kind=run.kind,
                    key=run.key,
                    label=run.label,
                    eps=run.eps,
                    eps_text=run.eps_text,
                    seconds=time.perf_counter() - started,
                    attack=run.attack,
                    norm=attack.norm,
                    steps=attack.steps,
                    parameters=attack_parameters(attack),
                    **scores(confusion),
                )
            )
            if run.kind == "attack" and run.key in members:
                attacked[(run.eps_text, run.key)] = confusion
        rows.extend(self.worst_case_rows(runs, members, clean, attacked))
        return ModelReport(
            name=entry.name,
            path=entry.path,
            sha256=entry.sha256,
            method=entry.method,
            dataset=str(datamodule.name),
            class_names=tuple(datamodule.class_names),
            palette=palette_tuple(datamodule.palette),
            ignore_index=ignore_index,
            image_names=tuple(datamodule.source("val").sample_name(index) for index in evaluated),
            rows=tuple(rows),
            training=entry.training,
            example=self.example(model, loader, runs, rows, facts),
        )

    def worst_case_rows(
        self, runs: list[AttackRun], members: list[str], clean: torch.Tensor, attacked: dict
    ) -> list[ResultRow]:
        """Per budget, the worst case over the clean image (δ = 0 is in the threat model) and the members."""
        rows = []
        for budget in dict.fromkeys(run.eps_text for run in runs if run.kind == "attack"):
            keys = [key for key in members if (budget, key) in attacked]
            if not keys:
                continue
            stacked = torch.stack([clean, *(attacked[(budget, key)] for key in keys)])
            result = worst_case(stacked, self.cfg.worst_case_rounds)
            names = ["clean", *keys]
            miou_scores = scores(stacked[result.miou_choice, torch.arange(stacked.shape[1])])
            accuracy_scores = scores(stacked[result.accuracy_choice, torch.arange(stacked.shape[1])])
            rows.append(
                ResultRow(
                    kind="worst_case",
                    key="worst_case",
                    label="worst case",
                    eps=next(run.eps for run in runs if run.eps_text == budget),
                    eps_text=budget,
                    miou=miou_scores["miou"],
                    iou_per_class=miou_scores["iou_per_class"],
                    # Pixel accuracy decomposes over images, so its worst case is the per-image minimum.
                    pixel_accuracy=accuracy_scores["pixel_accuracy"],
                    per_image_pixel_accuracy=accuracy_scores["per_image_pixel_accuracy"],
                    worst_case=WorstCaseChoice(
                        members=tuple(names),
                        greedy_rounds=result.rounds,
                        miou_choice=tuple(names[i] for i in result.miou_choice.tolist()),
                        accuracy_choice=tuple(names[i] for i in result.accuracy_choice.tolist()),
                    ),
                )
            )
        return rows

    def example(
        self, model: nn.Module, loader: Any, runs: list[AttackRun], rows: list[ResultRow], facts: DatasetFacts
    ) -> Example | None:
        """The first images under the suite attack of lowest mIoU at the largest budget (rerun on them)."""
        count = int(self.cfg.example_images)
        candidates = [row for row in rows if row.kind == "attack"]
        if count <= 0 or not candidates:
            return None
        largest = max(row.eps for row in candidates)
        strongest = min((row for row in candidates if row.eps == largest), key=lambda row: row.miou)
        run = next(run for run in runs if run.key == strongest.key and run.eps_text == strongest.eps_text)
        images, labels = next(self.batches(loader))
        images, labels = images[:count], labels[:count]
        attack = build_run_attack(run, facts)
        L.seed_everything(self.cfg.seed, verbose=False)
        with self.autocast():
            adversarial = attack(model, images, labels)
        return Example(
            attack_label=run.label,
            eps_text=run.eps_text,
            clean=images.cpu(),
            adversarial=adversarial.detach().cpu(),
            labels=labels.cpu(),
            clean_prediction=self.predict(model, images).cpu(),
            adversarial_prediction=self.predict(model, adversarial).cpu(),
        )


def batches_per_pass(cfg: DictConfig, entry: ModelToEvaluate) -> int:
    """Evaluation batches one pass over ``entry``'s dataset takes (for the progress bar's total)."""
    total = len(instantiate(entry.config.dataset).full_resolution_dataloader())
    return total if cfg.max_batches is None else min(total, int(cfg.max_batches))


def models_to_evaluate(cfg: DictConfig) -> list[ModelToEvaluate]:
    """The checkpoints matched by ``cfg.ckpt_path``, each with its merged config."""
    return [checkpoint_to_evaluate(path, cfg) for path in resolve_checkpoint_paths(str(cfg.ckpt_path))]


def evaluate_models(cfg: DictConfig) -> list[ModelReport]:
    """Per model named by ``cfg``, the clean, attacked and worst-case scores."""
    entries = models_to_evaluate(cfg)
    suite = OmegaConf.to_container(cfg.suite, resolve=True)
    runs = expand_suite(suite, list(cfg.eps or []))
    members = worst_case_members(suite)
    passes = 1 + len(runs)
    total = sum(batches_per_pass(cfg, entry) * passes for entry in entries)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns) as progress:
        task = progress.add_task(f"{len(entries)} model(s) x {passes} runs x batches", total=total)
        evaluator = Evaluator(cfg, progress, task)
        return [evaluator.evaluate_model(entry, runs, members) for entry in entries]
