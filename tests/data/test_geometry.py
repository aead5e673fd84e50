"""SampleGeometry: a map in a training image's own coordinates, seen through the sample's augmentation, is what
the augmented image shows; the pull-back undoes it where the crop covers the image."""

import numpy as np
import pytest
import torch

from eroseg_at.data import DatasetError
from eroseg_at.data.datamodule import AugmentedDataset
from eroseg_at.data.geometry import SampleGeometry, collate_with_geometry
from eroseg_at.data.source import SegmentationSource, to_tensors
from eroseg_at.data.transforms import AugmentConfig, build_train_transform


class NoiseSource(SegmentationSource):
    """Random RGB images (every pixel differs from its neighbours, so any misplacement shows)."""

    num_classes = 2

    def __init__(self, count=3, height=50, width=70):
        self.count, self.height, self.width = count, height, width

    def __len__(self):
        return self.count

    def load(self, index):
        rng = np.random.default_rng(index)
        image = rng.integers(0, 256, (self.height, self.width, 3), dtype=np.uint8)
        return image, np.zeros((self.height, self.width), dtype=np.uint8)

    def sample_name(self, index):
        return f"noise {index}"

    def fingerprint(self):
        return {"dataset": "noise"}


NO_JITTER = {"brightness": 0, "contrast": 0, "saturation": 0, "hue": 0}


def augmented_with_geometry(source, crop, scale_range, draws=30):
    augment = AugmentConfig(scale_range=scale_range, **NO_JITTER)
    dataset = AugmentedDataset(
        source, build_train_transform(crop, augment, 255, seed=0, save_applied_params=True), geometry=True
    )
    for draw in range(draws):
        index = draw % len(source)
        yield index, *dataset[index]


@pytest.mark.parametrize("crop", [(32, 48), (64, 80)], ids=["crop inside", "crop larger: padded"])
def test_the_view_of_the_source_image_is_the_augmented_image_exactly_without_rescaling(crop):
    # The source image itself, as a map in its own coordinates, must come out as the augmented image: same
    # crop, same flip, same padding (0), bit for bit.
    source = NoiseSource()
    flips, pads = set(), set()
    for index, image, _, geometry in augmented_with_geometry(source, crop, (1.0, 1.0)):
        original = to_tensors(*source.load(index))[0]
        assert torch.equal(geometry.view([original])[0], image)
        assert geometry.index.tolist() == [index]
        flips.add(bool(geometry.flipped))
        pads.add(bool(geometry.pad.any()))
    assert flips == {True, False}
    assert pads == {crop == (64, 80)}


def test_with_random_scale_the_view_resamples_as_the_image_was_resampled():
    # The image was resized as uint8 by cv2 (INTER_LINEAR, fixed point), the map in float32 by bilinear
    # interpolation with the same sampling positions: they agree to cv2's uint8 rounding.
    source = NoiseSource()
    scales = set()
    for index, image, _, geometry in augmented_with_geometry(source, (32, 48), (0.6, 1.8)):
        original = to_tensors(*source.load(index))[0]
        difference = (geometry.view([original])[0] - image).abs()
        assert difference.max() <= 1.01 / 255
        assert difference.mean() < 0.3 / 255
        scales.add(geometry.scaled_size[0, 0].item() > 50)
    assert scales == {True, False}  # enlarged and shrunk


def test_pull_back_returns_the_covered_pixels_exactly_and_zero_elsewhere_without_rescaling():
    source = NoiseSource()
    for index, _, _, geometry in augmented_with_geometry(source, (32, 48), (1.0, 1.0), draws=10):
        original = to_tensors(*source.load(index))[0]
        back = geometry.pull_back(geometry.view([original]))[0]
        (y0, x0, h, w), (top, _, left, _) = geometry.crop[0].tolist(), geometry.pad[0].tolist()
        covered = torch.zeros(original.shape[1:], dtype=torch.bool)
        covered[max(y0 - top, 0) : y0 - top + h, max(x0 - left, 0) : x0 - left + w] = True
        assert torch.equal(back[:, covered], original[:, covered])
        assert not back[:, ~covered].any()


def test_pull_back_with_rescaling_keeps_a_constant_map_constant_inside_the_crop():
    for _, _, _, geometry in augmented_with_geometry(NoiseSource(), (32, 48), (1.2, 1.8), draws=6):
        back = geometry.pull_back(torch.full((1, 1, 32, 48), 0.5))[0][0]
        # Source pixels whose whole bilinear footprint lies inside the crop get exactly the constant back.
        inner = back[back > 0.4999]
        scale = geometry.scaled_size[0].prod().item() / (50 * 70)
        assert inner.numel() >= 0.8 * 32 * 48 / scale  # the crop's area in source pixels, less its border
        assert torch.allclose(inner, torch.tensor(0.5), atol=1e-6)
        assert back.max() <= 0.5 + 1e-6


def test_geometry_does_not_change_the_augmentations(build_datamodule):
    plain = build_datamodule("shapes", "dataset.train_source.num_images=8", "dataset.batch_size=4")
    with_geometry = build_datamodule(
        "shapes", "dataset.train_source.num_images=8", "dataset.batch_size=4", "+dataset.sample_geometry=true"
    )
    for datamodule in (plain, with_geometry):
        datamodule.setup("fit")
    torch.manual_seed(0)
    images, masks = next(iter(plain.train_dataloader()))
    torch.manual_seed(0)
    images_g, masks_g, geometry = next(iter(with_geometry.train_dataloader()))
    assert torch.equal(images, images_g) and torch.equal(masks, masks_g)
    assert isinstance(geometry, SampleGeometry) and len(geometry) == 4
    assert geometry.index.unique().numel() == 4
    assert with_geometry.train_sample_sizes() == [(64, 64)] * 8


def test_a_transform_the_geometry_cannot_follow_is_refused_by_name():
    with pytest.raises(DatasetError, match="applied Rotate, which it cannot reproduce"):
        SampleGeometry.from_applied(0, (8, 8), [("Rotate", {"angle": 10})])


def test_collate_concatenates_the_rows_and_select_slices_them():
    rows = [
        SampleGeometry.from_applied(i, (8, 8), [("HorizontalFlip", {})] if i % 2 else []) for i in range(4)
    ]
    images, masks, geometry = collate_with_geometry(
        [(torch.zeros(3, 8, 8), torch.zeros(8, 8), g) for g in rows]
    )
    assert images.shape == (4, 3, 8, 8) and masks.shape == (4, 8, 8)
    assert geometry.flipped.tolist() == [False, True, False, True]
    assert geometry.select(slice(2, None)).index.tolist() == [2, 3]
