"""End to end: a tiny trained checkpoint in, a parseable robustness report out; bad checkpoints refused."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from eroseg_at.checkpoint import (
    CONFIG_KEY,
    FORMAT_KEY,
    METHOD_KEY,
    CheckpointError,
    TrainingMethod,
    load_checkpoint,
    resolve_checkpoint_paths,
)
from eroseg_at.evaluation import evaluate
from eroseg_at.evaluation.errors import PlanError
from eroseg_at.evaluation.inference import FullResolutionModel
from eroseg_at.training.runner import train
from tests.conftest import REPO_ROOT, compose_train_config
from tests.evaluation.conftest import ONE_STEP_PGD, compose_evaluate_config

# One batch of four 64x64 images keeps a suite of a few 3-step attacks within seconds.
# The gradient-masking checks on, at a small Square budget: the report files carry their section.
SMALL = ("max_batches=1", "+dataset.val_batch_size=4", "example_images=2", "masking_checks.queries=50")


@pytest.fixture(scope="module")
def quick_report(trained_run, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("evaluate")
    cfg = compose_evaluate_config(
        [f"ckpt_path={trained_run / 'last.ckpt'}", "suite=quick", *SMALL], output_dir
    )
    return evaluate(cfg)


def test_report_files_exist_and_parse(quick_report):
    files = quick_report.files
    for name in (
        "results.json",
        "results.csv",
        "results.md",
        "report.html",
        "miou_vs_eps.png",
        "miou_vs_iterations.png",
        "examples_0.png",
    ):
        assert files[name].is_file() and files[name].stat().st_size > 0, name
    document = json.loads(files["results.json"].read_text())
    (checkpoint,) = document["models"]
    assert checkpoint["sha256"] == load_checkpoint(checkpoint["path"]).sha256
    assert checkpoint["method"] == "standard" and checkpoint["num_images"] == 4
    assert set(document["versions"]) >= {"torch", "lightning", "segmentation-models-pytorch", "python"}
    attack_rows = [row for row in checkpoint["results"] if row["kind"] == "attack"]
    assert {(row["key"], row["eps_text"]) for row in attack_rows} == {
        (key, eps) for key in ("pgd3", "segpgd3", "eroseg3") for eps in ("4/255", "8/255")
    }
    for row in attack_rows:
        assert row["parameters"]["eps"] == pytest.approx(row["eps"]) and row["steps"] == 3
        assert len(row["iou_per_class"]) == 7
    with files["results.csv"].open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(checkpoint["results"])
    # Percent in the csv, fractions in the json, each labelled.
    assert [float(row["miou_percent"]) for row in rows] == pytest.approx(
        [100 * row["miou"] for row in checkpoint["results"]]
    )
    assert document["units"]["miou, pixel_accuracy, iou_per_class, per_image_pixel_accuracy"].startswith(
        "fraction"
    )
    table = files["results.md"].read_text()
    assert "| standard |" in table and "worst case @8/255" in table and "## Appendix" in table
    verdict = checkpoint["gradient_masking"]
    assert isinstance(verdict["suspected"], bool) and len(verdict["checks"]) == 5
    assert "## Gradient-masking checks" in table and verdict["summary"] in table
    # The report opens with its answer: 3 attacks x 3 steps x 2 budgets and the curve's 1 + 2 steps.
    opening = table.splitlines()[2]
    assert (
        opening.startswith("- standard (`last.ckpt`): robust mIoU ")
        and "% at 8/255 (worst case over 3" in opening
    )
    assert "clean " in opening and "suite quick, 21 attack iterations per image, 4 images, " in opening


def test_robust_scores_do_not_exceed_clean_and_worst_case_bounds_every_attack(quick_report):
    (report,) = quick_report.reports
    clean = next(row for row in report.rows if row.kind == "clean")
    for budget in ("4/255", "8/255"):
        singles = [row for row in report.rows if row.kind == "attack" and row.eps_text == budget]
        (worst,) = [row for row in report.rows if row.kind == "worst_case" and row.eps_text == budget]
        assert worst.worst_case.members == ("clean", "pgd3", "segpgd3", "eroseg3")
        for row in singles:
            assert row.pixel_accuracy <= clean.pixel_accuracy + 1e-9
            assert worst.miou <= row.miou + 1e-12
            assert all(
                w <= s + 1e-12
                for w, s in zip(worst.per_image_pixel_accuracy, row.per_image_pixel_accuracy, strict=True)
            )
        assert worst.miou <= clean.miou + 1e-12
        assert worst.pixel_accuracy <= min(row.pixel_accuracy for row in singles) + 1e-12


def test_worst_case_miou_matches_its_per_image_choice(quick_report):
    (report,) = quick_report.reports
    (worst,) = [row for row in report.rows if row.kind == "worst_case" and row.eps_text == "8/255"]
    assert len(worst.worst_case.miou_choice) == report.num_images
    assert set(worst.worst_case.miou_choice) <= set(worst.worst_case.members)
    # The iteration curve is reported but never enters the worst case.
    assert not any("@" in member for member in worst.worst_case.members)
    assert {row.steps for row in report.rows if row.kind == "iterations"} == {1, 2}


def save_modified(source, target, change):
    payload = torch.load(source, map_location="cpu", weights_only=True)
    change(payload)
    torch.save(payload, target)
    return target


class Tampered:
    """Any class instance: weights_only loading must refuse to unpickle it."""


def test_tampered_checkpoint_with_a_pickled_object_is_refused(trained_run, tmp_path):
    path = save_modified(
        trained_run / "last.ckpt",
        tmp_path / "tampered.ckpt",
        lambda payload: payload.update(payload=Tampered()),
    )
    with pytest.raises(CheckpointError, match=r"tampered\.ckpt.*weights_only"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("key", "message"), [("state_dict", "no 'state_dict'"), (CONFIG_KEY, "no training config")]
)
def test_checkpoint_without_a_required_key_is_refused(trained_run, tmp_path, key, message):
    path = save_modified(
        trained_run / "last.ckpt", tmp_path / "foreign.ckpt", lambda payload: payload.pop(key)
    )
    with pytest.raises(CheckpointError, match=rf"foreign\.ckpt.*{message}"):
        load_checkpoint(path)


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "notes.ckpt"
    path.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"notes\.ckpt"):
        load_checkpoint(path)


def test_class_count_mismatch_is_refused(trained_run, tmp_path):
    def five_classes(payload):
        payload[CONFIG_KEY]["model"]["num_classes"] = 5

    path = save_modified(trained_run / "last.ckpt", tmp_path / "five.ckpt", five_classes)
    cfg = compose_evaluate_config([f"ckpt_path={path}", "suite=quick", *SMALL], tmp_path / "out")
    with pytest.raises(PlanError, match=r"five\.ckpt.*predicts 5 classes but dataset 'shapes' has 7"):
        evaluate(cfg)


def as_format_1(payload):
    """What train.py wrote before the checkpoint format had a version: the model config without
    _target_, and the training attack's settings in `schedule`."""
    config = payload[CONFIG_KEY]
    del payload[FORMAT_KEY], payload[METHOD_KEY]
    config["model"].pop("_target_")
    config["schedule"] = {
        "optimizer": "adamw",
        "lr": 0.004,
        # Format 1 kept the training attack's steps here (3 by default); today's config has them in attack.steps.
        "attack_steps": 3,
        "eps_warmup_epochs": config["adversarial"].pop("eps_warmup_epochs"),
    }
    config["adversarial"].pop("_target_")


def test_a_checkpoint_of_format_1_still_evaluates_to_the_same_report(trained_run, tmp_path, quick_report):
    old = save_modified(trained_run / "last.ckpt", tmp_path / "format1.ckpt", as_format_1)
    assert FORMAT_KEY not in torch.load(old, map_location="cpu", weights_only=True)
    assert load_checkpoint(old).config.adversarial.attack_steps == 3
    cfg = compose_evaluate_config([f"ckpt_path={old}", "suite=quick", *SMALL], tmp_path / "out")
    (report,) = evaluate(cfg).reports
    (expected,) = quick_report.reports
    assert report.method == expected.method == "standard"
    assert [(row.key, row.eps_text, row.miou) for row in report.rows] == [
        (row.key, row.eps_text, row.miou) for row in expected.rows
    ]


def test_the_method_comes_from_the_checkpoints_record_and_from_its_config_without_one(trained_run, tmp_path):
    # The stored config says standard training; a record that says otherwise is what the report names.
    record = TrainingMethod("PGD", "single_step", 1, "adv_only", 8 / 255, clip=True)
    recorded = save_modified(
        trained_run / "last.ckpt",
        tmp_path / "recorded.ckpt",
        lambda payload: payload.update({METHOD_KEY: record.to_record()}),
    )
    assert load_checkpoint(recorded).method == record
    unrecorded = save_modified(
        trained_run / "last.ckpt", tmp_path / "unrecorded.ckpt", lambda payload: payload.pop(METHOD_KEY)
    )
    assert load_checkpoint(unrecorded).method == TrainingMethod()


def test_a_checkpoint_of_an_unknown_format_is_refused(trained_run, tmp_path):
    path = save_modified(
        trained_run / "last.ckpt", tmp_path / "future.ckpt", lambda payload: payload.update({FORMAT_KEY: 99})
    )
    with pytest.raises(CheckpointError, match=r"future\.ckpt.*has format 99.*reads formats 1 and 2"):
        load_checkpoint(path)


def test_glob_matching_nothing_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match=r"matches no file"):
        resolve_checkpoint_paths(str(tmp_path / "**" / "*.ckpt"))


# One 1-step PGD at one budget, no curve and no example grid: the cheapest complete report.
MINIMAL = (*SMALL, *ONE_STEP_PGD)


def test_a_glob_of_several_checkpoints_gives_one_row_each(trained_run, tmp_path):
    checkpoints = sorted(trained_run.glob("*.ckpt"))
    assert len(checkpoints) == 2
    result = evaluate(compose_evaluate_config([f"ckpt_path={trained_run}/*.ckpt", *MINIMAL], tmp_path))
    assert [report.path for report in result.reports] == checkpoints
    table = result.files["results.md"].read_text()
    assert [
        line.count("`best-epoch") + line.count("`last.ckpt`")
        for line in table.splitlines()
        if line.startswith("| standard |")
    ] == [1, 1]


@pytest.mark.slow
def test_make_eval_with_a_glob_gives_one_row_per_checkpoint(trained_run, tmp_path):
    checkpoints = sorted(trained_run.glob("*.ckpt"))
    args = " ".join([*MINIMAL, "logger.mode=disabled", f"output_dir={tmp_path}"])
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    # The stamp target would reinstall the venv; make's -o treats it as up to date.
    completed = subprocess.run(
        ["make", "-o", ".venv/.installed", "eval", f"CKPT={trained_run}/*.ckpt", f"ARGS={args}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    table = (tmp_path / "results.md").read_text()
    for checkpoint in checkpoints:
        assert f"`{checkpoint.name}`" in table
    document = json.loads((tmp_path / "results.json").read_text())
    assert sorted(c["path"] for c in document["models"]) == [str(c) for c in checkpoints]


def write_mixed_size_folder(root, sizes) -> None:
    """A ``folder`` dataset whose images come in several sizes (3 classes in stripes)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index, (height, width) in enumerate(sizes):
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[:, width // 3 : 2 * width // 3] = 1
        mask[:, 2 * width // 3 :] = 2
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
            root / "images" / f"{index}.png"
        )
        Image.fromarray(mask).save(root / "masks" / f"{index}.png")
    (root / "train.txt").write_text("".join(f"{index}\n" for index in range(len(sizes))))
    (root / "val.txt").write_text("".join(f"{index}\n" for index in range(len(sizes))))


def test_attacks_see_every_image_at_its_own_size_never_padding(tmp_path, monkeypatch):
    sizes = [(40, 72), (48, 64), (40, 72), (56, 40)]
    root = tmp_path / "tiles"
    write_mixed_size_folder(root, sizes)
    data = [
        "dataset=folder",
        f"dataset.root={root}",
        "dataset.num_classes=3",
        "dataset.num_workers=0",
        "dataset.crop_size=[32,32]",
        "dataset.batch_size=2",
        "dataset.train_source.split_list=train.txt",
        "dataset.val_source.split_list=val.txt",
    ]
    trained = train(
        compose_train_config(
            [*data, "logger=none", "schedule.max_epochs=1", "validation.attacks=null"], tmp_path / "run"
        )
    )
    seen = []
    forward = FullResolutionModel._full_resolution
    monkeypatch.setattr(
        FullResolutionModel,
        "_full_resolution",
        lambda self, images, with_features: (
            seen.append(tuple(images.shape[-2:])),
            forward(self, images, with_features),
        )[1],
    )
    report = evaluate(
        compose_evaluate_config(
            [
                f"ckpt_path={trained.last_checkpoint}",
                "suite=quick",
                "+dataset.val_batch_size=4",
                "example_images=0",
                "masking_checks.queries=50",
            ],
            tmp_path / "evaluate",
        )
    )
    # Every input an attack or the metric sees is one real image size: no collate or divisor padding.
    assert seen and set(seen) == set(sizes)
    document = json.loads(report.files["results.json"].read_text())
    (checkpoint,) = document["models"]
    # Batched by size, and the per-image lists name their images in that order.
    assert [name.rsplit("/", 1)[-1] for name in checkpoint["images"]] == ["0.png", "2.png", "1.png", "3.png"]
    clean = next(row for row in checkpoint["results"] if row["kind"] == "clean")
    assert len(clean["per_image_pixel_accuracy"]) == 4
