"""scripts/reproduce.py: the summary arithmetic, and (slow) the whole reproduction at a toy size."""

from __future__ import annotations

import importlib.util
import math
import pytest

from eroseg_at.evaluation.results import ModelReport, ResultRow
from tests.conftest import REPO_ROOT


def load_reproduce():
    spec = importlib.util.spec_from_file_location("reproduce", REPO_ROOT / "scripts" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reproduce = load_reproduce()


def test_mean_spread_is_mean_and_half_range_in_percent():
    assert reproduce.mean_spread([0.30, 0.34]) == "32.0 ± 2.0"
    assert reproduce.mean_spread([0.5]) == "50.0 ± 0.0"
    assert reproduce.mean_spread([math.nan]) == "n/a"


def means_for(eroseg: float, rival: float) -> dict[str, dict[str, float]]:
    keys = [key for key, _ in reproduce.COLUMNS]
    return {
        "standard": dict.fromkeys(keys, 10.0),
        "PGD-AT": dict.fromkeys(keys, rival),
        "EroSeg-AT": dict.fromkeys(keys, eroseg),
    }


def test_findings_compare_differences_with_the_seed_spread():
    halves = {
        name: dict.fromkeys([key for key, _ in reproduce.COLUMNS], 1.0)
        for name in ("standard", "PGD-AT", "EroSeg-AT")
    }
    supported = reproduce.findings(means_for(eroseg=30.0, rival=25.0), halves, foreground=60.0)
    assert (
        "EroSeg-AT ranks 1 of 3" in supported
        and "(+5.0) is larger than their summed seed spreads (2.0)" in supported
    )
    assert "barely learned" not in supported
    unsupported = reproduce.findings(means_for(eroseg=25.0, rival=26.0), halves, foreground=60.0)
    assert "EroSeg-AT ranks 2 of 3" in unsupported and "(-1.0) is not larger than" in unsupported


def test_findings_flag_models_that_have_not_learned_the_task():
    halves = {
        name: dict.fromkeys([key for key, _ in reproduce.COLUMNS], 0.0)
        for name in ("standard", "PGD-AT", "EroSeg-AT")
    }
    assert "barely learned the task" in reproduce.findings(means_for(12.0, 12.0), halves, foreground=0.5)


def test_strength_findings_rank_the_attacks_at_each_iteration_count():
    miou = {("PGD", 3): 0.30, ("EroSeg", 3): 0.20, ("PGD", 10): 0.10, ("EroSeg", 10): 0.15}

    def row(kind, label, steps, value):
        return ResultRow(kind, label, label, 8 / 255, "8/255", value, value, (value,), (value,), steps=steps)

    report = ModelReport(
        name="standard.ckpt",
        path=None,
        sha256="0" * 64,
        method="standard",
        dataset="shapes",
        class_names=("background",),
        palette=((0, 0, 0),),
        ignore_index=255,
        image_names=("image",),
        rows=(
            *(row("iterations", label, steps, value) for (label, steps), value in miou.items()),
            row("clean", "clean", None, 0.8),
        ),
    )
    text = reproduce.strength_findings(report)
    assert "- 3 iteration(s), lowest mIoU first: EroSeg 20.0, PGD 30.0." in text
    assert "- 10 iteration(s), lowest mIoU first: PGD 10.0, EroSeg 15.0." in text
    assert "EroSeg is the strongest attack (or tied) at 1 of 2 iteration counts" in text


@pytest.mark.slow
def test_reproduction_at_a_toy_size_writes_results_and_figures(tmp_path):
    docs = tmp_path / "docs"
    reproduce.main(
        [
            "--train-images",
            "16",
            "--val-images",
            "8",
            "--epochs",
            "1",
            "--methods",
            "none",
            "eroseg",
            "--seeds",
            "0",
            "1",
            "--curve-steps",
            "1",
            "2",
            "--apgd-steps",
            "2",
            "--output-dir",
            str(tmp_path / "run"),
            "--docs",
            str(docs),
        ]
    )
    text = (docs / "RESULTS.md").read_text()
    assert "Partial" not in text and "| EroSeg-AT (3 steps) |" in text and "| standard | 1 |" in text
    assert "training (min)" in text and "EroSeg is the strongest attack (or tied) at" in text
    assert (docs / "figures" / "attack_strength_standard.png").is_file()
    assert (docs / "figures" / "examples_standard.png").is_file()
