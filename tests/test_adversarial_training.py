"""Adversarial training in the LightningModule: the AT step, schedules, DDP, precision, bad input."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from eroseg_at.training.module import AdversarialTraining
from eroseg_at.training.runner import build_module, train


class RecordingAttack:
    """Stands in for an attack: records what it was called with and returns a fixed perturbation."""

    name = "recording"

    def __init__(self, eps: float = 8 / 255) -> None:
        self.eps = eps
        self.calls: list[dict] = []

    def __call__(self, model, images, labels):
        self.calls.append(
            {
                "model": model,
                "batch": images.shape[0],
                "eps": self.eps,
                "grad_enabled": torch.is_grad_enabled(),
                "training_flags": [m.training for m in model.modules()],
            }
        )
        return (images + self.eps).clamp(0, 1)


def build_parts(cfg):
    datamodule = instantiate(cfg.dataset)
    return build_module(cfg, instantiate(cfg.model), datamodule), datamodule


def quiet_cpu_trainer(tmp_path, **trainer_kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
        default_root_dir=tmp_path,
        **trainer_kwargs,
    )


def fit(module, datamodule, tmp_path, **trainer_kwargs):
    trainer = quiet_cpu_trainer(
        tmp_path, **{"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1, **trainer_kwargs}
    )
    trainer.fit(module, datamodule=datamodule)
    return trainer


def test_training_step_attacks_the_raw_model_and_trains_on_clean_plus_adversarial(
    tiny_train_config, tmp_path
):
    module, datamodule = build_parts(tiny_train_config("validation.attacks=null"))
    attack = RecordingAttack()
    module.train_attack = attack
    module._train_attack_eps = attack.eps
    trainer = fit(module, datamodule, tmp_path)
    assert len(attack.calls) == 2
    assert all(call["model"] is module.model for call in attack.calls)
    assert all(call["batch"] == 4 for call in attack.calls)  # the whole batch (clean_plus_adv)
    metrics = trainer.callback_metrics
    for key in ("train/loss_clean", "train/loss_adv", "train/flip_rate"):
        assert key in metrics
    assert metrics["train/loss"] == pytest.approx(
        float(metrics["train/loss_clean"] + metrics["train/loss_adv"]), rel=1e-5
    )


def test_half_adversarial_objective_attacks_half_of_each_batch(tiny_train_config, tmp_path):
    module, datamodule = build_parts(
        tiny_train_config("validation.attacks=null", "adversarial.objective=half_adv")
    )
    attack = RecordingAttack()
    module.train_attack = attack
    module._train_attack_eps = attack.eps
    trainer = fit(module, datamodule, tmp_path)
    assert [call["batch"] for call in attack.calls] == [2, 2]
    assert "train/adv_error_rate" in trainer.callback_metrics


def test_eps_ramps_linearly_over_the_warmup_epochs(tiny_train_config, tmp_path):
    cfg = tiny_train_config("attack=pgd", "adversarial.eps_warmup_epochs=4", "validation.attacks=null")
    module, datamodule = build_parts(cfg)
    full = 8 / 255
    assert [module.train_attack_eps(epoch) for epoch in range(6)] == pytest.approx(
        [full / 4, full / 2, 3 * full / 4, full, full, full]
    )
    attack = RecordingAttack(eps=full)
    module.train_attack, module._train_attack_eps = attack, full
    fit(module, datamodule, tmp_path, max_epochs=2, limit_train_batches=1, limit_val_batches=0)
    assert [call["eps"] for call in attack.calls] == pytest.approx([full / 4, full / 2])


def test_the_training_attack_takes_its_steps_from_attack_steps_alone(tiny_train_config):
    default, _ = build_parts(tiny_train_config("attack=eroseg"))
    assert default.train_attack.steps == 3  # EroSeg-AT's
    module, _ = build_parts(tiny_train_config("attack=eroseg", "attack.steps=7"))
    assert module.train_attack.steps == 7 and module.train_attack.name == "eroseg"
    # Validation attacks are separate objects with their own settings (PGD-10 at the training eps).
    assert module.validation.attacks["pgd10"].steps == 10
    assert module.validation.attacks["pgd10"].eps == pytest.approx(8 / 255)
    # The key that once overrode attack.steps is gone: a command that still sets it is refused by name.
    with pytest.raises(Exception, match="attack_steps"):
        tiny_train_config("attack=eroseg", "adversarial.attack_steps=7")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("attack.eps=-0.1", "eps must lie in \\[0, 1\\]"),
        ("attack.eps=2", "eps must lie in \\[0, 1\\]"),
        ("attack.eps=8/zero", "eps must be a number or a fraction"),
        ("attack.steps=0", "steps must be an integer >= 1"),
        ("attack.alpha=0", "alpha must be > 0"),
    ],
)
def test_bad_attack_settings_are_refused_before_training(tiny_train_config, override, message):
    with pytest.raises(Exception, match=message):
        train(tiny_train_config("attack=pgd", override))


def test_unknown_objective_is_refused(tiny_train_config):
    with pytest.raises(ValueError, match="unknown adversarial objective 'half'; expected one of"):
        AdversarialTraining(objective="half")


def test_nan_loss_stops_with_epoch_and_batch_and_keeps_the_last_good_checkpoint(
    tiny_train_config, monkeypatch
):
    cfg = tiny_train_config("schedule.max_epochs=2", "validation.attacks=null")
    calls = {"n": 0}
    from eroseg_at.training import module as module_file

    real_loss = module_file.SegmentationModule.loss

    def loss_that_breaks_in_epoch_1(self, logits, labels):
        loss = real_loss(self, logits, labels)
        if self.training and self.current_epoch == 1:
            calls["n"] += 1
            if calls["n"] == 2:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(module_file.SegmentationModule, "loss", loss_that_breaks_in_epoch_1)
    with pytest.raises(FloatingPointError, match="training loss became nan at epoch 1, batch 1"):
        train(cfg)
    last = cfg.paths.output_dir + "/checkpoints/last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 0
    assert all(
        torch.isfinite(value).all()
        for value in checkpoint["state_dict"].values()
        if value.is_floating_point()
    )


def test_bf16_mixed_precision_adversarial_step_runs_on_cpu(tiny_train_config):
    result = train(
        tiny_train_config("attack=eroseg", "debug=fdr", "trainer.precision=bf16-mixed", "attack.steps=2")
    )
    assert 0.0 <= result.validation.miou["clean"] <= 100.0
    assert 0.0 <= result.validation.miou["pgd10"] <= 100.0


def test_ddp_spawn_adversarial_training_and_synced_validation_match_one_process(tiny_train_config, tmp_path):
    # Deterministic validation attack, so one process and two processes must agree exactly.
    overrides = (
        "attack=eroseg",
        "attack.steps=1",
        "validation.attacks.pgd10.random_start=false",
        "validation.attacks.pgd10.steps=2",
        "validation.attack_batches=null",
        "schedule.max_epochs=1",
        "dataset.train_source.num_images=16",
        "dataset.val_source.num_images=16",
    )
    cfg = tiny_train_config(*overrides, "trainer.strategy=ddp_spawn", "trainer.devices=2")
    result = train(cfg)  # an adversarial training epoch on 2 processes (gloo)
    assert result.last_checkpoint is not None and result.last_checkpoint.is_file()

    module, datamodule = build_parts(cfg)
    weights = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(weights)

    def validate(**kwargs):
        trainer = quiet_cpu_trainer(tmp_path, **kwargs)
        return trainer.validate(module, datamodule=datamodule, verbose=False)[0]

    one = validate(devices=1)
    two = validate(devices=2, strategy="ddp_spawn")
    for key in ("val/miou_clean", "val/miou_pgd10", "val/pixel_accuracy_clean"):
        assert two[key] == pytest.approx(one[key], abs=1e-6), key
