"""Builders that read a segmentation model from local files, or take one in memory, and adapt it.

Each builder returns a :class:`~eroseg_at.models.adapter.SegmentationAdapter` (images in [0, 1] -> logits at
the input size, normalisation inside) and is a Hydra ``_target_`` with plain keyword arguments
(``conf/model/{torchvision,huggingface,torchscript,smp}.yaml``). ``mean``/``std`` override the normalisation
of every source. Nothing is downloaded: every builder reads local files only; a missing file or directory is a
:class:`~eroseg_at.models.errors.ModelFileNotFoundError` naming it, a file that does not load a
:class:`~eroseg_at.models.errors.ModelSourceError` (user errors: the entry points print them without a
traceback). Each adapter is checked once on a probe batch
(:meth:`~eroseg_at.models.adapter.SegmentationAdapter.check_output`) before it is returned, in training mode
like any freshly built torch module (Lightning never calls ``.train()`` itself; call ``.eval()`` for inference).

Decoder features (``logits_and_features``, for RP-PGD) are the input of the layer that maps them to logits:

=================================  ============================  ==============================================
source                             layer                          features
=================================  ============================  ==============================================
torchvision ``deeplabv3_*``        ``classifier.4``               ASPP -> 3x3 conv -> BN -> ReLU (256 channels)
torchvision ``fcn_*``              ``classifier.4``               3x3 conv -> BN -> ReLU -> dropout
torchvision ``lraspp_*``           none                           its logits add two classifiers on two
                                                                  different feature maps: no single one
Hugging Face SegFormer             ``decode_head.classifier``     fused MLP features (linear_fuse -> BN -> ReLU)
Hugging Face UperNet               ``decode_head.classifier``     FPN bottleneck output
other Hugging Face models          none                           not wired up here
SMP                                ``segmentation_head``          the decoder output
TorchScript                        none                           a compiled module exposes no layers to hook
=================================  ============================  ==============================================
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from eroseg_at.models.adapter import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FeatureSegmentationAdapter,
    SegmentationAdapter,
    SourceInfo,
    check_positive_int,
    count_classes,
)
from eroseg_at.models.errors import ModelFileNotFoundError, ModelSourceError
from eroseg_at.models.weights import check_keys, existing_path, load_weights, sha256_of

IMAGENET = "ImageNet"
IDENTITY_MEAN = (0.0, 0.0, 0.0)
IDENTITY_STD = (1.0, 1.0, 1.0)

# torchvision family (the name's first word) -> the classifier layer whose input are the decoder features.
TORCHVISION_CLASSIFIERS = {"deeplabv3": "classifier.4", "fcn": "classifier.4"}
# Hugging Face model_type -> the same.
HUGGINGFACE_CLASSIFIERS = {"segformer": "decode_head.classifier", "upernet": "decode_head.classifier"}
PREPROCESSOR_CONFIG = "preprocessor_config.json"


def adapt_model(
    network: nn.Module,
    num_classes: int | None,
    mean: Sequence[float],
    std: Sequence[float],
    input_divisor: int = 1,
    classifier_name: str | None = None,
    source: SourceInfo | None = None,
) -> SegmentationAdapter:
    """Adapts an in-memory network to the model contract and checks it once on a probe batch.

    Args:
        network: Maps normalised ``[B, 3, H, W]`` images to logits (a tensor, a dict with ``"out"`` or
            ``"logits"``, an object with ``.logits``, or a tuple whose first element is the logits).
        num_classes: Number of classes; None reads it from one probe forward.
        mean: Per-channel mean the network expects, in [0, 1] units; ``(0, 0, 0)`` with ``std=(1, 1, 1)``
            for a network that normalises its input itself.
        std: Per-channel std the network expects.
        input_divisor: H and W of every input must be divisible by it (1: any size).
        classifier_name: The submodule whose input are the decoder features (e.g. ``"classifier.4"``);
            None gives an adapter without ``logits_and_features``.
        source: Provenance for reports; defaults to ``SourceInfo("module", <network class>)``.

    Returns:
        A :class:`FeatureSegmentationAdapter` when ``classifier_name`` is given, else a
        :class:`SegmentationAdapter`.

    Raises:
        ValueError: Bad arguments, or the probe output is not ``[B, num_classes, h, w]`` logits, or not finite.

    Shape:
        The adapter maps ``[B, 3, H, W]`` in [0, 1] to ``[B, num_classes, H, W]``.
    """
    check_positive_int(input_divisor, "input_divisor")
    if num_classes is None:
        num_classes = count_classes(network, mean, std, input_divisor)
    if classifier_name is None:
        adapter = SegmentationAdapter(network, num_classes, mean, std, input_divisor, source)
    else:
        adapter = FeatureSegmentationAdapter(
            network, num_classes, classifier_name, mean, std, input_divisor, source
        )
    adapter.check_output()
    return adapter


def resolve_normalization(
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    default_mean: Sequence[float],
    default_std: Sequence[float],
    default_label: str,
) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """``mean``/``std`` where given, else the source's defaults, with a label saying which is which."""
    if mean is None and std is None:
        label = default_label
    elif mean is not None and std is not None:
        label = "given"
    else:
        origin = f"from {default_label}"
        label = (
            f"mean {'given' if mean is not None else origin}, std {'given' if std is not None else origin}"
        )
    chosen_mean = default_mean if mean is None else mean
    chosen_std = default_std if std is None else std
    return tuple(float(m) for m in chosen_mean), tuple(float(s) for s in chosen_std), label


def drop_head(network: nn.Module, attribute: str) -> None:
    """Removes an auxiliary head whose output the adapter discards.

    Left in place it would cost compute in every forward and, never receiving a gradient, make DDP fail
    ("parameters that were not used in producing the loss"). The libraries skip a head that is None.
    """
    if getattr(network, attribute, None) is not None:
        setattr(network, attribute, None)


def torchvision_model(
    name: str,
    num_classes: int,
    weights: str | Path | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> SegmentationAdapter:
    """A ``torchvision.models.segmentation`` model, built offline, optionally with a local state dict.

    Built with ``weights=None, weights_backbone=None`` (nothing is downloaded) and without the auxiliary head;
    an ``aux_classifier.*`` part of ``weights`` (torchvision's own COCO weights have one) is ignored.
    torchvision upsamples to the input size itself, so any input size works (``input_divisor`` 1).

    Args:
        name: One of ``torchvision.models.list_models(module=torchvision.models.segmentation)``.
        num_classes: Number of output classes (must match ``weights``).
        weights: A local state dict (``.pth``/``.pt``/``.bin``/``.safetensors``); None keeps random weights.
        mean: Normalisation mean in [0, 1] units; default ImageNet's, which torchvision's weights expect.
        std: Normalisation std; default ImageNet's.

    Returns:
        A :class:`FeatureSegmentationAdapter` for DeepLabV3 and FCN, a :class:`SegmentationAdapter` for
        LR-ASPP (see the module docstring).

    Raises:
        ModelSourceError: Unknown name (the valid ones are listed), bad ``num_classes``, or weights that are not
            a state dict of this architecture (see :func:`eroseg_at.models.weights.load_weights`).
        ModelFileNotFoundError: ``weights`` does not exist.

    Shape:
        ``[B, 3, H, W]`` in [0, 1] -> ``[B, num_classes, H, W]``.
    """
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models.segmentation)
    if name not in names:
        raise ModelSourceError(
            f"unknown torchvision segmentation model {name!r}; valid names: {', '.join(names)}"
        )
    check_positive_int(num_classes, "num_classes")
    path = existing_path(weights, "model.weights") if weights is not None else None
    network = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=num_classes)
    if path is not None:
        load_weights(network, path, f"torchvision {name}", ignore_prefixes=("aux_classifier.",))
    mean, std, label = resolve_normalization(mean, std, IMAGENET_MEAN, IMAGENET_STD, IMAGENET)
    source = SourceInfo(
        "torchvision", name, str(path) if path else None, sha256_of(path) if path else None, label
    )
    classifier = TORCHVISION_CLASSIFIERS.get(name.split("_")[0])
    return adapt_model(network, num_classes, mean, std, 1, classifier, source)


def preprocessor_normalization(directory: Path) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Mean and std in [0, 1] units from a Hugging Face ``preprocessor_config.json``; None without one.

    The image processor feeds the network ``(pixels * rescale_factor - image_mean) / image_std`` with pixels
    in 0..255 (``do_rescale``, ``do_normalize`` switch the steps). The adapter's images are ``pixels / 255``,
    so both statistics are divided by ``255 * rescale_factor`` (1 for the usual ``rescale_factor = 1/255``).
    Resizing (``do_resize``) is not reproduced: the adapter runs at the size it is given.

    Raises:
        ModelSourceError: The file is not JSON, or ``do_normalize`` is set without ``image_mean``/``image_std``, or
            they do not hold 1 or 3 values; naming the file.
    """
    file = directory / PREPROCESSOR_CONFIG
    if not file.is_file():
        return None
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelSourceError(f"cannot read {file}: {error}") from error
    scale = 255.0 * float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 255.0
    if not config.get("do_normalize", True):
        return tuple(m / scale for m in IDENTITY_MEAN), tuple(s / scale for s in IDENTITY_STD)
    statistics = []
    for key in ("image_mean", "image_std"):
        value = config.get(key)
        values = [value] if isinstance(value, (int, float)) else value
        if not isinstance(values, list) or len(values) not in (1, 3):
            raise ModelSourceError(
                f"{file}: {key} must be a number or a list of 1 or 3 numbers, got {value!r}"
            )
        statistics.append(tuple(float(v) / scale for v in values * (3 // len(values))))
    return statistics[0], statistics[1]


def huggingface_model(
    path: str | Path,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_divisor: int = 1,
) -> SegmentationAdapter:
    """A Hugging Face semantic segmentation model from a directory written by ``save_pretrained``.

    Loaded with ``AutoModelForSemanticSegmentation.from_pretrained(path, local_files_only=True)`` (no
    download, no remote code); ``transformers`` is imported here only. Weights that do not fit the
    architecture are refused rather than randomly initialised. The normalisation comes from
    ``preprocessor_config.json`` (see :func:`preprocessor_normalization`) when the directory has one, else
    ImageNet's. The auxiliary head (UperNet, BEiT, DPT) is dropped. Logits that the model predicts at a lower
    resolution (SegFormer: 1/4) are upsampled to the input size.

    Args:
        path: The model directory (``config.json`` and weights).
        num_classes: Expected number of classes; None takes the config's ``num_labels``.
        mean: Overrides the normalisation mean, in [0, 1] units.
        std: Overrides the normalisation std.
        input_divisor: H and W of every input must be divisible by it; 1 (the default) suits SegFormer and
            UperNet, which accept any size.

    Returns:
        A :class:`FeatureSegmentationAdapter` for SegFormer and UperNet, else a :class:`SegmentationAdapter`.

    Raises:
        ModelFileNotFoundError: The directory, its ``config.json`` or its weights file does not exist.
        ModelSourceError: The config is not of a semantic segmentation model (the valid classes are listed),
            ``num_classes`` differs from ``num_labels``, or the weights do not fit (missing and unexpected keys
            are listed).

    Shape:
        ``[B, 3, H, W]`` in [0, 1] -> ``[B, num_classes, H, W]``.
    """
    directory = existing_path(path, "model.path", directory=True)
    config_file = existing_path(directory / "config.json", "model.path config")
    from transformers import AutoConfig, AutoModelForSemanticSegmentation
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
    except (ValueError, OSError, KeyError) as error:
        raise ModelSourceError(f"cannot read the Hugging Face config {config_file}: {error}") from error
    valid = list(MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES.values())
    architectures = list(config.architectures or [])
    if config.model_type not in MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES or (
        architectures and not set(architectures) & set(valid)
    ):
        described = ", ".join(architectures) or f"model_type {config.model_type!r}"
        raise ModelSourceError(
            f"{config_file} describes {described}, which is not a semantic segmentation model; "
            f"AutoModelForSemanticSegmentation loads {', '.join(valid)}"
        )
    if num_classes is not None and num_classes != config.num_labels:
        raise ModelSourceError(
            f"num_classes={num_classes} but {config_file} has num_labels={config.num_labels}: "
            "set model.num_classes (or the dataset) to match the model"
        )
    try:
        network, info = AutoModelForSemanticSegmentation.from_pretrained(
            directory, config=config, local_files_only=True, output_loading_info=True
        )
    except OSError as error:  # transformers' error for a directory without a weights file
        raise ModelFileNotFoundError(f"model.path={directory}: {error}") from error
    except RuntimeError as error:
        raise ModelSourceError(f"cannot load the weights in {directory}: {error}") from error
    check_keys(info["missing_keys"], info["unexpected_keys"], str(directory), type(network).__name__)
    drop_head(network, "auxiliary_head")
    network.train()
    found = preprocessor_normalization(directory)
    default_mean, default_std = found or (IMAGENET_MEAN, IMAGENET_STD)
    default_label = PREPROCESSOR_CONFIG if found else f"{IMAGENET} (no {PREPROCESSOR_CONFIG})"
    mean, std, label = resolve_normalization(mean, std, default_mean, default_std, default_label)
    source = SourceInfo("huggingface", type(network).__name__, str(directory), sha256_of(directory), label)
    classifier = HUGGINGFACE_CLASSIFIERS.get(config.model_type)
    return adapt_model(network, config.num_labels, mean, std, input_divisor, classifier, source)


def torchscript_model(
    path: str | Path,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_divisor: int = 1,
) -> SegmentationAdapter:
    """A TorchScript module (``torch.jit.save`` of a trace or script) that maps images to logits.

    Trust: a TorchScript archive is a program. ``torch.jit.load`` runs no Python pickle code, but calling the
    module runs the serialized TorchScript code in the TorchScript interpreter, which can call any registered
    operator (file I/O included); ``torch.load``'s ``weights_only`` safeguard does not apply. Load only files
    you trust as you would trust code. (torch deprecates TorchScript and warns when it loads one.)

    Args:
        path: The ``.pt`` file.
        num_classes: Number of classes; None reads it from one probe forward.
        mean: Normalisation mean applied before the module; default none (the module normalises itself, or
            takes [0, 1] images).
        std: Normalisation std; default none.
        input_divisor: H and W of every input must be divisible by it (1: any size).

    Returns:
        A :class:`SegmentationAdapter` (no decoder features: a compiled module exposes no layers to hook).

    Raises:
        ModelFileNotFoundError: The file does not exist.
        ModelSourceError: The file is not a TorchScript archive, or the module's output is not logits.

    Shape:
        ``[B, 3, H, W]`` in [0, 1] -> ``[B, num_classes, H, W]``.
    """
    file = existing_path(path, "model.path")
    try:
        network = torch.jit.load(str(file), map_location="cpu")
    except (RuntimeError, ValueError) as error:
        raise ModelSourceError(
            f"{file} is not a TorchScript archive (written by torch.jit.save): {str(error).splitlines()[0]}"
        ) from error
    network.train()
    default_label = "none (the module takes [0, 1] images)"
    mean, std, label = resolve_normalization(mean, std, IDENTITY_MEAN, IDENTITY_STD, default_label)
    source = SourceInfo("torchscript", network.original_name, str(file), sha256_of(file), label)
    return adapt_model(network, num_classes, mean, std, input_divisor, None, source)


def smp_model(
    path: str | Path,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> SegmentationAdapter:
    """A segmentation-models-pytorch model from a directory written by its ``save_pretrained``.

    Loaded with ``smp.from_pretrained(path)`` after checking that ``config.json`` and ``model.safetensors``
    are there (SMP would otherwise look the path up on the Hub), with ``encoder_weights=None`` (the saved
    weights replace them, and a tag such as ``"imagenet"`` would download) and ``activation=None`` (the
    adapter returns logits; a head activation holds no weights). A classification head is dropped, as are
    encoder stages the decoder never uses (see :func:`eroseg_at.models.factory.drop_unused_encoder_stages`).

    Args:
        path: The model directory.
        num_classes: Number of classes; None reads it from one probe forward.
        mean: Normalisation mean in [0, 1] units; default ImageNet's.
        std: Normalisation std; default ImageNet's.

    Returns:
        A :class:`FeatureSegmentationAdapter` (decoder features: the input of ``segmentation_head``) whose
        ``input_divisor`` is the encoder's output stride where the architecture needs divisible sizes, else 1.

    Raises:
        ModelFileNotFoundError: The directory, its ``config.json`` or ``model.safetensors`` does not exist.
        ModelSourceError: ``config.json`` names no SMP model class, or the weights do not fit it.

    Shape:
        ``[B, 3, H, W]`` in [0, 1] -> ``[B, num_classes, H, W]``.
    """
    directory = existing_path(path, "model.path", directory=True)
    config_file = existing_path(directory / "config.json", "model.path config")
    weights_file = existing_path(directory / "model.safetensors", "model.path weights")
    import segmentation_models_pytorch as smp

    from eroseg_at.models.factory import drop_unused_encoder_stages

    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelSourceError(f"cannot read {config_file}: {error}") from error
    class_name = config.get("_model_class") if isinstance(config, dict) else None
    model_class = getattr(smp, class_name, None) if isinstance(class_name, str) else None
    if not (isinstance(model_class, type) and issubclass(model_class, smp.base.SegmentationModel)):
        raise ModelSourceError(
            f"{config_file} names no segmentation-models-pytorch model class under '_model_class' (found "
            f"{class_name!r}); expected a directory written by an SMP model's save_pretrained"
        )
    try:
        network = smp.from_pretrained(directory, encoder_weights=None, activation=None, local_files_only=True)
    except RuntimeError as error:
        raise ModelSourceError(
            f"the weights in {weights_file} do not fit {class_name} of {config_file}: {error}"
        ) from error
    drop_head(network, "classification_head")
    drop_unused_encoder_stages(network.encoder, config.get("encoder_depth", 5))
    network.train()
    mean, std, label = resolve_normalization(mean, std, IMAGENET_MEAN, IMAGENET_STD, IMAGENET)
    name = f"{class_name}({config.get('encoder_name', '?')})"
    source = SourceInfo("smp", name, str(directory), sha256_of(directory), label)
    input_divisor = network.encoder.output_stride if network.requires_divisible_input_shape else 1
    return adapt_model(network, num_classes, mean, std, input_divisor, "segmentation_head", source)
