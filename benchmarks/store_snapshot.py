"""The cost of carrying the accumulated mode's store with every checkpoint: disk and time of one copy.

Builds a perturbation store of ``--images`` images whose largest frame is ``--height`` × ``--width`` (random
values, as a store is after some epochs), then times, over ``--repeats`` rounds (median [min, max]), what a
checkpoint adds (:func:`~eroseg_at.training.perturbations.copy_store`, the copy written beside the file) and what a
resume adds (:meth:`~eroseg_at.training.perturbations.PerturbationStore.restore`).

Usage:
    python benchmarks/store_snapshot.py                                   # make reproduce's store (2,000 x 80 x 80)
    python benchmarks/store_snapshot.py --images 200 --height 1000 --width 750   # VOC images at scale <= 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from eroseg_at.training.perturbations import PerturbationStore, copy_store, store_layout


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--height", type=int, default=80)
    parser.add_argument("--width", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--directory", type=Path, default=None, help="where the files go (default: a temp dir)"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="store_snapshot_", dir=args.directory) as directory:
        root = Path(directory)
        layout = store_layout({"name": "benchmark"}, [(args.height, args.width)] * args.images, 8 / 255)
        store = PerturbationStore(root / "live", layout, create=True)
        rng = np.random.default_rng(0)
        chunk = 1 << 24
        for start in range(0, len(store.values), chunk):
            size = min(chunk, len(store.values) - start)
            store.values[start : start + size] = rng.integers(-127, 128, size, dtype=np.int8)
        store.flush()
        size = sum(path.stat().st_size for path in (root / "live").iterdir())
        copies, restores = [], []
        for _ in range(args.repeats):
            started = time.perf_counter()
            copy_store(root / "live", root / "last.ckpt.perturbations")
            copies.append(time.perf_counter() - started)
            started = time.perf_counter()
            store.restore(root / "last.ckpt.perturbations")
            restores.append(time.perf_counter() - started)

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.3f} s [{min(values):.3f}, {max(values):.3f}]"

    print(
        f"store of {args.images} images, largest frame {args.height} x {args.width}: {size / 1e6:.1f} MB on disk "
        f"({size / args.images / 1e3:.1f} KB per image)\n"
        f"  copy beside a checkpoint (per checkpoint file): {spread(copies)}\n"
        f"  restore on resume:                              {spread(restores)}\n"
        f"  ({args.repeats} rounds, median [min, max]; the copy goes through the page cache, a cold disk is slower)"
    )


if __name__ == "__main__":
    main()
