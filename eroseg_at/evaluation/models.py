"""The models an evaluation attacks, however they are obtained, and their identity as they run.

Training checkpoints are rebuilt from their stored config with the evaluation's ``+model.<key>`` and
``+dataset.<key>`` overrides merged on top (a dataset option, ``dataset=voc dataset.root=...``, replaces the
stored dataset instead). Every override takes effect or is refused before any pass: ``mean``/``std`` are
written over the normalisation buffers the checkpoint's weights bring (they would otherwise overwrite them),
and initial-weight keys (``weights``, ``encoder_weights``, ``encoder_weights_path``) and model options, which a
checkpoint's own weights and stored model would silently replace, are refused. Model options
(``model=torchvision``, ``huggingface``, ``torchscript``, ``smp``, an SMP architecture) and models given in
Python are evaluated as built.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from eroseg_at.checkpoint import CheckpointError, TrainingMethod, load_checkpoint, resolve_checkpoint_paths
from eroseg_at.configs import build
from eroseg_at.evaluation.data import EvaluationData
from eroseg_at.evaluation.errors import EvaluationError
from eroseg_at.evaluation.keys import ModelIdentity
from eroseg_at.models.adapter import SourceInfo, channel_tensor

# Model-config keys that only initialise weights before training (a pretrained file, an encoder file, an SMP
# tag that would download): a training checkpoint's own weights replace them, so evaluating the checkpoint
# builds the architecture without them and needs neither the files nor the network.
INITIAL_WEIGHT_KEYS = ("weights", "encoder_weights", "encoder_weights_path")
NORMALIZATION_KEYS = ("mean", "std")
# Model-config keys the identity records otherwise: normalisation and divisor as the built model applies them, and
# the files the model is read from (``path``, ``weights``) by the digest of their contents, so a moved file is the
# same model.
KEYED_ELSEWHERE = (*NORMALIZATION_KEYS, "input_divisor", "path", *INITIAL_WEIGHT_KEYS)


@dataclass(frozen=True)
class ModelToEvaluate:
    """A model the evaluation attacks, however it was obtained.

    Attributes:
        name: How the report names it.
        path: Its file; None for a model given in memory.
        sha256: Hex SHA-256 of its weights (the checkpoint or weights file, or the state dict).
        method: The report's row name: the training method's label, or the source of a user's model.
        build: Returns the model (images in [0, 1] to logits, ``num_classes``, ``input_divisor``).
        spec: The resolved model config as it is built (without :data:`KEYED_ELSEWHERE`), for the cache key; a
            model given in memory: its class.
        dataset: The config of the dataset it is evaluated on; None for data given in Python.
        weights: A state dict loaded into the built model once its classes are checked (a checkpoint's).
        normalization: ``mean``/``std`` given by the evaluation, written over the loaded weights' buffers.
        training: The training run's stored config, for a training checkpoint.
        training_method: How a checkpoint's model was trained.
    """

    name: str
    path: Path | None
    sha256: str
    method: str
    build: Callable[[], nn.Module]
    spec: Mapping[str, Any]
    dataset: DictConfig | None = None
    weights: dict[str, torch.Tensor] | None = None
    normalization: Mapping[str, Sequence[float]] = field(default_factory=dict)
    training: dict[str, Any] | None = None
    training_method: TrainingMethod | None = None

    def model_for(self, data: EvaluationData) -> nn.Module:
        """The model as it will run: built, its classes checked against ``data``'s, weights loaded and the
        evaluation's normalisation written over them.

        Raises:
            CheckpointError: For a checkpoint, naming it and its file, on a class-count mismatch, weights that do
                not fit, or normalisation without buffers to hold it.
            EvaluationError: The same for another model.
        """
        error = CheckpointError if self.weights is not None else EvaluationError
        model = self.build()
        if model.num_classes != data.num_classes:
            raise error(
                f"model {self.name!r} ({self.path}) predicts {model.num_classes} classes but dataset "
                f"'{data.name}' has {data.num_classes}; evaluate it on the dataset it was trained on "
                "or override the model's and the dataset's classes together"
            )
        if self.weights is not None:
            try:
                model.load_state_dict(self.weights)
            except RuntimeError as failure:
                raise error(
                    f"model {self.name!r} ({self.path}): its weights do not fit the model its config "
                    f"describes: {str(failure).splitlines()[0]} ..."
                ) from failure
        if self.normalization:
            set_normalization(model, self.normalization, f"model {self.name!r} ({self.path})", error)
        return model


def set_normalization(
    model: nn.Module, values: Mapping[str, Sequence[float]], where: str, error: type[Exception]
) -> None:
    """Writes ``mean``/``std`` into the model's normalisation buffers, and says so in its ``source_info``."""
    for key, value in values.items():
        buffer = getattr(model, key, None)
        if not isinstance(buffer, torch.Tensor) or buffer.numel() != 3:
            raise error(
                f"{where}: model.{key}={list(value)} is given, but the model has no 3-channel '{key}' buffer to "
                f"hold it ({type(model).__name__}); drop +model.{key} or evaluate a model built with it"
            )
        with torch.no_grad():
            buffer.copy_(channel_tensor(value, key).view_as(buffer))
    info = getattr(model, "source_info", None)
    if info is not None:
        given = {key: tuple(float(v) for v in value) for key, value in values.items()}
        model.source_info = replace(info, **given, normalization="given (evaluation)")


def applied_normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` the model applies: its normalisation buffers where it has them (else what its
    ``source_info`` states); None where it has neither."""
    mean, std = getattr(model, "mean", None), getattr(model, "std", None)
    if isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor):
        return tuple(mean.flatten().tolist()), tuple(std.flatten().tolist())
    info = getattr(model, "source_info", None)
    return (tuple(info.mean), tuple(info.std)) if info is not None and info.mean else None


def applied_source(model: nn.Module) -> SourceInfo:
    """How the model was built and adapted, for the report, with the normalisation it applies (as its
    ``source_info`` states it, unless its buffers hold other values); a plain module is named by its class."""
    info = getattr(model, "source_info", None)
    if info is None:
        return SourceInfo("module", type(model).__name__)
    applied = applied_normalization(model)
    stated = [torch.tensor(values, dtype=torch.float32) for values in (info.mean, info.std)]
    if applied is not None and not all(
        torch.equal(value, torch.tensor(buffer, dtype=torch.float32))
        for value, buffer in zip(stated, applied, strict=True)
    ):
        return replace(info, mean=applied[0], std=applied[1], normalization="stored")
    return info


def model_identity(entry: ModelToEvaluate, model: nn.Module) -> ModelIdentity:
    """The model of ``entry`` as it will run (built by :meth:`ModelToEvaluate.model_for`), for the cache key."""
    info = getattr(model, "source_info", None)
    source = (
        {"class": f"{type(model).__module__}.{type(model).__qualname__}"}
        if info is None
        else {
            key: value
            for key, value in asdict(info).items()
            if key not in ("path", "sha256", "normalization", *NORMALIZATION_KEYS)
        }
    )
    return ModelIdentity(
        weights=entry.sha256,
        spec={"config": entry.spec, "source": source},
        normalization=applied_normalization(model),
        input_divisor=int(model.input_divisor),
    )


def built_spec(config: Mapping[str, Any]) -> dict[str, Any]:
    """A model config without the keys the identity records otherwise (:data:`KEYED_ELSEWHERE`)."""
    return {key: value for key, value in config.items() if key not in KEYED_ELSEWHERE}


def checkpoint_to_evaluate(path: Path, cfg: DictConfig) -> ModelToEvaluate:
    """A training checkpoint with the evaluation's dataset and model settings (see the module docstring).

    Raises:
        CheckpointError: Naming the file, when it cannot be loaded.
        EvaluationError: For a model option or an initial-weight key, which the checkpoint cannot honour.
    """
    if "_target_" in cfg.model:
        raise EvaluationError(
            f"ckpt_path={path} with a model option (model._target_={cfg.model._target_}): a checkpoint's model "
            "comes from its stored config, so another model cannot apply; drop the model option and change keys "
            "with +model.<key>=..., or evaluate the model's own file with the model option alone"
        )
    overrides = OmegaConf.to_container(cfg.model, resolve=True)
    ignored = {key: overrides[key] for key in INITIAL_WEIGHT_KEYS if overrides.get(key) is not None}
    if ignored:
        key, value = next(iter(ignored.items()))
        raise EvaluationError(
            f"model.{key}={value} cannot apply to checkpoint {path}: initial weights are replaced by the "
            f"checkpoint's own weights; drop +model.{key}, or evaluate that file with a model option"
        )
    checkpoint = load_checkpoint(path)
    stored = checkpoint.config
    evaluated_dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    # A dataset option is a whole dataset: merged key by key, its sources would mix with the stored ones.
    dataset = (
        OmegaConf.create(evaluated_dataset)
        if "_target_" in evaluated_dataset
        else OmegaConf.merge(stored.dataset, evaluated_dataset)
    )
    model_config = OmegaConf.merge(
        stored.model, overrides, {key: None for key in INITIAL_WEIGHT_KEYS if key in stored.model}
    )
    return ModelToEvaluate(
        name=path.name,
        path=path,
        sha256=checkpoint.sha256,
        method=checkpoint.method.label,
        build=lambda: build(model_config),
        spec=built_spec(OmegaConf.to_container(model_config, resolve=True)),
        dataset=dataset,
        weights=checkpoint.model_state,
        normalization={key: overrides[key] for key in NORMALIZATION_KEYS if key in overrides},
        training=OmegaConf.to_container(stored, resolve=True),
        training_method=checkpoint.method,
    )


def model_to_evaluate(
    model: nn.Module, dataset: DictConfig | None = None, spec: Mapping[str, Any] | None = None
) -> ModelToEvaluate:
    """A built model, named by its source (``model.source_info``) where it has one.

    Its digest is that of the weights file (or model directory) it was read from, else of its state dict; its
    spec is the config it was built from, else its class.
    """
    info = getattr(model, "source_info", None)
    path = Path(info.path) if info is not None and info.path else None
    return ModelToEvaluate(
        name=path.name if path is not None else (info.name if info is not None else type(model).__name__),
        path=path,
        sha256=info.sha256 if info is not None and info.sha256 else weights_sha256(model),
        method=f"{info.kind} {info.name}" if info is not None else type(model).__name__,
        build=lambda: model,
        spec=spec if spec is not None else {"class": f"{type(model).__module__}.{type(model).__qualname__}"},
        dataset=dataset,
    )


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and bytes), for a model without a file."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}\0{tensor.dtype}\0{list(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def models_to_evaluate(cfg: DictConfig) -> list[ModelToEvaluate]:
    """The checkpoints matched by ``cfg.ckpt_path``, or else the model the ``model`` option builds.

    Raises:
        EvaluationError: If ``cfg`` names neither, or a model option without a dataset option.
    """
    if cfg.get("ckpt_path"):
        return [checkpoint_to_evaluate(path, cfg) for path in resolve_checkpoint_paths(str(cfg.ckpt_path))]
    if "_target_" in cfg.model:
        if "_target_" not in cfg.dataset:
            raise EvaluationError(
                f"model={cfg.model._target_} is evaluated on a dataset option: add dataset=<name> "
                "(shapes, voc, cityscapes, ade20k, folder) and its dataset.root"
            )
        config = OmegaConf.to_container(cfg.model, resolve=True)
        return [model_to_evaluate(build(cfg.model), cfg.dataset, built_spec(config))]
    raise EvaluationError(
        "nothing to evaluate: give ckpt_path=<training checkpoint or glob>, or a model option such as "
        "model=torchvision model.name=lraspp_mobilenet_v3_large model.weights=FILE dataset=voc"
    )
