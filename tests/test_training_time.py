"""The training timer: the training batches and validation timed apart, and kept across a resume."""

from __future__ import annotations

from eroseg_at.training import callbacks
from eroseg_at.training.callbacks import TrainingTime, TrainingTimer


class FakeTrainer:
    sanity_checking = False


def test_the_timer_counts_the_batches_without_validation_or_what_happens_between_epochs(monkeypatch):
    clock = iter([0.0, 2.0, 5.0, 5.5, 9.0, 10.0, 30.0, 32.0, 33.0, 40.0])
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(clock))
    timer, trainer = TrainingTimer(), FakeTrainer()
    timer.on_train_epoch_start(trainer, None)  # 0
    timer.on_train_batch_end(trainer, None)  # 2: a batch of 2 s
    timer.on_train_batch_end(trainer, None)  # 5: 3 s
    timer.on_validation_start(trainer, None)  # 5.5: a validation within the epoch
    timer.on_validation_end(trainer, None)  # 9: 3.5 s of validation
    timer.on_train_batch_end(trainer, None)  # 10: the next batch took 1 s, not 5
    # 10 to 30: validation at the epoch's end would be timed as such; checkpoints and callbacks are not timed.
    timer.on_train_epoch_start(trainer, None)  # 30
    timer.on_train_batch_end(trainer, None)  # 32
    timer.on_validation_start(trainer, None)  # 33
    timer.on_validation_end(trainer, None)  # 40
    assert timer.time == TrainingTime(training=8.0, validation=10.5, epochs=2)
    resumed = TrainingTimer()
    resumed.load_state_dict(timer.state_dict())
    assert resumed.time == timer.time


def test_sanity_checking_is_not_validation_time(monkeypatch):
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: 1.0)
    timer, trainer = TrainingTimer(), FakeTrainer()
    trainer.sanity_checking = True
    timer.on_validation_start(trainer, None)
    timer.on_validation_end(trainer, None)
    assert timer.time.validation == 0.0


def test_a_training_run_reports_its_time_and_validation(tiny_train_config):
    from eroseg_at.training.runner import train

    result = train(tiny_train_config("schedule.max_epochs=2", "validation.attacks=null"))
    assert result.time.epochs == 2 and result.time.training > 0 and result.time.validation > 0
    assert 0.0 <= result.validation.miou["clean"] <= 100.0
    assert set(result.validation.miou) == {"clean"} and result.validation.robust_collapse is None
