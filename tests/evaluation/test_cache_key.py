"""The cache key covers everything that changes a number: each field changed in turn recomputes the passes it
changes, and the rerun in the same directory equals a fresh run; each field of the key changes its digest."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import eroseg_at
from eroseg_at.attacks import PGD
from eroseg_at.checkpoint import load_checkpoint
from eroseg_at.evaluation import evaluate, pipeline
from eroseg_at.evaluation.cache import PassCache
from eroseg_at.evaluation.data import EvaluationData
from eroseg_at.evaluation.distributed import single_process
from eroseg_at.evaluation.keys import (
    DataIdentity,
    Execution,
    ModelIdentity,
    PassIdentity,
    PassKey,
    source_version,
)
from eroseg_at.evaluation.passes import AttackPass, CleanPass, PassRunner
from eroseg_at.evaluation.settings import EvaluationSettings
from eroseg_at.evaluation.suite import AttackRun
from tests.evaluation.conftest import (
    ONE_STEP_PGD,
    SIZE,
    compose_evaluate_config,
    folder_settings,
    save_traced,
    write_folder,
)
from tests.evaluation.test_resume import scores
from tests.models.conftest import JIT_DEPRECATION

pytestmark = pytest.mark.filterwarnings(JIT_DEPRECATION)

# ------------------------------------------------------------------------------- each field changes the digest
BASE = PassKey(
    model=ModelIdentity("weights", {"config": {"name": "unet"}}, ((0.5, 0.5, 0.5), (0.2, 0.2, 0.2)), 16),
    data=DataIdentity("content", {"transform": []}, {"num_classes": 3, "ignore_index": 255}),
    execution=Execution("32", {"enabled": False}, {"pad_mode": "constant"}, "cpu", 2),
    member=PassIdentity(
        "attack", ("pgd3", "8/255"), "eroseg_at.attacks.pgd.PGD", {"alpha": 0.01}, 8 / 255, 3
    ),
    seed=0,
    code="code",
)
# Every leaf of the key, as docs/EVALUATION.md lists them.
FIELDS = (
    "model.weights",
    "model.spec",
    "model.normalization",
    "model.input_divisor",
    "data.content",
    "data.transforms",
    "data.labels",
    "execution.precision",
    "execution.compile",
    "execution.inference",
    "execution.device",
    "execution.threads",
    "member.kind",
    "member.stream",
    "member.attack",
    "member.parameters",
    "member.eps",
    "member.steps",
    "seed",
    "code",
)


def leaves(record, prefix: str = "") -> list[str]:
    names = []
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        path = f"{prefix}{field.name}"
        names += leaves(value, f"{path}.") if dataclasses.is_dataclass(value) else [path]
    return names


def changed(record, path: str):
    """``record`` with the leaf at ``path`` given another value of its kind."""
    head, _, rest = path.partition(".")
    value = getattr(record, head)
    if rest:
        return dataclasses.replace(record, **{head: changed(value, rest)})
    if isinstance(value, dict):
        other = {**value, "changed": True}
    elif isinstance(value, tuple):
        other = (*value, "changed")
    else:
        other = value + type(value)(1) if isinstance(value, (int, float)) else f"{value} changed"
    return dataclasses.replace(record, **{head: other})


def test_the_key_has_the_documented_fields():
    assert tuple(leaves(BASE)) == FIELDS


@pytest.mark.parametrize("path", FIELDS)
def test_each_field_of_the_key_changes_its_digest(path):
    assert changed(BASE, path).digest != BASE.digest
    assert changed(BASE, path).text != BASE.text


# --------------------------------------------------- end to end: a changed setting recomputes, rerun equals fresh
@dataclass(frozen=True)
class Setup:
    """The files and settings of one evaluation, and its finished run."""

    settings: tuple[str, ...]
    finished: Path


SUITE = (*ONE_STEP_PGD, "device=cpu")


@pytest.fixture(scope="module")
def torchscript_on_folder(tmp_path_factory) -> Setup:
    """A TorchScript model on a folder dataset, evaluated once (its output directory holds the cache)."""
    base = tmp_path_factory.mktemp("folder_setup")
    settings = (*folder_settings(write_folder(base / "data"), save_traced(base / "model.pt", 0)), *SUITE)
    evaluate(compose_evaluate_config(list(settings), base / "finished"))
    return Setup(settings, base / "finished")


@pytest.fixture(scope="module")
def checkpoint(trained_run, tmp_path_factory) -> Setup:
    """The session's trained checkpoint on two 32x32 shapes images, evaluated once."""
    base = tmp_path_factory.mktemp("checkpoint_setup")
    settings = (
        f"ckpt_path={trained_run / 'last.ckpt'}",
        "+dataset.val_source.image_size=[32,32]",
        "+dataset.val_batch_size=2",
        "max_batches=1",
        *SUITE,
    )
    evaluate(compose_evaluate_config(list(settings), base / "finished"))
    return Setup(settings, base / "finished")


def replace_image(root: Path, name: str) -> None:
    Image.fromarray(np.full((SIZE, SIZE, 3), 200, dtype=np.uint8)).save(root / "images" / name)


def other_weights(setup: Setup, directory: Path) -> tuple[str, ...]:
    return (f"model.path={save_traced(directory / 'model.pt', 1)}",)


def other_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "code_version", lambda: "another version of the code")


def another_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    # The key reads the count torch runs with; the numbers it changes are in the last bits (keys.Execution).
    count = torch.get_num_threads()
    monkeypatch.setattr(torch, "get_num_threads", lambda: count + 1)


def compile_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    # compile.enabled changes the key; the module itself need not be compiled to show that.
    monkeypatch.setattr(torch, "compile", lambda module, **options: module)


BOTH = ("clean", "PGD3 @8/255")
ATTACK = ("PGD3 @8/255",)


@dataclass(frozen=True)
class Change:
    """A setting changed for a rerun, the key field it changes, and the passes it must recompute."""

    field: str
    setup: str
    overrides: tuple[str, ...] = ()
    files: Callable[[Setup, Path], tuple[str, ...]] | None = None
    patch: Callable[[pytest.MonkeyPatch], None] | None = None
    recomputed: tuple[str, ...] = BOTH


CHANGES = (
    Change("model.weights", "torchscript_on_folder", files=other_weights),
    Change("model.spec", "checkpoint", ("+model.architecture.decoder_atrous_rates=[4,8,12]",)),
    Change("model.normalization", "checkpoint", ("+model.mean=[0.3,0.4,0.5]",)),
    Change(
        "model.normalization",
        "torchscript_on_folder",
        ("model.mean=[0.3,0.4,0.5]", "model.std=[0.2,0.2,0.2]"),
    ),
    Change("model.input_divisor", "torchscript_on_folder", ("model.input_divisor=2",)),
    Change("data.transforms", "torchscript_on_folder", ("dataset.augment.val_resize=[24,24]",)),
    Change("data.labels", "torchscript_on_folder", ("dataset.ignore_index=254",)),
    Change("execution.precision", "torchscript_on_folder", ("precision=bf16",)),
    Change("execution.compile", "torchscript_on_folder", ("compile.enabled=true",), patch=compile_eagerly),
    Change("execution.inference", "torchscript_on_folder", ("inference.pad_mode=replicate",)),
    Change("execution.threads", "torchscript_on_folder", patch=another_thread_count),
    Change(
        "member.stream",
        "torchscript_on_folder",
        (
            "~suite.attacks.pgd3",
            "+attack@suite.attacks.pgd_renamed=pgd",
            "suite.attacks.pgd_renamed.steps=1",
            "+suite.attacks.pgd_renamed.label=PGD3",
        ),
        recomputed=ATTACK,
    ),
    Change(
        "member.attack",
        "torchscript_on_folder",
        ("suite.attacks.pgd3._target_=eroseg_at.attacks.CosPGD",),
        recomputed=ATTACK,
    ),
    Change(
        "member.parameters", "torchscript_on_folder", ("suite.attacks.pgd3.alpha=0.02",), recomputed=ATTACK
    ),
    Change("member.eps", "torchscript_on_folder", ("eps=[4/255]",), recomputed=("PGD3 @4/255",)),
    Change("member.steps", "torchscript_on_folder", ("suite.attacks.pgd3.steps=2",), recomputed=ATTACK),
    Change("seed", "torchscript_on_folder", ("seed=1",), recomputed=BOTH),
    Change("code", "torchscript_on_folder", patch=other_code),
)


@pytest.fixture
def computed(monkeypatch) -> set[str]:
    """The names of the passes of which this test computed a batch."""
    names: set[str] = set()
    compute = PassRunner.batch

    def recording(self, model, producer, index, images, labels):
        names.add(producer.name)
        return compute(self, model, producer, index, images, labels)

    monkeypatch.setattr(PassRunner, "batch", recording)
    return names


def test_every_field_that_a_setting_reaches_has_a_change():
    # data.content: test_images_replaced_in_place_under_their_names_are_recomputed; the device type and a pass's
    # kind no setting of a CPU run reaches: the last two tests of this file.
    assert {change.field for change in CHANGES} == set(FIELDS) - {
        "data.content",
        "execution.device",
        "member.kind",
    }


@pytest.mark.parametrize("change", CHANGES, ids=[f"{c.field}-{c.setup}" for c in CHANGES])
def test_a_changed_setting_recomputes_its_passes_and_the_rerun_equals_a_fresh_run(
    change, request, tmp_path, monkeypatch, computed
):
    setup: Setup = request.getfixturevalue(change.setup)
    computed.clear()  # the setup's own run, where this test is the first to ask for it
    rerun_dir = shutil.copytree(setup.finished, tmp_path / "rerun")
    overrides = change.files(setup, tmp_path) if change.files else ()
    if change.patch is not None:
        change.patch(monkeypatch)
    settings = [*setup.settings, *change.overrides, *overrides]
    rerun = evaluate(compose_evaluate_config(settings, rerun_dir))
    assert computed == set(change.recomputed)
    (report,) = rerun.reports
    assert {
        row.label if row.kind == "clean" else f"{row.label} @{row.eps_text}"
        for row in report.rows
        if not row.cached and row.kind != "worst_case"
    } == set(change.recomputed)
    fresh = evaluate(compose_evaluate_config([*settings, "cache=false"], tmp_path / "fresh"))
    assert scores(rerun) == scores(fresh)


def test_the_normalisation_given_for_a_checkpoint_is_the_one_applied(checkpoint, tmp_path):
    # Its weights carry the training normalisation; the evaluation writes the given one over it, and says so.
    result = evaluate(compose_evaluate_config([*checkpoint.settings, "+model.mean=[0.3,0.4,0.5]"], tmp_path))
    (report,) = result.reports
    assert report.source.mean == (0.3, 0.4, 0.5) and report.source.normalization == "given (evaluation)"
    stored = load_checkpoint(Path(checkpoint.settings[0].split("=", 1)[1])).model_state["mean"]
    assert stored.flatten().tolist() != pytest.approx([0.3, 0.4, 0.5])


def test_what_changes_no_number_recomputes_nothing(torchscript_on_folder, tmp_path, computed):
    rerun_dir = shutil.copytree(torchscript_on_folder.finished, tmp_path / "rerun")
    # A column title, the report's figures and the number of data workers change no pass.
    rerun = evaluate(
        compose_evaluate_config(
            [*torchscript_on_folder.settings, "suite.attacks.pgd3.label=PGD-one", "example_images=1"],
            rerun_dir,
        )
    )
    assert computed == set() and all(row.cached for row in rerun.reports[0].rows if row.kind != "worst_case")


def test_images_replaced_in_place_under_their_names_are_recomputed(tmp_path, computed):
    # The review's case: two validation images replaced, same names, same directory.
    root = write_folder(tmp_path / "data")
    settings = (*folder_settings(root, save_traced(tmp_path / "model.pt", 0)), *SUITE)
    evaluate(compose_evaluate_config(list(settings), tmp_path / "run"))
    for name in ("1.png", "2.png"):
        replace_image(root, name)
    computed.clear()
    rerun = evaluate(compose_evaluate_config(list(settings), tmp_path / "run"))
    assert computed == set(BOTH) and not any(row.cached for row in rerun.reports[0].rows)
    fresh = evaluate(compose_evaluate_config([*settings, "cache=false"], tmp_path / "fresh"))
    assert scores(rerun) == scores(fresh)


# ------------------------------------- the fields no setting of a CPU run reaches: filled from what they name
def clean_pass_key(directory: Path, device: str, threads: int) -> PassKey:
    """The key of a clean pass over two toy batches, on ``device``, keyed with torch at ``threads`` threads."""
    images = torch.linspace(0, 1, 4 * 3 * 8 * 8).reshape(4, 3, 8, 8)
    batches = [(part, torch.zeros(2, 8, 8, dtype=torch.int64)) for part in images.split(2)]
    data = EvaluationData(
        "toy", batches, 2, ("a", "b"), batch_sizes=[2, 2], batch_loader=lambda i: [batches[j] for j in i]
    )
    identity = ModelIdentity("weights", {"class": "toy"}, None, 1)
    runner = PassRunner(EvaluationSettings(), single_process(torch.device(device)), PassCache(directory))
    count = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        (key,) = pipeline.pass_keys(runner, data, identity, [CleanPass(2, 255)])
    finally:
        torch.set_num_threads(count)
    return key


def test_the_device_type_the_passes_run_on_is_in_their_keys(tmp_path):
    # A CUDA run computes other numbers than a CPU run (its kernels differ): its passes must not serve a CPU rerun.
    on_cpu, on_cuda = clean_pass_key(tmp_path, "cpu", 1), clean_pass_key(tmp_path, "cuda", 1)
    assert (on_cpu.execution.device, on_cuda.execution.device) == ("cpu", "cuda")
    assert on_cpu.digest != on_cuda.digest
    assert dataclasses.replace(on_cuda, execution=on_cpu.execution) == on_cpu


def test_the_thread_count_is_in_the_keys_of_cpu_passes_only(tmp_path):
    cpu = [clean_pass_key(tmp_path, "cpu", threads).execution for threads in (1, 2)]
    cuda = [clean_pass_key(tmp_path, "cuda", threads).execution for threads in (1, 2)]
    assert [execution.threads for execution in cpu] == [1, 2]
    assert cuda[0] == cuda[1] and cuda[0].threads is None


def test_an_attack_pass_is_keyed_by_its_kind_its_stream_and_the_attack_as_built():
    # A suite member's stream names its budget, so no setting changes eps alone; the identity holds the attack's
    # own eps all the same, for passes whose stream does not name it. Likewise the kind keeps a suite member and a
    # curve point of the same attack on the same stream apart.
    attack = PGD(eps="4/255", steps=2, alpha=0.02)
    run = AttackRun("pgd", "PGD", "attack", "pgd", "8/255", 8 / 255, {"steps": 2})
    parameters = {key: value for key, value in vars(attack).items() if key not in ("eps", "steps")}
    assert AttackPass(run, attack, 2, 255).identity == PassIdentity(
        "attack", ("pgd", "8/255"), "eroseg_at.attacks.pgd.PGD", parameters, pytest.approx(4 / 255), 2
    )
    point = AttackPass(dataclasses.replace(run, kind="iterations"), attack, 2, 255).identity
    assert point.kind == "iterations"


@pytest.fixture
def package_copy(tmp_path, monkeypatch) -> Path:
    """A copy of the package's sources that :func:`~eroseg_at.evaluation.keys.source_version` reads instead."""
    copy = shutil.copytree(
        Path(eroseg_at.__file__).parent, tmp_path / "eroseg_at", ignore=shutil.ignore_patterns("__pycache__")
    )
    monkeypatch.setattr(eroseg_at, "__file__", str(copy / "__init__.py"))
    source_version.cache_clear()
    yield copy
    source_version.cache_clear()


def test_the_code_version_follows_every_source_that_produces_results_but_trainings(package_copy):
    before = source_version()
    training = package_copy / "training" / "runner.py"
    training.write_text(training.read_text() + "\n# a change to training alone\n")
    source_version.cache_clear()
    assert source_version() == before
    for name in ("evaluation/worst_case.py", "attacks/pgd.py", "models/adapter.py", "data/shapes.py"):
        path = package_copy / name
        path.write_text(path.read_text() + "\n# a change\n")
        source_version.cache_clear()
        assert source_version() != before, name
        before = source_version()
