"""The attack loop of an evaluation: one model, its evaluation images, every run of a suite, the worst cases.

:func:`evaluate_models` turns the models named by ``cfg`` (training checkpoints, or a model config option such
as ``model=torchvision``) into :class:`~eroseg_at.evaluation.results.ModelReport` objects; ``evaluate(cfg)``
(:mod:`eroseg_at.evaluation.runner`) writes them to files. :func:`evaluate_model` is the same for a model
and data given in Python (one process, no cache).

A model's passes (the clean one, then every suite run) run one after another; the batches of each are shared
among the processes (:mod:`~eroseg_at.evaluation.distributed`): of the batches still missing, rank r takes
every W-th from the r-th. A batch's random start is drawn from the global generator seeded with a function of
(``seed``, the run, the batch index) just before it is attacked, so each batch draws the same noise whichever
process attacks it and whatever ran before; rank 0 gathers the per-image statistics and puts them back in
batch order. The report, the worst case and every per-image list are therefore those of one process on the
same images (on the CPU exactly; CUDA kernels that are not deterministic, such as the backward of bilinear
upsampling, differ from run to run anyway).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from itertools import accumulate, islice
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from eroseg_at.attacks.base import Attack
from eroseg_at.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint_paths
from eroseg_at.configs import build, compose_config
from eroseg_at.evaluation.cache import CACHE_FORMAT, MemberCache, MemberKey, MemberStatistics, code_version
from eroseg_at.evaluation.data import EvaluationData, from_datamodule
from eroseg_at.evaluation.distributed import Processes, start_processes
from eroseg_at.evaluation.inference import full_resolution
from eroseg_at.evaluation.results import Example, ModelReport, ResultRow, WorstCaseChoice
from eroseg_at.evaluation.suite import AttackRun, build_run_attack, expand_suite, worst_case_members
from eroseg_at.evaluation.worst_case import (
    per_image_statistics,
    pixel_accuracy,
    scores_from_statistics,
    select,
    worst_case,
)
from eroseg_at.predictions import predicted_classes
from eroseg_at.progress import Progress

# fp16 is left out: autograd.grad is not loss-scaled, so input gradients would underflow.
PRECISIONS = {"32": None, "bf16": torch.bfloat16}
# Model-config keys that only initialise weights before training (a pretrained file, an encoder file, an SMP
# tag that would download): a training checkpoint's own weights replace them, so evaluating the checkpoint
# builds the architecture without them and needs neither the files nor the network.
INITIAL_WEIGHT_KEYS = ("weights", "encoder_weights", "encoder_weights_path")
# Dataset-config keys that change how fast images are read, never which images or their pixels: left out of
# the cache key.
NOT_DATA_KEYS = ("num_workers",)


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


def statistics_scores(statistics: torch.Tensor) -> dict[str, Any]:
    """The score fields of a row, from per-image statistics ``[N, 3, C]``."""
    summed = scores_from_statistics(statistics.sum(0))
    return {
        "miou": float(summed.miou),
        "pixel_accuracy": float(summed.pixel_accuracy),
        "iou_per_class": tuple(float(v) for v in summed.iou_per_class),
        "per_image_pixel_accuracy": tuple(pixel_accuracy(statistics).tolist()),
    }


def attack_parameters(attack: Any) -> dict[str, Any]:
    """Every attribute of ``attack`` as built, in JSON types."""
    return {
        key: (value.tolist() if isinstance(value, torch.Tensor) else value)
        for key, value in vars(attack).items()
    }


def batch_seed(seed: int, run: AttackRun, batch: int) -> int:
    """The random-start seed of one batch of one run, whichever process attacks it and whatever ran before."""
    text = json.dumps([int(seed), run.key, run.eps_text, int(batch)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


@dataclass(frozen=True)
class Pass:
    """One pass over the evaluated images, the clean one (``run`` None) or a suite run, and what is left of it.

    Attributes:
        run: The suite run; None for the clean pass.
        attack: The run's attack as built; None for the clean pass and for a pass finished in the cache.
        key: Its cache key; None without a cache.
        finished: Whether the cache holds it finished (as rank 0 sees the cache).
        done: Batches an interrupted run finished (rank 0's view), read from the cache instead of computed.
    """

    run: AttackRun | None
    attack: Attack | None = None
    key: MemberKey | None = None
    finished: bool = False
    done: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return "clean" if self.run is None else f"{self.run.label} @{self.run.eps_text}"

    @property
    def passes_per_image(self) -> int:
        """Model evaluations per image, for the ETA: the attack's gradient steps and the final prediction."""
        return 1 if self.attack is None else self.attack.steps + 1


@dataclass(frozen=True)
class ModelPlan:
    """The passes of one model, and its evaluated batches (None where the loader's batches are not known)."""

    passes: tuple[Pass, ...]
    batches: tuple[int, ...] | None


class Evaluator:
    """Attacks one model on its evaluation batches and keeps per-image statistics.

    Args:
        cfg: The evaluation settings of ``conf/evaluate.yaml`` (precision, max_batches, inference, compile,
            worst_case_rounds, example_images, seed).
        processes: This process's share of the work (:func:`~eroseg_at.evaluation.distributed.start_processes`).
        cache: Where finished passes and batches are kept and found; None computes everything.
        progress: Told of every batch (rank 0's); None reports nothing.
    """

    def __init__(
        self,
        cfg: DictConfig,
        processes: Processes,
        cache: MemberCache | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.cfg = cfg
        self.processes = processes
        self.device = processes.device
        precision = str(cfg.precision)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.autocast_dtype = PRECISIONS[precision]
        self.cache = cache
        self.progress = progress

    def autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def predict(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self.autocast():
            return predicted_classes(model(images))

    def prepare(self, network: nn.Module) -> nn.Module:
        """The module attacks and metrics call: full-resolution inference on the device, compiled if asked."""
        cfg = self.cfg
        model = full_resolution(
            network, pad_mode=cfg.inference.pad_mode, window=cfg.inference.window, stride=cfg.inference.stride
        ).to(self.device)
        model.eval()
        if not cfg.compile.enabled:
            return model
        # Attacks call the module (forward); RP-PGD's logits_and_features reaches the eager module through it.
        return torch.compile(model, **OmegaConf.to_container(cfg.compile.options, resolve=True))

    def batch_indices(self, data: EvaluationData) -> tuple[int, ...] | None:
        """The evaluated batches (the first ``max_batches``), or None where the loader's batches are unknown."""
        if data.batch_sizes is None:
            return None
        count = len(data.batch_sizes)
        if self.cfg.max_batches is not None:
            count = min(count, int(self.cfg.max_batches))
        return tuple(range(count))

    def plan(self, entry: ModelToEvaluate, data: EvaluationData, runs: Sequence[AttackRun]) -> ModelPlan:
        """The clean pass and every run of ``entry``, with what the cache already holds of each."""
        batches = self.batch_indices(data)
        if batches is None and (self.cache is not None or self.processes.world_size > 1):
            raise ValueError(
                f"dataset {data.name}: sharing batches among processes and caching results need "
                "EvaluationData.batch_sizes (the images of each batch, known before the loader runs)"
            )
        facts = data.facts()
        attacks = [None, *(build_run_attack(run, facts) for run in runs)]
        if self.cache is None:
            return ModelPlan(
                tuple(Pass(run, attack) for run, attack in zip([None, *runs], attacks, strict=True)), batches
            )
        keys = [self.member_key(entry, data, batches, run) for run in [None, *runs]]
        cache = self.cache
        states = self.processes.on_main(
            lambda: [(cache.finished(key), tuple(cache.finished_batches(key))) for key in keys]
        )
        passes = tuple(
            Pass(run, None if finished else attack, key, finished, done)
            for run, attack, key, (finished, done) in zip([None, *runs], attacks, keys, states, strict=True)
        )
        return ModelPlan(passes, batches)

    def member_key(
        self, entry: ModelToEvaluate, data: EvaluationData, batches: Sequence[int], run: AttackRun | None
    ) -> MemberKey:
        """Everything the statistics of ``run`` (None: the clean pass) on ``entry`` depend on."""
        cfg = self.cfg
        dataset = OmegaConf.to_container(entry.dataset, resolve=True)
        for key in NOT_DATA_KEYS:
            dataset.pop(key, None)
        starts = [0, *accumulate(data.batch_sizes)]
        images = [[data.image_name(i) for i in range(starts[b], starts[b + 1])] for b in batches]
        member = (
            {"kind": "clean"}
            if run is None
            else {
                "kind": run.kind,
                "key": run.key,
                "attack": run.attack,
                "eps_text": run.eps_text,
                "eps": run.eps,
                "params": dict(run.params),
            }
        )
        return MemberKey(
            {
                "format": CACHE_FORMAT,
                "code": code_version(),
                "torch": str(torch.__version__),
                "model": entry.sha256,
                "dataset": dataset,
                "images": hashlib.sha256(json.dumps(images).encode()).hexdigest(),
                "member": member,
                "evaluation": {
                    "seed": int(cfg.seed),
                    "precision": str(cfg.precision),
                    "inference": OmegaConf.to_container(cfg.inference, resolve=True),
                    "compile": OmegaConf.to_container(cfg.compile, resolve=True),
                    "device": self.device.type,
                },
            }
        )

    def share(self, plan: ModelPlan, item: Pass) -> list[int] | None:
        """This process's batches of ``item``: of those still missing, every W-th from the rank-th."""
        if plan.batches is None:
            return None
        todo = [batch for batch in plan.batches if batch not in item.done]
        return todo[self.processes.rank :: self.processes.world_size]

    def work(self, data: EvaluationData, plan: ModelPlan) -> float:
        """Model evaluations left to this process (images x passes per image), for the ETA."""
        sizes = data.batch_sizes
        return float(
            sum(
                sum(sizes[batch] for batch in self.share(plan, item)) * item.passes_per_image
                for item in plan.passes
                if not item.finished
            )
        )

    def batch_statistics(
        self, model: nn.Module, data: EvaluationData, item: Pass, index: int, images, labels
    ) -> torch.Tensor:
        images, labels = images.to(self.device), labels.to(self.device)
        if item.attack is not None:
            # The global generator, seeded per batch: the same noise whichever process draws it.
            torch.manual_seed(batch_seed(self.cfg.seed, item.run, index))
            with self.autocast():
                images = item.attack(model, images, labels)
        return per_image_statistics(self.predict(model, images), labels, data.num_classes, data.ignore_index)

    def run_pass(self, model: nn.Module, data: EvaluationData, plan: ModelPlan, item: Pass, where: str):
        """``item``'s statistics on rank 0 (None on the others): read from the cache, or computed and kept."""
        processes = self.processes
        if item.finished:
            return self.cache.member(item.key) if processes.is_main else None
        mine = self.share(plan, item)
        batches = data.batches(mine)
        if mine is None:
            batches = islice(batches, self.cfg.max_batches)
        share_images = None if mine is None else sum(data.batch_sizes[batch] for batch in mine)
        suffix = f" on rank 0 of {processes.world_size}" if processes.world_size > 1 else ""
        started = time.perf_counter()
        computed: dict[int, torch.Tensor] = {}
        images_done = 0
        for count, (index, (images, labels)) in enumerate(batches, 1):
            statistics = self.batch_statistics(model, data, item, index, images, labels)
            computed[index] = statistics
            if self.cache is not None:
                self.cache.store_batch(item.key, index, statistics)
            images_done += statistics.shape[0]
            if self.progress is not None:
                self.progress.update(
                    f"{where}, batch {count}/{'?' if mine is None else len(mine)} "
                    f"(images {images_done}/{'?' if share_images is None else share_images}){suffix}",
                    advance=statistics.shape[0] * item.passes_per_image,
                )
        gathered = processes.gather(computed)
        if not processes.is_main:
            return None
        resumed = {batch: self.cache.batch(item.key, batch) for batch in item.done}
        merged = dict(resumed)
        for part in gathered:
            merged.update(part)
        order = plan.batches if plan.batches is not None else sorted(merged)
        attack = item.attack
        result = MemberStatistics(
            statistics=torch.cat([merged[batch] for batch in order]),
            seconds=time.perf_counter() - started,
            computed_images=sum(value.shape[0] for part in gathered for value in part.values()),
            resumed_images=sum(value.shape[0] for value in resumed.values()),
            attack={}
            if attack is None
            else {"norm": attack.norm, "steps": attack.steps, "parameters": attack_parameters(attack)},
        )
        if self.cache is not None:
            self.cache.store(item.key, result)
        return result

    def evaluate(
        self,
        network: nn.Module,
        data: EvaluationData,
        plan: ModelPlan,
        members: Sequence[str],
        entry: ModelToEvaluate,
        position: tuple[int, int] = (1, 1),
    ) -> ModelReport | None:
        """Every pass of ``plan`` on ``network``, and the worst case per budget, as ``entry``'s report.

        Returns:
            The report on rank 0; None on the other processes, which only compute their share.
        """
        model = self.prepare(network)
        results = [
            self.run_pass(
                model,
                data,
                plan,
                item,
                f"model {position[0]}/{position[1]} {entry.name}, run {index}/{len(plan.passes)} {item.name}",
            )
            for index, item in enumerate(plan.passes, 1)
        ]
        if not self.processes.is_main:
            return None
        rows = [pass_row(item, result) for item, result in zip(plan.passes, results, strict=True)]
        clean, *attacked = results
        runs = [item.run for item in plan.passes[1:]]
        member_statistics = {
            (run.eps_text, run.key): result.statistics
            for run, result in zip(runs, attacked, strict=True)
            if run.kind == "attack" and run.key in members
        }
        rows.extend(self.worst_case_rows(runs, members, clean.statistics, member_statistics))
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
            image_names=tuple(data.image_name(index) for index in range(clean.statistics.shape[0])),
            rows=tuple(rows),
            training=entry.training,
            source=asdict(info) if info is not None else {"kind": "module", "name": type(network).__name__},
            example=self.example(model, data, runs, rows),
        )

    def worst_case_rows(
        self,
        runs: Sequence[AttackRun],
        members: Sequence[str],
        clean: torch.Tensor,
        attacked: dict[tuple[str, str], torch.Tensor],
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
            miou_scores = statistics_scores(select(stacked, result.miou_choice))
            accuracy_scores = statistics_scores(select(stacked, result.accuracy_choice))
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
        _, (images, labels) = next(data.batches([0]))
        images, labels = images[:count].to(self.device), labels[:count].to(self.device)
        attack = build_run_attack(run, data.facts())
        torch.manual_seed(batch_seed(self.cfg.seed, run, 0))
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


def pass_row(item: Pass, result: MemberStatistics) -> ResultRow:
    """The report row of a finished pass."""
    common = {
        "seconds": result.seconds,
        "cached": result.cached,
        "resumed_images": result.resumed_images,
        **statistics_scores(result.statistics),
    }
    run = item.run
    if run is None:
        return ResultRow(kind="clean", key="clean", label="clean", eps=0.0, eps_text="0", **common)
    steps = result.attack["steps"]
    throughput = (
        result.computed_images * steps / result.seconds
        if result.computed_images and result.seconds > 0
        else None
    )
    return ResultRow(
        kind=run.kind,
        key=run.key,
        label=run.label,
        eps=run.eps,
        eps_text=run.eps_text,
        attack=run.attack,
        norm=result.attack["norm"],
        steps=steps,
        parameters=result.attack["parameters"],
        images_per_second_per_iteration=throughput,
        **common,
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


def evaluate_models(
    cfg: DictConfig, processes: Processes | None = None, cache: MemberCache | None = None
) -> list[ModelReport] | None:
    """Per model named by ``cfg``, the clean, attacked and worst-case scores.

    Args:
        cfg: A composed ``conf/evaluate.yaml``.
        processes: This process's place among the evaluation's processes; None: a single process.
        cache: Where finished passes are kept and found; None computes everything.

    Returns:
        The reports on rank 0; None on the other processes.
    """
    processes = processes or start_processes(cfg)
    entries = models_to_evaluate(cfg)
    suite = OmegaConf.to_container(cfg.suite, resolve=True)
    runs = expand_suite(suite, list(cfg.eps or []))
    members = worst_case_members(suite)
    datasets = [from_datamodule(build(entry.dataset)) for entry in entries]
    evaluator = Evaluator(cfg, processes, cache)
    plans = [evaluator.plan(entry, data, runs) for entry, data in zip(entries, datasets, strict=True)]
    work = sum(evaluator.work(data, plan) for data, plan in zip(datasets, plans, strict=True))
    # Rank 0 speaks for all: the others attack their shares at the same pace.
    stream = None if processes.is_main else io.StringIO()
    with Progress("evaluate", work, float(cfg.progress_interval_s), stream=stream) as progress:
        evaluator.progress = progress
        reports = [
            evaluator.evaluate(entry.model_for(data), data, plan, members, entry, (index, len(entries)))
            for index, (entry, data, plan) in enumerate(zip(entries, datasets, plans, strict=True), 1)
        ]
    return reports if processes.is_main else None


def evaluate_model(
    model: nn.Module, data: EvaluationData, suite: str = "paper", overrides: Sequence[str] = ()
) -> ModelReport:
    """The robustness report of any model on any data, as ``evaluate.py`` computes it (Python API).

    It runs in this process alone and keeps no cache.

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
    evaluator = Evaluator(cfg, start_processes(cfg))
    network = entry.model_for(data)
    return evaluator.evaluate(
        network, data, evaluator.plan(entry, data, runs), worst_case_members(suite_spec), entry
    )
