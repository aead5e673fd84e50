"""Build a segmentation-models-pytorch architecture by name, behind the model contract (:mod:`.adapter`).

``conf/model/*.yaml`` point their ``_target_`` here, so a new SMP architecture is a new YAML file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch

from eroseg_at.models.adapter import IMAGENET_MEAN, IMAGENET_STD, FeatureSegmentationAdapter, SourceInfo
from eroseg_at.models.errors import ModelFileNotFoundError, ModelSourceError
from eroseg_at.models.packaged_weights import PACKAGED_ENCODER_WEIGHTS
from eroseg_at.models.weights import check_keys, read_state_dict


def available_models() -> list[str]:
    """Architecture names accepted by :func:`build_model`: every one segmentation-models-pytorch registers."""
    return sorted(smp.MODEL_ARCHITECTURES_MAPPING)


def load_encoder_weights(network: torch.nn.Module, path: str | Path) -> None:
    """Load a local encoder state dict into ``network.encoder``.

    Accepts what :func:`~eroseg_at.models.weights.read_state_dict` reads (a ``.pth``/``.pt``/``.bin`` file with
    ``weights_only`` or a ``.safetensors`` file; a dict nesting it under ``state_dict`` or ``model``); an
    ``encoder.`` prefix on every key (as in a full SMP model's state dict) is stripped.

    Raises:
        ModelFileNotFoundError: The file does not exist.
        ModelSourceError: The file is not a state dict, or its keys do not match the encoder (listed).
    """
    state = read_state_dict(path)
    if all(key.startswith("encoder.") for key in state):
        state = {key.removeprefix("encoder."): value for key, value in state.items()}
    # Compared by hand: some SMP encoders override load_state_dict and return nothing.
    expected_keys = set(network.encoder.state_dict())
    check_keys(expected_keys - set(state), set(state) - expected_keys, str(path), "the encoder")
    network.encoder.load_state_dict(state)


def drop_unused_encoder_stages(encoder: torch.nn.Module, depth: int) -> None:
    """Replace the encoder stages deeper than ``depth`` (which SMP builds but never runs) by identities.

    Parameters that never receive a gradient make DDP fail ("parameters that were not used in
    producing the loss") and inflate checkpoints and parameter counts. Runs after local encoder
    weights are loaded, so a full encoder state dict still matches. Encoders that do not name
    their stages (SMP's ``get_stages``: VGG, DenseNet, Xception, Inception) keep them; timm
    (``tu-``) encoders build only the stages they run.
    """
    if depth >= 5 or not hasattr(encoder, "get_stages"):
        return
    try:
        stages = encoder.get_stages()
    except NotImplementedError:
        return
    unused = {id(module) for stride, modules in stages.items() if stride > 2**depth for module in modules}
    for parent in list(encoder.modules()):
        for name, child in list(parent.named_children()):
            if id(child) in unused:
                setattr(parent, name, torch.nn.Identity())


def build_model(
    name: str,
    num_classes: int,
    encoder: str = "resnet18",
    encoder_weights: str | None = None,
    encoder_weights_path: str | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    architecture: Mapping[str, Any] | None = None,
) -> FeatureSegmentationAdapter:
    """Build a segmentation model.

    Args:
        name: Architecture, one of :func:`available_models`.
        num_classes: Number of output classes.
        encoder: SMP encoder name (``resnet18``, ``resnet50``, ``mit_b0``, ...).
        encoder_weights: A name of :data:`~eroseg_at.models.packaged_weights.PACKAGED_ENCODER_WEIGHTS`
            (weights an installed package ships, read offline), else an SMP pretrained-weights tag:
            ``None`` (the default) builds offline; a tag such as ``"imagenet"`` downloads weights.
        encoder_weights_path: A local encoder state dict to load instead.
        mean: Per-channel mean of the encoder's expected input, in [0, 1] units.
        std: Per-channel std of the encoder's expected input.
        architecture: Keyword arguments of the SMP architecture (e.g.
            ``encoder_output_stride: 16`` for DeepLabV3, ``decoder_channels``).

    Returns:
        The model behind the contract: images in [0, 1], normalisation inside, decoder features from the
        input of ``segmentation_head`` (the network runs its own ``forward``, DPT's included).

    Raises:
        ModelSourceError: Unknown architecture (the message lists the valid names),
            both ``encoder_weights`` and ``encoder_weights_path`` given, or packaged weights that do not fit
            the encoder.
        ModuleNotFoundError: The package of packaged weights is not installed.
    """
    if name not in smp.MODEL_ARCHITECTURES_MAPPING:
        raise ModelSourceError(f"unknown model {name!r}; available models: {', '.join(available_models())}")
    if num_classes < 1:
        raise ModelSourceError(f"num_classes must be >= 1, got {num_classes}")
    if encoder_weights is not None and encoder_weights_path is not None:
        raise ModelSourceError("give model.encoder_weights or model.encoder_weights_path, not both")
    if encoder_weights_path is not None and not Path(encoder_weights_path).is_file():
        raise ModelFileNotFoundError(f"model.encoder_weights_path={encoder_weights_path} does not exist")
    architecture = dict(architecture or {})
    packaged = PACKAGED_ENCODER_WEIGHTS.get(encoder_weights)
    network = smp.create_model(
        name,
        encoder_name=encoder,
        encoder_weights=None if packaged else encoder_weights,
        classes=num_classes,
        **architecture,
    )
    if packaged is not None:
        packaged.load_into(network.encoder, encoder)
    if encoder_weights_path is not None:
        load_encoder_weights(network, encoder_weights_path)
    drop_unused_encoder_stages(network.encoder, architecture.get("encoder_depth", 5))
    input_divisor = network.encoder.output_stride if network.requires_divisible_input_shape else 1
    source = SourceInfo("smp", f"{name}({encoder})", normalization="given")
    return FeatureSegmentationAdapter(
        network, num_classes, "segmentation_head", mean, std, input_divisor=input_divisor, source=source
    )
