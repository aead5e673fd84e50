"""Where each training sample comes from and how the augmentation moved it: a typed, generic sample geometry.

The train pipeline rescales a source image to its **frame** (the scaled image), then pads, crops and flips. State
kept per training image across epochs (the accumulated training perturbation) lives in the image's frame:
:class:`SampleGeometry` maps such a map into a sample's crop and back by integer moves alone (pad, crop, flip),
so the round trip is exact on the pixels the crop covers. The data layer knows nothing of what is mapped.
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

    The train pipeline rescales a source image of ``source_size`` to its frame of ``frame_size`` (bilinear,
    cv2's ``INTER_LINEAR``: the size is ``int(size · scale)`` as albumentations computes it), pads the frame by
    ``pad`` (top, bottom, left, right), crops ``crop`` (top, left, height, width) out of the padded frame and flips
    the crop left-right where ``flipped``. Colour jitter changes values, not positions, and is not part of it.

    Not frozen: Lightning moves the tensors of a batch to the device field by field.

    Shape:
        index: [B] int64 (the sample's index in the training split); source_size, frame_size: [B, 2] int64
        (height, width); pad, crop: [B, 4] int64; flipped: [B] bool.
    """

    index: Tensor
    source_size: Tensor
    frame_size: Tensor
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
        frame, pad, crop, flipped = (height, width), (0, 0, 0, 0), None, False
        for name, params in applied:
            if name == "RandomScale":
                if params["interpolation"] != cv2.INTER_LINEAR:
                    raise DatasetError(
                        f"sample geometry: RandomScale interpolation {params['interpolation']} is not "
                        f"cv2.INTER_LINEAR ({cv2.INTER_LINEAR}), the only one it reproduces"
                    )
                frame = (int(frame[0] * params["scale"]), int(frame[1] * params["scale"]))
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
            crop = (0, 0, frame[0] + pad[0] + pad[1], frame[1] + pad[2] + pad[3])

        def row(values: Sequence[int]) -> Tensor:
            return torch.tensor([list(values)], dtype=torch.int64)

        return cls(
            index=torch.tensor([index], dtype=torch.int64),
            source_size=row((height, width)),
            frame_size=row(frame),
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

    def frames(self) -> list[tuple[int, int]]:
        """Each sample's frame size (height, width)."""
        return [(int(h), int(w)) for h, w in self.frame_size.tolist()]

    def view(self, maps: Sequence[Tensor]) -> Tensor:
        """Each sample's map, given in its frame, as the augmented sample sees it: padded with 0, cropped and
        flipped like the image (integer moves only: the view of the frame image is the augmented image).

        Shape:
            maps: B tensors [C, h_b, w_b] (``frame_size`` of each); output: [B, C, h, w] (the crop size).
        """
        return torch.stack([self._view(b, values) for b, values in enumerate(maps)])

    def pull_back(self, crops: Tensor) -> list[Tensor]:
        """Maps in crop coordinates taken back into each sample's frame (the inverse of :meth:`view` where the
        crop covers the frame): un-flipped, placed at the crop's position in a zero canvas of the padded frame
        and un-padded. Pixels of the frame the crop covers get their crop value exactly, all others 0.

        Shape:
            crops: [B, C, h, w]; output: B tensors [C, h_b, w_b] (``frame_size`` of each).
        """
        return [self._pull_back(b, crop) for b, crop in enumerate(crops)]

    def _sizes(self, b: int) -> tuple[tuple[int, int], list[int], list[int]]:
        return tuple(self.frame_size[b].tolist()), self.pad[b].tolist(), self.crop[b].tolist()

    def _view(self, b: int, values: Tensor) -> Tensor:
        frame, (top, bottom, left, right), (y0, x0, h, w) = self._sizes(b)
        if tuple(values.shape[-2:]) != frame:
            raise ValueError(
                f"map of sample {b} is {tuple(values.shape[-2:])}, expected its frame size {frame}"
            )
        values = F.pad(values, (left, right, top, bottom))[:, y0 : y0 + h, x0 : x0 + w]
        return values.flip(-1) if self.flipped[b] else values

    def _pull_back(self, b: int, crop: Tensor) -> Tensor:
        frame, (top, bottom, left, right), (y0, x0, h, w) = self._sizes(b)
        if self.flipped[b]:
            crop = crop.flip(-1)
        canvas = crop.new_zeros((crop.shape[0], frame[0] + top + bottom, frame[1] + left + right))
        canvas[:, y0 : y0 + h, x0 : x0 + w] = crop
        return canvas[:, top : top + frame[0], left : left + frame[1]]


def collate_with_geometry(
    batch: Sequence[tuple[Tensor, Tensor, SampleGeometry]],
) -> tuple[Tensor, Tensor, SampleGeometry]:
    """Stacks training samples of one crop size with their geometries (``DataLoader(collate_fn=...)``)."""
    images, masks, geometries = zip(*batch, strict=True)
    return torch.stack(images), torch.stack(masks), SampleGeometry.concatenate(geometries)
