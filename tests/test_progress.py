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
    with Progress("evaluate", total=10, interval_s=5, stream=stream, clock=clock) as progress:
        progress.update("batch 1/10", advance=1)  # the first update always prints
        clock.now += 1
        progress.update("batch 2/10", advance=1)  # within the interval: nothing
        clock.now += 5
        progress.update("batch 3/10", advance=1)  # 6 s for 3 units: 7 left take 14 s
        clock.now += 2
    assert stream.getvalue().splitlines() == [
        "evaluate: batch 1/10, elapsed 0:00:00, ETA 0:00:00",
        "evaluate: batch 3/10, elapsed 0:00:06, ETA 0:00:14",
        "evaluate: done: batch 3/10, elapsed 0:00:08",
    ]


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


def test_training_prints_epoch_step_loss_and_eta_lines(tmp_path, capsys):
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=[PlainProgressBar(interval_s=0)],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    trainer.fit(LoggingModel())
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("train: ")]
    assert lines[0].startswith("train: epoch 1/2, step 1/6, loss ") and "ETA" in lines[0]
    assert any(line.startswith("train: epoch 2/2, step 6/6, loss ") for line in lines)
    assert any(line.startswith("train: epoch 1/2, step 3/6, validation batch 1/1") for line in lines)
    assert lines[-1].startswith("train: done: epoch 2/2, step 6/6")


@pytest.mark.parametrize("interval_s", [-1.0])
def test_a_negative_interval_is_refused(interval_s):
    with pytest.raises(ValueError, match=r"interval_s must be >= 0 seconds, got -1.0"):
        Progress("train", total=1, interval_s=interval_s)
