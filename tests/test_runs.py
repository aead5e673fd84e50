"""Whole runs of train.py as a user starts them: sweeps, launchers, kill and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from eroseg_at.configs import CONF_DIR
from tests.conftest import REPO_ROOT, TINY_SHAPES

ENV = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}


def run_train(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]
    return completed


def test_multirun_sweep_gives_each_job_its_own_directory_and_wandb_run(tmp_path):
    run_train(
        "-m",
        *TINY_SHAPES,
        "schedule.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "validation.attacks.pgd10.steps=1",
        # ++: Hydra composes the sweep's shared overrides before the attack group is chosen (attack=none).
        "++attack.steps=1",
        "attack=pgd,eroseg",
        "attack.eps=4/255,8/255",
        f"hydra.sweep.dir={tmp_path}",
    )
    jobs = sorted(path for path in tmp_path.iterdir() if path.is_dir() and path.name.isdigit())
    assert [job.name for job in jobs] == ["0", "1", "2", "3"]
    seen, wandb_runs = set(), set()
    for job in jobs:
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        attack = next(o for o in overrides if o.startswith("attack="))
        eps = next(o for o in overrides if o.startswith("attack.eps="))
        seen.add((attack, eps))
        config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        assert config["attack"]["eps"] == eps.split("=")[1]
        assert (job / "checkpoints" / "last.ckpt").is_file()
        # One W&B run per job, in the job's own directory: runs of a sweep never merge.
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, f"{job}: {runs}"
        wandb_runs.add(runs[0].name)
    assert seen == {(f"attack={a}", f"attack.eps={e}") for a in ("pgd", "eroseg") for e in ("4/255", "8/255")}
    assert len(wandb_runs) == 4


def test_slurm_launcher_config_takes_nodes_and_gpus_from_the_trainer():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 4, 4)


@pytest.mark.slow
def test_tiny_multirun_with_the_local_submitit_launcher(tmp_path):
    run_train(
        "-m",
        "hydra/launcher=local",
        "debug=fdr",
        *TINY_SHAPES,
        "validation.attacks.pgd10.steps=1",
        # ++: Hydra composes the sweep's shared overrides before the attack group is chosen (attack=none).
        "++attack.steps=1",
        "attack=pgd,eroseg",
        f"hydra.sweep.dir={tmp_path}",
    )
    results = sorted(tmp_path.glob("*/.hydra/overrides.yaml"))
    assert len(results) == 2
    logs = list((tmp_path / ".submitit").rglob("*_log.out"))
    assert any("final val mIoU (clean)" in log.read_text() for log in logs)


@pytest.mark.slow
def test_a_killed_run_resumes_from_last_ckpt_to_the_same_epoch_count(tmp_path):
    epochs = 4
    common = [
        *TINY_SHAPES,
        "logger=csv",
        f"schedule.max_epochs={epochs}",
        "validation.attack_batches=1",
        "validation.attacks.pgd10.steps=1",
    ]
    first_dir = tmp_path / "first"
    process = subprocess.Popen(
        [sys.executable, "train.py", *common, f"hydra.run.dir={first_dir}"],
        cwd=REPO_ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = first_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if last.is_file() and epoch_of(last) >= 1:
                break
            time.sleep(0.5)
        assert process.poll() is None, "the run finished before it could be killed; make it longer"
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    killed_at = epoch_of(last)
    assert killed_at < epochs - 1

    resumed_dir = tmp_path / "resumed"
    completed = run_train(*common, f"ckpt_path={last}", f"hydra.run.dir={resumed_dir}")
    final = torch.load(resumed_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["epoch"] == epochs - 1
    steps_per_epoch = 16 // 4
    assert final["global_step"] == epochs * steps_per_epoch
    assert all(torch.isfinite(v).all() for v in final["state_dict"].values() if v.is_floating_point())
    assert "final val mIoU (clean)" in completed.stdout


def epoch_of(checkpoint: Path) -> int:
    # The file may be mid-write when polled; a partial file reads as "not yet".
    try:
        return torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"]
    except Exception:
        return -1
