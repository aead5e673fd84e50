"""``evaluate(cfg)``: attack every checkpoint with every run of a suite and write the robustness report.

``evaluate.py`` is a thin ``@hydra.main`` over this function, so tests and ``scripts/reproduce.py`` call it
with a config from ``hydra.compose``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
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

from eroseg_at.attacks import DatasetFacts
from eroseg_at.evaluation.checkpoint import (
    CheckpointError,
    LoadedCheckpoint,
    load_checkpoint,
    resolve_checkpoint_paths,
)
from eroseg_at.evaluation.inference import FullResolutionModel
from eroseg_at.evaluation.suite import AttackRun, build_run_attack, expand_suite, worst_case_members
from eroseg_at.evaluation.worst_case import (
    per_image_confusion_matrices,
    pixel_accuracy_per_image,
    worst_case,
)
from eroseg_at.metrics import scores_from_confusion_matrix
from eroseg_at.predictions import predicted_classes
from eroseg_at.training.runner import build_model_from_config

# fp16 is left out: autograd.grad is not loss-scaled, so input gradients would underflow.
PRECISIONS = {"32": None, "bf16": torch.bfloat16}


@dataclass
class Example:
    """The first images of a checkpoint's validation set under its most damaging attack, for the grid.

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


@dataclass
class CheckpointReport:
    """Everything measured on one checkpoint: one row per clean / attack / worst-case evaluation."""

    path: Path
    sha256: str
    method: str
    dataset: str
    class_names: list[str]
    num_images: int
    training: dict[str, Any]
    # Evaluated images in the order of every per-image list (sample names: file paths or generator seeds).
    image_names: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    example: Example | None = None


def training_method(config: DictConfig) -> str:
    """The report's row name: ``standard``, or the training attack and its steps such as ``EroSeg3-AT``."""
    attack = config.get("attack")
    if not isinstance(attack, DictConfig) or "_target_" not in attack:
        return "standard"
    name = str(attack._target_).rsplit(".", 1)[-1]
    steps = config.get("schedule", {}).get("attack_steps") or attack.get("steps")
    objective = config.get("adversarial", {}).get("objective", "clean_plus_adv")
    suffix = "" if objective == "clean_plus_adv" else f" ({objective})"
    return f"{name}{steps}-AT{suffix}"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; use device=cpu or auto")
    return torch.device(device)


def merged_config(checkpoint: LoadedCheckpoint, cfg: DictConfig) -> DictConfig:
    """The checkpoint's training config with the evaluation's dataset / model overrides merged on top."""
    overrides = {
        "dataset": OmegaConf.to_container(cfg.dataset, resolve=True),
        "model": OmegaConf.to_container(cfg.model, resolve=True),
    }
    return OmegaConf.merge(checkpoint.config, overrides)


def build_evaluated_model(
    checkpoint: LoadedCheckpoint, config: DictConfig, datamodule: Any
) -> torch.nn.Module:
    """The checkpoint's ``SegmentationModel`` with its weights, after checking its classes against the data.

    Raises:
        CheckpointError: Naming the file, on a class-count mismatch or weights that do not fit the model.
    """
    model = build_model_from_config(config)
    if model.num_classes != datamodule.num_classes:
        raise CheckpointError(
            f"checkpoint {str(checkpoint.path)!r} predicts {model.num_classes} classes but dataset "
            f"'{datamodule.name}' has {datamodule.num_classes}; evaluate it on the dataset it was trained on "
            "or override model.num_classes and dataset together"
        )
    try:
        model.load_state_dict(checkpoint.model_state)
    except RuntimeError as error:
        raise CheckpointError(
            f"checkpoint {str(checkpoint.path)!r}: its weights do not fit model '{config.model.name}' "
            f"(encoder {config.model.encoder}, {model.num_classes} classes): {str(error).splitlines()[0]} ..."
        ) from error
    return model


def scores_row(confusion: torch.Tensor) -> dict[str, Any]:
    scores = scores_from_confusion_matrix(confusion)
    return {
        "miou": float(scores["miou"]),
        "pixel_accuracy": float(scores["pixel_accuracy"]),
        "iou_per_class": [float(v) for v in scores["iou_per_class"]],
    }


def run_row(run: AttackRun, attack: Any) -> dict[str, Any]:
    """Report fields of an attack run: the threat model and every attack parameter as built."""
    parameters = {
        key: (value.tolist() if isinstance(value, torch.Tensor) else value)
        for key, value in vars(attack).items()
    }
    return {
        "kind": run.kind,
        "key": run.key,
        "label": run.label,
        "attack": run.attack,
        "eps": run.eps,
        "eps_text": run.eps_text,
        "norm": getattr(attack, "norm", "linf"),
        "steps": getattr(attack, "steps", None),
        "parameters": parameters,
    }


class Evaluator:
    """Attacks one checkpoint's model on its validation batches and keeps per-image confusion matrices."""

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

    def predict(self, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self.autocast():
            return predicted_classes(model(images))

    def confusion(
        self, model: torch.nn.Module, loader: Any, num_classes: int, ignore_index: int, attack: Any = None
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

    def evaluate_checkpoint(self, path: Path, runs: list[AttackRun], members: list[str]) -> CheckpointReport:
        cfg = self.cfg
        checkpoint = load_checkpoint(path)
        config = merged_config(checkpoint, cfg)
        datamodule = instantiate(config.dataset)
        model = FullResolutionModel(
            build_evaluated_model(checkpoint, config, datamodule),
            pad_mode=cfg.inference.pad_mode,
            window=cfg.inference.window,
            stride=cfg.inference.stride,
        ).to(self.device)
        model.eval()
        loader = datamodule.full_resolution_dataloader()
        num_classes, ignore_index = datamodule.num_classes, datamodule.ignore_index
        facts = DatasetFacts(
            datamodule.ignore_index, datamodule.background_class, datamodule.class_frequencies
        )
        report = CheckpointReport(
            path=path,
            sha256=checkpoint.sha256,
            method=training_method(config),
            dataset=str(datamodule.name),
            class_names=list(datamodule.class_names),
            num_images=0,
            training=OmegaConf.to_container(config, resolve=True),
        )
        L.seed_everything(cfg.seed, verbose=False)
        started = time.perf_counter()
        clean = self.confusion(model, loader, num_classes, ignore_index)
        report.num_images = clean.shape[0]
        evaluated = [index for batch in islice(loader.batch_sampler, cfg.max_batches) for index in batch]
        report.image_names = [datamodule.source("val").sample_name(index) for index in evaluated]
        report.rows.append(
            {
                "kind": "clean",
                "key": "clean",
                "label": "clean",
                "eps": 0.0,
                "eps_text": "0",
                "seconds": time.perf_counter() - started,
                **scores_row(clean.sum(0)),
                "per_image_pixel_accuracy": pixel_accuracy_per_image(clean).tolist(),
            }
        )
        attacked: dict[tuple[str, str], torch.Tensor] = {}
        for run in runs:
            attack = build_run_attack(run, facts)
            # Reseeded per run, so each run's random starts do not depend on which runs came before it.
            L.seed_everything(cfg.seed, verbose=False)
            started = time.perf_counter()
            confusion = self.confusion(model, loader, num_classes, ignore_index, attack)
            row = run_row(run, attack)
            row.update(seconds=time.perf_counter() - started, **scores_row(confusion.sum(0)))
            row["per_image_pixel_accuracy"] = pixel_accuracy_per_image(confusion).tolist()
            report.rows.append(row)
            if run.kind == "attack" and run.key in members:
                attacked[(run.eps_text, run.key)] = confusion
        report.rows.extend(self.worst_case_rows(runs, members, clean, attacked))
        report.example = self.example(model, loader, runs, report.rows, facts)
        return report

    def worst_case_rows(
        self, runs: list[AttackRun], members: list[str], clean: torch.Tensor, attacked: dict
    ) -> list[dict[str, Any]]:
        """Per budget, the worst case over the clean image (δ = 0 is in the threat model) and the members."""
        rows = []
        for budget in dict.fromkeys(run.eps_text for run in runs if run.kind == "attack"):
            keys = [key for key in members if (budget, key) in attacked]
            if not keys:
                continue
            stacked = torch.stack([clean, *(attacked[(budget, key)] for key in keys)])
            result = worst_case(stacked, self.cfg.worst_case_rounds)
            names = ["clean", *keys]
            accuracy_scores = scores_from_confusion_matrix(result.accuracy_confusion)
            rows.append(
                {
                    "kind": "worst_case",
                    "key": "worst_case",
                    "label": "worst case",
                    "eps": next(run.eps for run in runs if run.eps_text == budget),
                    "eps_text": budget,
                    "members": names,
                    **scores_row(result.miou_confusion),
                    # Pixel accuracy decomposes over images, so its worst case is the per-image minimum.
                    "pixel_accuracy": float(accuracy_scores["pixel_accuracy"]),
                    "greedy_rounds": result.rounds,
                    "miou_choice": [names[i] for i in result.miou_choice.tolist()],
                    "accuracy_choice": [names[i] for i in result.accuracy_choice.tolist()],
                    "per_image_pixel_accuracy": pixel_accuracy_per_image(
                        stacked[result.accuracy_choice, torch.arange(stacked.shape[1])]
                    ).tolist(),
                }
            )
        return rows

    def example(
        self,
        model: torch.nn.Module,
        loader: Any,
        runs: list[AttackRun],
        rows: list[dict],
        facts: DatasetFacts,
    ) -> Example | None:
        """The first images under the suite attack of lowest mIoU at the largest budget (rerun on them)."""
        count = int(self.cfg.example_images)
        candidates = [row for row in rows if row["kind"] == "attack"]
        if count <= 0 or not candidates:
            return None
        largest = max(row["eps"] for row in candidates)
        strongest = min((row for row in candidates if row["eps"] == largest), key=lambda row: row["miou"])
        run = next(
            run for run in runs if run.key == strongest["key"] and run.eps_text == strongest["eps_text"]
        )
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


def batches_per_pass(cfg: DictConfig, path: Path) -> int:
    """Validation batches one pass over ``path``'s dataset takes (for the progress bar's total)."""
    checkpoint = load_checkpoint(path)
    datamodule = instantiate(merged_config(checkpoint, cfg).dataset)
    total = len(datamodule.full_resolution_dataloader())
    return total if cfg.max_batches is None else min(total, int(cfg.max_batches))


def evaluate_all(cfg: DictConfig) -> list[CheckpointReport]:
    """Per checkpoint matched by ``cfg.ckpt_path``, the clean, attacked and worst-case scores."""
    paths = resolve_checkpoint_paths(str(cfg.ckpt_path))
    suite = OmegaConf.to_container(cfg.suite, resolve=True)
    runs = expand_suite(suite, list(cfg.eps or []))
    members = worst_case_members(suite)
    passes = 1 + len(runs)
    total = sum(batches_per_pass(cfg, path) * passes for path in paths)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns) as progress:
        task = progress.add_task(f"{len(paths)} checkpoint(s) x {passes} runs x batches", total=total)
        evaluator = Evaluator(cfg, progress, task)
        return [evaluator.evaluate_checkpoint(path, runs, members) for path in paths]
