"""The gradient-masking checks inside the evaluation: the masked test models of tests/masking_models.py evaluated
through the pipeline (plan, passes, reports) carry a verdict in results.json and results.md that flags each of
them and not the plain victim; the switch removes the section; a cached rerun gives what a fresh run gives."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from eroseg_at.configs import compose_config
from eroseg_at.evaluation.cache import PassCache
from eroseg_at.evaluation.distributed import start_processes
from eroseg_at.evaluation.masking import BLACK_BOX, BUDGET, GRADIENT_HEALTH, ITERATIONS, REPEATABILITY
from eroseg_at.evaluation.models import model_to_evaluate
from eroseg_at.evaluation.pipeline import evaluate_entries
from eroseg_at.evaluation.report import results_document, write_json, write_markdown
from eroseg_at.evaluation.results import ModelReport
from eroseg_at.evaluation.settings import EvaluationSettings
from eroseg_at.evaluation.suite import Suite
from tests.masking_models import (
    QuantizedInput,
    RandomResizePad,
    SaturatedLogits,
    load_victim,
    victim_evaluation_data,
)

IMAGES, BATCH = 8, 4
# The cheapest suite with a gradient member: PGD3 at 8/255; the checks on the first batch, Square at 100 queries.
CHEAP = (
    "suite=quick",
    "eps=[8/255]",
    "~suite.attacks.segpgd3",
    "~suite.attacks.eroseg3",
    "suite.iterations=null",
    "example_images=0",
    "device=cpu",
    "masking_checks.images=4",
    "masking_checks.queries=100",
)
# SEA's six APGD members at 10 iterations: the losses whose gradients the saturated model masks.
SEA = (
    "suite=sea",
    "suite.steps=10",
    "eps=[8/255]",
    "example_images=0",
    "device=cpu",
    "masking_checks.images=8",
    "masking_checks.queries=200",
)
WRAPPERS = {"quantized": QuantizedInput, "saturated": SaturatedLogits, "random": RandomResizePad}


def evaluate(
    names: Sequence[str], overrides: Sequence[str], cache: Path | None = None
) -> dict[str, ModelReport]:
    """The reports of the victim (``plain``) and of its masked wrappers, built afresh, through the pipeline."""
    cfg = compose_config("evaluate", ["output_dir=unused", *overrides])
    victim = load_victim()
    models = {name: victim if name == "plain" else WRAPPERS[name](victim) for name in names}
    reports = evaluate_entries(
        [model_to_evaluate(model) for model in models.values()],
        [victim_evaluation_data(IMAGES, BATCH) for _ in models],
        Suite.from_config(cfg.suite, cfg.eps),
        EvaluationSettings.from_config(cfg),
        start_processes(cfg),
        None if cache is None else PassCache(cache),
    )
    return dict(zip(models, reports, strict=True))


def written(reports: dict[str, ModelReport], directory: Path) -> tuple[dict, str]:
    """results.json (per model name) and results.md as the evaluation writes them."""
    directory.mkdir(parents=True, exist_ok=True)
    write_json(results_document(list(reports.values()), {}), directory / "results.json")
    write_markdown(list(reports.values()), directory / "results.md", [])
    document = json.loads((directory / "results.json").read_text())
    by_model = dict(zip(reports, document["models"], strict=True))
    return by_model, (directory / "results.md").read_text()


def flagged(model: dict) -> set[str]:
    return {check["name"] for check in model["gradient_masking"]["checks"] if check["flagged"]}


def test_each_masked_model_is_flagged_in_the_report_and_the_plain_one_is_not(tmp_path):
    reports = evaluate(["plain", *WRAPPERS], CHEAP)
    models, markdown = written(reports, tmp_path)
    assert models["plain"]["gradient_masking"]["suspected"] is False
    assert flagged(models["plain"]) == set()
    assert flagged(models["quantized"]) == {BLACK_BOX, BUDGET, GRADIENT_HEALTH}
    # PGD's CE keeps a gradient on the pixels already wrong, so only the budget check sees the saturation here.
    assert flagged(models["saturated"]) == {BUDGET}
    assert REPEATABILITY in flagged(models["random"])
    for name in WRAPPERS:
        assert models[name]["gradient_masking"]["suspected"] is True
    quantized = models["quantized"]["gradient_masking"]
    assert [check["name"] for check in quantized["checks"]] == [
        BLACK_BOX,
        BUDGET,
        ITERATIONS,
        GRADIENT_HEALTH,
        REPEATABILITY,
    ]
    budget = next(check for check in quantized["checks"] if check["name"] == BUDGET)
    assert budget["numbers"]["large_eps"] == pytest.approx(64 / 255)
    assert budget["numbers"]["surviving_share"] > 0.9
    # The one-budget suite gets the 2/255 pass, so the budget curve has two points.
    assert set(budget["numbers"]) >= {f"miou_at_{2 / 255:.6g}", f"miou_at_{8 / 255:.6g}"}
    black_box = next(check for check in quantized["checks"] if check["name"] == BLACK_BOX)
    assert black_box["numbers"]["images"] == 4
    assert quantized["seconds"] > 0
    section = markdown.split("## Gradient-masking checks", 1)[1]
    for name, report in reports.items():
        line = next(line for line in section.splitlines() if f"(`{report.name}`)" in line)
        assert ("SUSPECTED" in line) == (name != "plain")
        assert "% of the model's pass time" in line
    quantized_line = next(line for line in section.splitlines() if "QuantizedInput" in line)
    assert "black_box_vs_white_box: on 4 images" in quantized_line
    assert "no check failed" in next(line for line in section.splitlines() if "(`Victim`)" in line)


def test_disabling_the_checks_removes_the_section_and_their_passes(tmp_path):
    reports = evaluate(["quantized"], [*CHEAP, "masking_checks.enabled=false"], cache=tmp_path / "cache")
    models, markdown = written(reports, tmp_path / "report")
    assert reports["quantized"].gradient_masking is None
    assert models["quantized"]["gradient_masking"] is None
    assert "Gradient-masking" not in markdown
    # The clean pass and PGD3: nothing else ran.
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2


def test_a_cached_rerun_gives_the_verdict_of_a_fresh_run(tmp_path):
    names = ["random", "quantized"]
    first = evaluate(names, CHEAP, cache=tmp_path / "cache")
    rerun = evaluate(names, CHEAP, cache=tmp_path / "cache")
    fresh = evaluate(names, CHEAP, cache=tmp_path / "fresh")
    for name in names:
        assert all(row.cached for row in rerun[name].rows if row.kind != "worst_case")
        # The rerun reads every pass, the checks' included, as the first run left it: its cost too.
        # (compared as JSON text: a NaN number, such as the smallest healthy change of a zero gradient, is equal
        # to itself there)
        assert json.dumps(rerun[name].gradient_masking.to_json()) == json.dumps(
            first[name].gradient_masking.to_json()
        )
        assert json.dumps(rerun[name].gradient_masking.to_json()["checks"]) == json.dumps(
            fresh[name].gradient_masking.to_json()["checks"]
        )
    assert rerun["random"].gradient_masking.suspected


@pytest.mark.slow
def test_sea_members_let_gradient_health_see_the_saturated_model(tmp_path):
    """With SEA's APGD members (masked CE, JS) the saturated model's masked gradients are caught too, and the
    iterations check runs a member at half its steps."""
    models, _ = written(evaluate(["plain", *WRAPPERS], SEA), tmp_path)
    assert flagged(models["plain"]) == set()
    assert flagged(models["quantized"]) == {BLACK_BOX, BUDGET, GRADIENT_HEALTH}
    assert flagged(models["saturated"]) == {BUDGET, GRADIENT_HEALTH}
    assert REPEATABILITY in flagged(models["random"])
    health = next(
        check
        for check in models["saturated"]["gradient_masking"]["checks"]
        if check["name"] == GRADIENT_HEALTH
    )
    assert health["numbers"]["ce_unhealthy_share"] == 0
    assert health["numbers"]["mce_unhealthy_share"] > 0.5
    iterations = next(
        check for check in models["plain"]["gradient_masking"]["checks"] if check["name"] == ITERATIONS
    )
    assert (iterations["numbers"]["fewer_steps"], iterations["numbers"]["more_steps"]) == (5, 10)
