"""Class pixel frequencies of a training split, computed once and cached as JSON.

The cache file is keyed by the dataset name and the split's fingerprint (root, split and
number of files, or the generator settings), so a changed dataset is counted again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from eroseg_at.data.source import SegmentationSource


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/eroseg_at`` (``~/.cache/eroseg_at`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "eroseg_at"


class _MaskHistograms(Dataset):
    def __init__(self, source: SegmentationSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> torch.Tensor:
        mask = self.source.load_mask(index)
        return torch.from_numpy(np.bincount(mask.ravel(), minlength=256).astype(np.int64))


def count_class_pixels(source: SegmentationSource, num_workers: int = 0) -> np.ndarray:
    """Number of pixels of each class over every mask of ``source``, labels only (no augmentation).

    Shape:
        - returns: ``[num_classes]`` int64 (ignore pixels are not counted).
    """
    loader = DataLoader(_MaskHistograms(source), batch_size=16, num_workers=num_workers)
    total = torch.zeros(256, dtype=torch.int64)
    for histograms in loader:
        total += histograms.sum(dim=0)
    return total[: source.num_classes].numpy()


def cache_path(name: str, source: SegmentationSource, cache_dir: str | Path | None) -> Path:
    """Where the class frequencies of ``source`` are cached."""
    key = json.dumps({"name": name, "source": source.fingerprint()}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(cache_dir or default_cache_dir()) / "class_frequencies" / f"{name}-{digest}.json"


def cached_class_frequencies(
    name: str, source: SegmentationSource, cache_dir: str | Path | None = None, num_workers: int = 0
) -> np.ndarray:
    """Class pixel frequencies of ``source``, read from the cache or counted and cached.

    Shape:
        - returns: ``[num_classes]`` float64 summing to 1.
    """
    path = cache_path(name, source, cache_dir)
    if path.is_file():
        return np.asarray(json.loads(path.read_text())["frequencies"], dtype=np.float64)
    counts = count_class_pixels(source, num_workers)
    if counts.sum() == 0:
        raise ValueError(
            f"dataset {name}: every training pixel is ignore, so class frequencies are undefined"
        )
    frequencies = counts / counts.sum()
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "name": name,
        "source": source.fingerprint(),
        "pixel_counts": counts.tolist(),
        "frequencies": frequencies.tolist(),
    }
    # Write then rename, so concurrent ranks never read a half-written file.
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(record, indent=1))
    partial.replace(path)
    return frequencies
