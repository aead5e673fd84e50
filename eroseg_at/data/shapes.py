"""Procedural ``shapes`` dataset: textured shapes on textured backgrounds, no files needed.

Every sample is a pure function of ``(seed, index)``, so any DataLoader worker order, any
number of workers and any rank produce the same images; nothing is stored.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from eroseg_at.data.errors import DatasetError
from eroseg_at.data.source import SegmentationSource

SHAPE_CLASS_NAMES = ("background", "disc", "square", "triangle", "ring", "cross", "star")

# cv2 rasterises polygons with integer vertices; sub-pixel precision keeps small shapes exact.
_SUBPIXEL_BITS = 4


def _regular_polygon(num_vertices: int, radius: float, phase: float) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(num_vertices) / num_vertices
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star_outline(points: int = 5, inner_ratio: float = 0.42) -> np.ndarray:
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner_ratio)
    angles = -np.pi / 2 + np.pi * np.arange(2 * points) / points
    return radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _cross_outline(half_width: float = 0.3) -> np.ndarray:
    w = half_width
    return np.array(
        [
            (-w, -1),
            (w, -1),
            (w, -w),
            (1, -w),
            (1, w),
            (w, w),
            (w, 1),
            (-w, 1),
            (-w, w),
            (-1, w),
            (-1, -w),
            (-w, -w),
        ],
        dtype=np.float64,
    )


# Unit-radius outlines; rotation, scale and translation are drawn per instance.
_POLYGON_OUTLINES = {
    "square": _regular_polygon(4, 1.0, np.pi / 4) * 0.9,
    "triangle": _regular_polygon(3, 1.0, -np.pi / 2),
    "cross": _cross_outline(),
    "star": _star_outline(),
}


class ShapesDataset(SegmentationSource):
    """Synthetic segmentation of shapes that differ by outline, not by colour.

    Each image has a smooth random background with a random texture and a few instances
    of disc, square, triangle, ring, cross and star, each with its own colour, texture,
    size, rotation and position; later instances occlude earlier ones (a ring's hole shows
    what lies beneath). Pixels within ``ignore_band`` of a label change are set to 255,
    like the boundary band of Pascal VOC.

    Args:
        num_images: number of samples in the split.
        image_size: ``[height, width]`` or a single int for square images.
        seed: generator seed; use different seeds for train and val.
        objects_per_image: inclusive ``[min, max]`` number of instances per image.
        radius_range: instance radius as ``[min, max]`` fraction of the shorter image side.
        ignore_band: half-width in pixels of the ignore band along label boundaries (0 = none).
        ignore_index: label written in the band.

    Shape:
        - ``load(i)``: image ``[H, W, 3]`` uint8, mask ``[H, W]`` uint8.
        - ``dataset[i]``: image ``[3, H, W]`` float32 in [0, 1], mask ``[H, W]`` int64.
    """

    class_names = SHAPE_CLASS_NAMES
    num_classes = len(SHAPE_CLASS_NAMES)

    def __init__(
        self,
        num_images: int = 1000,
        image_size: int | Sequence[int] = (128, 128),
        seed: int = 0,
        objects_per_image: Sequence[int] = (1, 4),
        radius_range: Sequence[float] = (0.15, 0.3),
        ignore_band: int = 1,
        ignore_index: int = 255,
    ) -> None:
        height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if num_images < 1 or height < 16 or width < 16:
            raise DatasetError(
                f"shapes: num_images={num_images}, image_size={[height, width]}: "
                "expected at least 1 image of at least 16x16 pixels"
            )
        low, high = objects_per_image
        if not 1 <= low <= high:
            raise DatasetError(
                f"shapes: objects_per_image={list(objects_per_image)}: expected 1 <= min <= max"
            )
        min_radius, max_radius = radius_range
        if not 0 < min_radius <= max_radius <= 0.5:
            raise DatasetError(f"shapes: radius_range={list(radius_range)}: expected 0 < min <= max <= 0.5")
        if ignore_band < 0:
            raise DatasetError(f"shapes: ignore_band={ignore_band}: expected a non-negative number of pixels")
        self.num_images = int(num_images)
        self.image_size = (int(height), int(width))
        self.seed = int(seed)
        self.objects_per_image = (int(low), int(high))
        self.radius_range = (float(min_radius), float(max_radius))
        self.ignore_band = int(ignore_band)
        self.ignore_index = int(ignore_index)

    def __len__(self) -> int:
        return self.num_images

    def sample_size(self, index: int) -> tuple[int, int]:
        return self.image_size

    def sample_name(self, index: int) -> str:
        return f"shapes(seed={self.seed}, index={index})"

    def fingerprint(self) -> dict:
        return {
            "dataset": "shapes",
            "num_images": self.num_images,
            "image_size": list(self.image_size),
            "seed": self.seed,
            "objects_per_image": list(self.objects_per_image),
            "radius_range": list(self.radius_range),
            "ignore_band": self.ignore_band,
        }

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"shapes: index {index} out of range for {self.num_images} images")
        rng = np.random.default_rng([self.seed, index])
        height, width = self.image_size
        image = _textured_fill(rng, height, width, _random_colour(rng), smooth_background=True)
        labels = np.zeros((height, width), dtype=np.uint8)
        short_side = min(height, width)
        for _ in range(rng.integers(self.objects_per_image[0], self.objects_per_image[1] + 1)):
            class_index = int(rng.integers(1, self.num_classes))
            radius = rng.uniform(*self.radius_range) * short_side
            # Keep most of each instance inside the frame so its outline stays recognisable.
            centre = (
                rng.uniform(0.6 * radius, width - 0.6 * radius),
                rng.uniform(0.6 * radius, height - 0.6 * radius),
            )
            inside = _rasterise(
                SHAPE_CLASS_NAMES[class_index], centre, radius, rng.uniform(0, 2 * np.pi), height, width
            )
            # Texture only the instance's bounding box: generation runs every epoch.
            x, y, box_width, box_height = cv2.boundingRect(inside.view(np.uint8))
            if box_width == 0:
                continue
            box = (slice(y, y + box_height), slice(x, x + box_width))
            texture = _textured_fill(rng, box_height, box_width, _random_colour(rng), smooth_background=False)
            image[box][inside[box]] = texture[inside[box]]
            labels[box][inside[box]] = class_index
        if self.ignore_band > 0:
            kernel = np.ones((2 * self.ignore_band + 1,) * 2, dtype=np.uint8)
            boundary = cv2.dilate(labels, kernel) != cv2.erode(labels, kernel)
            labels[boundary] = self.ignore_index
        return image, labels


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3)


def _textured_fill(
    rng: np.random.Generator, height: int, width: int, colour: np.ndarray, smooth_background: bool
) -> np.ndarray:
    """An RGB uint8 canvas of ``colour`` with stripes, speckle or a smooth colour field."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    canvas = np.broadcast_to(colour.astype(np.float32), (height, width, 3)).copy()
    if smooth_background:
        coarse = rng.uniform(-70, 70, size=(4, 4, 3)).astype(np.float32)
        canvas += cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    texture = rng.integers(0, 3)
    if texture == 1:
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(4, 12)
        stripes = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
        canvas += rng.uniform(15, 35) * stripes[..., None]
    elif texture == 2:
        canvas += rng.normal(0, rng.uniform(5, 15), size=(height, width, 1)).astype(np.float32)
    return np.clip(canvas, 0, 255).astype(np.uint8)


def _rasterise(
    shape: str, centre: tuple[float, float], radius: float, angle: float, height: int, width: int
) -> np.ndarray:
    """Boolean ``[H, W]`` mask of one rotated, scaled shape instance."""
    canvas = np.zeros((height, width), dtype=np.uint8)
    scale = 1 << _SUBPIXEL_BITS
    fixed_centre = (round(centre[0] * scale), round(centre[1] * scale))
    if shape == "disc":
        cv2.circle(
            canvas, fixed_centre, round(0.9 * radius * scale), 1, cv2.FILLED, cv2.LINE_8, _SUBPIXEL_BITS
        )
    elif shape == "ring":
        cv2.circle(canvas, fixed_centre, round(radius * scale), 1, cv2.FILLED, cv2.LINE_8, _SUBPIXEL_BITS)
        cv2.circle(
            canvas, fixed_centre, round(0.55 * radius * scale), 0, cv2.FILLED, cv2.LINE_8, _SUBPIXEL_BITS
        )
    else:
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        vertices = _POLYGON_OUTLINES[shape] @ rotation.T * radius + np.asarray(centre)
        cv2.fillPoly(canvas, [np.round(vertices * scale).astype(np.int32)], 1, cv2.LINE_8, _SUBPIXEL_BITS)
    return canvas.astype(bool)
