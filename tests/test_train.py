"""The training entry point: configs compose, bad input is refused early, train.py runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from eroseg_at.configs import CONF_DIR
from eroseg_at.data import DatasetError
from eroseg_at.training.runner import build_logger, build_train_attack, train
from tests.conftest import REPO_ROOT, TINY_SHAPES, compose_train_config


def group_options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def smp_model_options() -> list[str]:
    """The model options that build an SMP architecture by name (the others read a user's files:
    tests/models builds each of them from files made in the test)."""
    return [
        option
        for option in group_options("model")
        if compose_train_config([f"model={option}"], output_dir="unused").model._target_
        == "eroseg_at.models.build_model"
    ]


@pytest.mark.parametrize("option", smp_model_options())
def test_every_model_option_builds(option, tmp_path):
    cfg = compose_train_config([f"model={option}"], output_dir=tmp_path)
    model = instantiate(cfg.model)
    assert model.num_classes == cfg.dataset.num_classes
    # DDP (find_unused_parameters: false) fails on a parameter the loss never reaches.
    parameters = list(model.parameters())
    logits = model(torch.rand(2, 3, *cfg.dataset.crop_size))
    gradients = torch.autograd.grad(logits.square().mean(), parameters, allow_unused=True)
    assert all(g is not None for g in gradients), [
        name for (name, _), g in zip(model.named_parameters(), gradients, strict=True) if g is None
    ]


@pytest.mark.parametrize("option", smp_model_options())
def test_every_model_option_trains_a_fast_dev_run(option, tiny_train_config):
    result = train(tiny_train_config(f"model={option}", "debug=fdr"))
    assert 0.0 <= result.validation.miou["clean"] <= 100.0


@pytest.mark.parametrize("option", group_options("attack"))
def test_every_attack_option_builds(option, tmp_path):
    cfg = compose_train_config([f"attack={option}"], output_dir=tmp_path)
    attack = build_train_attack(cfg)
    if option == "none":
        assert attack is None
    elif option == "square":
        # Square counts queries, not gradient steps: its own 1000, or the steps given, by the same key as any other.
        assert attack.queries == 1000 and cfg.attack.steps is None and "queries" in cfg.attack
        given = compose_train_config([f"attack={option}", "attack.steps=5"], output_dir=tmp_path)
        assert build_train_attack(given).queries == 5
    else:
        # The training default is 3 iterations; a preset that carries its paper's budget (PAdam: 200) keeps it.
        assert attack.name and attack.steps == cfg.attack.steps
        assert cfg.attack.steps == (200 if option.startswith("padam") else 3)


@pytest.mark.parametrize("option", group_options("schedule"))
def test_every_schedule_option_builds_its_optimizer(option, tmp_path):
    cfg = compose_train_config([f"schedule={option}"], output_dir=tmp_path)
    optimizer = instantiate(cfg.schedule.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    assert optimizer.param_groups[0]["lr"] == cfg.schedule.optimizer.lr
    scheduler = instantiate(cfg.schedule.lr_scheduler)(optimizer, 100)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)


def test_an_optimizer_the_project_never_names_is_one_line_of_yaml(tiny_train_config):
    # RAdam appears nowhere in the code or in conf/: the schedule group builds whatever _target_ names,
    # with whatever settings it takes.
    cfg = tiny_train_config(
        "~schedule.optimizer.betas",
        "schedule.optimizer._target_=torch.optim.RAdam",
        "+schedule.optimizer.decoupled_weight_decay=true",
        "schedule.max_epochs=1",
        "trainer.limit_train_batches=1",
        "validation.attacks=null",
    )
    result = train(cfg)
    state = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    (group,) = state["optimizer_states"][0]["param_groups"]
    assert state["global_step"] == 1 and group["decoupled_weight_decay"] is True
    assert "RAdam" in type(instantiate(cfg.schedule.optimizer)([torch.nn.Parameter(torch.ones(1))])).__name__


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("eroseg_at.training.optim.cosine_schedule", [0.5, 1.0, 1.0, 0.5, 0.0]),
        ("eroseg_at.training.optim.poly_schedule", [0.5, 1.0, 1.0, 0.5**0.9, 0.0]),
        ("eroseg_at.training.optim.constant_schedule", [0.5, 1.0, 1.0, 1.0, 1.0]),
    ],
)
def test_lr_schedules_warm_up_linearly_then_decay_per_optimizer_step(schedule, expected):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = instantiate({"_target_": schedule, "_partial_": True, "warmup_steps": 2})(optimizer, 4)
    factors = []
    for _ in range(5):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert factors == pytest.approx(expected)


@pytest.mark.parametrize("option", group_options("trainer"))
def test_every_trainer_option_instantiates_without_inference_mode(option, tmp_path):
    cfg = compose_train_config([f"trainer={option}"], output_dir=tmp_path)
    assert cfg.trainer.inference_mode is False
    # No GPU here: the same config, pointed at the CPU, must still build a Trainer.
    cpu = OmegaConf.merge(cfg.trainer, {"accelerator": "cpu", "devices": 1, "precision": "32-true"})
    trainer = instantiate(cpu, logger=False, enable_checkpointing=False)
    assert trainer.max_epochs == cfg.schedule.max_epochs


@pytest.mark.parametrize("option", group_options("logger"))
def test_every_logger_option_instantiates(option, tmp_path):
    cfg = compose_train_config([f"logger={option}"], output_dir=tmp_path)
    logger = build_logger(cfg)
    if option == "none":
        assert logger is False
    else:
        assert str(tmp_path) in str(logger.save_dir)
    if option == "wandb":
        assert cfg.logger.offline is True and cfg.logger.log_model is False


@pytest.mark.parametrize("option", group_options("debug") + group_options("experiment"))
def test_every_debug_and_experiment_option_composes(option, tmp_path):
    group = "debug" if option in group_options("debug") else "experiment"
    cfg = compose_train_config([f"{group}={option}"], output_dir=tmp_path)
    OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("option", group_options("dataset"))
def test_every_dataset_option_composes_with_the_shared_keys(option, tmp_path):
    cfg = compose_train_config([f"dataset={option}"], output_dir=tmp_path)
    for key in ("name", "num_classes", "class_names", "ignore_index", "background_class", "crop_size"):
        assert key in cfg.dataset, f"dataset={option} lacks {key}"
    assert cfg.dataset.ignore_index == 255


def test_unknown_group_option_is_refused_by_hydra(tmp_path):
    with pytest.raises(ConfigCompositionException, match="deeplabv9"):
        compose_train_config(["model=deeplabv9"], output_dir=tmp_path)


def test_wrong_num_classes_is_refused_before_training(tiny_train_config):
    # Raised by the datamodule (a DatasetError, re-raised as it is rather than wrapped by Hydra).
    with pytest.raises(DatasetError, match=r"dataset shapes: class_names has 7 entries but num_classes=5"):
        train(tiny_train_config("dataset.num_classes=5"))
    with pytest.raises(ValueError, match=r"model.num_classes=3 does not match dataset.num_classes=7"):
        train(tiny_train_config("model.num_classes=3"))


def test_crop_size_not_divisible_by_the_architecture_is_refused(tiny_train_config):
    with pytest.raises(ValueError, match=r"dataset.crop_size=\[72, 72\] is not divisible by 16"):
        train(tiny_train_config("model=deeplabv3plus", "dataset.crop_size=[72,72]"))


def test_missing_encoder_weights_file_is_refused_before_training(tiny_train_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="encoder_weights_path=.*missing.pt does not exist"):
        train(tiny_train_config(f"model.encoder_weights_path={tmp_path / 'missing.pt'}"))


# Loaded by the subprocess's interpreter at start-up: every host-name lookup other than loopback is
# recorded and refused, so any network access of the run (update checks, downloads) shows up.
NETWORK_GUARD = """
import os, socket
_lookup = socket.getaddrinfo
def _guarded(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if name not in (None, "", "localhost", "::1") and not str(name).startswith("127."):
        with open(os.environ["NETWORK_LOG"], "a") as log:
            log.write(f"{name}\\n")
        raise OSError(f"network access refused by the test: {name}")
    return _lookup(host, *args, **kwargs)
socket.getaddrinfo = _guarded
"""


def test_train_py_debug_fdr_runs_as_a_subprocess_without_network(tmp_path):
    guard_dir = tmp_path / "guard"
    guard_dir.mkdir()
    (guard_dir / "sitecustomize.py").write_text(NETWORK_GUARD)
    network_log = tmp_path / "network.log"
    env = {key: value for key, value in os.environ.items() if key != "NO_ALBUMENTATIONS_UPDATE"}
    env.update(
        WANDB_SILENT="true",
        NETWORK_LOG=str(network_log),
        PYTHONPATH=os.pathsep.join(filter(None, [str(guard_dir), env.get("PYTHONPATH")])),
    )
    run_dir = tmp_path / "run"
    completed = subprocess.run(
        [sys.executable, "train.py", "debug=fdr", *TINY_SHAPES, f"hydra.run.dir={run_dir}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "final val mIoU (clean):" in completed.stdout
    assert f"run directory: {run_dir}" in completed.stdout
    assert not network_log.exists(), f"the run looked up {network_log.read_text().split()}"


def test_last_ckpt_follows_every_epoch_even_when_the_best_does_not(tiny_train_config):
    # Monitoring the epoch with mode=min makes epoch 0 the best for good, so every later
    # epoch is "no improvement": last.ckpt must still move on (Lightning 2.6's save_last did not).
    cfg = tiny_train_config(
        "schedule.max_epochs=3",
        "callbacks.best_checkpoint.monitor=epoch",
        "callbacks.best_checkpoint.mode=min",
        "trainer.limit_train_batches=1",
        "validation.attack_batches=0",
    )
    result = train(cfg)
    last = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (2, 3)
    assert result.best_checkpoint.name == "best-epoch000.ckpt"


@pytest.mark.parametrize("option", group_options("dataset"))
def test_the_augmentation_seed_follows_the_run_seed(option, tmp_path):
    cfg = compose_train_config([f"dataset={option}", "seed=7"], output_dir=tmp_path)
    assert cfg.dataset.seed == 7


def test_experiment_and_debug_overlays_override_the_entry_config(tmp_path):
    # The entry config's groups and keys (callbacks, validation) must not win over an overlay that sets them.
    cfg = compose_train_config(["experiment=shapes_eroseg_at"], output_dir=tmp_path)
    assert cfg.callbacks.best_checkpoint.monitor == "val/miou_pgd10"
    assert compose_train_config(["debug=fdr"], output_dir=tmp_path).validation.attack_batches == 1
    # The command line still wins over both.
    cfg = compose_train_config(
        ["experiment=shapes_eroseg_at", "callbacks.best_checkpoint.monitor=val/loss"], output_dir=tmp_path
    )
    assert cfg.callbacks.best_checkpoint.monitor == "val/loss"
