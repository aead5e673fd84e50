"""Results kept as each member of an evaluation finishes, so that a rerun recomputes only what is missing.

A member is one pass over the evaluated images: the clean pass, one suite attack at one budget, or one point
of the iterations curve. Its per-image statistics are stored under ``<output_dir>/cache/<digest>.pt``, the
digest being the SHA-256 of a JSON document (:class:`MemberKey`) of everything that changes them: the model's
weights (SHA-256), the dataset config and the evaluated images batch by batch, the member (attack, budget,
every argument), the evaluation settings that change outputs (seed, precision, inference, compile, device
type), the cache format, torch's version and the code (:func:`code_version`). A changed parameter therefore
misses its own member only, and the number of processes is not part of the key, as it does not change
results. While a member runs, each process stores every batch it finishes under
``<digest>.partial/batch-<index>.pt``, so a kill loses at most one batch per process. Every file is written
under a temporary name and renamed, so a kill never leaves a half-written file under a final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import eroseg_at

# Bump when what a cache file holds, or how a member is computed, changes without a code change.
CACHE_FORMAT = 1


@cache
def code_version() -> str:
    """SHA-256 of the package's sources that produce evaluation results (everything but ``training/``)."""
    root = Path(eroseg_at.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if relative.parts[0] == "training":
            continue
        digest.update(f"{relative.as_posix()}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class MemberKey:
    """What a member's results depend on (JSON types), and its SHA-256."""

    fields: dict[str, Any]

    @property
    def text(self) -> str:
        return json.dumps(self.fields, sort_keys=True)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


@dataclass
class MemberStatistics:
    """A finished member.

    Attributes:
        statistics: ``[N, 3, C]`` int64 per-image statistics, in the report's image order.
        seconds: Wall time of the member in the run that finished it (from its start to the gathered result).
        computed_images: Images attacked in that run (all processes together).
        resumed_images: Images read from the per-batch results of an interrupted run.
        attack: The attack as built (``norm``, ``steps``, ``parameters``); empty for the clean pass.
        cached: Whether this run read the finished member from the cache (nothing computed).
    """

    statistics: Tensor
    seconds: float
    computed_images: int
    resumed_images: int = 0
    attack: dict[str, Any] = field(default_factory=dict)
    cached: bool = False


class CacheError(RuntimeError):
    """A cache file that cannot be read or holds another member."""


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


class MemberCache:
    """The members of one output directory (``<output_dir>/cache``); see the module docstring."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _member_path(self, key: MemberKey) -> Path:
        return self.directory / f"{key.digest}.pt"

    def _batches_dir(self, key: MemberKey) -> Path:
        return self.directory / f"{key.digest}.partial"

    def _load(self, path: Path, key: MemberKey) -> dict[str, Any]:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise CacheError(
                f"cache file {str(path)!r} is unreadable ({type(error).__name__}: {error}); delete it to "
                "recompute that member"
            ) from error
        if payload.get("format") != CACHE_FORMAT or payload.get("key") != key.text:
            raise CacheError(
                f"cache file {str(path)!r} holds another member than its name says (format "
                f"{payload.get('format')!r}); delete it to recompute that member"
            )
        return payload

    def finished(self, key: MemberKey) -> bool:
        return self._member_path(key).is_file()

    def member(self, key: MemberKey) -> MemberStatistics | None:
        """The finished member of ``key``, marked ``cached``; None if it never finished here."""
        path = self._member_path(key)
        if not path.is_file():
            return None
        payload = self._load(path, key)
        return MemberStatistics(
            statistics=payload["statistics"],
            seconds=payload["seconds"],
            computed_images=payload["computed_images"],
            resumed_images=payload["resumed_images"],
            attack=payload["attack"],
            cached=True,
        )

    def store(self, key: MemberKey, member: MemberStatistics) -> None:
        """Keeps a finished member and drops its per-batch results."""
        write_atomically(
            {
                "format": CACHE_FORMAT,
                "key": key.text,
                "statistics": member.statistics,
                "seconds": member.seconds,
                "computed_images": member.computed_images,
                "resumed_images": member.resumed_images,
                "attack": member.attack,
            },
            self._member_path(key),
        )
        shutil.rmtree(self._batches_dir(key), ignore_errors=True)

    def finished_batches(self, key: MemberKey) -> list[int]:
        """Indices of the batches of ``key`` that an interrupted run finished, ascending."""
        directory = self._batches_dir(key)
        if not directory.is_dir():
            return []
        return sorted(int(path.stem.split("-")[1]) for path in directory.glob("batch-*.pt"))

    def batch(self, key: MemberKey, index: int) -> Tensor:
        """The ``[B, 3, C]`` statistics of one finished batch."""
        return self._load(self._batches_dir(key) / f"batch-{index:06d}.pt", key)["statistics"]

    def store_batch(self, key: MemberKey, index: int, statistics: Tensor) -> None:
        write_atomically(
            {"format": CACHE_FORMAT, "key": key.text, "statistics": statistics},
            self._batches_dir(key) / f"batch-{index:06d}.pt",
        )
