"""The pass runner: each batch draws its own random start, per-image results line up with the images whatever the
batch order and however the batches are shared, the gradient evaluations an attack actually runs are counted, and
any per-image statistics producer runs, shared and cached like the clean and attack passes."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from eroseg_at.attacks import APGD, PGD
from eroseg_at.evaluation import evaluate
from eroseg_at.evaluation.api import evaluate_model
from eroseg_at.evaluation.cache import PassCache
from eroseg_at.evaluation.data import EvaluationData
from eroseg_at.evaluation.distributed import single_process
from eroseg_at.evaluation.keys import PassIdentity
from eroseg_at.evaluation.passes import AttackPass, PassRunner
from eroseg_at.evaluation.results import AttackDescription, attack_row
from eroseg_at.evaluation.settings import EvaluationSettings
from eroseg_at.evaluation.suite import AttackRun
from tests.evaluation.conftest import (
    ONE_STEP_PGD,
    compose_evaluate_config,
    folder_settings,
    save_traced,
    write_folder,
)
from tests.evaluation.test_resume import TwoProcessesInOne
from tests.models.conftest import JIT_DEPRECATION

CPU = torch.device("cpu")


def batches_of(images: Tensor, sizes: list[int]) -> list[tuple[Tensor, Tensor]]:
    labels = torch.zeros(images.shape[0], *images.shape[2:], dtype=torch.int64)
    bounds = np.cumsum([0, *sizes])
    return [(images[a:b], labels[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def data_of(batches: list[tuple[Tensor, Tensor]]) -> EvaluationData:
    return EvaluationData(
        name="toy",
        loader=batches,
        num_classes=2,
        class_names=("a", "b"),
        batch_sizes=[images.shape[0] for images, _ in batches],
        batch_loader=lambda indices: [batches[index] for index in indices],
    )


@dataclass(frozen=True)
class Producer:
    """A per-image statistics producer of the test's own: ``compute(images) -> [B, k]``."""

    name: str
    compute: object
    batch_limit: int | None = None
    evaluations_per_image: int = 1

    @property
    def stream(self) -> tuple[str, ...]:
        return (self.name,)

    @property
    def identity(self) -> PassIdentity:
        return PassIdentity(self.name, self.stream)

    def __call__(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        return self.compute(images).cpu()


def noise(images: Tensor) -> Tensor:
    """What a random start draws from the global generator, per image."""
    return torch.rand(images.shape[0], 4)


def image_means(images: Tensor) -> Tensor:
    """A number that tells the images apart."""
    return images.mean((1, 2, 3)).view(-1, 1)


def run(data: EvaluationData, producer: Producer, processes=None, cache=None, seed: int = 0) -> Tensor:
    runner = PassRunner(EvaluationSettings(seed=seed), processes or single_process(CPU), cache)
    keys = [None] if cache is None else [producer_key(producer)]
    (planned,) = runner.plan(data, [producer], keys)
    result = runner.run(runner.prepare(nn.Conv2d(3, 2, 1)).eval(), data, planned, "test")
    return None if result is None else result.statistics


@pytest.fixture(autouse=True)
def contract_model(monkeypatch):
    # The runner wraps the model in full-resolution inference, which reads num_classes and input_divisor.
    monkeypatch.setattr(nn.Conv2d, "input_divisor", 1, raising=False)
    monkeypatch.setattr(nn.Conv2d, "num_classes", 2, raising=False)


def producer_key(producer: Producer):
    from tests.evaluation.test_cache_key import BASE

    return type(BASE)(BASE.model, BASE.data, BASE.execution, producer.identity, 0, "code")


def test_each_batch_draws_its_own_random_start_the_same_wherever_it_runs():
    # Three batches of the same image: only the seed can tell their random starts apart.
    data = data_of(batches_of(torch.full((6, 3, 4, 4), 0.5), [2, 2, 2]))
    probe = Producer("noise", noise)
    one = run(data, probe)
    rows = one.view(3, 2, 4)
    assert not torch.equal(rows[0], rows[1]) and not torch.equal(rows[1], rows[2])
    assert torch.equal(run(data, probe), one)
    assert not torch.equal(run(data, probe, seed=1), one)
    # Two processes: rank 1 draws the second batch first; each batch still draws its own noise.
    mailbox: list = []
    assert run(data, probe, TwoProcessesInOne(1, mailbox)) is None
    assert torch.equal(run(data, probe, TwoProcessesInOne(0, mailbox)), one)


@pytest.mark.parametrize("processes", [1, 2])
def test_per_image_results_line_up_with_the_images_whatever_the_batch_order(processes, tmp_path):
    images = torch.rand(7, 3, 4, 4)
    expected = image_means(images)
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        sizes = [3, 2, 2]
        parts = batches_of(images, sizes)
        # The loader yields the batches in `order`; the images in loader order are then these.
        loader = [parts[index] for index in order]
        in_loader_order = torch.cat([image_means(part[0]) for part in loader])
        data = data_of(loader)
        if processes == 1:
            result = run(data, Producer("means", image_means))
        else:
            mailbox: list = []
            run(data, Producer("means", image_means), TwoProcessesInOne(1, mailbox))
            result = run(data, Producer("means", image_means), TwoProcessesInOne(0, mailbox))
        assert torch.equal(result, in_loader_order)
        assert sorted(result.flatten().tolist()) == sorted(expected.flatten().tolist())


def test_a_resumed_pass_puts_its_cached_batches_in_their_place(tmp_path):
    images = torch.rand(6, 3, 4, 4)
    data = data_of(batches_of(images, [2, 2, 2]))
    cache = PassCache(tmp_path)
    producer = Producer("means", image_means)
    key = producer_key(producer)
    # An interrupted run left the last batch.
    cache.store_batch(key, 2, image_means(images[4:6]))
    assert torch.equal(run(data, producer, cache=cache), image_means(images))
    assert cache.finished(key)


def test_a_producer_may_take_a_subset_of_the_batches(tmp_path):
    images = torch.rand(6, 3, 4, 4)
    data = data_of(batches_of(images, [2, 2, 2]))
    assert torch.equal(run(data, Producer("first", image_means, batch_limit=2)), image_means(images[:4]))
    cache = PassCache(tmp_path)
    assert torch.equal(
        run(data, Producer("first", image_means, batch_limit=1), cache=cache), image_means(images[:2])
    )


class AlwaysWrong(nn.Module):
    """Predicts class 1 everywhere (labels are all 0): every pixel is fooled from the start."""

    num_classes = 2
    input_divisor = 1

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.0, 5.0]))

    def forward(self, images: Tensor) -> Tensor:
        return images.mean(1, keepdim=True) * 0 + self.bias.view(1, 2, 1, 1)


def attack_result(attack, images: Tensor):
    data = data_of(batches_of(images, [2, 2]))
    run_ = AttackRun("a", "A", "attack", attack.name, "8/255", 8 / 255, {"steps": attack.steps})
    producer = AttackPass(run_, attack, 2, 255)
    runner = PassRunner(EvaluationSettings(), single_process(CPU))
    (planned,) = runner.plan(data, [producer], [None])
    result = runner.run(runner.prepare(AlwaysWrong()), data, planned, "test")
    return result, attack_row(run_, AttackDescription.of(attack), result)


def test_gradient_evaluations_are_those_the_attack_ran():
    images = torch.rand(4, 3, 4, 4)
    # SEA's protocol with early stop: each of the three stages evaluates its start, finds every pixel fooled and
    # stops, so 3 of the 12 steps run.
    sea = APGD(
        steps=12,
        radius_factors=[2, 1.5, 1],
        stage_fractions=[0.3, 0.3, 0.4],
        track_loss="ce",
        early_stop=True,
    )
    result, row = attack_result(sea, images)
    assert result.gradient_evaluations == 4 * 3 and row.iterations_run == 3 and row.steps == 12
    assert row.images_per_second_per_iteration == pytest.approx(12 / result.seconds)
    # PGD runs its steps; its best-iterate check is a gradient-free forward and does not count.
    result, row = attack_result(PGD(steps=5, track_best=True), images)
    assert result.gradient_evaluations == 4 * 5 and row.iterations_run == 5


@pytest.mark.filterwarnings(JIT_DEPRECATION)
def test_per_image_lists_of_a_report_follow_its_image_names_in_any_batch_order(tmp_path):
    # The same four images listed in two orders and batched in twos: each image's clean pixel accuracy, by name,
    # is the one computed here from its own files, whatever its batch.
    model = torch.jit.load(str(save_traced(tmp_path / "model.pt", 3)))
    accuracies = {}
    for name, order in (("forward", [0, 1, 2, 3]), ("shuffled", [3, 1, 0, 2])):
        root = write_folder(tmp_path / name, order=order)
        settings = [
            *folder_settings(root, tmp_path / "model.pt"),
            "suite=strength",
            "suite.iterations=null",
            "example_images=0",
        ]
        document = json.loads(
            evaluate(compose_evaluate_config(settings, tmp_path / f"out_{name}"))
            .files["results.json"]
            .read_text()
        )
        (report,) = document["models"]
        (clean,) = [row for row in report["results"] if row["kind"] == "clean"]
        assert [path.rsplit("/", 1)[-1] for path in report["images"]] == [f"{index}.png" for index in order]
        for path, accuracy in zip(report["images"], clean["per_image_pixel_accuracy"], strict=True):
            image = (
                torch.from_numpy(np.asarray(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255
            )
            mask = torch.from_numpy(np.asarray(Image.open(path.replace("/images/", "/masks/")))).long()
            with torch.no_grad():
                predicted = model(image[None]).argmax(1)[0]
            assert accuracy == pytest.approx(float((predicted == mask).double().mean()), abs=1e-12), path
            accuracies.setdefault(path.rsplit("/", 1)[-1], set()).add(accuracy)
    assert len({value for values in accuracies.values() for value in values}) == 4, "the images must differ"


class PixelClassifier(nn.Conv2d):
    """A 1x1 convolution behind the model contract."""

    num_classes = 2
    input_divisor = 1

    def __init__(self) -> None:
        super().__init__(3, 2, 1)


def test_the_python_api_takes_a_plain_loader_of_unknown_batches():
    images = torch.rand(5, 3, 8, 8)
    loader = [(part, torch.randint(0, 2, (part.shape[0], 8, 8))) for part in images.split(2)]
    data = EvaluationData(name="toy", loader=loader, num_classes=2, class_names=("a", "b"))
    report = evaluate_model(
        PixelClassifier(), data, suite="quick", overrides=[*ONE_STEP_PGD[1:], "device=cpu"]
    )
    assert report.num_images == 5 and report.row("attack", "pgd3").iterations_run == 1
    assert report.source.kind == "module" and report.method == "PixelClassifier"
