"""The evaluation's cache: a rerun recomputes nothing, a changed parameter only its own pass, an interrupted run
resumes from its last finished batch; and sharing the batches among processes changes nothing."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from eroseg_at.evaluation import evaluate
from eroseg_at.evaluation.distributed import Processes
from eroseg_at.evaluation.passes import PassRunner
from eroseg_at.evaluation.pipeline import evaluate_models
from tests.evaluation.conftest import compose_evaluate_config

# Two batches of two 32x32 images, the clean pass and a 1-step PGD and SegPGD (random starts) at one budget:
# the cheapest evaluation with several passes and several batches per pass.
TWO_BATCHES = (
    "suite=quick",
    "eps=[8/255]",
    "~suite.attacks.eroseg3",
    "suite.attacks.pgd3.steps=1",
    "suite.attacks.segpgd3.steps=1",
    "suite.iterations=null",
    "+dataset.val_source.image_size=[32,32]",
    "+dataset.val_batch_size=2",
    "max_batches=2",
    "example_images=0",
    "device=cpu",
    "masking_checks.enabled=false",
)


def scores(result) -> str:
    """Every row's scores and per-image choices, without what may differ between runs (time, cache origin);
    as a repr, in which NaN (a class absent from labels and predictions) equals NaN."""
    return repr(
        [
            {
                key: value
                for key, value in row.to_json().items()
                if key not in ("seconds", "images_per_second_per_iteration", "cached", "resumed_images")
            }
            for report in result.reports
            for row in report.rows
        ]
    )


@pytest.fixture
def counted(monkeypatch):
    """The (pass, batch) of every batch computed, and a way to make the n-th computed batch fail."""
    calls: list[tuple[str, int]] = []
    fail_at = {"call": None}
    compute = PassRunner.batch

    def counting(self, model, producer, index, images, labels):
        if fail_at["call"] is not None and len(calls) == fail_at["call"]:
            raise KeyboardInterrupt("killed")
        calls.append((producer.name, index))
        return compute(self, model, producer, index, images, labels)

    monkeypatch.setattr(PassRunner, "batch", counting)
    return calls, fail_at


@pytest.fixture(scope="module")
def finished(trained_run, tmp_path_factory):
    """An uninterrupted run and its output directory (with its cache)."""
    output_dir = tmp_path_factory.mktemp("finished")
    cfg = compose_evaluate_config([f"ckpt_path={trained_run / 'last.ckpt'}", *TWO_BATCHES], output_dir)
    return evaluate(cfg)


def rerun(trained_run, finished, tmp_path, *overrides):
    """The evaluation again, with ``overrides``, in a copy of the finished run's directory."""
    shutil.copytree(finished.output_dir, tmp_path, dirs_exist_ok=True)
    return evaluate(
        compose_evaluate_config(
            [f"ckpt_path={trained_run / 'last.ckpt'}", *TWO_BATCHES, *overrides], tmp_path
        )
    )


def test_a_finished_run_computed_every_batch_of_every_pass(finished):
    (report,) = finished.reports
    assert [row.cached for row in report.rows] == [False] * 4
    assert (finished.output_dir / "cache").is_dir()
    assert len(list((finished.output_dir / "cache").glob("*.pt"))) == 3
    # Per-batch results are dropped once their pass is finished.
    assert not list((finished.output_dir / "cache").glob("*.partial"))


def test_a_rerun_of_a_finished_evaluation_recomputes_nothing(trained_run, tmp_path, counted, finished):
    calls, _ = counted
    second = rerun(trained_run, finished, tmp_path)
    assert calls == []
    assert scores(second) == scores(finished)
    (report,) = second.reports
    assert all(row.cached for row in report.rows if row.kind != "worst_case")
    document = json.loads(second.files["results.json"].read_text())
    assert document["cache"]["members_from_cache"] == {
        "last.ckpt": ["clean@0", "pgd3@8/255", "segpgd3@8/255"]
    }
    assert "from the cache (finished by an earlier run): clean, PGD3 @8/255, SegPGD3 @8/255" in (
        second.files["results.md"].read_text()
    )


def test_a_changed_parameter_recomputes_only_its_own_pass(trained_run, tmp_path, counted, finished):
    calls, _ = counted
    changed = rerun(trained_run, finished, tmp_path, "suite.attacks.segpgd3.alpha=0.02")
    assert calls == [("SegPGD3 @8/255", 0), ("SegPGD3 @8/255", 1)]
    (report,) = changed.reports
    assert [row.cached for row in report.rows if row.kind != "worst_case"] == [True, True, False]
    assert report.row("attack", "segpgd3").parameters["alpha"] == 0.02


def test_an_interrupted_run_resumes_from_its_finished_batches(trained_run, tmp_path, counted, finished):
    calls, fail_at = counted
    cfg = compose_evaluate_config([f"ckpt_path={trained_run / 'last.ckpt'}", *TWO_BATCHES], tmp_path)
    # Killed in the second batch of the PGD pass: the clean pass and PGD's first batch are kept.
    fail_at["call"] = 3
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg)
    assert calls == [("clean", 0), ("clean", 1), ("PGD3 @8/255", 0)]
    calls.clear()
    fail_at["call"] = None
    resumed = evaluate(cfg)
    assert calls == [("PGD3 @8/255", 1), ("SegPGD3 @8/255", 0), ("SegPGD3 @8/255", 1)]
    assert scores(resumed) == scores(finished)
    (report,) = resumed.reports
    assert report.row("clean").cached and report.row("attack", "pgd3").resumed_images == 2
    assert (
        "resumed from an interrupted run's batches: PGD3 @8/255 (2 images)"
        in resumed.files["results.md"].read_text()
    )


class TwoProcessesInOne(Processes):
    """Rank 0 or 1 of two, run one after the other in this process: rank 1 leaves what it computed of each
    pass in ``mailbox``, and rank 0's gather takes it from there."""

    def __init__(self, rank: int, mailbox: list) -> None:
        super().__init__(rank=rank, world_size=2, device=torch.device("cpu"))
        self.mailbox = mailbox

    def gather(self, value):
        if self.rank == 1:
            self.mailbox.append(value)
            return None
        return [value, self.mailbox.pop(0)]


def test_two_processes_sharing_the_batches_give_the_single_process_report(
    trained_run, tmp_path, counted, finished
):
    calls, _ = counted
    cfg = compose_evaluate_config(
        [f"ckpt_path={trained_run / 'last.ckpt'}", *TWO_BATCHES, "cache=false"], tmp_path
    )
    mailbox: list = []
    # Rank 1 attacks the second batch of every pass first, so a random start drawn in sequence would differ.
    assert evaluate_models(cfg, TwoProcessesInOne(1, mailbox)) is None
    assert calls == [(name, 1) for name in ("clean", "PGD3 @8/255", "SegPGD3 @8/255")]
    reports = evaluate_models(cfg, TwoProcessesInOne(0, mailbox))
    assert scores(type(finished)(tmp_path, reports)) == scores(finished)
