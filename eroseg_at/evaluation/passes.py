"""The pass runner: a model's per-image results over the evaluated batches, one pass after another, shared among
processes, seeded per batch, cached and resumable.

A pass is any per-image statistics producer (:class:`PassProducer`): a callable that maps a batch of images and
labels on the model to one row of results per image, with a name, a random stream, an identity for the cache key,
its cost per image and, optionally, a limit to the first batches. The clean pass (:class:`CleanPass`) and each
suite run (:class:`AttackPass`) are two such producers; a check that needs other numbers of the same images (a
black-box attack on a subset of the batches, a pass at a large budget, a count of vanishing input gradients) is
a third, and gets the sharing, seeding, caching, resuming and gathering below without any change here.

Of the batches still missing, rank r takes every W-th from the r-th. A batch's random start is drawn from the
global generator seeded with a function of (``seed``, the pass's stream, the batch index) just before it is
computed, so each batch draws the same noise whichever process computes it and whatever ran before; rank 0
gathers the per-image results and puts them back in batch order. The report, the worst case and every per-image
list are therefore those of one process on the same images (on the CPU exactly; CUDA kernels that are not
deterministic, such as the backward of bilinear upsampling, differ from run to run anyway).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import islice
from typing import Protocol

import torch
from torch import Tensor, nn

from eroseg_at.attacks.base import Attack
from eroseg_at.evaluation.cache import PassCache, PassResult
from eroseg_at.evaluation.data import EvaluationData
from eroseg_at.evaluation.distributed import Processes
from eroseg_at.evaluation.inference import full_resolution
from eroseg_at.evaluation.keys import PassIdentity, PassKey, json_value
from eroseg_at.evaluation.settings import EvaluationSettings
from eroseg_at.evaluation.suite import AttackRun
from eroseg_at.evaluation.worst_case import per_image_statistics
from eroseg_at.predictions import predicted_classes
from eroseg_at.progress import Progress


class PassProducer(Protocol):
    """What one pass computes per image, batch by batch: the extension point for further passes.

    Attributes:
        name: How progress lines and the report name the pass (``clean``, ``PGD10 @8/255``).
        stream: Names the pass's random stream: each batch's generator is seeded from (seed, stream, batch).
        identity: The pass's part of the cache key.
        evaluations_per_image: Model evaluations per image, for the ETA.
        batch_limit: Only the first N evaluated batches; None: all of them.
    """

    name: str
    stream: tuple[str, ...]
    identity: PassIdentity
    evaluations_per_image: int
    batch_limit: int | None

    def __call__(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        """Per-image results ``[B, ...]`` on the CPU, of images ``[B, 3, H, W]`` and labels ``[B, H, W]`` on
        the model's device, under the evaluation's autocast."""
        ...


def predicted(model: nn.Module, images: Tensor) -> Tensor:
    with torch.no_grad():
        return predicted_classes(model(images))


@dataclass(frozen=True)
class CleanPass:
    """The model's per-image statistics (:func:`~.worst_case.per_image_statistics`) on the images as they are."""

    num_classes: int
    ignore_index: int
    name: str = "clean"
    stream: tuple[str, ...] = ("clean", "0")
    identity: PassIdentity = PassIdentity("clean", ("clean", "0"))
    evaluations_per_image: int = 1
    batch_limit: int | None = None

    def __call__(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        return per_image_statistics(predicted(model, images), labels, self.num_classes, self.ignore_index)


def attack_identity(kind: str, stream: tuple[str, ...], attack: Attack) -> PassIdentity:
    """The identity of a pass of ``attack``: its random stream, class, every parameter as built, eps and steps."""
    parameters = {key: value for key, value in vars(attack).items() if key not in ("eps", "steps")}
    cls = type(attack)
    return PassIdentity(
        kind, stream, f"{cls.__module__}.{cls.__qualname__}", json_value(parameters), attack.eps, attack.steps
    )


@dataclass(frozen=True)
class AttackPass:
    """The model's per-image statistics on the adversarial images of one suite run."""

    run: AttackRun
    attack: Attack
    num_classes: int
    ignore_index: int
    batch_limit: int | None = None

    @property
    def name(self) -> str:
        return f"{self.run.label} @{self.run.eps_text}"

    @property
    def stream(self) -> tuple[str, ...]:
        return (self.run.key, self.run.eps_text)

    @property
    def identity(self) -> PassIdentity:
        return attack_identity(self.run.kind, self.stream, self.attack)

    @property
    def evaluations_per_image(self) -> int:
        """The attack's gradient evaluations and the final prediction."""
        return self.attack.steps + 1

    def __call__(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        adversarial = self.attack(model, images, labels)
        return per_image_statistics(
            predicted(model, adversarial), labels, self.num_classes, self.ignore_index
        )


class GradientCounter(nn.Module):
    """The evaluated module, counting its calls made with gradients enabled: the gradient evaluations an attack
    actually runs (fewer than its steps where it stops early). Gradient-free calls (the final prediction,
    RP-PGD's clean forward, a best-iterate check) are not counted."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls = 0

    def count(self) -> None:
        if torch.is_grad_enabled():
            self.calls += 1

    def forward(self, images: Tensor) -> Tensor:
        self.count()
        return self.model(images)


class FeatureGradientCounter(GradientCounter):
    """:class:`GradientCounter` of a module with ``logits_and_features`` (RP-PGD's calls are counted too)."""

    def logits_and_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        self.count()
        return self.model.logits_and_features(images)


def batch_seed(seed: int, stream: Sequence[str], batch: int) -> int:
    """The seed of one batch of one pass, whichever process computes it and whatever ran before."""
    text = json.dumps([int(seed), *stream, int(batch)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


@dataclass(frozen=True)
class PlannedPass:
    """A pass of one model, and what is left of it.

    Attributes:
        producer: What the pass computes.
        batches: Its batches (the evaluated ones, up to its ``batch_limit``); None where the loader's batches
            are not known beforehand.
        key: Its cache key; None without a cache.
        finished: Whether the cache holds it finished (as rank 0 sees the cache).
        done: Batches an interrupted run finished (rank 0's view), read from the cache instead of computed.
    """

    producer: PassProducer
    batches: tuple[int, ...] | None
    key: PassKey | None = None
    finished: bool = False
    done: tuple[int, ...] = ()


class PassRunner:
    """Runs passes of one model on its evaluation batches and keeps their per-image results.

    Args:
        settings: Precision, batches, inference, compile and seed of the evaluation.
        processes: This process's share of the work (:func:`~eroseg_at.evaluation.distributed.start_processes`).
        cache: Where finished passes and batches are kept and found; None computes everything.
        progress: Told of every batch (rank 0's); None reports nothing.
    """

    def __init__(
        self,
        settings: EvaluationSettings,
        processes: Processes,
        cache: PassCache | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.settings = settings
        self.processes = processes
        self.device = processes.device
        self.cache = cache
        self.progress = progress

    def autocast(self):
        dtype = self.settings.autocast_dtype
        return nullcontext() if dtype is None else torch.autocast(device_type=self.device.type, dtype=dtype)

    def predict(self, model: nn.Module, images: Tensor) -> Tensor:
        with self.autocast():
            return predicted(model, images)

    def prepare(self, network: nn.Module) -> GradientCounter:
        """The module passes call: full-resolution inference on the device, compiled if asked, counted."""
        inference = self.settings.inference
        model = full_resolution(
            network, pad_mode=inference.pad_mode, window=inference.window, stride=inference.stride
        ).to(self.device)
        model.eval()
        counter = (
            GradientCounter if getattr(model, "logits_and_features", None) is None else FeatureGradientCounter
        )
        if self.settings.compile.enabled:
            # Attacks call the module (forward); RP-PGD's logits_and_features reaches the eager module through it.
            model = torch.compile(model, **self.settings.compile.options)
        return counter(model)

    def evaluated_batches(self, data: EvaluationData) -> tuple[int, ...] | None:
        """The evaluated batches (the first ``max_batches``), or None where the loader's batches are unknown."""
        if data.batch_sizes is None:
            return None
        count = len(data.batch_sizes)
        if self.settings.max_batches is not None:
            count = min(count, self.settings.max_batches)
        return tuple(range(count))

    def pass_batches(self, data: EvaluationData, producer: PassProducer) -> tuple[int, ...] | None:
        """The batches of one pass: the evaluated ones, up to its ``batch_limit``."""
        batches = self.evaluated_batches(data)
        if batches is None or producer.batch_limit is None:
            return batches
        return batches[: producer.batch_limit]

    def plan(
        self, data: EvaluationData, producers: Sequence[PassProducer], keys: Sequence[PassKey | None]
    ) -> list[PlannedPass]:
        """Every pass of a model, with what the cache already holds of each (rank 0's view, on every rank)."""
        batches = [self.pass_batches(data, producer) for producer in producers]
        if self.cache is None:
            return [PlannedPass(producer, part) for producer, part in zip(producers, batches, strict=True)]
        cache = self.cache
        states = self.processes.on_main(
            lambda: [(cache.finished(key), tuple(cache.finished_batches(key))) for key in keys]
        )
        return [
            PlannedPass(producer, part, key, finished, done)
            for producer, part, key, (finished, done) in zip(producers, batches, keys, states, strict=True)
        ]

    def share(self, planned: PlannedPass) -> list[int] | None:
        """This process's batches of a pass: of those still missing, every W-th from the rank-th."""
        if planned.batches is None:
            return None
        todo = [batch for batch in planned.batches if batch not in planned.done]
        return todo[self.processes.rank :: self.processes.world_size]

    def work(self, data: EvaluationData, passes: Sequence[PlannedPass]) -> float | None:
        """Model evaluations left to this process (images x evaluations per image), for the ETA; None where the
        loader's batches are not known beforehand."""
        if data.batch_sizes is None:
            return None
        return float(
            sum(
                sum(data.batch_sizes[batch] for batch in self.share(planned))
                * planned.producer.evaluations_per_image
                for planned in passes
                if not planned.finished
            )
        )

    def batch(
        self, model: GradientCounter, producer: PassProducer, index: int, images: Tensor, labels: Tensor
    ) -> tuple[Tensor, int]:
        """One batch's per-image results and the gradient evaluations run on it."""
        images, labels = images.to(self.device), labels.to(self.device)
        # The global generator, seeded per batch: the same noise whichever process draws it.
        torch.manual_seed(batch_seed(self.settings.seed, producer.stream, index))
        model.calls = 0
        with self.autocast():
            results = producer(model, images, labels)
        return results, model.calls

    def run(
        self, model: GradientCounter, data: EvaluationData, planned: PlannedPass, where: str
    ) -> PassResult | None:
        """The pass's results on rank 0 (None on the others): read from the cache, or computed and kept."""
        processes, cache = self.processes, self.cache
        if planned.finished:
            return cache.result(planned.key) if processes.is_main else None
        mine = self.share(planned)
        batches = data.batches(mine)
        if mine is None:
            limits = [limit for limit in (self.settings.max_batches, planned.producer.batch_limit) if limit]
            batches = islice(batches, min(limits, default=None))
        share_images = None if mine is None else sum(data.batch_sizes[batch] for batch in mine)
        suffix = f" on rank 0 of {processes.world_size}" if processes.world_size > 1 else ""
        started = time.perf_counter()
        computed: dict[int, tuple[Tensor, int]] = {}
        images_done = 0
        for count, (index, (images, labels)) in enumerate(batches, 1):
            results, evaluations = self.batch(model, planned.producer, index, images, labels)
            computed[index] = (results, evaluations)
            if cache is not None:
                cache.store_batch(planned.key, index, results)
            images_done += results.shape[0]
            if self.progress is not None:
                self.progress.update(
                    f"{where}, batch {count}/{'?' if mine is None else len(mine)} "
                    f"(images {images_done}/{'?' if share_images is None else share_images}){suffix}",
                    advance=results.shape[0] * planned.producer.evaluations_per_image,
                )
        gathered = processes.gather(computed)
        if not processes.is_main:
            return None
        resumed = {batch: cache.batch(planned.key, batch) for batch in planned.done}
        merged = dict(resumed)
        for part in gathered:
            merged.update({batch: results for batch, (results, _) in part.items()})
        order = planned.batches if planned.batches is not None else sorted(merged)
        computed_parts = [value for part in gathered for value in part.values()]
        result = PassResult(
            statistics=torch.cat([merged[batch] for batch in order]),
            seconds=time.perf_counter() - started,
            computed_images=sum(results.shape[0] for results, _ in computed_parts),
            resumed_images=sum(results.shape[0] for results in resumed.values()),
            gradient_evaluations=sum(
                results.shape[0] * evaluations for results, evaluations in computed_parts
            ),
        )
        if cache is not None:
            cache.store(planned.key, result)
        return result
