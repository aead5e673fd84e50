"""Attack iterations of the evaluated model compiled (``compile.enabled=true``) against eager, in one run.

The evaluation attacks the full-resolution module of the model (padding to the model's divisor, optional
sliding windows); with ``compile.enabled=true`` it attacks ``torch.compile`` of that module. Both modules here
come from the evaluation's own ``PassRunner.prepare``. Each is timed on the same PGD attack (forward +
input-gradient backward per iteration, the same random start), first once to compile (the warm-up), then
``--repeats`` times in interleaved rounds, keeping the fastest run (other processes on a shared machine only
ever add time). Printed: compile time, milliseconds and images per second per iteration, the ratio, and how
far the compiled adversarial images and predictions are from the eager ones.

Usage:
    python benchmarks/compile_attack.py                           # the default model, 4x3x64x64, 10 steps, CPU
    python benchmarks/compile_attack.py --batch 8 --size 512 --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import time

import torch

from eroseg_at.attacks import build_attack
from eroseg_at.configs import build, compose_config
from eroseg_at.evaluation.distributed import single_process
from eroseg_at.evaluation.passes import PassRunner
from eroseg_at.evaluation.settings import EvaluationSettings


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="deeplabv3plus_lite", help="an option of conf/model")
    parser.add_argument("--num-classes", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--mode", default=None, help="torch.compile mode (default, reduce-overhead, max-autotune)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32", choices=("32", "bf16"))
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    network = build(
        compose_config("train", [f"model={args.model}", f"model.num_classes={args.num_classes}"]).model
    ).to(device)
    settings = ["output_dir=unused", f"precision={args.precision}"]
    options = [] if args.mode is None else [f"+compile.options.mode={args.mode}"]
    runners = {
        "eager": PassRunner(
            EvaluationSettings.from_config(compose_config("evaluate", settings)), single_process(device)
        ),
        "compiled": PassRunner(
            EvaluationSettings.from_config(
                compose_config("evaluate", [*settings, "compile.enabled=true", *options])
            ),
            single_process(device),
        ),
    }
    modules = {name: runner.prepare(network) for name, runner in runners.items()}
    images = torch.rand(args.batch, 3, args.size, args.size, device=device)
    labels = torch.randint(0, args.num_classes, (args.batch, args.size, args.size), device=device)
    attack = build_attack("pgd", eps="8/255", alpha=0.01, steps=args.steps)

    def attacked(name: str) -> tuple[torch.Tensor, float]:
        torch.manual_seed(0)  # the same random start for both
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        with runners[name].autocast():
            adversarial = attack(modules[name], images, labels)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return adversarial, time.perf_counter() - started

    warm_up = {name: attacked(name)[1] for name in modules}
    best = dict.fromkeys(modules, float("inf"))
    outputs = {}
    for _ in range(args.repeats):
        for name in modules:
            outputs[name], seconds = attacked(name)
            best[name] = min(best[name], seconds)
    predictions = {name: runners[name].predict(modules[name], outputs[name]) for name in modules}
    print(
        f"PGD-{args.steps} on model={args.model}, batch {args.batch}x3x{args.size}x{args.size}, {device.type}, "
        f"precision {args.precision}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"fastest of {args.repeats}"
    )
    print(f"{'':<9} {'first call (s)':>15} {'ms / iteration':>15} {'images/s per iteration':>23}")
    for name in modules:
        per_iteration = best[name] / args.steps
        print(
            f"{name:<9} {warm_up[name]:>15.1f} {1000 * per_iteration:>15.1f} {args.batch / per_iteration:>23.2f}"
        )
    print(f"compiled / eager time per iteration: {best['compiled'] / best['eager']:.2f}x")
    difference = (outputs["compiled"] - outputs["eager"]).abs().max().item()
    agreement = (predictions["compiled"] == predictions["eager"]).double().mean().item()
    print(
        f"compiled vs eager: adversarial images differ by at most {difference:.2e}, "
        f"{100 * agreement:.2f} % of predicted pixels equal"
    )


if __name__ == "__main__":
    main()
