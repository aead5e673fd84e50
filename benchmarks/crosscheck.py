"""Cross-check our attacks against independent implementations on the same model, inputs and random start.

Our PGD against ``torchattacks.PGD`` and our SegPGD and CosPGD against loops over the ``cospgd`` package's
functions (adapted as described in ``crosscheck_peers.py``), on Unet-resnet18 trained on ``shapes``
(``crosscheck_model.py``, cached under ``.cache/``). Prints the adversarial mIoU of each pair and exits
with status 1 if any pair differs by more than ``--tolerance`` mIoU points (default 0.5).

Usage:
    python benchmarks/crosscheck.py [--steps 10] [--tolerance 0.5] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys

import torch
from crosscheck_model import mean_iou, trained_shapes_model
from crosscheck_peers import PEERS

from eroseg_at.attacks import build_attack


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--eps", type=float, default=8 / 255)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tolerance", type=float, default=0.5, help="largest allowed mIoU difference, points"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    model, images, masks = trained_shapes_model()
    print(f"victim: clean mIoU {mean_iou(model, images, masks):.2f} on {len(images)} shapes images")
    print(f"eps {args.eps:.5f}, alpha {args.alpha}, {args.steps} steps, seed {args.seed}")
    print(
        f"| {'ours':<7} | {'peer':<20} | {'ours mIoU':>9} | {'peer mIoU':>9} | {'|diff|':>6} | {'% x differ':>12} |"
    )
    print(f"|{'-' * 9}|{'-' * 22}|{'-' * 10}:|{'-' * 10}:|{'-' * 7}:|{'-' * 13}:|")
    failures = []
    for peer, (ours, run) in PEERS.items():
        attack = build_attack(ours, eps=args.eps, alpha=args.alpha, steps=args.steps, seed=args.seed)
        ours_adversarial = attack(model, images, masks)
        peer_adversarial = run(
            model, images, masks, eps=args.eps, alpha=args.alpha, steps=args.steps, seed=args.seed
        )
        if any(module.training for module in model.modules()):
            raise RuntimeError(f"{peer} left the victim in training mode")
        ours_miou, peer_miou = (
            mean_iou(model, ours_adversarial, masks),
            mean_iou(model, peer_adversarial, masks),
        )
        difference = abs(ours_miou - peer_miou)
        # Sign steps of near-zero gradients can differ by rounding (the losses are scaled differently).
        differing = ((ours_adversarial - peer_adversarial).abs() > 1e-6).float().mean().item()
        print(
            f"| {ours:<7} | {peer:<20} | {ours_miou:>9.2f} | {peer_miou:>9.2f} | {difference:>6.2f} "
            f"| {100 * differing:>12.3f} |"
        )
        if difference > args.tolerance:
            failures.append(f"{ours} vs {peer}: {difference:.2f} mIoU points")
    if failures:
        print(f"FAILED (tolerance {args.tolerance}): " + "; ".join(failures))
        return 1
    print(f"all pairs within {args.tolerance} mIoU points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
