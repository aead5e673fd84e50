"""Content digests of the evaluated images and labels, for the cache key (:mod:`.keys`).

A sample read from files (:meth:`~eroseg_at.data.source.SegmentationSource.sample_files`) is digested from
their bytes. Each file's SHA-256 is kept in a JSON file per dataset split, keyed by its path, size,
modification time and status-change time, so a large dataset is read once rather than at every run, and a
file replaced in place is read again even when the tool that replaced it kept its size and modification time
(``cp -p``, ``rsync -t``: the status-change time cannot be set). A generated sample (no files) is digested
from its source's fingerprint and its index. Data given as a plain loader (the Python API) is digested from
the tensors it yields.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from eroseg_at.checkpoint import file_sha256
from eroseg_at.data.source import SegmentationSource


class FileDigests:
    """SHA-256 of files, remembered in ``path`` (JSON) by each file's path, size, mtime and ctime.

    A cache file that cannot be read is a cache: it is rebuilt.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.entries: dict[str, dict] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.changed = False

    def digest(self, path: Path) -> str:
        """The SHA-256 of ``path``'s bytes, read again only when its size or times changed."""
        status = path.stat()
        stamp = [status.st_size, status.st_mtime_ns, status.st_ctime_ns]
        key = str(path.resolve())
        entry = self.entries.get(key)
        if entry is not None and entry["stat"] == stamp:
            return entry["sha256"]
        value = file_sha256(path)
        self.entries[key] = {"stat": stamp, "sha256": value}
        self.changed = True
        return value

    def save(self) -> None:
        """Writes the entries under a temporary name and renames it, so readers never see half a file."""
        if not self.changed:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(self.entries))
        partial.replace(self.path)
        self.changed = False


def source_digests(source: SegmentationSource, indices: Sequence[int], cache_dir: Path) -> list[str]:
    """Per sample of ``source`` at ``indices``: the digest of its files' contents, or of its generator.

    Args:
        source: The split the samples are read from.
        indices: The samples, in the order wanted.
        cache_dir: Where the file digests of this split are remembered (one JSON file per split).
    """
    fingerprint = json.dumps(source.fingerprint(), sort_keys=True)
    files = FileDigests(cache_dir / f"{hashlib.sha256(fingerprint.encode()).hexdigest()[:16]}.json")
    digests = []
    for index in indices:
        paths = source.sample_files(index)
        if paths:
            text = "\0".join(files.digest(Path(path)) for path in paths)
        else:
            text = json.dumps([fingerprint, int(index)])
        digests.append(hashlib.sha256(text.encode()).hexdigest())
    files.save()
    return digests


def tensor_digests(images: Tensor, labels: Tensor) -> list[str]:
    """Per image of a batch, the SHA-256 of its pixels and labels (dtype, shape and bytes).

    Shape:
        images: ``[B, 3, H, W]``; labels: ``[B, H, W]``.
    """
    digests = []
    for image, label in zip(images, labels, strict=True):
        digest = hashlib.sha256()
        for tensor in (image, label):
            tensor = tensor.detach().cpu().contiguous()
            digest.update(f"{tensor.dtype}\0{list(tensor.shape)}\0".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        digests.append(digest.hexdigest())
    return digests
