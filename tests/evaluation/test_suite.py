"""Suites: every conf/suite option expands into buildable attacks composed from the attack group; bad members and
budgets are refused by name."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from eroseg_at.attacks import DatasetFacts, available_attacks
from eroseg_at.attacks.apgd import balanced_class_weights
from eroseg_at.configs import CONF_DIR, compose_config
from eroseg_at.errors import UserError
from eroseg_at.evaluation.keys import json_value
from eroseg_at.evaluation.suite import Suite, SuiteError
from tests.evaluation.conftest import compose_evaluate_config

SUITES = sorted(path.stem for path in (CONF_DIR / "suite").glob("*.yaml"))
PRESETS = sorted(path.stem for path in (CONF_DIR / "attack").glob("*.yaml") if path.stem != "none")
FACTS = DatasetFacts(255, 0, lambda: torch.full((7,), 1 / 7))


def expanded(tmp_path, *overrides: str) -> Suite:
    cfg = compose_evaluate_config(["ckpt_path=unused.ckpt", *overrides], tmp_path)
    return Suite.from_config(cfg.suite, cfg.eps)


@pytest.mark.parametrize("suite", SUITES)
def test_every_suite_option_expands_into_buildable_attacks(suite, tmp_path):
    runs = expanded(tmp_path, f"suite={suite}")
    assert runs.runs and runs.name == suite
    for run in runs.runs:
        attack = run.build(FACTS)
        assert attack.eps == pytest.approx(run.eps) and attack.steps == run.steps
    assert set(runs.worst_case) <= {run.key for run in runs.runs}


def test_paper_suite_is_the_papers_protocol(tmp_path):
    runs = {run.key: run for run in expanded(tmp_path, "suite=paper").runs}
    for key, attack, steps in (("cw", "cw", 10), ("pgd10", "pgd", 10), ("pgd20", "pgd", 20)):
        assert (runs[key].attack, runs[key].steps, runs[key].eps_text, runs[key].arguments["alpha"]) == (
            attack,
            steps,
            "8/255",
            0.01,
        )


def test_full_suite_covers_every_registered_attack(tmp_path):
    runs = expanded(tmp_path, "suite=full").runs
    assert {run.attack for run in runs if run.kind == "attack"} == set(available_attacks())
    assert sorted({run.steps for run in runs if run.kind == "iterations"}) == [1, 3, 5, 7, 10, 20, 50]


SEA_LOSSES = ("mce", "mce_balanced", "js")


def test_sea_suite_runs_seas_protocol_at_300_iterations_at_both_budgets(tmp_path):
    runs = expanded(tmp_path, "suite=sea").runs
    sea = [run for run in runs if run.arguments.get("radius_factors") == [2.0, 1.5, 1.0]]
    assert sorted((run.arguments["loss"], run.eps_text) for run in sea) == sorted(
        (loss, eps) for loss in SEA_LOSSES for eps in ("4/255", "8/255")
    )
    for run in sea:
        assert run.steps == 300 and run.arguments["stage_fractions"] == [0.3, 0.3, 0.4]
        assert run.arguments["track_loss"] == "ce" and run.arguments["early_stop"] is True


@pytest.mark.parametrize(("suite", "steps"), [("sea", 300), ("paper", 50), ("full", 100)])
def test_every_suites_worst_case_takes_seas_losses_in_both_protocols(suite, steps, tmp_path):
    # Measured (docs/EVALUATION.md): neither protocol's worst case is always the lower, both together are.
    suite_runs = expanded(tmp_path, f"suite={suite}")
    runs, members = suite_runs.runs, set(suite_runs.worst_case)
    for protocol in ([2.0, 1.5, 1.0], [1.0]):
        chosen = {
            run.arguments["loss"]
            for run in runs
            if run.attack == "apgd" and run.key in members and run.arguments.get("radius_factors") == protocol
        }
        assert set(SEA_LOSSES) <= chosen, (suite, protocol, chosen)
    assert {run.steps for run in runs if run.attack == "apgd"} == {steps}


def test_one_override_sets_the_iterations_of_every_sea_member(tmp_path):
    runs = expanded(tmp_path, "suite=sea", "suite.steps=100").runs
    assert {run.steps for run in runs} == {100}


def test_full_suite_has_halmosis_apgd_losses(tmp_path):
    runs = expanded(tmp_path, "suite=full").runs
    assert {"segpgd", "cospgd"} <= {run.arguments["loss"] for run in runs if run.attack == "apgd"}


@pytest.mark.parametrize(
    ("eps", "budgets"),
    [("[2/255,0.02]", [2 / 255, 0.02]), ("8/255", [8 / 255]), ("0.03", [0.03]), ("[4/255]", [4 / 255])],
)
def test_eps_from_the_command_line_is_parsed_as_one_budget_or_a_list(tmp_path, eps, budgets):
    runs = expanded(tmp_path, "suite=paper", f"eps={eps}").runs
    assert sorted({run.eps for run in runs}) == pytest.approx(budgets)
    assert len(runs) == 9 * len(budgets)


@pytest.mark.parametrize("eps", ["eight", "[8/255,x]", "-1/255", "[]"])
def test_a_bad_budget_is_refused_naming_eps(tmp_path, eps):
    with pytest.raises(SuiteError, match="eps"):
        expanded(tmp_path, "suite=quick", f"eps={eps}")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["suite.attacks.pgd3.eps=0.1"], r"suite.attacks.pgd3.eps=0.1: a member runs at every budget"),
        (["+suite.attacks.pgd3.seed=3"], r"suite.attacks.pgd3.seed=3: the evaluation seeds every batch"),
        (
            ["suite.iterations.attacks.pgd.steps=3"],
            r"suite.iterations.attacks.pgd.steps=3: a curve member runs",
        ),
        (["suite.attacks.pgd3.steps=null"], r"suite.attacks.pgd3 sets no steps"),
        (
            ["+suite.attacks.x={attack: pgd, steps: 3}"],
            r"suite.attacks.x must be a preset of the attack group",
        ),
        (
            ["+suite.attacks.x={_target_: torch.nn.Conv2d, steps: 3}"],
            r"_target_='torch.nn.Conv2d' is not a registered",
        ),
        (["suite.worst_case=[pgd99]"], r"suite.worst_case names \['pgd99'\]"),
    ],
)
def test_bad_members_are_refused_by_name(tmp_path, overrides, message):
    with pytest.raises(SuiteError, match=message) as refused:
        expanded(tmp_path, "suite=quick", *overrides)
    assert isinstance(refused.value, UserError)


@pytest.mark.parametrize("preset", PRESETS)
def test_any_preset_of_the_attack_group_can_join_a_suite(tmp_path, preset):
    # The way a suite file composes its members, from the command line: the preset, then the member's settings.
    suite = expanded(
        tmp_path,
        "suite=quick",
        "eps=[4/255]",
        f"+attack@suite.attacks.extra={preset}",
        "++suite.attacks.extra.steps=3",  # Square has no steps of its own (its budget is queries) and reads them
        "+suite.attacks.extra.label=Extra",
    )
    (run,) = [run for run in suite.runs if run.key == "extra"]
    attack = run.build(FACTS)
    assert (run.label, attack.steps, attack.eps, attack.ignore_index) == (
        "Extra",
        3,
        pytest.approx(4 / 255),
        255,
    )
    assert "extra" in suite.worst_case
    # The member is the preset itself (eroseg_paper's alpha 0.001 included) at the member's steps and the suite's
    # budget: the attack training builds from the same preset on a dataset with the same facts.
    trained = compose_config("train", [f"attack={preset}", "attack.steps=3", "attack.eps=4/255"])
    assert (trained.dataset.ignore_index, trained.dataset.background_class) == (255, 0)
    assert json_value(vars(attack)) == json_value(vars(instantiate(trained.attack)))


def test_a_removed_member_is_gone(tmp_path):
    runs = expanded(tmp_path, "suite=paper", "~suite.attacks.cw", "~suite.attacks.sea_js").runs
    assert {run.key for run in runs} == {"pgd10", "pgd20", "sea_mce", "sea_mce_balanced"} | {
        f"apgd_{loss}" for loss in SEA_LOSSES
    }


def test_balanced_weights_give_rare_classes_the_weight_of_frequent_ones():
    frequencies = torch.tensor([0.7, 0.2, 0.1, 0.0], dtype=torch.float64)
    weights = balanced_class_weights(frequencies)
    assert weights[3] == 0
    # Each present class carries the same total weight, and the pixel-weighted mean weight is 1.
    assert torch.allclose(weights[:3] * frequencies[:3].float(), torch.full((3,), 1 / 3))
    assert float((weights.double() * frequencies).sum()) == pytest.approx(1.0)


def test_dataset_settings_reach_the_attacks(tmp_path):
    # The presets interpolate ${dataset.ignore_index} and ${dataset.background_class}; the evaluation has no dataset
    # config for a checkpoint, so the evaluated dataset's facts supply them.
    runs = {run.key: run for run in expanded(tmp_path, "suite=quick", "eps=[4/255]").runs}
    assert runs["eroseg3"].from_dataset == ("ignore_index", "background_class")

    def unused_frequencies():
        raise AssertionError("only mce_balanced needs the class frequencies")

    attack = runs["eroseg3"].build(DatasetFacts(254, None, unused_frequencies))
    assert attack.background_class is None and attack.ignore_index == 254
    assert runs["eroseg3"].build(DatasetFacts(255, 3, unused_frequencies)).background_class == 3
    sea = {run.key: run for run in expanded(tmp_path, "suite=sea", "suite.steps=3", "eps=[4/255]").runs}
    attack = sea["sea_mce_balanced"].build(DatasetFacts(255, 0, lambda: torch.tensor([0.5, 0.5])))
    assert attack.ignore_index == 255 and torch.allclose(attack.class_weights, torch.ones(2))


def test_arguments_a_member_gives_win_over_the_datasets(tmp_path):
    runs = {
        run.key: run
        for run in expanded(
            tmp_path,
            "suite=sea",
            "suite.steps=3",
            "eps=[4/255]",
            "suite.attacks.sea_mce_balanced.class_weights=[1.0,3.0]",
            "+attack@suite.attacks.e=eroseg",
            "suite.attacks.e.steps=2",
            "suite.attacks.e.background_class=null",
        ).runs
    }
    assert runs["e"].build(DatasetFacts(255, 0, torch.ones)).background_class is None
    attack = runs["sea_mce_balanced"].build(DatasetFacts(255, 0, lambda: torch.tensor([0.5, 0.5])))
    assert attack.class_weights.tolist() == [1.0, 3.0]


def test_a_dataset_argument_the_class_does_not_take_from_the_dataset_is_refused(tmp_path):
    # PGD takes ignore_index from the dataset, but not background_class.
    (run, *_) = expanded(
        tmp_path,
        "suite=quick",
        "eps=[4/255]",
        "+suite.attacks.pgd3.background_class=${dataset.background_class}",
    ).runs
    with pytest.raises(
        SuiteError, match=r"suite.attacks.pgd3: background_class interpolate the dataset config"
    ):
        run.build(FACTS)


def members(runs) -> dict[str, tuple]:
    """Per member key and budget, what it runs: attack and arguments (its cache identity, but for the label)."""
    return {(run.key, run.eps_text): (run.attack, run.arguments) for run in runs}


def test_strongest_is_fulls_members_at_seas_budgets_and_holds_seas_ensemble(tmp_path):
    strongest = expanded(tmp_path, "suite=strongest")
    full = expanded(tmp_path, "suite=full", "eps=[4/255,8/255]")
    assert members(strongest.runs) == members(run for run in full.runs if run.kind == "attack")
    assert strongest.worst_case == full.worst_case
    # At equal steps SEA's ensemble is a subset of strongest, so strongest's worst case is never above it.
    sea = expanded(tmp_path, "suite=sea_ensemble", "suite.steps=100")
    assert members(sea.runs).items() <= members(strongest.runs).items()
