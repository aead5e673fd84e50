"""The one-call API: ``from eroseg_at import evaluate_model`` on raw networks and plain data, and the refusals of
what it cannot take."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from eroseg_at import evaluate_model
from eroseg_at.evaluation.api import budget_text, loader_batch_sizes
from eroseg_at.evaluation.errors import EvaluationError
from eroseg_at.models import adapt_model
from tests.conftest import REPO_ROOT
from tests.evaluation.conftest import ONE_STEP_PGD

# The cheapest suite with an attack and a worst case; the budget comes from evaluate_model's eps.
CHEAP = [*ONE_STEP_PGD[2:], "device=cpu"]
CLASSES = 3


class HalfResolutionDict(nn.Module):
    """A torchvision-like network: normalised images to ``{"out": logits}`` at half the input size."""

    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, classes, 3, padding=1, stride=2)

    def forward(self, images):
        return {"out": self.conv(images), "aux": None}


class TupleOutput(HalfResolutionDict):
    def forward(self, images):
        return (self.conv(images), "features")


class Pairs(Dataset):
    """A map-style dataset of ``(image [3, H, W], label [H, W])`` pairs."""

    def __init__(self, count: int = 5, size: int = 16, scale: float = 1.0) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.rand(count, 3, size, size, generator=generator) * scale
        self.labels = torch.randint(0, CLASSES, (count, size, size), generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]


def loader(images: int = 4, size: int = 16) -> DataLoader:
    pairs = Pairs(images, size)
    return DataLoader(TensorDataset(pairs.images, pairs.labels), batch_size=2)


def test_a_raw_network_and_a_plain_loader_give_a_report_that_summarises_and_saves(tmp_path):
    report = evaluate_model(HalfResolutionDict(), loader(), suite="quick", overrides=CHEAP)
    # The class count came from the network's output; the budget from eps, shown as a fraction of 255.
    assert report.num_images == 4 and len(report.class_names) == CLASSES
    worst = report.row("worst_case", eps_text="8/255")
    assert worst.miou <= report.row("clean").miou and report.rows[0].kind == "clean"
    assert report.source.normalization == "ImageNet (evaluate_model's default)"
    summary = report.summary()
    assert summary.startswith("module HalfResolutionDict (`HalfResolutionDict`): robust mIoU ")
    assert f"{100 * worst.miou:.2f} % at 8/255" in summary and "suite quick, 1 attack iterations" in summary
    files = report.save(tmp_path / "saved")
    assert {"results.json", "results.csv", "results.md"} <= set(files)
    assert summary.splitlines()[0] in files["results.md"].read_text()


class Stream(IterableDataset):
    def __iter__(self):
        return iter(Pairs(3))


def test_the_batch_sizes_of_a_plain_loader_are_known_where_the_loader_fixes_them():
    # The masking checks' subset, the ETA and sharding need them; the last batch of a sized loader is short.
    pairs = Pairs(7)
    assert loader_batch_sizes(DataLoader(pairs, batch_size=3)) == [3, 3, 1]
    assert loader_batch_sizes(DataLoader(pairs, batch_size=3, shuffle=True)) == [3, 3, 1]
    assert loader_batch_sizes(DataLoader(pairs, batch_size=3, drop_last=True)) == [3, 3]
    assert loader_batch_sizes(DataLoader(pairs, batch_sampler=[[0, 1], [2]])) is None
    assert loader_batch_sizes(DataLoader(Stream(), batch_size=2)) is None


def test_a_dataset_of_pairs_and_a_tuple_output_with_several_budgets():
    report = evaluate_model(
        TupleOutput(), Pairs(), suite="quick", eps=[4 / 255, "8/255"], batch_size=2, overrides=CHEAP
    )
    assert report.num_images == 5
    assert [row.eps_text for row in report.rows_of("worst_case")] == ["4/255", "8/255"]


def test_a_model_that_follows_the_contract_is_taken_as_it_is():
    network = HalfResolutionDict()
    model = adapt_model(network, CLASSES, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    report = evaluate_model(model, loader(), suite="quick", overrides=CHEAP)
    assert report.source.mean == (0.5, 0.5, 0.5) and report.source.normalization == "given"
    with pytest.raises(EvaluationError, match="follows the model contract"):
        evaluate_model(model, loader(), mean=(0.5,) * 3, std=(0.2,) * 3, suite="quick", overrides=CHEAP)
    with pytest.raises(EvaluationError, match=r"predicts 3 classes \(its num_classes\), but num_classes=4"):
        evaluate_model(model, loader(), num_classes=4, suite="quick", overrides=CHEAP)


class NoLogits(nn.Module):
    def forward(self, images):
        return [images.mean(1)]


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        (
            HalfResolutionDict(),
            DataLoader(TensorDataset(*[t[:2] for t in Pairs(2, scale=255.0)[:2]])),
            "[0, 1]",
        ),
        (HalfResolutionDict(classes=1), loader(), "1 output channel: a binary"),
        (NoLogits(), loader(), "its class count is read from that output"),
        (HalfResolutionDict(classes=2), loader(), r"labels hold \[2\], outside \[0, 2\)"),
        (HalfResolutionDict(), [(torch.rand(1, 3, 8, 8), torch.zeros(1, 8, 8))], "DataLoader or a Dataset"),
    ],
    ids=["images-in-0-255", "one-channel", "no-logits", "labels-beyond-classes", "a-list"],
)
def test_what_cannot_be_evaluated_is_refused_before_any_attack(model, data, message):
    with pytest.raises(EvaluationError, match=message):
        evaluate_model(model, data, suite="quick", overrides=CHEAP)


def test_a_dataset_of_several_image_sizes_says_to_batch_one_at_a_time():
    class TwoSizes(Pairs):
        def __getitem__(self, index):
            image, label = super().__getitem__(index)
            return (image, label) if index % 2 == 0 else (image[:, :8, :8], label[:8, :8])

    with pytest.raises(EvaluationError, match="several sizes.*batch_size=1"):
        evaluate_model(HalfResolutionDict(), TwoSizes(), suite="quick", overrides=CHEAP)


def test_budgets_of_whole_255ths_read_as_fractions():
    assert budget_text(8 / 255) == "8/255" and budget_text("4/255") == "4/255"
    assert budget_text(0.03) == "0.03"


def test_import_eroseg_at_stays_light_and_exports_the_two_calls():
    # The console scripts and the version lookup import eroseg_at: it must not pull torch in.
    code = "import sys, eroseg_at; assert 'torch' not in sys.modules, 'torch imported'"
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    import eroseg_at
    from eroseg_at import build_attack

    assert set(eroseg_at.__all__) == {"__version__", *eroseg_at.EXPORTS}
    assert evaluate_model.__module__ == "eroseg_at.evaluation.api"
    assert build_attack("pgd", eps="8/255", steps=1).name == "pgd"


def test_an_unknown_suite_lists_the_suites():
    with pytest.raises(EvaluationError, match=r"suite='papr' is not a conf/suite option; options: .*'paper'"):
        evaluate_model(HalfResolutionDict(), loader(), suite="papr")


def test_the_example_of_models_md_runs(tmp_path, monkeypatch):
    text = (REPO_ROOT / "docs" / "MODELS.md").read_text()
    example = text.split("<!-- example: evaluate_model -->\n```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example, "docs/MODELS.md", "exec"), namespace)
    report = namespace["report"]
    assert [row.eps_text for row in report.rows_of("worst_case")] == ["4/255", "8/255"]
    assert report.class_names == ("sky", "road", "car")
    assert (tmp_path / "robustness_report" / "results.md").read_text().startswith("# Robustness report")


class Collapsed(nn.Module):
    """Predicts class 0 everywhere, whatever the image (a model that collapsed in training)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([5.0, 0.0, 0.0]).view(1, 3, 1, 1))

    def forward(self, images):
        return self.bias + 0 * images[:, :1]


def test_the_summary_warns_of_a_model_that_predicts_one_class():
    report = evaluate_model(Collapsed(), loader(), suite="quick", overrides=CHEAP)
    headline, warning = report.summary().splitlines()
    assert report.pixel_counts.predicted_classes == (0,)
    assert warning.startswith("WARNING: module Collapsed (`Collapsed`) predicts one class (class 0) at every")
