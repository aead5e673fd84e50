"""Results kept as each pass of an evaluation finishes, so that a rerun recomputes only what is missing.

A pass is one pass over the evaluated images: the clean pass, one suite attack at one budget, one point of the
iterations curve, or any other per-image statistics producer. Its per-image results are stored under
``<output_dir>/cache/<digest>.pt``, the digest being the SHA-256 of its key (:class:`~.keys.PassKey`: everything
that changes them). While a pass runs, each process stores every batch it finishes under
``<digest>.partial/batch-<index>.pt``, so a kill loses at most one batch per process. Every file is written
under a temporary name and renamed, so a kill never leaves a half-written file under a final name; each file
holds its key's full text, which is checked when it is read.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from eroseg_at.errors import UserError

if TYPE_CHECKING:
    from eroseg_at.evaluation.keys import PassKey

# Bump when what a cache file holds, or how a pass is computed, changes without a code change.
CACHE_FORMAT = 2


@dataclass(frozen=True)
class PassResult:
    """A finished pass.

    Attributes:
        statistics: ``[N, ...]`` per-image results in the report's image order (``[N, 3, C]`` int64 for the
            clean and attack passes).
        seconds: Wall time of the pass in the run that finished it (from its start to the gathered result).
        computed_images: Images computed in that run (all processes together).
        resumed_images: Images read from the per-batch results of an interrupted run.
        gradient_evaluations: Images × gradient evaluations the model actually ran for the computed images
            (fewer than images × steps where an attack stopped early); 0 for a pass without gradients.
        cached: Whether this run read the finished pass from the cache (nothing computed).
    """

    statistics: Tensor
    seconds: float
    computed_images: int
    resumed_images: int = 0
    gradient_evaluations: int = 0
    cached: bool = False


class CacheError(UserError, RuntimeError):
    """A cache file that cannot be read or holds another pass; deleting it recomputes that pass."""


def write_atomically(payload: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary name beside ``path``, then rename: readers never see a partial file, and a
    write interrupted by a signal (:mod:`eroseg_at.signals`) leaves none behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, partial)
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


class PassCache:
    """The passes of one output directory (``<output_dir>/cache``); see the module docstring."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _pass_path(self, key: PassKey) -> Path:
        return self.directory / f"{key.digest}.pt"

    def _batches_dir(self, key: PassKey) -> Path:
        return self.directory / f"{key.digest}.partial"

    def _load(self, path: Path, key: PassKey) -> dict[str, Any]:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise CacheError(
                f"cache file {str(path)!r} is unreadable ({type(error).__name__}: {error}); delete it to "
                "recompute that pass"
            ) from error
        if payload.get("format") != CACHE_FORMAT or payload.get("key") != key.text:
            raise CacheError(
                f"cache file {str(path)!r} holds another pass than its name says (format "
                f"{payload.get('format')!r}); delete it to recompute that pass"
            )
        return payload

    def finished(self, key: PassKey) -> bool:
        return self._pass_path(key).is_file()

    def result(self, key: PassKey) -> PassResult | None:
        """The finished pass of ``key``, marked ``cached``; None if it never finished here."""
        path = self._pass_path(key)
        if not path.is_file():
            return None
        payload = self._load(path, key)
        return PassResult(
            statistics=payload["statistics"],
            seconds=payload["seconds"],
            computed_images=payload["computed_images"],
            resumed_images=payload["resumed_images"],
            gradient_evaluations=payload["gradient_evaluations"],
            cached=True,
        )

    def store(self, key: PassKey, result: PassResult) -> None:
        """Keeps a finished pass and drops its per-batch results."""
        write_atomically(
            {
                "format": CACHE_FORMAT,
                "key": key.text,
                "statistics": result.statistics,
                "seconds": result.seconds,
                "computed_images": result.computed_images,
                "resumed_images": result.resumed_images,
                "gradient_evaluations": result.gradient_evaluations,
            },
            self._pass_path(key),
        )
        shutil.rmtree(self._batches_dir(key), ignore_errors=True)

    def finished_batches(self, key: PassKey) -> list[int]:
        """Indices of the batches of ``key`` that an interrupted run finished, ascending."""
        directory = self._batches_dir(key)
        if not directory.is_dir():
            return []
        return sorted(int(path.stem.split("-")[1]) for path in directory.glob("batch-*.pt"))

    def batch(self, key: PassKey, index: int) -> Tensor:
        """The ``[B, ...]`` results of one finished batch."""
        return self._load(self._batches_dir(key) / f"batch-{index:06d}.pt", key)["statistics"]

    def store_batch(self, key: PassKey, index: int, statistics: Tensor) -> None:
        write_atomically(
            {"format": CACHE_FORMAT, "key": key.text, "statistics": statistics},
            self._batches_dir(key) / f"batch-{index:06d}.pt",
        )
