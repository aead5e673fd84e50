"""Amortised adversarial training: the attack's step_from, the perturbation store, the accumulated and
single-step modes, the adv-only objective, resume, DDP, the collapse guard and the erosion records."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from eroseg_at.attacks import EroSeg, build_attack
from eroseg_at.data.geometry import SampleGeometry
from eroseg_at.training.amortised import (
    AccumulatedPerturbations,
    AccumulatedSettings,
    SingleStepSettings,
    single_step_adversarial,
)
from eroseg_at.training.callbacks import RobustCollapseGuard
from eroseg_at.training.erosion import ErosionRecord, common_window, erosion_figure, load_records, panels_of
from eroseg_at.training.module import AdversarialTraining
from eroseg_at.training.perturbations import LAST_EPOCH, STEPS, VISITS, PerturbationStore
from eroseg_at.training.runner import train
from tests.test_adversarial_training import RecordingAttack, build_parts, fit

EPS = 8 / 255


class PixelModel(nn.Module):
    """A per-pixel linear classifier (1x1 convolution): the attacks' gradients are exact and cheap. Its
    weights are scaled so that its confidences span EroSeg's thresholds (about 0.4 to 0.93)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, classes, 1)
        self.norm = nn.BatchNorm2d(3)
        with torch.no_grad():
            self.conv.weight.mul_(6)

    def forward(self, x):
        return self.conv(self.norm(x))


def batch(count=2, size=8, classes=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 3, size, size, generator=generator)
    labels = torch.randint(0, classes, (count, size, size), generator=generator)
    return images, labels


def identity_geometry(indices, size=8, flipped=None):
    rows = [SampleGeometry.from_applied(i, (size, size), []) for i in indices]
    geometry = SampleGeometry.concatenate(rows)
    if flipped is not None:
        geometry.flipped = torch.tensor(flipped)
    return geometry


# ----------------------------------------------------------------------------------------- step_from
def test_step_from_uses_each_images_own_iteration_like_separate_calls():
    model, attack = PixelModel(), build_attack("eroseg", steps=1, background_class=None)
    images, labels = batch(3)
    start = (images + 0.01).clamp(0, 1)
    together = attack.step_from(model, images, labels, start, torch.tensor([0, 4, 1]))
    for b, k in enumerate([0, 4, 1]):
        alone = attack.step_from(
            model, images[b : b + 1], labels[b : b + 1], start[b : b + 1], torch.tensor([k])
        )
        assert torch.equal(together[b], alone[0])
    # The thresholds differ, so the steps differ: iteration 4 attacks a larger set than iteration 0.
    first = attack.step_from(model, images, labels, start, torch.tensor([0, 0, 0]))
    assert not torch.equal(first[1], together[1])


def test_step_from_keeps_the_contract_and_radius_one_leaves_the_ball():
    model, attack = PixelModel(), build_attack("pgd", steps=1)
    model.train()
    images, labels = batch()
    start = (images + 2 * EPS * torch.sign(torch.randn_like(images))).clamp(0, 1)
    projected = attack.step_from(model, images, labels, start, torch.zeros(2, dtype=torch.int64), alpha=EPS)
    assert (projected - images).abs().max() <= EPS + 1e-6
    free = attack.step_from(
        model, images, labels, start, torch.zeros(2, dtype=torch.int64), alpha=EPS, radius=1.0
    )
    assert (free - images).abs().max() > 2 * EPS and free.min() >= 0 and free.max() <= 1
    assert model.training and model.norm.training and model.conv.weight.grad is None
    with pytest.raises(ValueError, match="iterations must be a non-negative integer tensor of shape \\[2\\]"):
        attack.step_from(model, images, labels, start, torch.zeros(3, dtype=torch.int64))


# ------------------------------------------------------------------------------------------ the store
def test_store_is_int8_in_units_of_eps_over_127_and_bounded_in_eps(tmp_path):
    store = PerturbationStore(tmp_path, [(4, 5), (6, 6)], EPS, create=True)
    assert store.values.dtype == np.int8 and store.bytes_per_image == (3 * 20 + 3 * 36) / 2 + 12
    wanted = [torch.linspace(-2 * EPS, 2 * EPS, 60).view(3, 4, 5), torch.full((3, 6, 6), 0.3 * EPS)]
    store.write([0, 1], wanted)
    first, second = store.read([0, 1], EPS)
    assert first.abs().max() == pytest.approx(EPS) and first.shape == (3, 4, 5)
    inside = wanted[0].abs() <= EPS
    assert (first - wanted[0])[inside].abs().max() <= EPS / 254 + 1e-7
    assert (second - 0.3 * EPS).abs().max() <= EPS / 254 + 1e-7
    # A smaller eps (the warm-up ramp) clips what was stored at the full one.
    assert store.read([0], EPS / 2)[0].abs().max() == pytest.approx(EPS / 2)
    with pytest.raises(ValueError, match="holds another layout"):
        PerturbationStore(tmp_path, [(4, 5)], EPS, create=False)


def test_store_copy_carries_values_and_counters(tmp_path):
    old = PerturbationStore(tmp_path / "old", [(4, 4)] * 3, EPS, create=True)
    old.write([1], [torch.full((3, 4, 4), EPS / 2)])
    old.counters[1] = (5, 2, 7)
    old.flush()
    new = PerturbationStore(tmp_path / "new", [(4, 4)] * 3, EPS, create=True)
    new.copy_from(tmp_path / "old")
    assert torch.allclose(new.read([1], EPS)[0], torch.tensor(EPS / 2), atol=EPS / 254)
    assert new.counters[1].tolist() == [5, 2, 7] and not new.counters[0].any()


# ----------------------------------------------------------------------------- the accumulated visit
class SpyEroSeg(EroSeg):
    """EroSeg that records the start and iteration indices of every step_from."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.starts, self.iterations = [], []

    def step_from(self, model, images, labels, start, iterations, alpha=None, radius=None):
        self.starts.append(start.clone())
        self.iterations.append(iterations.tolist())
        return super().step_from(model, images, labels, start, iterations, alpha, radius)


def accumulated(tmp_path, count=4, restart_visits=4, steps=1, stale_epochs=2):
    attack = SpyEroSeg(steps=1, background_class=None)
    store = PerturbationStore(tmp_path, [(8, 8)] * count, EPS, create=True)
    settings = AccumulatedSettings(steps=steps, restart_visits=restart_visits, stale_epochs=stale_epochs)
    return AccumulatedPerturbations(settings, attack, store), attack, store


def test_a_visit_stores_the_perturbation_in_image_coordinates_and_the_next_visit_continues_it(tmp_path):
    amortised, attack, store = accumulated(tmp_path)
    model = PixelModel()
    images, labels = batch(2)
    flipped = identity_geometry([0, 1], flipped=[True, False])
    x, first = amortised.adversarial(model, images, labels, flipped, epoch=0)
    assert first.restarted == 1.0 and first.mean_iteration == 0.0
    assert (x - images).abs().max() <= EPS + 1e-6
    stored = store.read([0, 1], EPS)
    # Image 0 was flipped: what is stored is the un-flipped perturbation (to the store's rounding).
    assert torch.allclose(stored[0], (x[0] - images[0]).flip(-1), atol=EPS / 254 + 1e-6)
    assert torch.allclose(stored[1], x[1] - images[1], atol=EPS / 254 + 1e-6)
    assert store.counters[[0, 1]].tolist() == [[1, 1, 0], [1, 1, 0]]
    # Next epoch image 0 comes unflipped: it starts from the stored perturbation, at iteration 1 (its τ_1).
    _, second = amortised.adversarial(model, images, labels, identity_geometry([0, 1]), epoch=1)
    assert attack.iterations[-1] == [1, 1] and second.restarted == 0.0
    assert torch.allclose(attack.starts[-1], (images + torch.stack(stored)).clamp(0, 1), atol=1e-6)
    assert store.counters[[0, 1], STEPS].tolist() == [2, 2]


def test_restarts_at_the_first_visit_then_every_r_visits_staggered_and_when_stale(tmp_path):
    amortised, _, _ = accumulated(tmp_path, count=4, restart_visits=3, stale_epochs=2)
    indices = torch.arange(4)

    def restarts(visits, last_epoch, epoch):
        counters = torch.zeros(4, 3, dtype=torch.int32)
        counters[:, VISITS], counters[:, LAST_EPOCH] = visits, last_epoch
        return amortised.restarts(indices, counters, epoch).tolist()

    assert restarts(0, 0, 0) == [True] * 4
    # Visit v of image i restarts when (v + i) % R == 0: a third of the images per epoch, not all at once.
    assert restarts(1, 0, 1) == [False, False, True, False]
    assert restarts(2, 1, 2) == [False, True, False, False]
    assert restarts(3, 2, 3) == [True, False, False, True]
    assert restarts(1, 0, 3) == [True] * 4  # last visit 3 epochs ago > stale_epochs


def test_several_steps_per_visit_walk_the_iteration_indices(tmp_path):
    amortised, attack, store = accumulated(tmp_path, count=2, steps=2)
    images, labels = batch(2)
    amortised.adversarial(PixelModel(), images, labels, identity_geometry([0, 1]), epoch=0)
    amortised.adversarial(PixelModel(), images, labels, identity_geometry([0, 1]), epoch=1)
    assert attack.iterations == [[0, 0], [1, 1], [2, 2], [3, 3]]
    assert store.counters[:, VISITS].tolist() == [2, 2]


# -------------------------------------------------------------------------------------- single step
@pytest.mark.parametrize(("clip", "bound"), [(False, 3 * EPS), (True, EPS)])
def test_single_step_starts_in_the_wide_box_and_clips_only_when_asked(clip, bound):
    attack = SpyEroSeg(steps=1, background_class=None)
    images, labels = batch(4, size=16)
    images = images * 0.5 + 0.25  # away from [0, 1]'s edges, so only the ball bounds the perturbation
    x = single_step_adversarial(attack, SingleStepSettings(clip=clip), PixelModel(), images, labels)
    start = attack.starts[0] - images
    assert start.abs().max() > 1.5 * EPS and start.abs().max() <= 2 * EPS + 1e-6
    assert attack.iterations == [[0, 0, 0, 0]]
    reach = (x - images).abs().max()
    assert reach <= bound + 1e-6 and (reach > EPS + 1e-3) == (not clip)


# ------------------------------------------------------------------------- objectives and bad input
def test_adv_only_objective_trains_on_the_adversarial_batch_alone(tiny_train_config, tmp_path):
    module, datamodule = build_parts(
        tiny_train_config("validation.attacks=null", "adversarial.objective=adv_only")
    )
    attack = RecordingAttack()
    module.train_attack, module._train_attack_eps = attack, attack.eps
    calls = []
    forward = module.model.forward
    module.model.forward = lambda x: calls.append(x.shape[0]) or forward(x)
    trainer = fit(module, datamodule, tmp_path, limit_val_batches=0)
    assert [call["batch"] for call in attack.calls] == [4, 4]
    assert calls == [4, 4]  # one forward of B adversarial images per update, no clean half
    metrics = trainer.callback_metrics
    assert metrics["train/loss"] == pytest.approx(float(metrics["train/loss_adv"]))
    assert "train/loss_clean" not in metrics


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("adversarial.mode=accumulated",), "adversarial.mode=accumulated needs a training attack"),
        (("attack=apgd", "adversarial.mode=single_step"), "needs an attack on the shared PGD loop"),
        (
            ("attack=pgd", "attack.norm=l2", "adversarial.mode=single_step"),
            "N-FGSM\\) is defined for attack.norm=linf",
        ),
        (("attack=pgd", "adversarial.mode=few_step"), "unknown adversarial mode 'few_step'"),
        (
            ("attack=pgd", "adversarial.accumulated.restart_visits=0"),
            "restart_visits must be an integer >= 1",
        ),
    ],
)
def test_bad_mode_settings_are_refused_before_training(tiny_train_config, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(tiny_train_config(*overrides))


def test_default_mode_is_todays_multi_step_training():
    adversarial = AdversarialTraining()
    assert adversarial.mode == "multi_step" and adversarial.objective == "clean_plus_adv"


# ---------------------------------------------------------------------- end to end, resume and DDP
# 32-px images: the smallest the default model takes, to keep these runs within seconds.
SMALL = ("dataset.train_source.image_size=[32,32]", "dataset.crop_size=[32,32]")
ACCUMULATED = (
    *SMALL,
    "attack=eroseg",
    "adversarial.mode=accumulated",
    "validation.attacks=null",
    "callbacks.erosion=null",
)


def test_accumulated_training_visits_every_image_once_per_epoch(tiny_train_config):
    cfg = tiny_train_config(*ACCUMULATED, "schedule.max_epochs=2")
    result = train(cfg)
    store = PerturbationStore(result.output_dir / "perturbations", [(32, 32)] * 16, EPS, create=False)
    assert store.counters[:, VISITS].tolist() == [2] * 16
    assert store.counters[:, LAST_EPOCH].tolist() == [1] * 16
    values = np.asarray(store.values)
    assert np.abs(values).max() == 127 and (values != 0).mean() > 0.5


@pytest.mark.parametrize("keep_old_store", [True, False], ids=["store intact", "store gone: rebuilt"])
def test_resuming_from_last_ckpt_continues_the_store_or_rebuilds_it(
    tiny_train_config, tmp_path, keep_old_store
):
    first = train(tiny_train_config(*ACCUMULATED, "schedule.max_epochs=1"))
    checkpoint = torch.load(first.last_checkpoint, map_location="cpu", weights_only=True)
    assert checkpoint["perturbation_store"]["directory"] == str(
        (first.output_dir / "perturbations").resolve()
    )
    if not keep_old_store:
        for path in (first.output_dir / "perturbations").iterdir():
            path.unlink()
    resumed_cfg = tiny_train_config(
        *ACCUMULATED, "schedule.max_epochs=2", f"ckpt_path={first.last_checkpoint}"
    )
    resumed_cfg.paths.output_dir = str(tmp_path / "resumed")  # the store's directory follows it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(resumed_cfg)
    rebuilt = any("the store was rebuilt empty" in str(w.message) for w in caught)
    store = PerturbationStore(tmp_path / "resumed" / "perturbations", [(32, 32)] * 16, EPS, create=False)
    # Intact: the first run's visit plus the resumed epoch's; rebuilt: the resumed epoch's alone.
    assert store.counters[:, VISITS].tolist() == [2 if keep_old_store else 1] * 16
    assert rebuilt == (not keep_old_store)


@pytest.mark.slow
def test_ddp_ranks_share_one_store(tiny_train_config):
    # Two gloo processes each draw half of the 16 images; the one store the parent reads afterwards holds a
    # visit of every image, so each rank wrote into the same files (one per-rank store would hold half).
    cfg = tiny_train_config(
        *ACCUMULATED, "schedule.max_epochs=1", "trainer.strategy=ddp_spawn", "trainer.devices=2"
    )
    result = train(cfg)
    store = PerturbationStore(result.output_dir / "perturbations", [(32, 32)] * 16, EPS, create=False)
    assert store.counters[:, VISITS].tolist() == [1] * 16


@pytest.mark.parametrize("mode", ["accumulated", "single_step"])
def test_train_py_runs_each_amortised_mode_of_the_main_job(tiny_train_config, mode):
    result = train(
        tiny_train_config("experiment=shapes_eroseg_at", f"adversarial.mode={mode}", "debug=fdr", *SMALL)
    )
    assert 0.0 <= result.val_scores["val/miou_pgd10"] <= 1.0


# ------------------------------------------------------------------------------------ collapse guard
def test_the_guard_calls_a_collapse_only_when_robustness_falls_and_clean_holds():
    guard = RobustCollapseGuard(max_drop=0.5, min_best=0.05)
    guard.best, guard.best_clean = 0.30, 0.60
    assert guard.is_collapse(0.10, 0.62)  # robust fell to a third, clean held: catastrophic overfitting
    assert not guard.is_collapse(0.20, 0.62)  # a third lower is not sudden enough
    assert not guard.is_collapse(0.10, 0.20)  # both fell: training failed, not overfitting
    guard.best = 0.04
    assert not guard.is_collapse(0.0, 0.6)  # not armed yet


def test_a_run_forced_into_collapse_is_detected_reported_stopped_and_keeps_the_last_good_checkpoint(
    tiny_train_config, monkeypatch
):
    from eroseg_at.training import module as module_file

    robust = iter([0.30, 0.35, 0.05, 0.40])

    def fake_scores(self):
        # Validation as if PGD-10 mIoU went 30 -> 35 -> 5 while clean mIoU rose.
        if not self.trainer.sanity_checking:
            self.log("val/miou_clean", 0.5 + 0.05 * self.current_epoch)
            self.log("val/miou_pgd10", next(robust))

    monkeypatch.setattr(module_file.SegmentationModule, "on_validation_epoch_end", fake_scores)
    cfg = tiny_train_config(
        *SMALL, "attack=pgd", "adversarial.attack_steps=1", "validation.attacks=null", "schedule.max_epochs=4",
        "callbacks.collapse_guard.stop=true", "callbacks.erosion=null", "logger=csv",
    )  # fmt: skip
    with pytest.warns(
        UserWarning, match="robustness collapsed at epoch 2: val/miou_pgd10 5.0 < 50% of its best 35.0"
    ):
        result = train(cfg)
    good = torch.load(
        result.output_dir / "checkpoints" / "last_good.ckpt", map_location="cpu", weights_only=True
    )
    assert good["epoch"] == 1
    assert result.val_scores["val/robust_collapse"] == 1.0
    last = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    assert last["epoch"] == 2  # stopped: epoch 3 never ran
    logged = (result.output_dir / "csv").rglob("metrics.csv")
    assert any("val/robust_collapse" in path.read_text() for path in logged)


# ------------------------------------------------------------------------------------ erosion records
def test_erosion_records_show_the_sensitive_set_grow_and_draw_the_figure(tiny_train_config, tmp_path):
    cfg = tiny_train_config(
        *SMALL,
        "attack=eroseg",
        "adversarial.mode=accumulated",
        "validation.attacks=null",
        "schedule.max_epochs=2",
    )
    result = train(cfg)
    records = load_records(result.output_dir / "erosion")
    assert [record.epoch for record in records] == [0, 1]
    record = records[-1]
    assert record.deltas.shape == (8, 4, 3, 32, 32) and record.sensitive.shape == (7, 4, 32, 32)
    assert record.taus == sorted(record.taus) and record.taus[0] == pytest.approx(0.8)
    # Two visits each; image 3 restarted at its second ((1 + 3) % R == 0 with R = 4).
    assert record.stored_iteration.tolist() == [2, 2, 2, 1] and record.stored.abs().max() > 0
    assert (record.deltas.abs().amax((2, 3, 4)) <= record.eps + 1e-6).all()
    panels = panels_of(record)
    assert len(panels["train/erosion_multi_step"]) == 4 and len(panels["train/erosion_accumulated"]) == 4
    assert panels["train/erosion_multi_step"][0].shape == (2 * 32 + 2, 7 * 32 + 6 * 2, 3)
    path = erosion_figure(record, records, tmp_path / "erosion.png")
    assert path.stat().st_size > 10_000
    assert isinstance(ErosionRecord.load(result.output_dir / "erosion" / "epoch000.pt"), ErosionRecord)


def test_images_of_different_sizes_share_one_centred_window_the_model_takes():
    # VOC-like sizes: the smallest height and width, at most max_size, a multiple of the model's divisor.
    assert common_window([(375, 500), (333, 500), (500, 353)], max_size=128, divisor=32) == (
        slice(102, 230),
        slice(112, 240),
    )
    assert common_window([(64, 64)] * 4, max_size=128, divisor=32) == (slice(0, 64), slice(0, 64))
    assert common_window([(40, 50)], max_size=128, divisor=16) == (slice(4, 36), slice(1, 49))
