"""Checkpoints that carry the accumulated mode's perturbation store: a copy of the store beside each file.

A checkpoint of an accumulated run says where the live store is (``perturbation_store`` entry); when the file is
written, :class:`StoreSnapshotCheckpointIO` copies the store into ``<file>.perturbations/`` first, and when
Lightning removes the file (a ``save_top_k`` checkpoint replaced by a better one) it removes the copy with it. A
run resumed from a file continues with that copy: the store saved with the checkpoint, wherever the run
continues and however far the original run went on.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from eroseg_at.training.perturbations import copy_store

# The checkpoint entry of an accumulated run: the live store's directory and layout.
STORE_KEY = "perturbation_store"
SNAPSHOT_SUFFIX = ".perturbations"


def snapshot_path(checkpoint_path: Path | str) -> Path:
    """Where the store saved with ``checkpoint_path`` lies."""
    return Path(f"{checkpoint_path}{SNAPSHOT_SUFFIX}")


class StoreSnapshotCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, which also writes (and removes) the store's copy beside each file.

    Runs on rank 0 only (Lightning's strategies call their checkpoint IO there), after every rank has flushed its
    writes to the shared store (:meth:`SegmentationModule.on_save_checkpoint` waits for them).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        store = checkpoint.get(STORE_KEY)
        if store is not None:
            copy_store(store["directory"], snapshot_path(path))
        super().save_checkpoint(checkpoint, path, storage_options)

    def remove_checkpoint(self, path: Any) -> None:
        super().remove_checkpoint(path)
        shutil.rmtree(snapshot_path(path), ignore_errors=True)
