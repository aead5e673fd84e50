"""Full-resolution inference that attacks differentiate through: pad, optionally slide a window, crop back."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from eroseg_at.evaluation.errors import EvaluationError

PAD_MODES = ("constant", "reflect", "replicate")


def round_up(value: int, divisor: int) -> int:
    return -(-value // divisor) * divisor


def window_offsets(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of ``window`` pixels every ``stride`` covering ``size``; the last ends at it."""
    if size <= window:
        return [0]
    offsets = list(range(0, size - window, stride))
    return [*offsets, size - window]


class FullResolutionModel(nn.Module):
    """Runs a model on images of any size and returns logits at that size.

    Images are padded (bottom/right) to a multiple of the model's ``input_divisor`` and the logits cropped
    back, so padding never reaches a metric. With ``window`` set, the padded image is covered by
    overlapping windows whose logits are averaged where they overlap (sliding-window inference for large
    images such as Cityscapes). Everything is differentiable, so an attack given this module attacks exactly
    the inference path that is measured. :func:`full_resolution` picks this class, or
    :class:`FullResolutionFeatureModel` for a model with decoder features.

    Args:
        model: Follows the model contract (``forward``, ``num_classes``, ``input_divisor``).
        pad_mode: ``"constant"`` (zeros), ``"reflect"`` or ``"replicate"``.
        window: ``[h, w]`` of the sliding window, multiples of ``input_divisor``; None runs the whole image.
        stride: ``[h, w]`` step between windows, multiples of ``input_divisor``; None uses half the window.

    Shape:
        - Input: ``[B, 3, H, W]`` in [0, 1], any H and W.
        - Output: ``[B, C, H, W]`` logits.
    """

    def __init__(
        self,
        model: nn.Module,
        pad_mode: str = "constant",
        window: Sequence[int] | None = None,
        stride: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if pad_mode not in PAD_MODES:
            raise EvaluationError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        self.model = model
        self.pad_mode = pad_mode
        self.divisor = int(model.input_divisor)
        self.num_classes = model.num_classes
        self.window = self._check_size(window, "window")
        if stride is not None and self.window is None:
            raise EvaluationError("stride is only used with a sliding window: set window=[h, w] too")
        if self.window is None:
            self.stride = None
        elif stride is None:
            self.stride = tuple(max(self.divisor, round_up(side // 2, self.divisor)) for side in self.window)
        else:
            self.stride = self._check_size(stride, "stride")

    @property
    def input_divisor(self) -> int:
        return 1

    def _check_size(self, size: Sequence[int] | None, name: str) -> tuple[int, int] | None:
        if size is None:
            return None
        values = tuple(size)
        if len(values) != 2 or any(not isinstance(v, int) or v <= 0 or v % self.divisor for v in values):
            raise EvaluationError(
                f"{name} must be [h, w] of positive multiples of the model's input_divisor {self.divisor}, "
                f"got {list(values)}"
            )
        return values  # type: ignore[return-value]

    def _pad(self, images: Tensor) -> Tensor:
        height, width = images.shape[-2:]
        pad_h, pad_w = round_up(height, self.divisor) - height, round_up(width, self.divisor) - width
        if pad_h == 0 and pad_w == 0:
            return images
        if self.pad_mode == "reflect" and (pad_h >= height or pad_w >= width):
            raise EvaluationError(
                f"reflect padding of a {height}x{width} image by {pad_h}x{pad_w} pixels is impossible "
                "(padding must be smaller than the image); use pad_mode=constant or replicate"
            )
        return F.pad(images, (0, pad_w, 0, pad_h), mode=self.pad_mode)

    def forward(self, images: Tensor) -> Tensor:
        return self._full_resolution(images, with_features=False)[0]

    def _run(self, images: Tensor, with_features: bool) -> tuple[Tensor, Tensor | None]:
        """The model on divisible ``images``: logits, and decoder features if asked for."""
        if with_features:
            return self.model.logits_and_features(images)
        return self.model(images), None

    def _full_resolution(self, images: Tensor, with_features: bool) -> tuple[Tensor, Tensor | None]:
        """Logits (and decoder features) of ``images`` at their own size; see the class docstring."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {list(images.shape)}")
        height, width = images.shape[-2:]
        padded = self._pad(images)
        if self.window is None:
            logits, features = self._run(padded, with_features)
        else:
            logits, features = self._sliding_window(padded, with_features)
        if features is not None:
            padded_h, padded_w = padded.shape[-2:]
            feature_h = -(-height * features.shape[-2] // padded_h)
            feature_w = -(-width * features.shape[-1] // padded_w)
            features = features[..., :feature_h, :feature_w]
        return logits[..., :height, :width], features

    def _sliding_window(self, padded: Tensor, with_features: bool) -> tuple[Tensor, Tensor | None]:
        """Averages the logits (and features) of overlapping windows over ``padded`` (divisible sizes)."""
        height, width = padded.shape[-2:]
        window_h, window_w = min(self.window[0], height), min(self.window[1], width)
        logits_sum = counts = features_sum = feature_counts = None
        for top in window_offsets(height, window_h, self.stride[0]):
            for left in window_offsets(width, window_w, self.stride[1]):
                crop = padded[..., top : top + window_h, left : left + window_w]
                logits, features = self._run(crop, with_features)
                if logits_sum is None:
                    logits_sum = logits.new_zeros(*logits.shape[:2], height, width)
                    counts = logits.new_zeros(1, 1, height, width)
                logits_sum = logits_sum + F.pad(
                    logits, (left, width - left - window_w, top, height - top - window_h)
                )
                counts[..., top : top + window_h, left : left + window_w] += 1
                if features is None:
                    continue
                scale_h, scale_w = features.shape[-2] / window_h, features.shape[-1] / window_w
                if features_sum is None:
                    features_sum = features.new_zeros(
                        *features.shape[:2], round(height * scale_h), round(width * scale_w)
                    )
                    feature_counts = features.new_zeros(1, 1, *features_sum.shape[-2:])
                f_top, f_left = round(top * scale_h), round(left * scale_w)
                f_h, f_w = features.shape[-2:]
                features_sum = features_sum + F.pad(
                    features,
                    (
                        f_left,
                        features_sum.shape[-1] - f_left - f_w,
                        f_top,
                        features_sum.shape[-2] - f_top - f_h,
                    ),
                )
                feature_counts[..., f_top : f_top + f_h, f_left : f_left + f_w] += 1
        features = None if features_sum is None else features_sum / feature_counts
        return logits_sum / counts, features


class FullResolutionFeatureModel(FullResolutionModel):
    """:class:`FullResolutionModel` of a model with ``logits_and_features``: decoder features stitched too.

    Shape:
        - ``logits_and_features``: ``[B, 3, H, W]`` -> logits ``[B, C, H, W]`` and decoder features
          ``[B, D, h, w]`` covering the same H x W region.
    """

    def logits_and_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self._full_resolution(images, with_features=True)


def full_resolution(model: nn.Module, **settings) -> FullResolutionModel:
    """The full-resolution module for ``model``: with ``logits_and_features`` exactly where ``model`` has it.

    Feature attacks (RP-PGD) thus refuse a model without decoder features with their own clear error.
    ``settings`` are those of :class:`FullResolutionModel`.
    """
    if getattr(model, "logits_and_features", None) is None:
        return FullResolutionModel(model, **settings)
    return FullResolutionFeatureModel(model, **settings)
