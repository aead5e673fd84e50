"""compile.enabled=true: the evaluation attacks torch.compile of its model and reports what eager reports (slow:
the first compilation of a forward and an input-gradient backward takes tens of seconds on a CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from eroseg_at.evaluation import evaluate
from tests.evaluation.conftest import compose_evaluate_config

SETTINGS = ("suite=quick", "max_batches=1", "+dataset.val_batch_size=4", "example_images=0", "device=cpu")


@pytest.mark.slow
def test_a_compiled_model_gives_the_eager_report(trained_run, tmp_path, monkeypatch):
    compiled_modules = []
    real_compile = torch.compile

    def spy(module, **options):
        compiled_modules.append(type(module).__name__)
        return real_compile(module, **options)

    monkeypatch.setattr(torch, "compile", spy)
    checkpoint = f"ckpt_path={trained_run / 'last.ckpt'}"
    eager, compiled = (
        evaluate(compose_evaluate_config([checkpoint, *SETTINGS, *extra], tmp_path / name))
        for name, extra in (("eager", ()), ("compiled", ("compile.enabled=true",)))
    )
    assert compiled_modules == ["FullResolutionFeatureModel"]
    documents = [json.loads(result.files["results.json"].read_text()) for result in (eager, compiled)]
    assert documents[1]["settings"]["compile"]["enabled"] is True
    rows = [{row["key"] + row["eps_text"]: row for row in doc["models"][0]["results"]} for doc in documents]
    assert rows[0].keys() == rows[1].keys()
    for key, row in rows[0].items():
        # Inductor fuses and reorders float operations, so attacked images can differ in the last bits and a
        # few pixels flip; the clean pass has no gradient steps to amplify that.
        tolerance = 1e-6 if key.startswith("clean") else 0.02
        assert rows[1][key]["miou"] == pytest.approx(row["miou"], abs=tolerance), key
