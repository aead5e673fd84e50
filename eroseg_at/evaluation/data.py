"""What an evaluation needs of a dataset: batches of images, and the facts that attacks and reports use.

``evaluate(cfg)`` builds it from the project's datamodule (:func:`from_datamodule`); the Python API takes it
from any DataLoader the user has (:class:`EvaluationData` directly).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

from torch import Tensor
from torch.utils.data import DataLoader

from eroseg_at.attacks import DatasetFacts
from eroseg_at.data import SegmentationDataModule
from eroseg_at.data.class_frequencies import default_cache_dir
from eroseg_at.data.datamodule import bit_palette
from eroseg_at.data.transforms import transform_description
from eroseg_at.evaluation.digests import source_digests, tensor_digests
from eroseg_at.evaluation.errors import EvaluationError


@dataclass(frozen=True)
class EvaluationData:
    """A dataset to evaluate on.

    Attributes:
        name: The dataset's name, for reports.
        loader: Batches ``(images, labels)``: images ``[B, 3, H, W]`` float in [0, 1] at their own size (one size
            per batch), labels ``[B, H, W]`` integer with ``ignore_index`` allowed. Iterated once per run.
        num_classes: Classes of the labels (and of the model).
        class_names: One name per class.
        ignore_index: The label that never counts.
        background_class: The class EroSeg weights ``1 − λ``; None where no class is background.
        class_frequencies: Returns the ``[C]`` training-split pixel frequencies, for the dataset-weighted
            class-balanced APGD loss; None where unknown (that loss then needs explicit ``class_weights``).
        image_names: One name per image in loader order (file paths, generator seeds); None numbers them.
        palette: ``[r, g, b]`` (0-255) per class for figures; None uses the VOC bit palette.
        batch_sizes: Images of each batch in loader order, where known beforehand; the evaluation of
            ``evaluate.py`` needs them to share batches among processes and to key its cache.
        batch_loader: Returns a loader of only the batches at the given (ascending) indices, so that a process
            reads only its share and a resumed run only what is missing; None reads ``loader`` and skips.
        image_digests: Returns a digest of each image's and label's content, in loader order, for the cache
            key (:mod:`.digests`); None digests the tensors the loader yields.
        transforms: What is done to the images after reading them (a resize), for the cache key.
    """

    name: str
    loader: Iterable[tuple[Tensor, Tensor]]
    num_classes: int
    class_names: Sequence[str]
    ignore_index: int = 255
    background_class: int | None = None
    class_frequencies: Callable[[], Tensor] | None = None
    image_names: Sequence[str] | None = None
    palette: Sequence[Sequence[int]] | None = None
    batch_sizes: Sequence[int] | None = None
    batch_loader: Callable[[Sequence[int]], Iterable[tuple[Tensor, Tensor]]] | None = None
    image_digests: Callable[[], Sequence[str]] | None = None
    transforms: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if len(self.class_names) != self.num_classes:
            raise EvaluationError(
                f"dataset {self.name}: {len(self.class_names)} class names for num_classes={self.num_classes}"
            )

    def facts(self) -> DatasetFacts:
        """What attacks take from this dataset (:meth:`~eroseg_at.attacks.base.Attack.dataset_arguments`)."""
        return DatasetFacts(
            self.ignore_index, self.background_class, self.class_frequencies or self._no_frequencies
        )

    def _no_frequencies(self) -> Tensor:
        raise EvaluationError(
            f"dataset {self.name} has no class frequencies, which APGD's mce_balanced loss with "
            "class_weighting=dataset needs: give EvaluationData(class_frequencies=...), the loss's class_weights, "
            "or class_weighting=image"
        )

    def batches(self, indices: Sequence[int] | None = None) -> Iterator[tuple[int, tuple[Tensor, Tensor]]]:
        """``(batch index, (images, labels))`` in loader order: every batch, or those at ascending ``indices``."""
        if indices is None:
            yield from enumerate(self.loader)
        elif self.batch_loader is not None:
            yield from zip(indices, self.batch_loader(indices), strict=True)
        else:
            wanted, last = set(indices), max(indices, default=-1)
            for index, batch in enumerate(self.loader):
                if index > last:
                    return
                if index in wanted:
                    yield index, batch

    def batch_digests(self, batches: Sequence[int]) -> list[list[str]]:
        """Per batch of ``batches``, a digest of each of its images and their labels (:mod:`.digests`)."""
        if self.image_digests is None:
            return [tensor_digests(images, labels) for _, (images, labels) in self.batches(batches)]
        digests, starts = self.image_digests(), [0, *accumulate(self.batch_sizes)]
        return [list(digests[starts[batch] : starts[batch + 1]]) for batch in batches]

    def image_name(self, index: int) -> str:
        return f"image {index}" if self.image_names is None else self.image_names[index]

    def colours(self) -> tuple[tuple[int, int, int], ...]:
        palette = bit_palette(self.num_classes) if self.palette is None else self.palette
        return tuple((int(r), int(g), int(b)) for r, g, b in palette)


def from_datamodule(datamodule: SegmentationDataModule) -> EvaluationData:
    """The datamodule's validation split at full resolution (one image size per batch, nothing padded).

    Images are named in the loader's order, which groups them by size (see
    :meth:`~eroseg_at.data.SegmentationDataModule.full_resolution_dataloader`).
    """
    loader = datamodule.full_resolution_dataloader()
    source = datamodule.source("val")
    batches = [list(batch) for batch in loader.batch_sampler]
    order = [index for batch in batches for index in batch]

    def batch_loader(indices: Sequence[int]) -> DataLoader:
        # The evaluation loader restricted to some of its batches: same dataset, batches and workers.
        return DataLoader(
            loader.dataset, batch_sampler=[batches[i] for i in indices], num_workers=loader.num_workers
        )

    digest_dir = Path(datamodule.stats_cache_dir or default_cache_dir()) / "file_digests"
    return EvaluationData(
        name=str(datamodule.name),
        loader=loader,
        num_classes=datamodule.num_classes,
        class_names=tuple(datamodule.class_names),
        ignore_index=datamodule.ignore_index,
        background_class=datamodule.background_class,
        class_frequencies=datamodule.class_frequencies,
        image_names=[source.sample_name(index) for index in order],
        palette=datamodule.palette,
        batch_sizes=[len(batch) for batch in batches],
        batch_loader=batch_loader,
        image_digests=lambda: source_digests(source, order, digest_dir),
        transforms=transform_description(loader.dataset.transform),
    )
