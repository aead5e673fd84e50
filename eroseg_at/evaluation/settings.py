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

from eroseg_at.attacks.arguments import parse_number
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
class MaskingCheckSettings:
    """The gradient-masking checks (:mod:`.masking_passes`): whether they run and their extra passes' budgets.

    Attributes:
        enabled: Run the checks and report their verdict (``masking_checks.enabled=false``: neither).
        images: The subset: the first evaluated batches holding at least this many images.
        queries: Square's forward passes per image (the black-box check).
        large_eps: The budget at which one cheap attack must knock over most correct pixels (budget check).
        small_eps: The extra low budget of the budget check where the suite has a single one.
        cheap_steps: Iterations of the cheap attack (APGD, masked CE) at ``large_eps`` and ``small_eps``.

    Raises:
        EvaluationError: Naming ``masking_checks.<key>``, for a value outside its range.
    """

    enabled: bool = True
    images: int = 32
    queries: int = 1000
    large_eps: str = "64/255"
    small_eps: str = "2/255"
    cheap_steps: int = 10

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise EvaluationError(f"masking_checks.enabled must be true or false, got {self.enabled!r}")
        for key in ("images", "queries", "cheap_steps"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EvaluationError(f"masking_checks.{key} must be an integer >= 1, got {value!r}")
        for key in ("large_eps", "small_eps"):
            try:
                if parse_number(getattr(self, key), key) <= 0:
                    raise ValueError(f"{key} must be > 0")
            except ValueError as error:
                raise EvaluationError(f"masking_checks.{key}: {error}") from None

    @classmethod
    def from_config(cls, node: DictConfig) -> MaskingCheckSettings:
        """The settings of the ``masking_checks`` node of ``conf/evaluate.yaml``."""
        return cls(
            enabled=node.enabled,
            images=node.images,
            queries=node.queries,
            large_eps=str(node.large_eps),
            small_eps=str(node.small_eps),
            cheap_steps=node.cheap_steps,
        )


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
        masking_checks: The gradient-masking checks run on every model.

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
    masking_checks: MaskingCheckSettings = field(default_factory=MaskingCheckSettings)

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
            masking_checks=MaskingCheckSettings.from_config(cfg.masking_checks),
        )
