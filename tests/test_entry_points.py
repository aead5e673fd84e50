"""train.py and evaluate.py as a person meets them (eroseg-train and eroseg-eval run the same apps,
eroseg_at/cli.py): a user error in a few lines, the status and checkpoint of a run stopped by a signal, a log
without the known noise. Each runs the real entry point in a subprocess, from outside the checkout; those that
train are slow (10-20 s each on 2 idle cores)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eroseg_at.evaluation import evaluate
from eroseg_at.evaluation.cache import write_atomically
from eroseg_at.signals import Interrupted, exit_status
from eroseg_at.training.runner import train
from tests.conftest import REPO_ROOT, TINY_SHAPES, compose_train_config
from tests.evaluation.conftest import compose_evaluate_config, trained_run  # noqa: F401 (a fixture)

# The documented status of a user error (README, eroseg_at/cli.py): 2, as argparse and most Unix tools use.
USER_ERROR_STATUS = 2
ENV = {**os.environ, "WANDB_SILENT": "false", "OMP_NUM_THREADS": "1"}
ENV.pop("HYDRA_FULL_ERROR", None)


def run_program(
    script: str, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env or ENV,
        timeout=600,
    )


def start_program(script: str, *args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO_ROOT / script), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
    )


def signal_when(process: subprocess.Popen, signum: int, condition) -> list[str]:
    """Sends ``signum`` to ``process`` at the first line of its output that meets ``condition``; every line."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if condition(line):
            process.send_signal(signum)
            break
    else:
        pytest.fail("the run ended before it could be stopped:\n" + "".join(lines[-30:]))
    lines.extend(process.stdout)
    process.wait(timeout=300)
    return lines


# (program, its arguments given tmp_path, what the message must name besides the path)
USER_ERRORS = {
    "mistyped checkpoint path": (
        "evaluate.py",
        lambda tmp: ["ckpt_path=missing.ckpt"],
        "missing.ckpt",
        "ckpt_path takes",
    ),
    "missing dataset root": (
        "train.py",
        lambda tmp: ["dataset=voc", f"dataset.root={tmp / 'nonexistent'}"],
        "nonexistent",
        "JPEGImages/<id>.jpg",
    ),
    "bad weights file": (
        "evaluate.py",
        lambda tmp: [
            "model=torchvision",
            "model.name=lraspp_mobilenet_v3_large",
            "model.weights=bad.pth",
            "dataset=shapes",
        ],
        "bad.pth",
        "torch.save(model.state_dict(), path)",
    ),
}


@pytest.mark.parametrize("case", USER_ERRORS)
def test_a_user_error_prints_a_few_lines_naming_the_file_and_the_fix(case, tmp_path):
    script, arguments, named, fix = USER_ERRORS[case]
    (tmp_path / "bad.pth").write_text("not a state dict\n")
    completed = run_program(script, *arguments(tmp_path), f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    output = completed.stdout + completed.stderr
    assert completed.returncode == USER_ERROR_STATUS, output
    assert len(output.splitlines()) <= 5, output
    assert "Traceback" not in output and "error: " in completed.stderr, output
    assert named in completed.stderr and fix in completed.stderr, output


@pytest.mark.slow
def test_a_user_error_from_inside_lightnings_fit_has_no_traceback_and_hydra_full_error_shows_it(tmp_path):
    # Too few training images for one batch: the datamodule's setup, which Lightning calls inside fit, refuses.
    arguments = [
        *TINY_SHAPES,
        "dataset.train_source.num_images=2",
        "logger=none",
        f"hydra.run.dir={tmp_path}",
    ]
    completed = run_program("train.py", *arguments, cwd=tmp_path)
    assert completed.returncode == USER_ERROR_STATUS, completed.stderr
    assert "Traceback" not in completed.stdout + completed.stderr
    assert (
        completed.stderr.strip()
        .splitlines()[-1]
        .startswith("train: error: dataset shapes: 2 training samples < batch_size=4")
    )
    completed = run_program("train.py", *arguments, cwd=tmp_path, env={**ENV, "HYDRA_FULL_ERROR": "1"})
    assert (
        completed.returncode == 1 and "Traceback" in completed.stderr and "DatasetError" in completed.stderr
    )


@pytest.mark.slow
def test_a_short_training_run_prints_none_of_the_known_noise(tmp_path):
    # Adversarial (the collapse guard saves a checkpoint after validation) and logged to W&B (offline).
    completed = run_program(
        "train.py",
        *TINY_SHAPES,
        "attack=pgd",
        "attack.steps=1",
        "validation.attacks.pgd10.steps=1",
        "schedule.max_epochs=1",
        "trainer.limit_train_batches=2",
        f"hydra.run.dir={tmp_path}",
        cwd=tmp_path,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-3000:]
    assert (tmp_path / "checkpoints" / "last_good.ckpt").is_file() and "wandb: " in output
    for noise in (
        "litlogger",
        "The anonymous setting has no effect",
        "`weights_only` was not set",
        "Total FLOPs: 0",
    ):
        assert noise not in output, noise
    assert "Total FLOPs: " in output  # counted on an example input rather than left at 0


# A run long enough to be stopped in its middle: 3 epochs of 4 steps, a progress line after every step.
STOPPABLE_TRAINING = (
    *TINY_SHAPES,
    "logger=csv",
    "schedule.max_epochs=3",
    "validation.attack_batches=1",
    "validation.attacks.pgd10.steps=1",
    "callbacks.progress_bar.interval_s=0",
)


@pytest.mark.slow
def test_sigterm_stops_training_after_a_batch_with_a_checkpoint_that_resumes(tmp_path):
    run_dir = tmp_path / "stopped"
    process = start_program("train.py", *STOPPABLE_TRAINING, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    lines = signal_when(process, signal.SIGTERM, lambda line: line.startswith("train: epoch 2/3, step 6/12"))
    assert process.returncode == exit_status(signal.SIGTERM) == 143, "".join(lines[-20:])
    last = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    # Written where it stopped, after the epoch-end last.ckpt (step 4) and before the run's end (step 12).
    assert (state["epoch"], 6 <= state["global_step"] < 12) == (1, True), state["global_step"]
    assert any(f"stopped by SIGTERM at epoch 1, step {state['global_step']}" in line for line in lines)

    resumed = train(
        compose_train_config([*STOPPABLE_TRAINING, f"ckpt_path={last}"], output_dir=tmp_path / "resumed")
    )
    final = torch.load(resumed.last_checkpoint, map_location="cpu", weights_only=True)
    assert (final["epoch"], final["global_step"]) == (2, 12)


def metrics_by_epoch(run_dir: Path) -> dict[int, float]:
    rows = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    scores = {}
    for row in rows[1:]:
        values = dict(zip(header, row.split(","), strict=True))
        if values["val/miou_clean"]:
            scores[int(values["epoch"])] = float(values["val/miou_clean"])
    return scores


@pytest.mark.slow
def test_sigint_during_validation_resumes_with_that_whole_validation(tmp_path):
    # Every validation batch attacked, so validation is long enough to be stopped in its middle.
    run = (*STOPPABLE_TRAINING, "dataset.val_source.num_images=16", "validation.attack_batches=null")
    stopped_dir = tmp_path / "stopped"
    process = start_program("train.py", *run, f"hydra.run.dir={stopped_dir}", cwd=tmp_path)
    lines = signal_when(
        process, signal.SIGINT, lambda line: "epoch 2/3, step 8/12, validation batch 2/4" in line
    )
    assert process.returncode == exit_status(signal.SIGINT) == 130, "".join(lines[-20:])
    assert any("stopping after this batch" in line for line in lines)
    last = stopped_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 8

    resumed = train(compose_train_config([*run, f"ckpt_path={last}"], output_dir=tmp_path / "resumed"))
    straight = train(compose_train_config(run, output_dir=tmp_path / "straight"))
    # Lightning alone skips the rest of a validation it resumes between two batches: epoch 1 would have no score.
    # Resumed, it runs again on the same weights: the same clean score as the run that was never stopped.
    resumed_scores = metrics_by_epoch(resumed.output_dir)
    assert sorted(resumed_scores) == [1, 2]
    assert resumed_scores[1] == metrics_by_epoch(straight.output_dir)[1]


@pytest.mark.slow
def test_sigterm_stops_evaluation_at_once_and_the_rerun_resumes_from_its_cache(tmp_path, trained_run):  # noqa: F811
    run_dir = tmp_path / "evaluation"
    arguments = [
        f"ckpt_path={trained_run / 'last.ckpt'}",
        "+dataset.val_source.num_images=16",
        "+dataset.val_batch_size=2",
        "suite=quick",
        "eps=[8/255]",
        "suite.iterations=null",
        "logger.mode=disabled",
        "progress_interval_s=0",
    ]
    process = start_program("evaluate.py", *arguments, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    lines = signal_when(process, signal.SIGTERM, lambda line: "batch 3/" in line and "PGD3" in line)
    assert process.returncode == exit_status(signal.SIGTERM), "".join(lines[-20:])
    assert f"evaluate: stopped by SIGTERM; every finished batch is kept under {run_dir}/cache" in "".join(
        lines
    )
    files = sorted((run_dir / "cache").rglob("*"))
    assert not [path for path in files if path.name.endswith(".tmp")], files
    batches = [path for path in files if path.name.startswith("batch-")]
    assert batches and all(torch.load(path, weights_only=True)["statistics"].ndim == 3 for path in batches)

    result = evaluate(compose_evaluate_config(arguments, output_dir=run_dir))
    assert sum(row.resumed_images for row in result.reports[0].rows) == len(batches) * 2


def test_interrupted_is_the_exit_status_of_its_signal():
    with pytest.raises(SystemExit) as caught:
        raise Interrupted(signal.SIGTERM)
    assert caught.value.code == 143 and str(caught.value) == "stopped by SIGTERM"


def test_a_cache_write_stopped_by_a_signal_leaves_no_file(tmp_path, monkeypatch):
    def stopped_save(payload, path):
        Path(path).write_bytes(b"half a file")
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(torch, "save", stopped_save)
    with pytest.raises(Interrupted):
        write_atomically(
            {"statistics": torch.zeros(2, 3, 4, dtype=torch.int64)}, tmp_path / "batches" / "0.pt"
        )
    assert [path.name for path in tmp_path.rglob("*")] == ["batches"]
