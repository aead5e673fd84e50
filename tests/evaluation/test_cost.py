"""Cost before it is paid: ``dry_run=true`` prints the plan and an estimate that comes near the time the
evaluation takes, and runs no pass; ``suite=single`` runs any one attack preset; ``--help`` names only the groups
evaluation reads."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from eroseg_at import evaluate_model
from eroseg_at.attacks import DatasetFacts
from eroseg_at.configs import CONF_DIR, compose_config, group_options
from eroseg_at.evaluation import evaluate
from eroseg_at.evaluation.distributed import start_processes
from eroseg_at.evaluation.dry_run import CostEstimate, PlannedPassCost, estimate_costs
from eroseg_at.evaluation.passes import PassRunner
from eroseg_at.evaluation.pipeline import models_and_data
from eroseg_at.evaluation.settings import EvaluationSettings
from eroseg_at.evaluation.suite import Suite, SuiteError
from tests.evaluation.conftest import (
    ONE_STEP_PGD,
    compose_evaluate_config,
    folder_settings,
    save_traced,
    write_folder,
)
from tests.evaluation.test_api import CHEAP, HalfResolutionDict, loader
from tests.models.conftest import JIT_DEPRECATION


@pytest.mark.filterwarnings(JIT_DEPRECATION)
def test_a_dry_run_prints_the_plan_and_an_estimate_and_runs_no_pass(tmp_path, monkeypatch, capsys):
    root = write_folder(tmp_path / "data")
    model = save_traced(tmp_path / "model.pt", seed=0)

    def no_pass(*args, **kwargs):
        raise AssertionError("a dry run ran a pass")

    monkeypatch.setattr(PassRunner, "run", no_pass)
    cfg = compose_evaluate_config(
        [*folder_settings(root, model), *ONE_STEP_PGD, "dry_run=true"], tmp_path / "out"
    )
    result = evaluate(cfg)
    assert result.reports == [] and result.files == {}
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert (
        lines[0]
        == "dry run of suite quick: no pass runs; each attack is timed on a short run of the first batch."
    )
    table = lines[lines.index(next(line for line in lines if line.split()[:1] == ["pass"])) + 1 :]
    rows = {tuple(line.split()[:-1]): float(line.split()[-1]) for line in table[:2]}
    # The final prediction, and one PGD step with it, on each of the 4 images, with their timed costs.
    clean, pgd = rows[("clean", "1", "4")], rows[("PGD3", "@8/255", "2", "4")]
    assert 0 < clean < pgd, printed
    assert "3 model evaluations per image" in printed and "timed on a batch of 2 " in printed
    assert " s per pass to start the loader" in printed
    assert "  estimate: " in printed and not (tmp_path / "out" / "results.md").exists()


def test_the_estimate_counts_every_pass_the_cache_does_not_hold_at_its_timed_cost():
    passes = (
        PlannedPassCost("clean", 1, 10, cached=False, seconds_per_image=0.5),
        PlannedPassCost("PGD10 @8/255", 11, 10, cached=False, seconds_per_image=4.0),
        PlannedPassCost("PGD20 @8/255", 21, 10, cached=True, seconds_per_image=0.0),
    )
    estimate = CostEstimate("m", "d", passes, timed_images=2, seconds_per_pass=3)
    assert estimate.seconds == pytest.approx((0.5 + 4.0) * 10 + 2 * 3)
    unknown = CostEstimate("m", "d", (PlannedPassCost("clean", 1, None, False, 0.5),), 2)
    assert unknown.seconds is None


@pytest.mark.filterwarnings(JIT_DEPRECATION)
def test_the_estimate_comes_near_the_time_of_the_evaluation_it_plans(tmp_path):
    # On a small model each attack step's own work (its loss, projection, APGD's bookkeeping) costs as much as the
    # forward and backward passes or more. Timing those alone, the estimate fell 4.1-5.4 times short of this
    # suite's passes; timing a short run of each attack, measured / estimate was 0.58-1.35 in six runs (both on
    # the 2-core machine shared with two training runs, 2026-12-04).
    root = write_folder(tmp_path / "data", images=8)
    model = save_traced(tmp_path / "model.pt", seed=0)
    settings = [
        "suite=sea",
        "suite.steps=20",
        "masking_checks.enabled=false",
        "example_images=0",
        "cache=false",
    ]
    cfg = compose_evaluate_config([*folder_settings(root, model), *settings], tmp_path / "out")
    runner = PassRunner(EvaluationSettings.from_config(cfg), start_processes(cfg), None)
    (estimate,) = estimate_costs(runner, *models_and_data(cfg), Suite.from_config(cfg.suite, cfg.eps))
    (report,) = evaluate(cfg).reports
    measured = sum(row.seconds for row in report.rows)
    assert 0.4 < measured / estimate.seconds < 2.5, (measured, estimate.seconds)


FACTS = DatasetFacts(255, 0, lambda: torch.full((3,), 1 / 3))


@pytest.mark.parametrize("preset", [option for option in group_options("attack") if option != "none"])
def test_suite_single_runs_any_attack_preset(preset):
    cfg = compose_config(
        "evaluate", ["suite=single", f"suite.attack={preset}", "suite.steps=7", "output_dir=x"]
    )
    suite = Suite.from_config(cfg.suite, cfg.eps)
    (run,) = suite.runs
    assert (run.key, run.label, run.steps, run.eps_text) == (preset, preset, 7, "8/255")
    assert suite.worst_case == (preset,)
    attack = run.build(FACTS)
    assert attack.steps == 7 and attack.eps == pytest.approx(8 / 255)


def test_suite_single_refuses_an_unknown_preset_listing_them():
    cfg = compose_config("evaluate", ["suite=single", "suite.attack=erosg", "output_dir=x"])
    with pytest.raises(
        SuiteError, match=r"suite.attack=erosg: 'erosg' is not an option of conf/attack; .*'eroseg'"
    ):
        Suite.from_config(cfg.suite, cfg.eps)


def test_suite_single_evaluates_one_named_attack_with_its_arguments():
    report = evaluate_model(
        HalfResolutionDict(),
        loader(),
        suite="single",
        overrides=["suite.attack=segpgd", "suite.steps=1", "+suite.arguments.alpha=0.02", *CHEAP[-2:]],
    )
    assert [(row.kind, row.key) for row in report.rows] == [
        ("clean", "clean"),
        ("attack", "segpgd"),
        ("worst_case", "worst_case"),
    ]
    assert report.row("attack").description.alpha == 0.02 and report.row("attack").steps == 1


def test_help_names_only_the_groups_evaluation_reads():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="evaluate", return_hydra_config=True, overrides=["hydra.job.name=evaluate"])
        template = cfg.hydra.help.template
    lines = template.splitlines()
    assert lines[0] == "evaluate is powered by Hydra."
    groups = {line.split(":")[0]: line.split(": ")[1] for line in lines if ": " in line and line[0] != " "}
    groups.pop("One named attack", None)
    groups.pop("The plan and a time estimate, without running a pass", None)
    assert set(groups) == {"suite", "model", "dataset", "hydra/launcher"}, groups
    assert groups["suite"].split(", ") == group_options("suite") and "single" in groups["suite"]
    assert "eroseg, eroseg_paper" in template and "dry_run=true" in template
