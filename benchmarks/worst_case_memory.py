"""Peak memory of the worst case over attacks: per-image confusion matrices (before) against statistics (after).

Before: the evaluation kept one ``[N, C, C]`` int64 confusion matrix per image and member (8·C² bytes per image)
and stacked the clean pass and the members into ``[A, N, C, C]`` for the greedy worst case. After: it keeps
``[N, 3, C]`` int64 statistics (intersection, label count, prediction count; 24·C bytes per image) and stacks
``[A, N, 3, C]`` (:mod:`eroseg_at.evaluation.worst_case`). The "before" code lives only here, verbatim from the
evaluation before the change, as the reference that ``tests/evaluation/test_worst_case.py`` compares the
choices with.

Each variant runs in a fresh interpreter that draws the same predictions (each member the labels with a
random share of pixels changed), holds the members as the evaluation does, runs the worst case, and reports
its resident memory before the members existed and its peak (``ru_maxrss``), and a digest of its per-image
choices: equal digests are equal choices.

Usage:
    python benchmarks/worst_case_memory.py                     # 2,000 images x 150 classes x 12 members
    python benchmarks/worst_case_memory.py --images 200 --classes 21 --members 6
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import time

import torch

from eroseg_at.evaluation.worst_case import per_image_statistics, worst_case
from eroseg_at.metrics import scores_from_confusion_matrix

# ---- the evaluation's worst case before the change (confusion matrices), kept verbatim as the reference ----


def per_image_confusion_matrices(predictions, labels, num_classes, ignore_index=255):
    labels = labels.to(torch.int64)
    valid = labels != ignore_index
    images = torch.arange(labels.shape[0], device=labels.device).view(-1, 1, 1).expand_as(labels)
    cells = (images * num_classes + labels) * num_classes + predictions.to(torch.int64)
    counts = torch.bincount(cells[valid], minlength=labels.shape[0] * num_classes * num_classes)
    return counts.view(labels.shape[0], num_classes, num_classes).cpu()


def confusion_dataset_miou(confusion):
    return float(scores_from_confusion_matrix(confusion).miou)


def confusion_greedy_miou_choice(confusion, max_rounds=5):
    members, images = confusion.shape[:2]
    single = [confusion_dataset_miou(confusion[member].sum(0)) for member in range(members)]
    start = min(range(members), key=single.__getitem__)
    choice = torch.full((images,), start, dtype=torch.int64)
    total = confusion[start].sum(0)
    current = single[start]
    rounds = 0
    while rounds < max_rounds:
        rounds += 1
        changed = False
        for image in range(images):
            without = total - confusion[choice[image], image]
            best_member, best_miou = None, current
            for member in range(members):
                if member == choice[image]:
                    continue
                candidate = confusion_dataset_miou(without + confusion[member, image])
                if candidate < best_miou:
                    best_member, best_miou = member, candidate
            if best_member is not None:
                choice[image] = best_member
                total = without + confusion[best_member, image]
                current = best_miou
                changed = True
        if not changed:
            break
    return choice, rounds


def confusion_lowest_accuracy_choice(confusion):
    correct = confusion.diagonal(dim1=-2, dim2=-1).sum(-1).double()
    total = confusion.sum((-2, -1)).double()
    return torch.where(total > 0, correct / total.clamp_min(1), torch.nan).nan_to_num(nan=1.0).argmin(0)


# ---- the benchmark ----


def draw(images: int, classes: int, members: int, pixels: int, seed: int = 0):
    """Labels ``[N, P]`` (5 % ignore) and, per member (the clean pass first), predictions ``[N, P]``."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (images, pixels), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.05] = 255
    predictions = []
    for member in range(members + 1):
        # The clean pass changes 10 % of the pixels, each attack more (30-60 %).
        share = 0.1 if member == 0 else 0.3 + 0.3 * member / members
        changed = torch.rand(labels.shape, generator=generator) < share
        noise = torch.randint(0, classes, labels.shape, generator=generator)
        predictions.append(torch.where(changed, noise, labels.clamp_max(classes - 1)))
    return labels, predictions


def rss_mib() -> float:
    """Resident memory now (from /proc), MiB."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    labels, predictions = draw(args.images, args.classes, args.members, args.pixels)
    labels, predictions = labels.view(args.images, 1, -1), [p.view(args.images, 1, -1) for p in predictions]
    baseline = rss_mib()
    started = time.perf_counter()
    # Drawing the predictions already set the peak of the process: only the held data counts from here on.
    if variant == "before":
        # As the evaluation held them: the clean pass, a dict of members, then their stack.
        clean = per_image_confusion_matrices(predictions[0], labels, args.classes)
        held = [per_image_confusion_matrices(p, labels, args.classes) for p in predictions[1:]]
        stacked = torch.stack([clean, *held])
        miou_choice, rounds = confusion_greedy_miou_choice(stacked, args.rounds)
        accuracy_choice = confusion_lowest_accuracy_choice(stacked)
    else:
        clean = per_image_statistics(predictions[0], labels, args.classes)
        held = [per_image_statistics(p, labels, args.classes) for p in predictions[1:]]
        stacked = torch.stack([clean, *held])
        result = worst_case(stacked, args.rounds)
        miou_choice, rounds, accuracy_choice = result.miou_choice, result.rounds, result.accuracy_choice
    seconds = time.perf_counter() - started
    held_bytes = sum(t.numel() * t.element_size() for t in (clean, *held, stacked))
    digest = hashlib.sha256(miou_choice.numpy().tobytes() + accuracy_choice.numpy().tobytes()).hexdigest()
    return {
        "variant": variant,
        "baseline_mib": baseline,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "held_mib": held_bytes / 2**20,
        "seconds": seconds,
        "rounds": rounds,
        "choices": digest[:16],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument(
        "--members", type=int, default=12, help="attacks in the ensemble (the clean pass is added)"
    )
    parser.add_argument("--pixels", type=int, default=1024, help="labelled pixels per image")
    parser.add_argument("--rounds", type=int, default=5, help="greedy rounds at most (worst_case_rounds)")
    parser.add_argument("--variant", choices=("before", "after"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant is not None:
        print(json.dumps(run_variant(args.variant, args)))
        return
    print(
        f"worst case of {args.images} images x {args.classes} classes x {args.members} members + clean "
        f"({args.pixels} px per image), greedy rounds <= {args.rounds}; one fresh process per variant"
    )
    results = []
    for variant in ("before", "after"):
        command = [sys.executable, __file__, "--variant", variant, *sys.argv[1:]]
        completed = subprocess.run(command, capture_output=True, text=True, check=True)
        results.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    print(
        f"{'variant':<8} {'per image':>12} {'held (MiB)':>11} {'RSS before (MiB)':>17} {'peak RSS (MiB)':>15} "
        f"{'peak - before':>14} {'seconds':>8} {'rounds':>6}  choices"
    )
    for result, per_image in zip(results, (8 * args.classes**2, 24 * args.classes), strict=True):
        print(
            f"{result['variant']:<8} {per_image:>10} B {result['held_mib']:>11.0f} {result['baseline_mib']:>17.0f} "
            f"{result['peak_mib']:>15.0f} {result['peak_mib'] - result['baseline_mib']:>14.0f} "
            f"{result['seconds']:>8.1f} {result['rounds']:>6}  {result['choices']}"
        )
    before, after = results
    print(
        f"peak above the baseline: {(before['peak_mib'] - before['baseline_mib']) / max(after['peak_mib'] - after['baseline_mib'], 1):.0f}x "
        f"smaller after; same per-image choices: {before['choices'] == after['choices']}"
    )


if __name__ == "__main__":
    main()
