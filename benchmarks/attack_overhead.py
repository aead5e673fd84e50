"""Time of every attack relative to the floor: ``steps`` × (forward + input-gradient backward), in one run.

The floor is the bare loop every gradient attack needs: forward pass, cross-entropy over valid pixels,
``torch.autograd.grad`` with respect to the input; an attack's extra time is its own overhead. Each
entry is timed ``--repeats`` times in interleaved rounds and the fastest run is reported: on a shared
machine other processes only ever add time, and in bursts that a median of a few runs does not remove.
The public peers doing the same thing run alongside (``--no-peers`` skips them; they need the ``bench``
extra: torchattacks, cospgd).

Usage:
    python benchmarks/attack_overhead.py                       # Unet-resnet18, 8×3×128×128, 10 steps, CPU
    python benchmarks/attack_overhead.py --batch 2 --size 64 --repeats 1   # a quick run
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from eroseg_at.attacks import available_attacks, build_attack
from eroseg_at.models import build_model

IGNORE_INDEX = 255


def floor_loop(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int) -> None:
    """``steps`` forward + input-gradient backward passes, without any attack logic."""
    x = images.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        loss = F.cross_entropy(model(x), labels, ignore_index=IGNORE_INDEX)
        torch.autograd.grad(loss, x)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="unet")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--attacks", nargs="+", default=available_attacks(), choices=available_attacks())
    parser.add_argument("--no-peers", action="store_true", help="skip torchattacks and cospgd")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build_model(args.model, num_classes=args.num_classes, encoder=args.encoder).to(device).eval()
    images = torch.rand(args.batch, 3, args.size, args.size, device=device)
    labels = torch.randint(0, args.num_classes, (args.batch, args.size, args.size), device=device)
    labels[:, : args.size // 8] = IGNORE_INDEX

    eps, alpha, steps = 8 / 255, 0.01, args.steps
    entries: dict[str, tuple[str, Callable[[], object]]] = {
        "floor": ("", lambda: floor_loop(model, images, labels, steps))
    }
    for name in args.attacks:
        kwargs = {"alpha": alpha} if name != "apgd" else {}
        attack = build_attack(name, eps=eps, steps=steps, seed=0, **kwargs)
        entries[name] = ("ours", lambda attack=attack: attack(model, images, labels))
    if not args.no_peers:
        from crosscheck_peers import PEERS

        for peer, (ours, run) in PEERS.items():
            entries[peer] = (
                f"peer of {ours}",
                lambda run=run: run(model, images, labels, eps=eps, alpha=alpha, steps=steps, seed=0),
            )

    for _, run in entries.values():  # warm-up: allocator, kernels, lazy imports
        run()
    times: dict[str, list[float]] = {name: [] for name in entries}
    for _ in range(args.repeats):
        for name, (_, run) in entries.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            run()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
            if any(module.training for module in model.modules()):
                raise RuntimeError(f"{name} left the model in training mode")

    floor = min(times["floor"])
    print(
        f"{args.model}-{args.encoder}, {args.batch}x3x{args.size}x{args.size}, {steps} steps, {args.device}, "
        f"threads={torch.get_num_threads()}, fastest of {args.repeats}"
    )
    print(f"| {'entry':<20} | {'kind':<16} | {'time (s)':>8} | {'/ floor':>7} |")
    print(f"|{'-' * 22}|{'-' * 18}|{'-' * 9}:|{'-' * 8}:|")
    for name, (kind, _) in entries.items():
        fastest = min(times[name])
        print(f"| {name:<20} | {kind:<16} | {fastest:>8.3f} | {fastest / floor:>7.3f} |")


if __name__ == "__main__":
    main()
