"""The perturbation store of accumulated adversarial training: one perturbation per training image, on disk.

Each image's perturbation is kept in the image's **frame**: the image as the train pipeline rescaled it before
padding and cropping (:class:`~eroseg_at.data.geometry.SampleGeometry`), so that carrying it into a crop and
back is an exact integer move. An image's slot holds the largest frame it can take (its size times the largest
random scale); the counters say which frame the slot holds now. Values are int8 in units of ``eps / 127`` (±127
is the ball's surface, the rounding error at most ``eps / 254``), in a memory-mapped file: 3·h·w bytes per
image for its largest frame h × w, plus 20 bytes of counters; the resident part is whatever the operating system
keeps cached. Processes that map the same directory share it (DDP ranks on one machine, or on several with a
shared file system).

A store is identified by its :func:`store_layout` (dataset, frame sizes, channels, eps): opening or restoring a
store of another layout is refused, naming the difference.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

QUANTA = 127
VALUES_FILE = "values.int8"
COUNTERS_FILE = "counters.int32"
LAYOUT_FILE = "layout.json"
# Per image: visits so far, attack steps since the last restart (EroSeg's threshold index), epoch of the last
# visit, and the height and width of the frame the stored perturbation lives in (0 before the first visit).
VISITS, STEPS, LAST_EPOCH, FRAME_HEIGHT, FRAME_WIDTH = range(5)
COUNTERS = 5


def store_layout(
    dataset: Mapping[str, Any], frame_sizes: Sequence[Sequence[int]], eps: float, channels: int = 3
) -> dict[str, Any]:
    """What identifies a store's files: the training split (its name and fingerprint), the largest frame of each
    image (in index order), the channel count and the unit's eps."""
    return {
        "dataset": json.loads(json.dumps(dict(dataset))),
        "frame_sizes": [[int(h), int(w)] for h, w in frame_sizes],
        "channels": int(channels),
        "eps": float(eps),
    }


def training_store_layout(datamodule: Any, eps: float) -> dict[str, Any]:
    """The layout of the store of a :class:`~eroseg_at.data.SegmentationDataModule`'s training split at ``eps``."""
    return store_layout(
        {"name": datamodule.name, **datamodule.source("train").fingerprint()},
        datamodule.train_largest_frames(),
        eps,
    )


def layout_difference(found: Mapping[str, Any], wanted: Mapping[str, Any]) -> str | None:
    """The first way ``found`` differs from ``wanted``, in words; None if they are the same."""
    if found.get("dataset") != wanted["dataset"]:
        return f"dataset {found.get('dataset')} instead of {wanted['dataset']}"
    if found.get("eps") != wanted["eps"]:
        return f"eps {found.get('eps')} instead of {wanted['eps']} (attack.eps)"
    if found.get("channels") != wanted["channels"]:
        return f"{found.get('channels')} channels instead of {wanted['channels']}"
    sizes, wanted_sizes = found.get("frame_sizes") or [], wanted["frame_sizes"]
    if len(sizes) != len(wanted_sizes):
        return f"{len(sizes)} images instead of {len(wanted_sizes)}"
    for index, (size, wanted_size) in enumerate(zip(sizes, wanted_sizes, strict=True)):
        if size != wanted_size:
            return (
                f"image {index} has a frame of {tuple(size)} instead of {tuple(wanted_size)} (the image sizes "
                "or dataset.augment.scale_range differ)"
            )
    return None


class PerturbationStore:
    """Per training image, a perturbation in its frame (int8, units of ``eps / 127``) and its counters.

    Args:
        directory: Holds ``values.int8``, ``counters.int32`` and ``layout.json``.
        layout: What the store must hold (:func:`store_layout`).
        create: Write new files (zero perturbations, zero counters) instead of opening existing ones.

    Raises:
        ValueError: On opening, when the directory holds no store or a store of another layout (named).
    """

    def __init__(self, directory: Path | str, layout: Mapping[str, Any], create: bool) -> None:
        self.directory = Path(directory)
        self.layout = dict(layout)
        self.frame_sizes = [tuple(size) for size in self.layout["frame_sizes"]]
        self.channels = int(self.layout["channels"])
        self.unit = float(self.layout["eps"]) / QUANTA
        lengths = np.array([self.channels * h * w for h, w in self.frame_sizes], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        if create:
            self.directory.mkdir(parents=True, exist_ok=True)
            (self.directory / LAYOUT_FILE).write_text(json.dumps(self.layout))
        else:
            check_layout(self.directory, self.layout)
        mode = "w+" if create else "r+"
        self.values = np.memmap(
            self.directory / VALUES_FILE, dtype=np.int8, mode=mode, shape=(int(self.offsets[-1]),)
        )
        self.counters = np.memmap(
            self.directory / COUNTERS_FILE, dtype=np.int32, mode=mode, shape=(len(self.frame_sizes), COUNTERS)
        )

    def __len__(self) -> int:
        return len(self.frame_sizes)

    @property
    def bytes_per_image(self) -> float:
        """Mean bytes on disk per image: its int8 values and its int32 counters."""
        return self.offsets[-1] / len(self) + self.counters.itemsize * COUNTERS

    def frames(self, indices: Sequence[int]) -> list[tuple[int, int]]:
        """The frame (height, width) each image's stored perturbation lives in ((0, 0) before any visit)."""
        rows = np.array(self.counters[list(indices)])
        return [(int(h), int(w)) for h, w in rows[:, [FRAME_HEIGHT, FRAME_WIDTH]]]

    def _slot(self, index: int, frame: Sequence[int]) -> np.ndarray:
        height, width = int(frame[0]), int(frame[1])
        largest = self.frame_sizes[index]
        if height > largest[0] or width > largest[1]:
            raise ValueError(
                f"image {index}: frame {(height, width)} exceeds the largest frame {largest} the store holds"
            )
        slot = self.values[self.offsets[index] : self.offsets[index + 1]].reshape(self.channels, *largest)
        return slot[:, :height, :width]

    def read(self, indices: Sequence[int], frames: Sequence[Sequence[int]], eps: float) -> list[Tensor]:
        """The perturbations of ``indices`` in pixel units, clipped to the current ``eps``: zero where the
        stored frame is not the one asked for (the perturbation cannot be carried into another frame).

        Shape:
            output: one float32 tensor [C, h_i, w_i] per index, ``frames[i]`` = (h_i, w_i).
        """
        stored = self.frames(indices)
        out = []
        for index, frame, held in zip(indices, frames, stored, strict=True):
            frame = (int(frame[0]), int(frame[1]))
            if held != frame:
                out.append(torch.zeros(self.channels, *frame))
                continue
            values = torch.from_numpy(self._slot(index, frame).astype(np.float32))
            out.append(values.mul_(self.unit).clamp_(-eps, eps))
        return out

    def write(self, indices: Sequence[int], perturbations: Sequence[Tensor]) -> None:
        """Stores ``perturbations`` (pixel units, [C, h_i, w_i] each: the frame they live in), rounded to the
        nearest unit and clipped to the unit's ball, and records their frames."""
        for index, delta in zip(indices, perturbations, strict=True):
            frame = tuple(delta.shape[-2:])
            quantised = torch.round(delta.detach().float().cpu() / self.unit).clamp_(-QUANTA, QUANTA)
            self._slot(index, frame)[...] = quantised.to(torch.int8).numpy()
            self.counters[index, FRAME_HEIGHT], self.counters[index, FRAME_WIDTH] = frame

    def flush(self) -> None:
        self.values.flush()
        self.counters.flush()

    def restore(self, snapshot: Path | str) -> None:
        """Overwrites this store with the snapshot in ``snapshot`` (the same layout, else refused)."""
        source = PerturbationStore(snapshot, self.layout, create=False)
        # Through the maps, in slices: a file replaced under a live map would fault, and slices bound the memory.
        chunk = 1 << 26
        for start in range(0, len(self.values), chunk):
            self.values[start : start + chunk] = source.values[start : start + chunk]
        self.counters[:] = source.counters
        self.flush()


def copy_store(directory: Path | str, destination: Path | str) -> None:
    """Copies the store files of ``directory`` (flushed by their writers) to ``destination``, replacing what is
    there, through a temporary directory renamed into place: a cut-short copy never passes for a store."""
    destination = Path(destination)
    partial = destination.with_name(destination.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name in (VALUES_FILE, COUNTERS_FILE, LAYOUT_FILE):
        shutil.copyfile(Path(directory) / name, partial / name)
    shutil.rmtree(destination, ignore_errors=True)
    os.replace(partial, destination)


def check_layout(directory: Path, wanted: Mapping[str, Any]) -> None:
    """Refuses ``directory`` unless it holds a store of layout ``wanted``, naming the difference."""
    path = directory / LAYOUT_FILE
    if not path.is_file():
        raise ValueError(f"{directory} holds no perturbation store ({LAYOUT_FILE} is missing)")
    difference = layout_difference(json.loads(path.read_text()), wanted)
    if difference is not None:
        raise ValueError(
            f"the perturbation store {directory} was written for another run: it holds {difference}"
        )
