"""Per-pixel class prediction: ``argmax(1)`` against ``max(1).indices`` (what ``predicted_classes`` uses).

Both give the same classes (the first one on ties); on the CPU ``argmax`` over the strided class
dimension of NCHW logits is far slower, and every attack iteration, metric update and flip-rate log
predicts classes. Fastest of ``--repeats`` runs, interleaved, in one process.

Usage:
    python benchmarks/class_prediction.py                     # 16x7x64x64 (the main job's batch), CPU
    python benchmarks/class_prediction.py --shape 8 21 512 512 --device cuda
"""

from __future__ import annotations

import argparse
import time

import torch

from eroseg_at.predictions import predicted_classes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", type=int, nargs=4, default=[16, 7, 64, 64], metavar=("B", "C", "H", "W"))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    logits = torch.randn(*args.shape, device=device)
    entries = {"argmax(1)": lambda: logits.argmax(1), "predicted_classes": lambda: predicted_classes(logits)}
    assert torch.equal(entries["argmax(1)"](), entries["predicted_classes"]())
    times = {name: float("inf") for name in entries}
    for _ in range(args.repeats):
        for name, fn in entries.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name] = min(times[name], time.perf_counter() - start)
    print(
        f"logits {tuple(args.shape)} on {device}, threads={torch.get_num_threads()}, fastest of {args.repeats}"
    )
    for name, seconds in times.items():
        print(f"  {name:<18} {1000 * seconds:8.3f} ms   {seconds / times['predicted_classes']:6.1f} x")


if __name__ == "__main__":
    main()
