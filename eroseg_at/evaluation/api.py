"""The Python API of the evaluation: ``evaluate_model(model, data)``, the robustness report of any model on any
data, in this process.

The model may be any network (adapted here to the model contract) and the data a plain DataLoader or Dataset;
the report it returns prints its headline (:meth:`RobustnessReport.summary`) and writes the same files as
``evaluate.py`` (:meth:`RobustnessReport.save`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, default_collate

from eroseg_at.configs import CONF_DIR, compose_config
from eroseg_at.evaluation.data import EvaluationData
from eroseg_at.evaluation.distributed import start_processes
from eroseg_at.evaluation.errors import EvaluationError
from eroseg_at.evaluation.models import model_to_evaluate
from eroseg_at.evaluation.output import write_report
from eroseg_at.evaluation.pipeline import evaluate_entries
from eroseg_at.evaluation.report import headline, model_warnings
from eroseg_at.evaluation.results import ModelReport
from eroseg_at.evaluation.runner import settings_record
from eroseg_at.evaluation.settings import EvaluationSettings
from eroseg_at.evaluation.suite import Suite
from eroseg_at.models.adapter import IMAGENET_MEAN, IMAGENET_STD, SourceInfo
from eroseg_at.models.sources import adapt_model, resolve_normalization

# The normalisation a network without one of its own is given: that of ImageNet-pretrained backbones, which
# nearly every published segmentation model (torchvision, SMP, SegFormer) starts from.
DEFAULT_NORMALIZATION = "ImageNet (evaluate_model's default)"
OUTPUT_CONTRACT = (
    "logits [B, C, h, w] (a tensor, a dict with 'out' or 'logits', an object with .logits, or a tuple whose "
    "first element is them)"
)


@dataclass(frozen=True)
class RobustnessReport(ModelReport):
    """What :func:`evaluate_model` measured on one model (every field of a
    :class:`~eroseg_at.evaluation.results.ModelReport`: ``rows``, ``row(...)``, the example images), the settings it
    ran with, its headline and its files.

    Attributes:
        settings: The composed evaluation config, resolved, as ``results.json`` records it.
    """

    settings: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, report: ModelReport, settings: Mapping[str, Any]) -> RobustnessReport:
        return cls(**{item.name: getattr(report, item.name) for item in fields(report)}, settings=settings)

    def summary(self) -> str:
        """The headline: the worst-case robust mIoU per budget, clean, the suite and what it cost; a warning
        follows on its own line where the model predicts one class or scores like a constant prediction."""
        return "\n".join([headline(self), *model_warnings(self)])

    def save(self, directory: str | Path) -> dict[str, Path]:
        """Writes the files ``evaluate.py`` writes (results.md/csv/json, the figures) into ``directory``.

        Returns:
            Each file by its name.
        """
        return write_report([self], Path(directory), self.settings)


def budget_text(value: float | str) -> str:
    """A budget as the report shows it: ``8/255`` for a float that is a whole number of 255ths, else as given."""
    if isinstance(value, str):
        return value
    scaled = float(value) * 255
    if math.isclose(scaled, round(scaled), abs_tol=1e-6):
        return f"{round(scaled)}/255"
    return repr(float(value))


def follows_contract(model: nn.Module) -> bool:
    """Whether ``model`` is already behind the model contract (a model of :mod:`eroseg_at.models` or an adapter)."""
    return isinstance(getattr(model, "num_classes", None), int) and isinstance(
        getattr(model, "input_divisor", None), int
    )


def contract_model(
    model: nn.Module,
    num_classes: int | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    input_divisor: int,
) -> nn.Module:
    """``model`` behind the model contract: as it is where it follows it, else adapted with ``mean``/``std``
    (ImageNet's by default) and the class count of its output.

    Raises:
        EvaluationError: When the model's output holds no logits, predicts a single channel, or its class count
            differs from ``num_classes``.
    """
    name = type(model).__name__
    if follows_contract(model):
        if mean is not None or std is not None:
            raise EvaluationError(
                f"model {name} follows the model contract (it has num_classes and input_divisor) and normalises "
                "its input itself; mean/std apply to a network that evaluate_model adapts: drop them, or pass the "
                "network inside it"
            )
        if num_classes is not None and num_classes != model.num_classes:
            raise EvaluationError(
                f"model {name} predicts {model.num_classes} classes (its num_classes), but num_classes={num_classes} "
                "was given; drop num_classes or evaluate the model of that many classes"
            )
        return model
    mean, std, label = resolve_normalization(mean, std, IMAGENET_MEAN, IMAGENET_STD, DEFAULT_NORMALIZATION)
    try:
        adapted = adapt_model(
            model,
            num_classes,
            mean,
            std,
            input_divisor,
            source=SourceInfo("module", name, normalization=label),
        )
    except ValueError as error:
        hint = "" if num_classes is not None else " (its class count is read from that output)"
        raise EvaluationError(
            f"model {name}: {error}. evaluate_model needs a network that maps normalised [B, 3, H, W] images to "
            f"{OUTPUT_CONTRACT}{hint}; wrap it, or adapt it yourself with eroseg_at.models.adapt_model"
        ) from None
    if adapted.num_classes < 2:
        raise EvaluationError(
            f"model {name} returns {adapted.num_classes} output channel: a binary (sigmoid) model; the evaluation "
            "takes one logit per class (argmax), so wrap it to return two, e.g. torch.cat([-x, x], dim=1)"
        )
    return adapted


def same_size_batches(samples: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """``default_collate`` of ``(image, label)`` samples, refusing images of several sizes in one batch."""
    sizes = sorted({tuple(image.shape[-2:]) for image, _ in samples})
    if len(sizes) > 1:
        raise EvaluationError(
            f"one batch of the dataset holds images of several sizes {sizes}; evaluate_model batches a Dataset "
            "in order, so give batch_size=1, or a DataLoader whose batches hold images of one size"
        )
    return default_collate(samples)


def first_batch_problems(images: Any, labels: Any, num_classes: int, ignore_index: int) -> list[str]:
    """What is wrong with the first batch of the data, against the evaluation's expectations."""
    if not isinstance(images, Tensor) or not isinstance(labels, Tensor):
        return [
            f"batches must be (images, labels) tensors, got ({type(images).__name__}, {type(labels).__name__})"
        ]
    problems = []
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        problems.append(
            f"images must be float [B, 3, H, W], got {images.dtype} {list(images.shape)} "
            "(a Dataset's images float [3, H, W])"
        )
    elif images.min() < 0 or images.max() > 1:
        problems.append(
            f"images must lie in [0, 1] (eps is in those pixel units), got values in [{images.min():.3g}, "
            f"{images.max():.3g}]; give the raw images and the normalisation as mean=/std= (it runs inside the model)"
        )
    if labels.ndim != 3 or labels.is_floating_point() or labels.is_complex():
        problems.append(f"labels must be integer [B, H, W], got {labels.dtype} {list(labels.shape)}")
    elif images.ndim == 4 and labels.shape[-2:] != images.shape[-2:]:
        problems.append(f"labels {list(labels.shape)} do not match images {list(images.shape)} in H, W")
    else:
        values = labels[labels != ignore_index]
        outside = values[(values < 0) | (values >= num_classes)].unique()
        if outside.numel():
            problems.append(
                f"labels hold {outside[:10].tolist()}, outside [0, {num_classes}) (the model's classes) and not "
                f"ignore_index={ignore_index}"
            )
    return problems


def evaluation_data(
    data: DataLoader | Dataset | EvaluationData,
    num_classes: int,
    class_names: Sequence[str] | None,
    ignore_index: int,
    batch_size: int,
) -> EvaluationData:
    """``data`` as :class:`EvaluationData`, its first batch checked.

    Raises:
        EvaluationError: For data of another type, or a first batch that is not images in [0, 1] and labels of
            the model's classes.
    """
    if isinstance(data, EvaluationData):
        if data.num_classes != num_classes:
            raise EvaluationError(
                f"dataset {data.name} has {data.num_classes} classes, the model predicts {num_classes}"
            )
        return data
    if isinstance(data, DataLoader):
        loader, name = data, type(data.dataset).__name__
    elif isinstance(data, Dataset):
        loader = DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=same_size_batches)
        name = type(data).__name__
    else:
        raise EvaluationError(
            f"data must be a DataLoader or a Dataset of (image, label) pairs, or an EvaluationData; got "
            f"{type(data).__name__}"
        )
    names = tuple(class_names) if class_names is not None else tuple(f"class {i}" for i in range(num_classes))
    if len(names) != num_classes:
        raise EvaluationError(f"{len(names)} class_names given for a model of {num_classes} classes")
    batch = next(iter(loader), None)
    if batch is None:
        raise EvaluationError(f"data {name} holds no batch: nothing to evaluate")
    problems = first_batch_problems(*batch[:2], num_classes, ignore_index)
    if problems:
        raise EvaluationError(f"data {name}, first batch: " + "; ".join(problems))
    return EvaluationData(
        name=name,
        loader=loader,
        num_classes=num_classes,
        class_names=names,
        ignore_index=ignore_index,
        batch_sizes=loader_batch_sizes(loader),
    )


def loader_batch_sizes(loader: DataLoader) -> list[int] | None:
    """The images of each batch where the loader fixes them before it runs: a batch size over a sampler of known
    length (shuffled or not, the sizes are the same). The masking checks' subset, the ETA and the sharding over
    processes need them; None for a batch sampler of the user's own or an iterable dataset."""
    if loader.batch_size is None:
        return None
    try:
        images = len(loader.sampler)
    except TypeError:
        return None
    full, rest = divmod(images, loader.batch_size)
    return [loader.batch_size] * full + ([rest] if rest and not loader.drop_last else [])


def evaluate_model(
    model: nn.Module,
    data: DataLoader | Dataset | EvaluationData,
    *,
    num_classes: int | None = None,
    suite: str = "paper",
    eps: float | str | Sequence[float | str] = 8 / 255,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    batch_size: int = 8,
    input_divisor: int = 1,
    device: str = "auto",
    max_batches: int | None = None,
    overrides: Sequence[str] = (),
) -> RobustnessReport:
    """The robustness report of any model on any data, as ``evaluate.py`` computes it.

    It runs in this process alone and keeps no cache.

    Args:
        model: Any ``nn.Module`` that maps normalised images to logits (a tensor, a dict with ``out``, a
            transformers output, a tuple), adapted here (normalisation with ``mean``/``std`` inside, logits
            upsampled to the input size); or a model that already follows the contract (a model of
            :mod:`eroseg_at.models`, an adapter: it has ``num_classes`` and ``input_divisor``), taken as it is.
        data: A DataLoader of ``(images [B, 3, H, W] float in [0, 1], labels [B, H, W] integer)`` batches of one
            image size each, a Dataset of ``(image [3, H, W], label [H, W])`` pairs (batched in order by
            ``batch_size``), or an :class:`~eroseg_at.evaluation.data.EvaluationData`.
        num_classes: The model's class count; None reads it from the channels of one probe forward of the model
            (or its ``num_classes``).
        suite: A ``conf/suite`` option (``quick``, ``paper``, ``sea``, ``full``, ``strength``, ``single``).
        eps: The l-inf budget or budgets, in pixel units of [0, 1] images (a float such as ``8/255`` is shown
            as ``8/255``; strings such as ``"8/255"`` are taken as they are).
        mean, std: The normalisation the network expects, per channel in [0, 1] units; ImageNet's by default
            (``mean=(0, 0, 0), std=(1, 1, 1)`` for a network that normalises itself). Refused for a model that
            follows the contract, which normalises inside.
        class_names: One name per class for the report; None numbers them.
        ignore_index: The label that never counts.
        batch_size: Images per batch of a Dataset.
        input_divisor: H and W a network needs divisible by it (images are padded to it); 1: any size.
        device: ``auto`` (CUDA where available), ``cpu``, ``cuda``, ``cuda:N``.
        max_batches: Evaluate only the first N batches; None: all of them.
        overrides: Further settings of ``conf/evaluate.yaml`` as on the command line, applied last, e.g.
            ``["suite.steps=100", "example_images=0"]``.

    Returns:
        The report: ``.summary()``, ``.save(directory)``, ``.rows``, ``.row(kind, key, eps_text)`` (see
        :class:`RobustnessReport`); scores are fractions in [0, 1].

    Raises:
        EvaluationError: Naming the argument, for a model or data the evaluation cannot take, before any attack.

    Shape:
        model: ``[B, 3, H, W]`` normalised images to ``[B, C, h, w]`` logits (``h, w`` at most ``H, W``).
    """
    suites = sorted(path.stem for path in (CONF_DIR / "suite").glob("*.yaml"))
    if suite not in suites:
        raise EvaluationError(f"suite={suite!r} is not a conf/suite option; options: {suites}")
    budgets = [eps] if isinstance(eps, (int, float, str)) else list(eps)
    cfg = compose_config(
        "evaluate",
        [
            f"suite={suite}",
            "output_dir=unused",
            f"eps=[{','.join(budget_text(budget) for budget in budgets)}]",
            f"device={device}",
            f"max_batches={'null' if max_batches is None else max_batches}",
            *overrides,
        ],
    )
    network = contract_model(model, num_classes, mean, std, input_divisor)
    evaluated = evaluation_data(data, network.num_classes, class_names, ignore_index, batch_size)
    (report,) = evaluate_entries(
        [model_to_evaluate(network)],
        [evaluated],
        Suite.from_config(cfg.suite, cfg.eps),
        EvaluationSettings.from_config(cfg),
        start_processes(cfg),
    )
    return RobustnessReport.of(report, settings_record(cfg))
