"""What a pass's result depends on: the cache key, a typed record of every input that can change a number.

A pass (the clean pass, a suite attack at a budget, a curve point, or any other per-image statistics producer)
is cached under the SHA-256 of its :class:`PassKey`. The key holds the model as it runs (weights, the resolved
model spec, the normalisation actually applied, the input divisor), how it runs (precision, compile,
full-resolution inference, device type), the data (a digest of the evaluated images' and labels' contents,
batch by batch, the evaluation transforms, the label space), the pass (its attack class, every parameter as
built, eps, steps, its random stream), the seed, and the code (the package's sources, torch's version, the cache format). A rerun
in the same directory therefore gives what a fresh directory gives, for any change of settings; the number of
processes is not in the key, as it changes no result.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

import eroseg_at
from eroseg_at.evaluation.cache import CACHE_FORMAT


@cache
def source_version() -> str:
    """SHA-256 of the package's sources that produce evaluation results (everything but ``training/``)."""
    root = Path(eroseg_at.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if relative.parts[0] == "training":
            continue
        digest.update(f"{relative.as_posix()}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def code_version() -> str:
    """The code a result comes from: the package's sources, torch's version and the cache format."""
    return f"{source_version()}/torch {torch.__version__}/cache {CACHE_FORMAT}"


def json_value(value: Any) -> Any:
    """``value`` in JSON types: tensors and tuples as lists, mappings with string keys."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(key): json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(item) for item in value]
    return value


@dataclass(frozen=True)
class ModelIdentity:
    """The model as it runs.

    Attributes:
        weights: SHA-256 of its weights (the checkpoint or weights file, a model directory, or the state dict).
        spec: The resolved model spec: its config (without the normalisation and divisor keys, given below as
            they are applied), its source and its adapter.
        normalization: ``(mean, std)`` applied inside the model, read from the model itself; None where it has
            none to read.
        input_divisor: H and W of every input are padded to a multiple of it.
    """

    weights: str
    spec: Mapping[str, Any]
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None
    input_divisor: int


@dataclass(frozen=True)
class Execution:
    """How the model runs: autocast precision, ``torch.compile`` and its options, full-resolution inference
    (padding, sliding window), the device type and, on a CPU, torch's intra-op thread count.

    The thread count splits a CPU kernel's reductions differently, so an attack's sums differ in their last bits
    and, over its iterations, its scores in the second decimal (the reproduction's standard model: SegPGD-10
    8.07 % with 2 threads, 8.06 % with 1). Off the CPU the kernels do not use those threads: None.
    """

    precision: str
    compile: Mapping[str, Any]
    inference: Mapping[str, Any]
    device: str
    threads: int | None


@dataclass(frozen=True)
class DataIdentity:
    """The evaluated data.

    Attributes:
        content: SHA-256 of the contents of the pass's images and labels, batch by batch (:mod:`.digests`), so
            that a change of images, of their order or of how they are batched changes it.
        transforms: The evaluation transforms applied after reading (resize), as albumentations describes them.
        labels: The label space: ``num_classes`` and ``ignore_index``.
    """

    content: str
    transforms: Mapping[str, Any] | None
    labels: Mapping[str, int]


@dataclass(frozen=True)
class PassIdentity:
    """The pass.

    Attributes:
        kind: ``clean``, ``attack``, ``iterations``, or an extra pass's own kind.
        stream: The pass's random stream (the suite key and budget of a run): with the seed, it seeds each batch.
        attack: The attack's class (module and name); None for a pass without one.
        parameters: Every attribute of the attack as built (dataset-supplied ones included), but eps and steps.
        eps: The budget; None without an attack.
        steps: The attack's gradient evaluations; None without an attack.
    """

    kind: str
    stream: tuple[str, ...]
    attack: str | None = None
    parameters: Mapping[str, Any] | None = None
    eps: float | None = None
    steps: int | None = None


@dataclass(frozen=True)
class PassKey:
    """Everything a pass's per-image results depend on; cached under the SHA-256 of :attr:`text`."""

    model: ModelIdentity
    data: DataIdentity
    execution: Execution
    member: PassIdentity
    seed: int
    code: str

    @property
    def text(self) -> str:
        return json.dumps(json_value(asdict(self)), sort_keys=True)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()
