"""The attack loop of an evaluation: one model, its evaluation images, every run of a suite, the worst cases.

:func:`evaluate_models` turns the models named by ``cfg`` (training checkpoints, or a model config option such
as ``model=torchvision``) into :class:`~eroseg_at.evaluation.results.ModelReport` objects; ``evaluate(cfg)``
(:mod:`eroseg_at.evaluation.runner`) writes them to files. :func:`evaluate_model` is the same for a model
and data given in Python.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import lightning as L
import torch
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

from eroseg_at.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint_paths
from eroseg_at.configs import build, compose_config
from eroseg_at.evaluation.data import EvaluationData, batch_count, from_datamodule
from eroseg_at.evaluation.inference import full_resolution
from eroseg_at.evaluation.results import Example, ModelReport, ResultRow, WorstCaseChoice
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
# Model-config keys that only initialise weights before training (a pretrained file, an encoder file, an SMP
# tag that would download): a training checkpoint's own weights replace them, so evaluating the checkpoint
# builds the architecture without them and needs neither the files nor the network.
INITIAL_WEIGHT_KEYS = ("weights", "encoder_weights", "encoder_weights_path")


@dataclass(frozen=True)
class ModelToEvaluate:
    """A model the evaluation attacks, however it was obtained.

    Attributes:
        name: How the report names it.
        path: Its file; None for a model given in memory.
        sha256: Hex SHA-256 of its weights.
        method: Its training method (``standard``, ``EroSeg3-AT``, ...), or its source for a user's model.
        dataset: The config of the dataset it is evaluated on.
        build: Returns the model (images in [0, 1] to logits, ``num_classes``, ``input_divisor``).
        weights: A state dict loaded into the built model once its classes are checked against the dataset
            (a training checkpoint's); None where ``build`` gives the weights.
        training: The training run's config, if it comes from a training checkpoint.
    """

    name: str
    path: Path | None
    sha256: str
    method: str
    dataset: DictConfig
    build: Callable[[], nn.Module]
    weights: dict[str, torch.Tensor] | None = None
    training: dict[str, Any] | None = None

    def model_for(self, data: EvaluationData) -> nn.Module:
        """The model with its weights, after checking that it predicts ``data``'s classes.

        Raises:
            CheckpointError: Naming the model and its file, on a class-count mismatch or weights that do
                not fit the model.
        """
        model = self.build()
        if model.num_classes != data.num_classes:
            raise CheckpointError(
                f"model {self.name!r} ({self.path}) predicts {model.num_classes} classes but dataset "
                f"'{data.name}' has {data.num_classes}; evaluate it on the dataset it was trained on "
                "or override the model's and the dataset's classes together"
            )
        if self.weights is not None:
            try:
                model.load_state_dict(self.weights)
            except RuntimeError as error:
                raise CheckpointError(
                    f"model {self.name!r} ({self.path}): its weights do not fit the model its config "
                    f"describes: {str(error).splitlines()[0]} ..."
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
    """A training checkpoint, with the evaluation's dataset / model settings merged onto its stored config.

    Raises:
        CheckpointError: Naming the file, when it cannot be loaded.
    """
    checkpoint = load_checkpoint(path)
    overrides = {
        "dataset": OmegaConf.to_container(cfg.dataset, resolve=True),
        "model": OmegaConf.to_container(cfg.model, resolve=True),
    }
    config = OmegaConf.merge(checkpoint.config, overrides)
    architecture = OmegaConf.merge(
        config.model, {key: None for key in INITIAL_WEIGHT_KEYS if key in config.model}
    )
    return ModelToEvaluate(
        name=path.name,
        path=path,
        sha256=checkpoint.sha256,
        method=training_method(config),
        dataset=config.dataset,
        build=lambda: build(architecture),
        weights=checkpoint.model_state,
        training=OmegaConf.to_container(config, resolve=True),
    )


def source_to_evaluate(cfg: DictConfig) -> ModelToEvaluate:
    """The model ``cfg.model`` builds (``model=torchvision``, ``huggingface``, ``torchscript``, ``smp``, ...)."""
    return model_to_evaluate(build(cfg.model), cfg.dataset)


def model_to_evaluate(model: nn.Module, dataset: DictConfig) -> ModelToEvaluate:
    """A built model, named by its source (``model.source_info``) where it has one.

    Its digest is that of the weights file (or model directory) it was read from, else of its state dict.
    """
    info = getattr(model, "source_info", None)
    path = Path(info.path) if info is not None and info.path else None
    return ModelToEvaluate(
        name=path.name if path is not None else (info.name if info is not None else type(model).__name__),
        path=path,
        sha256=info.sha256 if info is not None and info.sha256 else weights_sha256(model),
        method=f"{info.kind} {info.name}" if info is not None else type(model).__name__,
        dataset=dataset,
        build=lambda: model,
    )


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and bytes), for a model without a file."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}\0{tensor.dtype}\0{list(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


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
    """Attacks one model on its evaluation batches and keeps per-image confusion matrices.

    Args:
        cfg: The evaluation settings of ``conf/evaluate.yaml`` (device, precision, max_batches, inference,
            worst_case_rounds, example_images, seed).
        progress: Advanced by one per batch of every pass.
    """

    def __init__(self, cfg: DictConfig, progress: Callable[[], None] = lambda: None) -> None:
        self.cfg = cfg
        self.device = resolve_device(str(cfg.device))
        precision = str(cfg.precision)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.autocast_dtype = PRECISIONS[precision]
        self.progress = progress

    def autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def batches(self, data: EvaluationData) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in islice(data.loader, self.cfg.max_batches):
            yield images.to(self.device), labels.to(self.device)

    def predict(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self.autocast():
            return predicted_classes(model(images))

    def confusion(self, model: nn.Module, data: EvaluationData, attack: Any = None) -> torch.Tensor:
        """Per-image confusion matrices over the evaluated batches, clean (``attack`` None) or attacked.

        Shape:
            output: ``[N, C, C]`` int64 on the CPU.
        """
        matrices = []
        for images, labels in self.batches(data):
            if attack is not None:
                with self.autocast():
                    images = attack(model, images, labels)
            matrices.append(
                per_image_confusion_matrices(
                    self.predict(model, images), labels, data.num_classes, data.ignore_index
                )
            )
            self.progress()
        return torch.cat(matrices)

    def evaluate(
        self,
        network: nn.Module,
        data: EvaluationData,
        runs: Sequence[AttackRun],
        members: Sequence[str],
        entry: ModelToEvaluate,
    ) -> ModelReport:
        """Every run of the suite on ``network``, and the worst case per budget, as ``entry``'s report."""
        cfg = self.cfg
        model = full_resolution(
            network, pad_mode=cfg.inference.pad_mode, window=cfg.inference.window, stride=cfg.inference.stride
        ).to(self.device)
        model.eval()
        facts = data.facts()
        L.seed_everything(cfg.seed, verbose=False)
        started = time.perf_counter()
        clean = self.confusion(model, data)
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
        attacked: dict[tuple[str, str], torch.Tensor] = {}
        for run in runs:
            attack = build_run_attack(run, facts)
            # Reseeded per run, so each run's random starts do not depend on which runs came before it.
            L.seed_everything(cfg.seed, verbose=False)
            started = time.perf_counter()
            confusion = self.confusion(model, data, attack)
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
        info = getattr(network, "source_info", None)
        return ModelReport(
            name=entry.name,
            path=entry.path,
            sha256=entry.sha256,
            method=entry.method,
            dataset=data.name,
            class_names=tuple(data.class_names),
            palette=data.colours(),
            ignore_index=data.ignore_index,
            image_names=tuple(data.image_name(index) for index in range(clean.shape[0])),
            rows=tuple(rows),
            training=entry.training,
            source=asdict(info) if info is not None else {"kind": "module", "name": type(network).__name__},
            example=self.example(model, data, runs, rows),
        )

    def worst_case_rows(
        self, runs: Sequence[AttackRun], members: Sequence[str], clean: torch.Tensor, attacked: dict
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
        self, model: nn.Module, data: EvaluationData, runs: Sequence[AttackRun], rows: Sequence[ResultRow]
    ) -> Example | None:
        """The first images under the suite attack of lowest mIoU at the largest budget (rerun on them)."""
        count = int(self.cfg.example_images)
        candidates = [row for row in rows if row.kind == "attack"]
        if count <= 0 or not candidates:
            return None
        largest = max(row.eps for row in candidates)
        strongest = min((row for row in candidates if row.eps == largest), key=lambda row: row.miou)
        run = next(run for run in runs if run.key == strongest.key and run.eps_text == strongest.eps_text)
        images, labels = next(self.batches(data))
        images, labels = images[:count], labels[:count]
        attack = build_run_attack(run, data.facts())
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


def models_to_evaluate(cfg: DictConfig) -> list[ModelToEvaluate]:
    """The checkpoints matched by ``cfg.ckpt_path``, or else the model the ``model`` option builds.

    Raises:
        ValueError: If ``cfg`` names neither.
    """
    if cfg.get("ckpt_path"):
        return [checkpoint_to_evaluate(path, cfg) for path in resolve_checkpoint_paths(str(cfg.ckpt_path))]
    if "_target_" in cfg.model:
        if "_target_" not in cfg.dataset:
            raise ValueError(
                f"model={cfg.model._target_} is evaluated on a dataset option: add dataset=<name> "
                "(shapes, voc, cityscapes, ade20k, folder) and its dataset.root"
            )
        return [source_to_evaluate(cfg)]
    raise ValueError(
        "nothing to evaluate: give ckpt_path=<training checkpoint or glob>, or a model option such as "
        "model=torchvision model.name=lraspp_mobilenet_v3_large model.weights=FILE dataset=voc"
    )


def evaluate_models(cfg: DictConfig) -> list[ModelReport]:
    """Per model named by ``cfg``, the clean, attacked and worst-case scores."""
    entries = models_to_evaluate(cfg)
    suite = OmegaConf.to_container(cfg.suite, resolve=True)
    runs = expand_suite(suite, list(cfg.eps or []))
    members = worst_case_members(suite)
    datasets = [from_datamodule(build(entry.dataset)) for entry in entries]
    passes = 1 + len(runs)
    counts = [batch_count(data, cfg.max_batches) for data in datasets]
    total = None if None in counts else sum(count * passes for count in counts)
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
        evaluator = Evaluator(cfg, lambda: progress.advance(task))
        return [
            evaluator.evaluate(entry.model_for(data), data, runs, members, entry)
            for entry, data in zip(entries, datasets, strict=True)
        ]


def evaluate_model(
    model: nn.Module, data: EvaluationData, suite: str = "paper", overrides: Sequence[str] = ()
) -> ModelReport:
    """The robustness report of any model on any data, as ``evaluate.py`` computes it (Python API).

    Args:
        model: Follows the model contract (images in [0, 1] to logits at the input size, ``num_classes``,
            ``input_divisor``; normalisation inside): a model of :mod:`eroseg_at.models`, or any network
            adapted with :func:`eroseg_at.models.adapt_model`.
        data: The images and the facts of their dataset (:class:`~eroseg_at.evaluation.data.EvaluationData`).
        suite: A ``conf/suite`` option (``quick``, ``paper``, ``sea``, ``full``, ``strength``).
        overrides: Further settings of ``conf/evaluate.yaml`` as on the command line, e.g.
            ``["eps=[4/255]", "suite.steps=100", "device=cpu", "max_batches=2"]``.

    Returns:
        The report: one row per clean pass, attack, curve point and worst case (the rows ``results.json``
        holds for ``evaluate.py``).
    """
    cfg = compose_config("evaluate", [f"suite={suite}", "output_dir=unused", *overrides])
    suite_spec = OmegaConf.to_container(cfg.suite, resolve=True)
    runs = expand_suite(suite_spec, list(cfg.eps or []))
    entry = model_to_evaluate(model, OmegaConf.create({}))
    return Evaluator(cfg).evaluate(entry.model_for(data), data, runs, worst_case_members(suite_spec), entry)
