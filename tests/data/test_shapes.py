import cv2
import numpy as np
import pytest
import torch

from eroseg_at.data import DatasetError, ShapesDataset
from eroseg_at.data.shapes import SHAPE_CLASS_NAMES


@pytest.fixture(scope="module")
def samples():
    dataset = ShapesDataset(num_images=120, image_size=(96, 112), seed=3)
    return [dataset.load(index) for index in range(len(dataset))]


def test_sample_depends_only_on_seed_and_index():
    first = ShapesDataset(num_images=20, image_size=64, seed=5)
    second = ShapesDataset(num_images=20, image_size=64, seed=5)
    backwards = {index: second.load(index) for index in reversed(range(20))}
    for index in range(20):
        image, mask = first.load(index)
        np.testing.assert_array_equal(image, backwards[index][0])
        np.testing.assert_array_equal(mask, backwards[index][1])


def test_seeds_and_indices_give_different_images():
    image_a = ShapesDataset(num_images=2, image_size=64, seed=0).load(0)[0]
    image_b = ShapesDataset(num_images=2, image_size=64, seed=1).load(0)[0]
    image_c = ShapesDataset(num_images=2, image_size=64, seed=0).load(1)[0]
    assert not np.array_equal(image_a, image_b)
    assert not np.array_equal(image_a, image_c)


def test_raw_item_is_float_image_and_int64_mask():
    image, mask = ShapesDataset(num_images=1, image_size=(40, 56), seed=0)[0]
    assert image.shape == (3, 40, 56) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert mask.shape == (40, 56) and mask.dtype == torch.int64


def test_labels_are_classes_or_ignore(samples):
    values = np.unique(np.concatenate([mask.ravel() for _, mask in samples]))
    assert set(values.tolist()) == set(range(len(SHAPE_CLASS_NAMES))) | {255}


def test_ignore_band_separates_every_pair_of_classes(samples):
    for _, mask in samples:
        # No two different classes touch (8-neighbourhood) without ignore between them.
        for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
            a = mask[max(dy, 0) :, max(dx, 0) : mask.shape[1] + min(dx, 0)]
            b = mask[: mask.shape[0] - dy, max(-dx, 0) : mask.shape[1] - max(dx, 0)]
            touching = (a != b) & (a != 255) & (b != 255)
            assert not touching.any()


def test_ignore_band_is_thin_and_lies_on_boundaries(samples):
    ignored = near_label = 0
    for _, mask in samples:
        band = mask == 255
        ignored += band.sum()
        labelled = (~band).astype(np.uint8)
        near_label += cv2.dilate(labelled, np.ones((3, 3), np.uint8)).astype(bool)[band].sum()
    # A 2 px band: nearly every band pixel touches a labelled pixel (only gaps narrower
    # than the band, e.g. between two close shapes, fill up entirely).
    assert near_label / ignored > 0.9
    assert 0.01 < ignored / sum(mask.size for _, mask in samples) < 0.15


def test_every_class_is_common_and_background_does_not_dominate(samples):
    counts = np.bincount(np.concatenate([mask.ravel() for _, mask in samples]), minlength=256)[
        : len(SHAPE_CLASS_NAMES)
    ]
    frequencies = counts / counts.sum()
    assert frequencies[0] < 0.9
    assert (frequencies[1:] > 0.01).all()
    # Shapes are comparable in area: the rarest object class is at least a quarter of the most common one.
    assert frequencies[1:].min() > 0.25 * frequencies[1:].max()


def test_class_is_not_a_colour_lookup(samples):
    """Instances of one class come in very different colours."""
    for class_index in range(1, len(SHAPE_CLASS_NAMES)):
        means = [
            image[mask == class_index].mean(axis=0)
            for image, mask in samples
            if (mask == class_index).sum() > 50
        ]
        assert np.std(means, axis=0).min() > 30


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_images": 0},
        {"image_size": 8},
        {"objects_per_image": (3, 2)},
        {"radius_range": (0.3, 0.1)},
        {"ignore_band": -1},
    ],
)
def test_invalid_settings_name_the_setting(kwargs):
    key = next(iter(kwargs))
    with pytest.raises(DatasetError, match=key):
        ShapesDataset(**kwargs)
