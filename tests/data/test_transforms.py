"""The augmentation pipelines keep image and mask aligned and pad masks with ignore."""

import numpy as np
import pytest
import torch

from eroseg_at.data import DatasetError
from eroseg_at.data.datamodule import AugmentedDataset
from eroseg_at.data.source import SegmentationSource
from eroseg_at.data.transforms import AugmentConfig, build_train_transform, build_val_transform


class MarkerSource(SegmentationSource):
    """Grey images with a white square whose mask is class 1 (class 0 elsewhere)."""

    num_classes = 2

    def __init__(self, height=60, width=80, top=10, left=50, size=15):
        self.height, self.width, self.top, self.left, self.size = height, width, top, left, size

    def __len__(self):
        return 1

    def load(self, index):
        image = np.full((self.height, self.width, 3), 60, dtype=np.uint8)
        mask = np.zeros((self.height, self.width), dtype=np.uint8)
        window = (slice(self.top, self.top + self.size), slice(self.left, self.left + self.size))
        image[window] = 255
        mask[window] = 1
        return image, mask

    def sample_name(self, index):
        return "marker"

    def fingerprint(self):
        return {"dataset": "marker"}


def test_train_augmentation_keeps_the_marker_aligned():
    augment = AugmentConfig(scale_range=(0.6, 1.8), brightness=0, contrast=0, saturation=0, hue=0)
    dataset = AugmentedDataset(
        MarkerSource(), build_train_transform((48, 48), augment, ignore_index=255, seed=0)
    )
    flips_seen = set()
    for _ in range(40):
        image, mask = dataset[0]
        marker_pixels = image.min(dim=0).values > (60 + 255) / 2 / 255
        if (mask == 1).sum() < 20:
            continue
        image_centre = marker_pixels.nonzero().float().mean(dim=0)
        mask_centre = (mask == 1).nonzero().float().mean(dim=0)
        assert (image_centre - mask_centre).abs().max() <= 0.5
        overlap = (marker_pixels & (mask == 1)).sum() / (marker_pixels | (mask == 1)).sum()
        assert overlap > 0.8
        flips_seen.add(bool(image_centre[1] < 24))
    assert len(flips_seen) == 2, "the marker never changed side: the flip did not happen"


def test_train_augmentation_with_photometric_jitter_keeps_geometry():
    augment = AugmentConfig(scale_range=(1.0, 1.0), hflip=False, jitter_p=1.0)
    dataset = AugmentedDataset(
        MarkerSource(), build_train_transform((60, 80), augment, ignore_index=255, seed=0)
    )
    image, mask = dataset[0]
    assert (mask == 1).sum() == 15 * 15
    brightest = image.mean(dim=0)
    assert brightest[mask == 1].min() > brightest[mask == 0].max()


def test_crop_larger_than_the_image_pads_the_mask_with_ignore():
    augment = AugmentConfig(scale_range=(0.5, 0.5), hflip=False, jitter_p=0)
    dataset = AugmentedDataset(
        MarkerSource(), build_train_transform((64, 64), augment, ignore_index=255, seed=0)
    )
    image, mask = dataset[0]
    assert image.shape == (3, 64, 64) and mask.shape == (64, 64)
    # The 30x40 rescaled image is centred; everything around it is padding.
    padding = mask == 255
    assert padding.sum() == 64 * 64 - 30 * 40
    assert (image[:, padding] == 0).all()
    assert set(mask[~padding].unique().tolist()) == {0, 1}


def test_val_transform_pads_bottom_right_to_the_divisor():
    source = MarkerSource(height=50, width=70)
    image, mask = AugmentedDataset(source, build_val_transform(AugmentConfig(), 32, ignore_index=255))[0]
    assert image.shape == (3, 64, 96)
    raw_image, raw_mask = source[0]
    torch.testing.assert_close(image[:, :50, :70], raw_image)
    assert torch.equal(mask[:50, :70], raw_mask)
    assert (mask[50:] == 255).all() and (mask[:, 70:] == 255).all() and (image[:, 50:] == 0).all()


def test_val_resize_then_pad():
    augment = AugmentConfig(val_resize=(30, 40))
    image, mask = AugmentedDataset(MarkerSource(), build_val_transform(augment, 32, ignore_index=255))[0]
    assert image.shape == (3, 32, 64)
    assert set(mask[:30, :40].unique().tolist()) == {0, 1} and (mask[30:] == 255).all()


def test_pipeline_seed_makes_augmentation_reproducible():
    augment = AugmentConfig()

    def draws(seed):
        dataset = AugmentedDataset(MarkerSource(), build_train_transform((40, 40), augment, 255, seed=seed))
        return torch.stack([dataset[0][0] for _ in range(3)])

    assert torch.equal(draws(7), draws(7))
    assert not torch.equal(draws(7), draws(8))


@pytest.mark.parametrize(
    ("kwargs", "key"), [({"scale_range": (2.0, 1.0)}, "scale_range"), ({"val_resize": (10,)}, "val_resize")]
)
def test_invalid_augment_settings_name_the_key(kwargs, key):
    with pytest.raises(DatasetError, match=f"dataset.augment.{key}"):
        AugmentConfig(**kwargs)
