"""The perturbation store of accumulated adversarial training: one perturbation per training image, on disk.

Each image's perturbation is kept in the image's own coordinates (before augmentation) as int8 in units of
``eps / 127`` (so ±127 is the ball's surface and the rounding error is at most ``eps / 254`` per value), in a
memory-mapped file: 3·H·W bytes per image plus 12 bytes of counters, whatever the dataset's size, and the
resident part is whatever the operating system keeps cached. Processes that map the same directory share it
(DDP ranks on one machine, or on several with a shared file system).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

QUANTA = 127
VALUES_FILE = "values.int8"
COUNTERS_FILE = "counters.int32"
LAYOUT_FILE = "layout.json"
# Per image: visits so far, attack steps since the last restart (EroSeg's threshold index), epoch of the last visit.
VISITS, STEPS, LAST_EPOCH = 0, 1, 2


def store_layout(sizes: Sequence[tuple[int, int]], eps: float, channels: int = 3) -> dict:
    """What identifies a store's files: the image sizes (in index order), the channel count and the unit."""
    return {"sizes": [list(map(int, size)) for size in sizes], "channels": int(channels), "eps": float(eps)}


class PerturbationStore:
    """Per training image, a perturbation in its own coordinates (int8, units of ``eps / 127``) and counters.

    Args:
        directory: Holds ``values.int8``, ``counters.int32`` and ``layout.json``.
        sizes: ``(height, width)`` of each training image, in index order.
        eps: The unit's scale: the largest budget the store will hold (the full training eps).
        create: Write new files (zero perturbations, zero counters) instead of opening existing ones.

    Raises:
        ValueError: On opening, when the files' layout differs from ``sizes`` / ``eps``.
    """

    def __init__(
        self, directory: Path | str, sizes: Sequence[tuple[int, int]], eps: float, create: bool
    ) -> None:
        self.directory = Path(directory)
        self.layout = store_layout(sizes, eps)
        self.sizes = [tuple(size) for size in self.layout["sizes"]]
        self.unit = float(eps) / QUANTA
        lengths = np.array([self.layout["channels"] * h * w for h, w in self.sizes], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        mode = "w+" if create else "r+"
        if create:
            self.directory.mkdir(parents=True, exist_ok=True)
            (self.directory / LAYOUT_FILE).write_text(json.dumps(self.layout))
        else:
            found = json.loads((self.directory / LAYOUT_FILE).read_text())
            if found != self.layout:
                raise ValueError(
                    f"perturbation store {self.directory} holds another layout ({len(found['sizes'])} images, "
                    f"eps {found['eps']}) than this run needs ({len(self.sizes)} images, eps {eps})"
                )
        self.values = np.memmap(
            self.directory / VALUES_FILE, dtype=np.int8, mode=mode, shape=(int(self.offsets[-1]),)
        )
        self.counters = np.memmap(
            self.directory / COUNTERS_FILE, dtype=np.int32, mode=mode, shape=(len(self.sizes), 3)
        )

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def bytes_per_image(self) -> float:
        """Mean bytes on disk per image: its int8 values and its three int32 counters."""
        return self.offsets[-1] / len(self) + self.counters.itemsize * 3

    def read(self, indices: Sequence[int], eps: float) -> list[Tensor]:
        """The perturbations of ``indices`` in pixel units, clipped to the current ``eps``.

        Shape:
            output: one float32 tensor [C, H_i, W_i] per index.
        """
        channels = self.layout["channels"]
        return [
            torch.from_numpy(
                self.values[self.offsets[i] : self.offsets[i + 1]]
                .astype(np.float32)
                .reshape(channels, *self.sizes[i])
            )
            .mul_(self.unit)
            .clamp_(-eps, eps)
            for i in indices
        ]

    def write(self, indices: Sequence[int], perturbations: Sequence[Tensor]) -> None:
        """Stores ``perturbations`` (pixel units, [C, H_i, W_i] each), rounded to the nearest unit and clipped to
        the unit's ball."""
        for i, delta in zip(indices, perturbations, strict=True):
            quantised = torch.round(delta.detach().float().cpu() / self.unit).clamp_(-QUANTA, QUANTA)
            self.values[self.offsets[i] : self.offsets[i + 1]] = quantised.to(torch.int8).flatten().numpy()

    def flush(self) -> None:
        self.values.flush()
        self.counters.flush()

    def copy_from(self, directory: Path | str) -> None:
        """Overwrites this store with the contents of the store in ``directory`` (same layout required)."""
        source = PerturbationStore(directory, self.sizes, self.unit * QUANTA, create=False)
        if source.directory.resolve() == self.directory.resolve():
            return
        # Through the maps, in slices: a file replaced under a live map would fault, and slices bound the memory.
        chunk = 1 << 26
        for start in range(0, len(self.values), chunk):
            self.values[start : start + chunk] = source.values[start : start + chunk]
        self.counters[:] = source.counters
        self.flush()
