"""Where each training sample comes from and how the augmentation moved it: a typed, generic sample geometry.

State kept per training image across epochs (the accumulated training perturbation) lives in the image's own
coordinates; :class:`SampleGeometry` maps such a map into a sample's crop and back. The data layer knows
nothing of what is mapped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import cv2
import torch
import torch.nn.functional as F
from torch import Tensor

from eroseg_at.data.errors import DatasetError

# The train pipeline's transforms (eroseg_at.data.transforms) that move pixels, and those that only change their
# values; anything else would move pixels in a way the geometry cannot follow.
GEOMETRIC_TRANSFORMS = ("RandomScale", "PadIfNeeded", "RandomCrop", "HorizontalFlip")
PHOTOMETRIC_TRANSFORMS = ("ColorJitter",)


@dataclass
class SampleGeometry:
    """The geometric part of the training augmentation of a batch of samples, one row per sample.

    The train pipeline rescales a source image of ``source_size`` to ``scaled_size`` (bilinear, cv2's
    ``INTER_LINEAR``: the size is ``int(size · scale)`` as albumentations computes it), pads it by ``pad``
    (top, bottom, left, right), crops ``crop`` (top, left, height, width) out of the padded image and flips the
    crop left-right where ``flipped``. Colour jitter changes values, not positions, and is not part of it.

    Not frozen: Lightning moves the tensors of a batch to the device field by field.

    Shape:
        index: [B] int64 (the sample's index in the training split); source_size, scaled_size: [B, 2] int64
        (height, width); pad, crop: [B, 4] int64; flipped: [B] bool.
    """

    index: Tensor
    source_size: Tensor
    scaled_size: Tensor
    pad: Tensor
    crop: Tensor
    flipped: Tensor

    @classmethod
    def from_applied(
        cls, index: int, source_size: Sequence[int], applied: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> SampleGeometry:
        """One sample's geometry from albumentations' ``applied_transforms`` (``save_applied_params=True``).

        Raises:
            DatasetError: Naming a transform whose pixel movement this class cannot reproduce.
        """
        height, width = int(source_size[0]), int(source_size[1])
        scaled, pad, crop, flipped = (height, width), (0, 0, 0, 0), None, False
        for name, params in applied:
            if name == "RandomScale":
                if params["interpolation"] != cv2.INTER_LINEAR:
                    raise DatasetError(
                        f"sample geometry: RandomScale interpolation {params['interpolation']} is not "
                        f"cv2.INTER_LINEAR ({cv2.INTER_LINEAR}), the only one it reproduces"
                    )
                scaled = (int(scaled[0] * params["scale"]), int(scaled[1] * params["scale"]))
            elif name == "PadIfNeeded":
                pad = tuple(int(params[key]) for key in ("pad_top", "pad_bottom", "pad_left", "pad_right"))
            elif name == "RandomCrop":
                if params.get("pad_params") is not None:
                    raise DatasetError("sample geometry: RandomCrop(pad_if_needed=True) is not reproduced")
                x_min, y_min, x_max, y_max = (int(value) for value in params["crop_coords"])
                crop = (y_min, x_min, y_max - y_min, x_max - x_min)
            elif name == "HorizontalFlip":
                flipped = True
            elif name not in PHOTOMETRIC_TRANSFORMS:
                raise DatasetError(
                    f"sample geometry: the train pipeline applied {name}, which it cannot reproduce; it follows "
                    f"{', '.join(GEOMETRIC_TRANSFORMS)} and ignores {', '.join(PHOTOMETRIC_TRANSFORMS)}"
                )
        if crop is None:
            crop = (0, 0, scaled[0] + pad[0] + pad[1], scaled[1] + pad[2] + pad[3])

        def row(values: Sequence[int]) -> Tensor:
            return torch.tensor([list(values)], dtype=torch.int64)

        return cls(
            index=torch.tensor([index], dtype=torch.int64),
            source_size=row((height, width)),
            scaled_size=row(scaled),
            pad=row(pad),
            crop=row(crop),
            flipped=torch.tensor([flipped]),
        )

    @classmethod
    def concatenate(cls, parts: Sequence[SampleGeometry]) -> SampleGeometry:
        return cls(**{f.name: torch.cat([getattr(part, f.name) for part in parts]) for f in fields(cls)})

    def __len__(self) -> int:
        return self.index.shape[0]

    def select(self, rows: slice) -> SampleGeometry:
        """The geometry of ``rows`` of the batch."""
        return type(self)(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    def view(self, maps: Sequence[Tensor]) -> Tensor:
        """Each sample's map, given in its source image's coordinates, as the augmented sample sees it.

        Resampled bilinearly to the scaled size (``align_corners=False``, no antialiasing: cv2's
        ``INTER_LINEAR``, what the image went through), padded with 0, cropped and flipped like the image.

        Shape:
            maps: B tensors [C, H_b, W_b] (``source_size`` of each); output: [B, C, h, w] (the crop size).
        """
        return torch.stack([self._view(b, values) for b, values in enumerate(maps)])

    def pull_back(self, crops: Tensor) -> list[Tensor]:
        """Maps in crop coordinates taken back to each source image's coordinates (the inverse of :meth:`view`).

        Un-flipped, placed at the crop's position in a zero canvas of the padded size, un-padded and resampled
        bilinearly from the scaled size to the source size. Without rescaling this is exact: pixels the crop
        covers get their crop value, all others 0. With rescaling it is the bilinear resampling of that canvas,
        so values near the crop's border are blended with the zeros outside it.

        Shape:
            crops: [B, C, h, w]; output: B tensors [C, H_b, W_b].
        """
        return [self._pull_back(b, crop) for b, crop in enumerate(crops)]

    def _sizes(self, b: int) -> tuple[tuple[int, int], tuple[int, int], list[int], list[int]]:
        source = tuple(self.source_size[b].tolist())
        scaled = tuple(self.scaled_size[b].tolist())
        return source, scaled, self.pad[b].tolist(), self.crop[b].tolist()

    def _view(self, b: int, values: Tensor) -> Tensor:
        source, scaled, (top, bottom, left, right), (y0, x0, h, w) = self._sizes(b)
        if tuple(values.shape[-2:]) != source:
            raise ValueError(
                f"map of sample {b} is {tuple(values.shape[-2:])}, expected its source size {source}"
            )
        if scaled != source:
            values = F.interpolate(values[None], size=scaled, mode="bilinear", align_corners=False)[0]
        values = F.pad(values, (left, right, top, bottom))[:, y0 : y0 + h, x0 : x0 + w]
        return values.flip(-1) if self.flipped[b] else values

    def _pull_back(self, b: int, crop: Tensor) -> Tensor:
        source, scaled, (top, bottom, left, right), (y0, x0, h, w) = self._sizes(b)
        if self.flipped[b]:
            crop = crop.flip(-1)
        canvas = crop.new_zeros((crop.shape[0], scaled[0] + top + bottom, scaled[1] + left + right))
        canvas[:, y0 : y0 + h, x0 : x0 + w] = crop
        canvas = canvas[:, top : top + scaled[0], left : left + scaled[1]]
        if scaled != source:
            canvas = F.interpolate(canvas[None], size=source, mode="bilinear", align_corners=False)[0]
        return canvas


def collate_with_geometry(
    batch: Sequence[tuple[Tensor, Tensor, SampleGeometry]],
) -> tuple[Tensor, Tensor, SampleGeometry]:
    """Stacks training samples of one crop size with their geometries (``DataLoader(collate_fn=...)``)."""
    images, masks, geometries = zip(*batch, strict=True)
    return torch.stack(images), torch.stack(masks), SampleGeometry.concatenate(geometries)
