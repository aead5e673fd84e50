"""Amortised adversarial training: the attack's step_from, the perturbation store, the accumulated and
single-step modes, the adv-only objective, resume, DDP, the collapse guard and the erosion records."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from eroseg_at.attacks import EroSeg, build_attack
from eroseg_at.data.geometry import SampleGeometry
from eroseg_at.training import runner
from eroseg_at.training.amortised import (
    AccumulatedPerturbations,
    AccumulatedSettings,
    SingleStepSettings,
    single_step_adversarial,
)
from eroseg_at.training.callbacks import RobustCollapseGuard
from eroseg_at.training.erosion import ErosionRecord, common_window, erosion_figure, load_records, panels_of
from eroseg_at.training.module import AdversarialTraining
from eroseg_at.training.perturbations import (
    FRAME_HEIGHT,
    FRAME_WIDTH,
    LAST_EPOCH,
    STEPS,
    VISITS,
    PerturbationStore,
    copy_store,
    store_layout,
)
from eroseg_at.training.runner import train
from eroseg_at.training.store_checkpoints import snapshot_path
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
DATASET = {"name": "noise", "seed": 0}


def layout(frames, eps=EPS, dataset=DATASET):
    return store_layout(dataset, frames, eps)


def test_store_is_int8_in_units_of_eps_over_127_and_bounded_in_eps(tmp_path):
    store = PerturbationStore(tmp_path, layout([(4, 5), (6, 6)]), create=True)
    assert store.values.dtype == np.int8 and store.bytes_per_image == (3 * 20 + 3 * 36) / 2 + 20
    wanted = [torch.linspace(-2 * EPS, 2 * EPS, 60).view(3, 4, 5), torch.full((3, 6, 6), 0.3 * EPS)]
    store.write([0, 1], wanted)
    first, second = store.read([0, 1], [(4, 5), (6, 6)], EPS)
    assert first.abs().max() == pytest.approx(EPS) and first.shape == (3, 4, 5)
    inside = wanted[0].abs() <= EPS
    assert (first - wanted[0])[inside].abs().max() <= EPS / 254 + 1e-7
    assert (second - 0.3 * EPS).abs().max() <= EPS / 254 + 1e-7
    # A smaller eps (the warm-up ramp) clips what was stored at the full one.
    assert store.read([0], [(4, 5)], EPS / 2)[0].abs().max() == pytest.approx(EPS / 2)


def test_store_keeps_each_perturbation_in_its_frame_and_reads_zero_in_another(tmp_path):
    store = PerturbationStore(tmp_path, layout([(6, 7)] * 2), create=True)
    assert store.frames([0, 1]) == [(0, 0), (0, 0)]
    small = torch.arange(3 * 4 * 5, dtype=torch.float32).view(3, 4, 5) / 60 * EPS
    store.write([1], [small])
    assert store.frames([0, 1]) == [(0, 0), (4, 5)]
    assert torch.allclose(store.read([1], [(4, 5)], EPS)[0], small, atol=EPS / 254 + 1e-7)
    # Another frame (the image's scale changed): nothing to carry.
    assert not store.read([1], [(6, 7)], EPS)[0].any()
    with pytest.raises(ValueError, match=r"frame \(7, 7\) exceeds the largest frame \(6, 7\)"):
        store.write([0], [torch.zeros(3, 7, 7)])


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (layout([(6, 7)] * 2, eps=4 / 255), r"eps 0.0313\d* instead of 0.0156\d* \(attack.eps\)"),
        (
            layout([(6, 7)] * 2, dataset={"name": "noise", "seed": 1}),
            "dataset .*'seed': 0.* instead of .*'seed': 1",
        ),
        (layout([(6, 7)] * 3), "2 images instead of 3"),
        (layout([(6, 7), (8, 7)]), r"image 1 has a frame of \(6, 7\) instead of \(8, 7\)"),
    ],
)
def test_a_store_of_another_run_is_refused_naming_the_difference(tmp_path, other, message):
    PerturbationStore(tmp_path, layout([(6, 7)] * 2), create=True)
    with pytest.raises(ValueError, match=f"written for another run: it holds {message}"):
        PerturbationStore(tmp_path, other, create=False)


def test_store_copy_and_restore_carry_values_and_counters(tmp_path):
    old = PerturbationStore(tmp_path / "old", layout([(4, 4)] * 3), create=True)
    old.write([1], [torch.full((3, 4, 4), EPS / 2)])
    old.counters[1, :3] = (5, 2, 7)
    old.flush()
    copy_store(tmp_path / "old", tmp_path / "copy")
    assert not (tmp_path / "copy.partial").exists()
    new = PerturbationStore(tmp_path / "new", layout([(4, 4)] * 3), create=True)
    new.restore(tmp_path / "copy")
    assert torch.allclose(new.read([1], [(4, 4)], EPS)[0], torch.tensor(EPS / 2), atol=EPS / 254)
    assert new.counters[1].tolist() == [5, 2, 7, 4, 4] and not new.counters[0].any()
    with pytest.raises(ValueError, match="3 images instead of 4"):
        PerturbationStore(tmp_path / "other", layout([(4, 4)] * 4), create=True).restore(tmp_path / "copy")


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


def accumulated(tmp_path, count=4, restart_visits=4, steps=1, stale_epochs=2, frame=(8, 8)):
    attack = SpyEroSeg(steps=steps, background_class=None)
    store = PerturbationStore(tmp_path, layout([frame] * count), create=True)
    settings = AccumulatedSettings(restart_visits=restart_visits, stale_epochs=stale_epochs)
    return AccumulatedPerturbations(settings, attack, store), attack, store


def cropped_geometry(indices, frame=(10, 11), crop=(1, 2, 8, 8), flipped=None):
    """Samples whose 8 x 8 crop lies inside their frame, off-centre (the frame's border is not covered)."""
    count = len(indices)
    return SampleGeometry(
        index=torch.tensor(indices),
        source_size=torch.tensor([frame] * count),
        frame_size=torch.tensor([frame] * count),
        pad=torch.zeros(count, 4, dtype=torch.int64),
        crop=torch.tensor([crop] * count),
        flipped=torch.tensor(flipped or [False] * count),
    )


def in_frame(crops, geometry):
    """What the crops show, put back in the frames (0 outside the crop): the test's own inverse of the view."""
    out = []
    for b, crop in enumerate(crops):
        (y0, x0, h, w), frame = geometry.crop[b].tolist(), geometry.frames()[b]
        canvas = torch.zeros(crop.shape[0], *frame)
        canvas[:, y0 : y0 + h, x0 : x0 + w] = crop.flip(-1) if geometry.flipped[b] else crop
        out.append(canvas)
    return out


def test_a_visit_stores_the_perturbation_in_the_frame_and_the_next_visit_continues_it(tmp_path):
    amortised, attack, store = accumulated(tmp_path, frame=(10, 11))
    model = PixelModel()
    images, labels = batch(2)
    geometry = cropped_geometry([0, 1], flipped=[True, False])
    x, first = amortised.adversarial(model, images, labels, geometry, epoch=0)
    assert first.restarted == 1.0 and first.mean_iteration == 0.0
    assert (x - images).abs().max() <= EPS + 1e-6
    stored = store.read([0, 1], geometry.frames(), EPS)
    # What is stored is the perturbation put back in the frame (un-flipped, at the crop's place, 0 around it),
    # to the store's rounding.
    for delta, expected in zip(stored, in_frame(x - images, geometry), strict=True):
        assert torch.allclose(delta, expected, atol=EPS / 254 + 1e-6)
    assert store.counters[[0, 1]].tolist() == [[1, 1, 0, 10, 11], [1, 1, 0, 10, 11]]
    # The next epoch: the same images and geometry start from the stored perturbation, at iteration 1 (τ_1).
    x2, second = amortised.adversarial(model, images, labels, geometry, epoch=1)
    assert attack.iterations[-1] == [1, 1] and second.restarted == 0.0
    assert torch.allclose(attack.starts[-1], (images + geometry.view(stored)).clamp(0, 1), atol=1e-6)
    # The store holds the perturbation the second visit ended at, not that plus what it started from.
    ended = in_frame(x2 - images, geometry)
    for delta, expected in zip(store.read([0, 1], geometry.frames(), EPS), ended, strict=True):
        assert torch.allclose(delta, expected, atol=EPS / 127 + 1e-6)
    assert store.counters[[0, 1], STEPS].tolist() == [2, 2]


def test_restarts_at_the_first_visit_every_r_visits_staggered_when_stale_and_in_another_frame(tmp_path):
    amortised, _, _ = accumulated(tmp_path, count=4, restart_visits=3, stale_epochs=2)
    indices = torch.arange(4)

    def restarts(visits, last_epoch, epoch, frames=None):
        counters = torch.zeros(4, 5, dtype=torch.int64)
        counters[:, VISITS], counters[:, LAST_EPOCH] = visits, last_epoch
        counters[:, FRAME_HEIGHT], counters[:, FRAME_WIDTH] = 8, 9
        return amortised.restarts(indices, counters, epoch, frames).tolist()

    assert restarts(0, 0, 0) == [True] * 4
    # Visit v of image i restarts when (v + i) % R == 0: a third of the images per epoch, not all at once.
    assert restarts(1, 0, 1) == [False, False, True, False]
    assert restarts(2, 1, 2) == [False, True, False, False]
    assert restarts(3, 2, 3) == [True, False, False, True]
    # Stale: the last visit more than stale_epochs (2) ago; exactly 2 ago is not stale.
    assert restarts(4, 0, 2) == [False, False, True, False]
    assert restarts(4, 0, 3) == [True] * 4
    # A visit in another frame (the image's held scale changed) cannot carry the perturbation.
    assert restarts(1, 0, 1, [(8, 9), (8, 10), (8, 9), (9, 9)]) == [False, True, True, True]


def test_the_next_visits_iteration_applies_the_restarts(tmp_path):
    amortised, _, store = accumulated(tmp_path, count=4, restart_visits=4)
    store.counters[:, VISITS], store.counters[:, STEPS], store.counters[:, LAST_EPOCH] = 2, 6, 1
    store.counters[:, FRAME_HEIGHT], store.counters[:, FRAME_WIDTH] = 8, 8
    # The third visit (epoch 2): image 2 restarts ((2 + 2) % 4 == 0), the others continue at iteration 6.
    assert amortised.next_iterations([0, 1, 2, 3], 2, None).tolist() == [6, 6, 0, 6]
    assert amortised.next_iterations([0, 1, 2, 3], 2, [(8, 8), (9, 9), (8, 8), (8, 8)]).tolist() == [
        6,
        0,
        0,
        6,
    ]
    assert amortised.next_iterations([0, 1, 2, 3], 5, None).tolist() == [0, 0, 0, 0]  # stale


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


def test_the_single_step_is_step_times_eps_whatever_the_attacks_alpha():
    attack = SpyEroSeg(steps=1, background_class=None, alpha=0.001)
    images, labels = batch(4, size=16)
    images = images * 0.5 + 0.25
    settings = SingleStepSettings(step=1.5, clip=False)
    x = single_step_adversarial(attack, settings, PixelModel(), images, labels)
    moved = (x - attack.starts[0]).abs()
    # EroSeg steps only on its sensitive pixels; where it steps, the step is 1.5 eps, not alpha.
    assert moved.max() == pytest.approx(1.5 * EPS, abs=1e-6)
    assert ((moved < 1e-6) | ((moved - 1.5 * EPS).abs() < 1e-6)).all()


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
            ("attack=pgd", "attack.norm=l2", "attack.steps=1", "adversarial.mode=single_step"),
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


def test_the_accumulated_mode_refuses_a_trainer_that_would_not_save_its_store(tiny_train_config, tmp_path):
    cfg = tiny_train_config(*SMALL, "attack=eroseg", "attack.steps=1", "adversarial.mode=accumulated")
    datamodule = runner.build_datamodule(cfg)
    module = runner.build_module(cfg, runner.build(cfg.model), datamodule)
    with pytest.raises(ValueError, match=r"needs a Trainer with plugins=\[StoreSnapshotCheckpointIO\(\)\]"):
        fit(module, datamodule, tmp_path)


def test_default_mode_is_todays_multi_step_training():
    adversarial = AdversarialTraining()
    assert adversarial.mode == "multi_step" and adversarial.objective == "clean_plus_adv"


# ---------------------------------------------------------------------- end to end, resume and DDP
# 32-px images: the smallest the default model takes, to keep these runs within seconds.
SMALL = ("dataset.train_source.image_size=[32,32]", "dataset.crop_size=[32,32]")
ACCUMULATED = (
    *SMALL,
    "attack=eroseg",
    "attack.steps=1",
    "adversarial.mode=accumulated",
    "callbacks.erosion=null",
    # No validation: a checkpoint after every epoch (best-epochNNN: the latest, or all with save_top_k=-1).
    "trainer.limit_val_batches=0",
    "callbacks.best_checkpoint.monitor=null",
)


def open_store(directory):
    return PerturbationStore(directory, json.loads((directory / "layout.json").read_text()), create=False)


def store_state(store):
    return np.array(store.values), np.array(store.counters)


def assert_same_store(state, expected):
    assert np.array_equal(state[1], expected[1]), "counters differ"
    assert np.array_equal(state[0], expected[0]), "values differ"


class StoreProbe(Callback):
    """Copies the live store at the end of every epoch (what the epoch's checkpoints must carry) and at the start
    of the first epoch a run trains (what it continues from)."""

    def __init__(self):
        self.at_end, self.at_first_start = {}, None

    def on_train_epoch_start(self, trainer, pl_module):
        if self.at_first_start is None:
            self.at_first_start = store_state(pl_module.accumulated.store)

    def on_train_epoch_end(self, trainer, pl_module):
        self.at_end[trainer.current_epoch] = store_state(pl_module.accumulated.store)


def train_probed(cfg, monkeypatch):
    probe = StoreProbe()
    build_callbacks = runner.build_callbacks
    monkeypatch.setattr(runner, "build_callbacks", lambda config: [*build_callbacks(config), probe])
    return train(cfg), probe


def test_accumulated_training_visits_every_image_once_per_epoch_and_keeps_a_store_per_checkpoint(
    tiny_train_config,
):
    # monitor=null: the best-epoch file is replaced every epoch, and its store copy must go with it.
    cfg = tiny_train_config(*ACCUMULATED, "schedule.max_epochs=2")
    result = train(cfg)
    store = open_store(result.output_dir / "perturbations")
    assert store.counters[:, VISITS].tolist() == [2] * 16
    assert store.counters[:, LAST_EPOCH].tolist() == [1] * 16
    values = np.asarray(store.values)
    assert np.abs(values).max() == 127 and (values != 0).mean() > 0.3
    checkpoints = result.output_dir / "checkpoints"
    assert sorted(path.name for path in checkpoints.glob("*.ckpt.perturbations")) == sorted(
        f"{path.name}.perturbations" for path in checkpoints.glob("*.ckpt")
    )
    assert (checkpoints / "best-epoch001.ckpt").is_file() and not (
        checkpoints / "best-epoch000.ckpt"
    ).exists()


def test_a_resumed_run_continues_with_the_store_saved_with_its_checkpoint(
    tiny_train_config, tmp_path, monkeypatch
):
    def config(directory, epochs, *extra):
        cfg = tiny_train_config(
            *ACCUMULATED, f"schedule.max_epochs={epochs}", "callbacks.best_checkpoint.save_top_k=-1", *extra
        )
        cfg.paths.output_dir = str(directory)
        return cfg

    first, probe = train_probed(config(tmp_path / "run", 2), monkeypatch)
    checkpoints = first.output_dir / "checkpoints"
    # Each checkpoint carries the store of its epoch.
    assert_same_store(
        store_state(open_store(checkpoints / "best-epoch000.ckpt.perturbations")), probe.at_end[0]
    )
    assert_same_store(store_state(open_store(checkpoints / "last.ckpt.perturbations")), probe.at_end[1])
    # Into a new directory, from last.ckpt.
    _, into_new = train_probed(
        config(tmp_path / "new", 3, f"ckpt_path={checkpoints / 'last.ckpt'}"), monkeypatch
    )
    assert_same_store(into_new.at_first_start, probe.at_end[1])
    # Into the run's own directory, from the earlier best-epoch000.ckpt: one visit per image, not the later two.
    resumed, into_own = train_probed(
        config(tmp_path / "run", 3, f"ckpt_path={checkpoints / 'best-epoch000.ckpt'}"), monkeypatch
    )
    assert_same_store(into_own.at_first_start, probe.at_end[0])
    assert into_own.at_first_start[1][:, VISITS].tolist() == [1] * 16
    assert open_store(resumed.output_dir / "perturbations").counters[:, VISITS].tolist() == [3] * 16
    # Into its own directory again, from the last.ckpt that run wrote (its live store is rewritten on setup).
    _, again = train_probed(
        config(tmp_path / "run", 4, f"ckpt_path={checkpoints / 'last.ckpt'}"), monkeypatch
    )
    assert_same_store(again.at_first_start, into_own.at_end[2])


def test_a_resumed_run_whose_store_copy_is_gone_restarts_every_image_and_says_so(tiny_train_config, tmp_path):
    first = train(tiny_train_config(*ACCUMULATED, "schedule.max_epochs=1"))
    shutil.rmtree(snapshot_path(first.last_checkpoint))
    cfg = tiny_train_config(*ACCUMULATED, "schedule.max_epochs=2", f"ckpt_path={first.last_checkpoint}")
    cfg.paths.output_dir = str(tmp_path / "resumed")
    with pytest.warns(UserWarning, match="is gone: the store was rebuilt empty"):
        train(cfg)
    assert open_store(tmp_path / "resumed" / "perturbations").counters[:, VISITS].tolist() == [1] * 16


def test_resuming_with_another_eps_is_refused_naming_the_difference(tiny_train_config, tmp_path):
    first = train(tiny_train_config(*ACCUMULATED, "schedule.max_epochs=1"))
    cfg = tiny_train_config(
        *ACCUMULATED, "attack.eps=4/255", "schedule.max_epochs=2", f"ckpt_path={first.last_checkpoint}"
    )
    cfg.paths.output_dir = str(tmp_path / "resumed")
    with pytest.raises(
        ValueError, match=r"perturbation store of another run: it holds eps 0.031\d* instead of 0.015"
    ):
        train(cfg)


@pytest.mark.slow
def test_ddp_ranks_share_one_store(tiny_train_config):
    # Two gloo processes each draw half of the 16 images; the one store the parent reads afterwards holds a
    # visit of every image, so each rank wrote into the same files (one per-rank store would hold half).
    cfg = tiny_train_config(
        *ACCUMULATED, "schedule.max_epochs=1", "trainer.strategy=ddp_spawn", "trainer.devices=2"
    )
    result = train(cfg)
    assert open_store(result.output_dir / "perturbations").counters[:, VISITS].tolist() == [1] * 16
    assert open_store(snapshot_path(result.last_checkpoint)).counters[:, VISITS].tolist() == [1] * 16


@pytest.mark.parametrize("mode", ["accumulated", "single_step"])
def test_train_py_runs_each_amortised_mode_of_the_main_job(tiny_train_config, mode):
    result = train(
        tiny_train_config(
            "experiment=shapes_eroseg_at", f"adversarial.mode={mode}", "attack.steps=1", "debug=fdr", *SMALL
        )
    )
    assert 0.0 <= result.validation.miou["pgd10"] <= 100.0


def test_single_step_with_more_than_one_attack_step_is_refused_naming_the_key(tiny_train_config):
    with pytest.raises(ValueError, match="adversarial.mode=single_step takes one step .* attack.steps=3"):
        train(tiny_train_config(*SMALL, "attack=pgd", "adversarial.mode=single_step"))


# ------------------------------------------------------------------------------------ collapse guard
def test_the_guard_calls_a_collapse_only_when_robustness_falls_and_clean_holds():
    guard = RobustCollapseGuard(max_drop=0.5, min_best=5.0)
    guard.best, guard.best_clean = 30.0, 60.0
    assert guard.is_collapse(10.0, 62.0)  # robust fell to a third, clean held: catastrophic overfitting
    assert not guard.is_collapse(20.0, 62.0)  # a third lower is not sudden enough
    assert not guard.is_collapse(10.0, 20.0)  # both fell: training failed, not overfitting
    guard.best = 4.0
    assert not guard.is_collapse(0.0, 60.0)  # not armed yet


def test_a_run_forced_into_collapse_is_detected_reported_stopped_and_keeps_the_last_good_checkpoint(
    tiny_train_config, monkeypatch
):
    from eroseg_at.training import module as module_file

    def fake_metrics(self):
        # Validation as if PGD-10 mIoU went 30 -> 35 -> 5 (percent) while clean mIoU rose.
        return {"val/miou_clean": 50.0 + 5 * self.current_epoch, "val/miou_pgd10": [30.0, 35.0, 5.0, 40.0][
            self.current_epoch
        ]}  # fmt: skip

    monkeypatch.setattr(module_file.SegmentationModule, "validation_metrics", fake_metrics)
    cfg = tiny_train_config(
        *SMALL, "attack=pgd", "attack.steps=1", "validation.attacks=null", "schedule.max_epochs=4",
        "callbacks.collapse_guard.stop=true", "callbacks.erosion=null", "logger=csv",
    )  # fmt: skip
    with pytest.warns(
        UserWarning, match="robustness collapsed at epoch 2: val/miou_pgd10 5.0 < 50% of its best 35.0"
    ):
        result = train(cfg)
    # Logged with the validation metrics: one row (one step) per validation holds both.
    (logged,) = (result.output_dir / "csv").rglob("metrics.csv")
    rows = list(csv.DictReader(logged.open()))
    collapse_rows = [row for row in rows if row["val/robust_collapse"]]
    assert [float(row["val/robust_collapse"]) for row in collapse_rows] == [0.0, 0.0, 1.0]
    assert all(row["val/miou_clean"] for row in collapse_rows)
    assert len([row for row in rows if row["val/miou_clean"]]) == 3
    good = torch.load(
        result.output_dir / "checkpoints" / "last_good.ckpt", map_location="cpu", weights_only=True
    )
    assert good["epoch"] == 1
    assert result.validation.robust_collapse is True and result.collapses == [2]
    last = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    assert last["epoch"] == 2  # stopped: epoch 3 never ran


# ------------------------------------------------------------------------------------ erosion records
def test_erosion_records_show_the_sensitive_set_grow_and_draw_the_figure(tiny_train_config, tmp_path):
    cfg = tiny_train_config(
        *SMALL,
        "attack=eroseg",
        "attack.steps=1",
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
    # The iteration the third visit takes: 2 after two visits, but image 2 restarts there ((2 + 2) % R == 0
    # with R = 4) and image 3 restarted at its second visit ((1 + 3) % R == 0), so it continues at 1.
    assert record.stored_iteration.tolist() == [2, 2, 0, 1] and record.stored.abs().max() > 0
    # The stored perturbations are shown over the images in their frames (the held scale's, 32 to 40 px).
    assert record.stored_images.shape == record.stored.shape == (4, 3, 32, 32)
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
