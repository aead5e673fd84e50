"""Safe reading of local weight files: state dicts only, never pickled code, clear errors for bad files.

Also renames the weights of another implementation of an architecture onto ours (:func:`rename_in_order`).
"""

from __future__ import annotations

import hashlib
import pickle
import re
from collections.abc import Collection, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from eroseg_at.models.errors import ModelFileNotFoundError, ModelSourceError

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"
# Keys under which training scripts commonly nest the state dict of a model.
WRAPPER_KEYS = ("state_dict", "model")
LISTED_KEYS = 20
# torch names the first class that weights_only refused in its UnpicklingError.
UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")

EXPORT_HINT = (
    "save the weights as a state dict instead: torch.save(model.state_dict(), path), or "
    "safetensors.torch.save_file(model.state_dict(), path)"
)


def existing_path(path: str | Path, what: str, directory: bool = False) -> Path:
    """``path`` as a :class:`~pathlib.Path`, checked to exist as a file (or a directory).

    Args:
        path: The path to check.
        what: What the path is, for the message (e.g. ``"model.weights"``).
        directory: Expect a directory instead of a file.

    Raises:
        ModelFileNotFoundError: Naming ``what`` and the path (and the directory a relative path is read from).
    """
    path = Path(path).expanduser()
    kind = "directory" if directory else "file"
    if not (path.is_dir() if directory else path.is_file()):
        where = "" if path.is_absolute() else f" (relative paths are read from {Path.cwd()})"
        raise ModelFileNotFoundError(f"{what}={path}: no such {kind}{where}")
    return path


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Reads a state dict from a ``.pth``/``.pt``/``.bin`` (torch) or ``.safetensors`` file.

    Torch files are read with ``weights_only=True``, so a file that holds pickled Python objects (a whole
    ``nn.Module``, an optimizer, custom classes) is refused instead of executing its code. A dict that nests
    the state dict under ``"state_dict"`` or ``"model"`` is unwrapped.

    Args:
        path: The weights file.

    Returns:
        Parameter and buffer names mapped to tensors, on the CPU.

    Raises:
        ModelFileNotFoundError: The file does not exist.
        ModelSourceError: The suffix is not one of the above, the file cannot be read, holds pickled objects, or
            holds something other than a mapping of names to tensors; each message names the file.
    """
    path = existing_path(path, "weights file")
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError) as error:
            raise ModelSourceError(f"cannot read the safetensors file {path}: {error}") from error
    if suffix not in TORCH_SUFFIXES:
        raise ModelSourceError(
            f"weights file {path} has suffix {path.suffix!r}; expected one of "
            f"{', '.join((*TORCH_SUFFIXES, SAFETENSORS_SUFFIX))}"
        )
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = UNSUPPORTED_GLOBAL.search(str(error))
        if found is None:
            # weights_only's unpickler met bytes that are no pickle at all (a text file, another format).
            raise ModelSourceError(f"{path} is not a file written by torch.save; {EXPORT_HINT}") from error
        raise ModelSourceError(
            f"{path} holds pickled Python objects (it refers to {found.group(1)}), such as a whole model, which "
            f"are not loaded because unpickling can run arbitrary code; {EXPORT_HINT}"
        ) from error
    except (RuntimeError, OSError, EOFError) as error:
        raise ModelSourceError(
            f"cannot read the torch file {path} (truncated or not written by torch.save): "
            f"{str(error).splitlines()[0]}"
        ) from error
    return _as_state_dict(content, path)


def _as_state_dict(content: object, path: Path) -> dict[str, Tensor]:
    if isinstance(content, Mapping):
        for key in WRAPPER_KEYS:
            if isinstance(content.get(key), Mapping):
                content = content[key]
                break
    if (
        not isinstance(content, Mapping)
        or not content
        or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in content.items())
    ):
        found = (
            f"a mapping with keys {sorted(map(str, content))[:LISTED_KEYS]}"
            if isinstance(content, Mapping)
            else f"a {type(content).__name__}"
        )
        raise ModelSourceError(
            f"{path} does not hold a state dict (a non-empty mapping of names to tensors, optionally under "
            f"{' or '.join(repr(k) for k in WRAPPER_KEYS)}): found {found}; {EXPORT_HINT}"
        )
    return dict(content)


def _listed(keys: Collection[str]) -> str:
    shown = sorted(keys)[:LISTED_KEYS]
    more = " ..." if len(keys) > LISTED_KEYS else ""
    return f"{shown}{more} ({len(keys)} in all)"


def check_keys(missing: Collection[str], unexpected: Collection[str], source: str, architecture: str) -> None:
    """Raises if weights and architecture disagree on parameter names.

    Args:
        missing: Names the architecture has and the weights lack.
        unexpected: Names the weights have and the architecture lacks.
        source: The weights file or directory, for the message.
        architecture: The architecture the weights were loaded into, for the message.

    Raises:
        ModelSourceError: Listing the first 20 missing and unexpected keys and their counts.
    """
    if missing or unexpected:
        raise ModelSourceError(
            f"the weights in {source} do not fit the architecture {architecture}: "
            f"missing keys {_listed(missing)}, unexpected keys {_listed(unexpected)}"
        )


def load_weights(
    network: nn.Module, path: str | Path, architecture: str, ignore_prefixes: tuple[str, ...] = ()
) -> None:
    """Loads the state dict file ``path`` into ``network``, refusing any mismatch of names or shapes.

    Args:
        network: The freshly built architecture.
        path: A state dict file (see :func:`read_state_dict`).
        architecture: The architecture's name, for error messages.
        ignore_prefixes: Keys of the file starting with one of these are dropped (heads the network was
            deliberately built without, such as torchvision's ``aux_classifier.``).

    Raises:
        ModelFileNotFoundError: The file does not exist.
        ModelSourceError: The file is not a state dict (see :func:`read_state_dict`), its keys do not fit
            (the message lists missing and unexpected keys), or tensor shapes differ (listed with both shapes).
    """
    state = read_state_dict(path)
    state = {key: value for key, value in state.items() if not key.startswith(ignore_prefixes)}
    expected = network.state_dict()
    check_keys(set(expected) - set(state), set(state) - set(expected), str(path), architecture)
    wrong_shapes = [
        f"{key}: file {list(state[key].shape)}, model {list(value.shape)}"
        for key, value in expected.items()
        if state[key].shape != value.shape
    ]
    if wrong_shapes:
        raise ModelSourceError(
            f"the weights in {path} do not fit the architecture {architecture} (is num_classes right?): "
            f"{len(wrong_shapes)} tensors differ in shape: {'; '.join(wrong_shapes[:LISTED_KEYS])}"
        )
    network.load_state_dict(state)


def sha256_of(path: str | Path) -> str:
    """SHA-256 of a file, or of a directory's files (relative names and contents, in sorted order).

    Shape:
        Returns a 64-character hex digest.
    """
    path = Path(path)
    if path.is_file():
        return _file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{_file_sha256(file)}\n".encode())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def rename_in_order(
    state: Mapping[str, Tensor], target: Mapping[str, Tensor], source: str, architecture: str
) -> dict[str, Tensor]:
    """The tensors of ``state`` under the names of ``target``, matched by position and checked by shape.

    For weights saved by another implementation of the same architecture, which names its layers
    differently but registers them in the same order (e.g. lukemelas' EfficientNet and timm's).

    Args:
        state: The weights, in the order their implementation registers them.
        target: The architecture's state dict (or any tensors of the right shapes, e.g. on the meta device).
        source: Where ``state`` comes from, for the message.
        architecture: The architecture ``target`` belongs to, for the message.

    Raises:
        ValueError: The counts differ, or naming the first position whose shapes differ (both names and
            shapes): a renaming by position is only sound while every shape agrees.
    """
    if len(state) != len(target):
        raise ValueError(
            f"the weights in {source} hold {len(state)} tensors but {architecture} has {len(target)}; "
            "they cannot be matched by position"
        )
    renamed = {}
    for position, ((name, tensor), (target_name, expected)) in enumerate(
        zip(state.items(), target.items(), strict=True)
    ):
        if tensor.shape != expected.shape:
            raise ValueError(
                f"the weights in {source} do not map onto {architecture} in order: tensor {position} "
                f"{name!r} {list(tensor.shape)} against {target_name!r} {list(expected.shape)}"
            )
        renamed[target_name] = tensor
    return renamed
