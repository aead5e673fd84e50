"""The evaluation's settings as typed records, read once from ``conf/evaluate.yaml`` (or given in Python).

The pass runner (:mod:`.passes`) and everything below it take an :class:`EvaluationSettings`, never a raw
config, so the evaluation can be driven without Hydra.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from eroseg_at.evaluation.errors import EvaluationError

# fp16 is left out: autograd.grad is not loss-scaled, so input gradients would underflow.
PRECISIONS = {"32": None, "bf16": torch.bfloat16}


def optional_pair(value: Sequence[int] | None) -> tuple[int, int] | None:
    return None if value is None else tuple(int(side) for side in value)


@dataclass(frozen=True)
class InferenceSettings:
    """Full-resolution inference (:class:`~eroseg_at.evaluation.inference.FullResolutionModel`): padding mode,
    and the sliding window ``[h, w]`` and its stride (None: the whole image, half a window)."""

    pad_mode: str = "constant"
    window: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None


@dataclass(frozen=True)
class CompileSettings:
    """``torch.compile`` of the evaluated module, with its options (``mode``, ``dynamic``, ``fullgraph``)."""

    enabled: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluationSettings:
    """How the passes run and what the report holds.

    Attributes:
        precision: ``"32"`` or ``"bf16"`` (autocast of the model; attack losses stay float32).
        max_batches: Evaluate only the first N batches; None: all of them.
        inference: Full-resolution inference settings.
        compile: Whether and how the evaluated module is compiled.
        worst_case_rounds: Greedy rounds of the per-image mIoU worst case.
        example_images: Images in the example grid (0: none).
        seed: Seeds every batch's random start together with the pass and the batch index.
        progress_interval_s: Seconds between plain progress lines when stdout is not a terminal.

    Raises:
        EvaluationError: Naming the setting, for a value outside its range.
    """

    precision: str = "32"
    max_batches: int | None = None
    inference: InferenceSettings = field(default_factory=InferenceSettings)
    compile: CompileSettings = field(default_factory=CompileSettings)
    worst_case_rounds: int = 5
    example_images: int = 4
    seed: int = 0
    progress_interval_s: float = 30.0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EvaluationError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        for key, minimum in (
            ("max_batches", 1),
            ("worst_case_rounds", 1),
            ("example_images", 0),
            ("seed", 0),
        ):
            value = getattr(self, key)
            if value is None and key == "max_batches":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise EvaluationError(f"{key} must be an integer >= {minimum}, got {value!r}")

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return PRECISIONS[self.precision]

    @classmethod
    def from_config(cls, cfg: DictConfig) -> EvaluationSettings:
        """The settings of a composed ``conf/evaluate.yaml``."""
        inference, compile_settings = cfg.inference, cfg.compile
        return cls(
            precision=str(cfg.precision),
            max_batches=cfg.max_batches,
            inference=InferenceSettings(
                pad_mode=str(inference.pad_mode),
                window=optional_pair(inference.window),
                stride=optional_pair(inference.stride),
            ),
            compile=CompileSettings(
                enabled=bool(compile_settings.enabled),
                options=OmegaConf.to_container(compile_settings.options, resolve=True),
            ),
            worst_case_rounds=cfg.worst_case_rounds,
            example_images=cfg.example_images,
            seed=cfg.seed,
            progress_interval_s=float(cfg.progress_interval_s),
        )
