"""Progress: plain lines with elapsed time and ETA in a log file, the live bar on a terminal, and training's
progress bar callback (eroseg_at.progress, eroseg_at.training.progress)."""

from __future__ import annotations

import io
import sys

import lightning as L
import pytest
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.demos.boring_classes import BoringModel

from eroseg_at.progress import Progress
from eroseg_at.training.progress import PlainProgressBar, progress_bar


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_every_interval_with_elapsed_and_eta():
    clock, stream = Clock(), io.StringIO()
    with Progress("evaluate", total=10, interval_s=5, stream=stream, clock=clock, warmup_s=5) as progress:
        clock.now += 4
        progress.update("batch 1/10", advance=1)  # the first update always prints; no rate yet
        clock.now += 1
        progress.update("batch 2/10", advance=1)  # within the interval: nothing
        clock.now += 5
        progress.update("batch 3/10", advance=1)  # 2 units in the 6 s since the first: 7 left take 21 s
        clock.now += 2
    assert stream.getvalue().splitlines() == [
        "evaluate: batch 1/10, elapsed 0:00:04, ETA ?",
        "evaluate: batch 3/10, elapsed 0:00:10, ETA 0:00:21",
        "evaluate: done: batch 3/10, elapsed 0:00:12",
    ]


def test_the_eta_waits_for_the_warm_up_and_leaves_the_slow_first_step_out():
    # The first step takes 100 s (start-up), every later one 1 s: the ETA must follow the 1 s steps.
    clock, stream = Clock(), io.StringIO()
    with Progress("train", total=20, interval_s=0, stream=stream, clock=clock, warmup_s=10) as progress:
        clock.now += 100
        progress.update("step 1/20", advance=1)
        for step in range(2, 21):
            clock.now += 1
            progress.update(f"step {step}/20", advance=1)
    etas = {line.split(",")[0]: line.rsplit("ETA ", 1)[-1] for line in stream.getvalue().splitlines()[:-1]}
    assert etas["train: step 1/20"] == "?"  # the old rate: 100 s a step, "ETA 0:31:40"
    assert etas["train: step 10/20"] == "?"  # 9 s since the first step: still warming up
    assert etas["train: step 11/20"] == "0:00:09"  # 10 steps in 10 s, 9 left (the old rate: 0:01:27)
    assert etas["train: step 20/20"] == "0:00:00"
    assert progress.eta_seconds() == 0.0


def test_the_eta_waits_for_a_second_update_however_long_the_first_took():
    clock, stream = Clock(), io.StringIO()
    with Progress("evaluate", total=4, interval_s=0, stream=stream, clock=clock, warmup_s=10) as progress:
        clock.now += 60
        progress.update("batch 1/4", advance=1)
        clock.now += 60
        assert progress.eta_seconds() is None  # a minute since the first batch, but no second one yet
        progress.update("batch 2/4", advance=1)
        assert progress.eta_seconds() == pytest.approx(120.0)  # 60 s a batch since the first, 2 left


def test_eta_is_unknown_before_any_work_and_without_a_total():
    clock, stream = Clock(), io.StringIO()
    with Progress("train", total=None, interval_s=0, stream=stream, clock=clock) as progress:
        progress.update("epoch 1/2", advance=3)
    with Progress("train", total=4, interval_s=0, stream=stream, clock=clock) as progress:
        progress.update("validation batch 1/2")
    assert [line.rsplit(", ", 1)[-1] for line in stream.getvalue().splitlines()] == [
        "ETA ?",
        "elapsed 0:00:00",
        "ETA ?",
        "elapsed 0:00:00",
    ]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_the_live_bar_and_no_plain_lines():
    stream = Terminal()
    with Progress("evaluate", total=2, interval_s=0, stream=stream) as progress:
        progress.update("run 1/2 PGD3 @8/255", advance=1)
        progress.update("run 2/2 PGD3 @8/255", advance=1)
    text = stream.getvalue()
    assert "evaluate: run 2/2 PGD3 @8/255" in text and "ETA 0:" not in text and "elapsed" not in text


def test_progress_bar_is_rich_on_a_terminal_and_plain_lines_elsewhere(monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert isinstance(progress_bar(interval_s=5), RichProgressBar)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    bar = progress_bar(interval_s=5)
    assert isinstance(bar, PlainProgressBar) and bar.interval_s == 5


class LoggingModel(BoringModel):
    def training_step(self, batch, batch_idx):
        output = super().training_step(batch, batch_idx)
        self.log("loss", output["loss"], prog_bar=True)
        return output


def plain_progress_lines(
    module: BoringModel, epochs: int, train_batches: int, val_batches: int, root, capsys
):
    """The ``train: `` lines of fitting ``module`` with the plain progress bar printing after every batch."""
    trainer = L.Trainer(
        max_epochs=epochs,
        limit_train_batches=train_batches,
        limit_val_batches=val_batches,
        num_sanity_val_steps=0,
        callbacks=[PlainProgressBar(interval_s=0)],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=root,
        accelerator="cpu",
    )
    trainer.fit(module)
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("train: ")]


def test_training_prints_epoch_step_loss_and_eta_lines(tmp_path, capsys):
    lines = plain_progress_lines(LoggingModel(), 2, 3, 1, tmp_path, capsys)
    assert lines[0].startswith("train: epoch 1/2, step 1/6, loss ") and "ETA" in lines[0]
    assert any(line.startswith("train: epoch 2/2, step 6/6, loss ") for line in lines)
    assert any(line.startswith("train: epoch 1/2, step 3/6, validation batch 1/1") for line in lines)
    assert lines[-1].startswith("train: done: epoch 2/2, step 6/6")


class ScoredModel(LoggingModel):
    """Logs the validation score ``epoch + 1`` in the progress bar at the end of each validation."""

    def on_validation_epoch_end(self):
        self.log("val/score", float(self.current_epoch + 1), prog_bar=True)


def test_the_last_training_line_shows_the_last_validation_scores(tmp_path, capsys):
    last = plain_progress_lines(ScoredModel(), 3, 2, 2, tmp_path, capsys)[-1]
    # Taken at the last validation batch, the line showed the epoch before's score (2) and that batch.
    assert last.startswith("train: done: epoch 3/3, step 6/6, loss "), last
    assert "val/score 3," in last and "validation batch" not in last, last


@pytest.mark.parametrize("interval_s", [-1.0])
def test_a_negative_interval_is_refused(interval_s):
    with pytest.raises(ValueError, match=r"interval_s must be >= 0 seconds, got -1.0"):
        Progress("train", total=1, interval_s=interval_s)
