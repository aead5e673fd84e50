"""Does the accumulated mode's carried perturbation survive the augmentation? Two measures, on the real
``shapes`` train pipeline of ``adversarial.mode=accumulated``:

1. **Round trip.** A sign map of ±eps per pixel in the store's coordinates (the image's frame), seen through a
   sample's geometry (``view``) and taken back (``pull_back``): on the pixels the crop covers, the mean error
   ``|back − δ|/eps`` and the share of values whose sign flipped. An exact mapping gives 0 and 0.
2. **Carried strength (issue #20's measure).** On B training images with one geometry, ``--visits`` visits of
   the accumulated mode in a row (no restart between them). At every visit after the first: the training loss
   (CE of the model in eval mode on the adversarial images, mean over valid pixels) at the start of the visit,
   from the carried perturbation, against the loss at the end of the previous visit, **same images and same
   geometry**. ``kept`` is ``(start − clean) / (previous end − clean)``: the share of the adversarial loss
   increase that the store carried (1: all of it). The same from a fresh random start is printed as the floor.
   A last line gives the start loss on the pipeline's **next draw** of the same images (the next epoch's crop,
   flip and held scale; an image whose held scale changes restarts from a random start, as in training),
   against a random start on that draw.

The model: ``--checkpoint`` (a training checkpoint of this project), else the default model trained here by
standard training for ``--train-steps`` steps.

Usage:
    python benchmarks/carried_perturbation.py --checkpoint outputs/train/.../last.ckpt
    python benchmarks/carried_perturbation.py --train-steps 100 --batches 1   # a quick run
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from eroseg_at.checkpoint import load_checkpoint
from eroseg_at.configs import build, compose_config
from eroseg_at.data.geometry import SampleGeometry
from eroseg_at.training.amortised import AccumulatedPerturbations
from eroseg_at.training.perturbations import PerturbationStore, training_store_layout
from eroseg_at.training.runner import build_datamodule, build_module


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, default=None, help="a training checkpoint (its model)")
    parser.add_argument(
        "--train-steps", type=int, default=300, help="without --checkpoint: standard training"
    )
    parser.add_argument("--attack", default="eroseg")
    parser.add_argument("--size", type=int, default=64, help="square shapes images and crops")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=4, help="batches of the carried-strength measure")
    parser.add_argument("--visits", type=int, default=4)
    parser.add_argument("--samples", type=int, default=64, help="samples of the round-trip measure")
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


def config(args: argparse.Namespace, output_dir: Path, *extra: str):
    return compose_config(
        "train",
        [
            f"attack={args.attack}",
            "attack.steps=1",
            "adversarial.mode=accumulated",
            "adversarial.objective=adv_only",
            *extra,
            f"dataset.train_source.image_size=[{args.size},{args.size}]",
            f"dataset.crop_size=[{args.size},{args.size}]",
            f"dataset.batch_size={args.batch}",
            "dataset.num_workers=0",
            f"paths.output_dir={output_dir}",
        ],
    )


def trained_model(args: argparse.Namespace, cfg, datamodule) -> torch.nn.Module:
    if args.checkpoint is not None:
        checkpoint = load_checkpoint(args.checkpoint)
        model = build(checkpoint.config.model)
        model.load_state_dict(checkpoint.model_state)
        return model
    model = build(cfg.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=0.01)
    model.train()
    step = 0
    while step < args.train_steps:
        for images, labels, _ in datamodule.train_dataloader():
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), labels, ignore_index=255).backward()
            optimizer.step()
            step += 1
            if step == args.train_steps:
                break
    return model


def loss_of(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return F.cross_entropy(model(images), labels, ignore_index=255).item()


def round_trip(datamodule, eps: float, samples: int) -> tuple[float, float, float, float]:
    """Mean |back − δ|/eps and sign-flip share on covered pixels, the covered share, the rescaled share."""
    generator = torch.Generator().manual_seed(0)
    errors, flips, covered_shares, rescaled = [], [], [], 0
    for draw in range(samples):
        _, _, geometry = datamodule.train_set[draw % len(datamodule.train_set)]
        height, width = geometry.frames()[0]
        signs = torch.randint(0, 2, (3, height, width), generator=generator).float() * 2 - 1
        delta = signs * eps
        back = geometry.pull_back(geometry.view([delta]))[0]
        covered = geometry.pull_back(geometry.view([torch.ones_like(delta)]))[0] > 0.999
        errors.append(((back - delta).abs()[covered] / eps).mean().item())
        flips.append((torch.sign(back) != signs)[covered].float().mean().item())
        covered_shares.append(covered.float().mean().item())
        rescaled += int(not torch.equal(geometry.frame_size, geometry.source_size))
    return (
        statistics.mean(errors),
        statistics.mean(flips),
        statistics.mean(covered_shares),
        rescaled / samples,
    )


def carried_start(module, images: torch.Tensor, geometry: SampleGeometry) -> torch.Tensor:
    """The start of the next visit from the carried perturbations; a random start where the frame changed."""
    eps = module.train_attack.eps
    stored = module.accumulated.store.read(geometry.index.tolist(), geometry.frames(), eps)
    moved = torch.tensor([bool(delta.any()) for delta in stored]).view(-1, 1, 1, 1)
    return torch.where(moved, (images + geometry.view(stored)).clamp(0, 1), random_start(eps, images))


def random_start(eps: float, images: torch.Tensor) -> torch.Tensor:
    return (images + (torch.rand_like(images) * 2 - 1) * eps).clamp(0, 1)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory(prefix="carried_") as directory:
        # The data as training draws it (each image's scale held for restart_visits epochs); the visits of the
        # measure continue one perturbation, without the periodic restarts.
        cfg = config(args, Path(directory))
        datamodule = build_datamodule(cfg)
        datamodule.setup("fit")
        model = trained_model(args, cfg, datamodule)
        cfg = config(args, Path(directory), "adversarial.accumulated.restart_visits=1000")
        module = build_module(cfg, model, datamodule)
        eps = module.train_attack.eps
        error, flipped, covered, rescaled = round_trip(datamodule, eps, args.samples)
        print(
            f"Round trip view -> pull_back of a ±eps sign map, {args.samples} samples of the shapes train pipeline "
            f"({100 * rescaled:.0f}% rescaled; the crop covers {100 * covered:.0f}% of the store's pixels):\n"
            f"  mean |back - delta| / eps on covered pixels: {error:.3f}; signs flipped: {100 * flipped:.1f}%\n"
        )
        run_visits(args, module, datamodule, model)


def run_visits(args, module, datamodule, model) -> None:
    eps = module.train_attack.eps
    store = PerturbationStore(
        Path(module.adversarial.accumulated.directory), training_store_layout(datamodule, eps), create=True
    )
    module.accumulated = AccumulatedPerturbations(module.adversarial.accumulated, module.train_attack, store)
    loader = iter(datamodule.train_dataloader())
    rows: dict[int, list[tuple[float, float, float, float]]] = {v: [] for v in range(1, args.visits)}
    next_draw: list[tuple[float, float, float]] = []
    for _ in range(args.batches):
        images, labels, geometry = next(loader)
        clean = loss_of(model, images, labels)
        end = None
        for visit in range(args.visits):
            if visit > 0:
                start = loss_of(model, carried_start(module, images, geometry), labels)
                fresh = loss_of(model, random_start(eps, images), labels)
                rows[visit].append((clean, end, start, fresh))
            x, _ = module.accumulated.adversarial(model, images, labels, geometry, epoch=visit)
            end = loss_of(model, x, labels)
        # The pipeline's next draw of the same images (the next epoch's): another crop and flip, and for a quarter
        # of them another held scale.
        datamodule.set_epoch(1)
        samples = [datamodule.train_set[i] for i in geometry.index.tolist()]
        images2 = torch.stack([s[0] for s in samples])
        labels2 = torch.stack([s[1] for s in samples])
        geometry2 = SampleGeometry.concatenate([s[2] for s in samples])
        next_draw.append(
            (
                loss_of(model, images2, labels2),
                loss_of(model, carried_start(module, images2, geometry2), labels2),
                loss_of(model, random_start(eps, images2), labels2),
            )
        )
        datamodule.set_epoch(0)
    print(
        f"Carried strength: {args.batches} batches of {args.batch} images, 1 {args.attack} step per visit, "
        "same images and geometry at every visit; CE (mean over valid pixels), model in eval mode:\n"
    )
    print("| visit | clean | end of previous visit | start, carried | start, random | kept |")
    print("|---:|---:|---:|---:|---:|---:|")
    for visit, values in rows.items():
        clean, end, start, fresh = (statistics.mean(column) for column in zip(*values, strict=True))
        print(
            f"| {visit + 1} | {clean:.3f} | {end:.3f} | {start:.3f} | {fresh:.3f} | "
            f"{(start - clean) / (end - clean):.2f} |"
        )
    clean, start, fresh = (statistics.mean(column) for column in zip(*next_draw, strict=True))
    print(
        f"\nOn the pipeline's next draw of the same images, after {args.visits} visits: clean {clean:.3f}, "
        f"start from the carried perturbation {start:.3f}, from a random start {fresh:.3f}."
    )


if __name__ == "__main__":
    main()
