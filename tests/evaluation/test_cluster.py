"""evaluate.py at scale: two gloo processes give the single-process results.json exactly, a SIGKILLed run
resumes where it stopped, redirected output shows progress lines, the launchers compose (most slow:
subprocesses)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from eroseg_at.configs import CONF_DIR
from tests.conftest import REPO_ROOT

# Eight 32x32 images in four batches of two, the quick suite (three attacks at two budgets, a two-point curve):
# several batches per process and per pass, and a worst case with choices to compare.
SETTINGS = (
    "suite=quick",
    "+dataset.val_source.image_size=[32,32]",
    "+dataset.val_batch_size=2",
    "max_batches=4",
    "example_images=0",
    "logger.mode=disabled",
    "device=cpu",
    "progress_interval_s=0",
)
# One thread per process in every run, so that the CPU kernels do the same arithmetic in each process whatever
# the number of processes (Lightning would give each of two processes half the cores).
ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
VENV_BIN = Path(sys.executable).parent


def evaluate_command(checkpoint: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["evaluate.py", f"ckpt_path={checkpoint}", *SETTINGS, f"hydra.run.dir={run_dir}", *extra]


def run(command: list[str], log: Path, timeout: int = 900) -> None:
    with log.open("w") as handle:
        completed = subprocess.run(
            command, cwd=REPO_ROOT, env=ENVIRONMENT, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout
        )
    assert completed.returncode == 0, log.read_text()[-4000:]


def results(run_dir: Path) -> str:
    """Every model's images and rows, without what differs between runs (time, cache origin), as JSON text."""
    document = json.loads((run_dir / "results.json").read_text())
    varying = ("seconds", "images_per_second_per_iteration", "cached", "resumed_images")
    models = [
        {
            "images": model["images"],
            "rows": [{k: v for k, v in row.items() if k not in varying} for row in model["results"]],
        }
        for model in document["models"]
    ]
    return json.dumps(models, sort_keys=True)


@pytest.fixture(scope="module")
def single_process(trained_run, tmp_path_factory) -> Path:
    """The run directory of the suite in one process (the reference)."""
    run_dir = tmp_path_factory.mktemp("single")
    run([sys.executable, *evaluate_command(trained_run / "last.ckpt", run_dir)], run_dir / "log.txt")
    return run_dir


@pytest.mark.slow
def test_two_gloo_processes_write_the_results_of_one_process(trained_run, single_process, tmp_path):
    run_dir = tmp_path / "two"
    command = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2"]
    run(
        [*command, *evaluate_command(trained_run / "last.ckpt", run_dir, "distributed.devices=2")],
        tmp_path / "log",
    )
    two, one = (json.loads((d / "results.json").read_text()) for d in (run_dir, single_process))
    assert (two["processes"], one["processes"]) == (2, 1)
    # Every mIoU, per-class IoU, per-image accuracy and per-image worst-case choice, in the same image order.
    assert results(run_dir) == results(single_process)
    worst = [row for row in two["models"][0]["results"] if row["kind"] == "worst_case"]
    assert len(worst) == 2 and all(len(row["worst_case"]["miou_choice"]) == 8 for row in worst)
    # Rank 0 alone reports progress, for its share (2 of the 4 batches of each pass).
    log = (tmp_path / "log").read_text()
    assert "run 2/9 PGD3 @4/255, batch 2/2 (images 4/4) on rank 0 of 2" in log and "batch 1/2" in log


@pytest.mark.slow
def test_a_killed_evaluation_reruns_only_what_is_missing(trained_run, single_process, tmp_path):
    run_dir = tmp_path / "killed"
    cache = run_dir / "cache"
    command = [sys.executable, *evaluate_command(trained_run / "last.ckpt", run_dir)]
    log = tmp_path / "first.log"
    with log.open("w") as handle:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=ENVIRONMENT, stdout=handle, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 600
        # Kill it once its first two passes (clean, PGD3 @4/255) are finished.
        while len(list(cache.glob("*.pt"))) < 2:
            assert process.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finished = len(list(cache.glob("*.pt")))
    assert process.returncode == -signal.SIGKILL and finished < 9
    # Its output, redirected to a file, has plain progress lines.
    assert "evaluate: model 1/1 last.ckpt, run 1/9 clean, batch 1/4 (images 2/8), elapsed " in log.read_text()
    run(command, tmp_path / "rerun.log")
    document = json.loads((run_dir / "results.json").read_text())
    keys = [f"{key}@{budget}" for budget in ("4/255", "8/255") for key in ("pgd3", "segpgd3", "eroseg3")]
    keys = ["clean@0", *keys, "pgd@1@8/255", "pgd@2@8/255"]
    assert document["cache"]["members_from_cache"]["last.ckpt"] == keys[:finished]
    rows = document["models"][0]["results"]
    computed = [row for row in rows if row["kind"] != "worst_case" and not row["cached"]]
    assert len(computed) == 9 - finished
    assert results(run_dir) == results(single_process)
    # A rerun of the finished evaluation computes nothing.
    run(command, tmp_path / "again.log")
    again = json.loads((run_dir / "results.json").read_text())
    assert all(row["cached"] for row in again["models"][0]["results"] if row["kind"] != "worst_case")


@pytest.mark.slow
def test_a_sweep_through_the_submitit_launcher_evaluates_each_point(trained_run, tmp_path):
    sweep = tmp_path / "sweep"
    # Hydra takes -m before the overrides (hydra.run.dir among them is unused in a sweep).
    evaluate_py, *overrides = evaluate_command(trained_run / "last.ckpt", tmp_path / "unused")
    command = [
        sys.executable,
        evaluate_py,
        "-m",
        *overrides,
        "hydra/launcher=local",
        "eps=[4/255],[8/255]",
        f"hydra.sweep.dir={sweep}",
        "suite.iterations=null",
        "~suite.attacks.eroseg3",
    ]
    run(command, tmp_path / "log")
    for job, budget in ((0, "4/255"), (1, "8/255")):
        document = json.loads((sweep / str(job) / "results.json").read_text())
        assert {row["eps_text"] for row in document["models"][0]["results"] if row["kind"] == "attack"} == {
            budget
        }


def test_the_slurm_launcher_of_evaluation_takes_its_sizes_from_the_distributed_group():
    overrides = [
        "hydra/launcher=slurm_evaluate",
        "distributed.devices=4",
        "distributed.num_nodes=2",
        "ckpt_path=x",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("evaluate", overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    assert launcher._target_.endswith("SlurmLauncher")
