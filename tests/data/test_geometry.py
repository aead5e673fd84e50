"""SampleGeometry: a map in a training image's frame (the image as rescaled), seen through the sample's
augmentation, is what the augmented image shows; the pull-back undoes it exactly where the crop covers the frame.
Held scales: an image keeps its scale for a block of epochs, and DataLoader workers see the epoch."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from eroseg_at.data import DatasetError
from eroseg_at.data.datamodule import AugmentedDataset
from eroseg_at.data.geometry import SampleGeometry, collate_with_geometry
from eroseg_at.data.source import SegmentationSource, to_tensors
from eroseg_at.data.transforms import AugmentConfig, HeldScale, build_train_transform, resize_sample


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


def augmented_with_geometry(source, crop, scale_range, draws=30, held=False):
    """Draws of the train pipeline with their geometry; ``held``: the scale held for 2 epochs, the epoch
    moving on with every pass over the source."""
    augment = AugmentConfig(scale_range=scale_range, **NO_JITTER)
    transform = build_train_transform(
        crop, augment, 255, seed=0, save_applied_params=True, random_scale=not held
    )
    held_scale = HeldScale(tuple(scale_range), epochs=2, seed=0) if held else None
    dataset = AugmentedDataset(source, transform, geometry=True, held_scale=held_scale)
    for draw in range(draws):
        index = draw % len(source)
        dataset.set_epoch(draw // len(source))
        yield index, *dataset[index]


def frame_image(source, index, geometry):
    """The source image rescaled to the sample's frame, as the pipeline rescales it."""
    frame = tuple(geometry.frame_size[0].tolist())
    return to_tensors(*resize_sample(*source.load(index), frame))[0]


# Crops of odd differences to the 50x70 frames pad them asymmetrically (top != bottom, left != right).
CROPS = pytest.mark.parametrize("crop", [(32, 48), (65, 83)], ids=["crop inside", "crop larger: padded"])
SCALES = pytest.mark.parametrize(
    ("scale_range", "held"),
    [((1.0, 1.0), False), ((0.6, 1.8), False), ((0.6, 1.8), True)],
    ids=["no rescaling", "random scale", "held random scale"],
)


@CROPS
@SCALES
def test_the_view_of_the_frame_image_is_the_augmented_image_exactly(crop, scale_range, held):
    # The source image rescaled to the sample's frame, as a map in the frame, must come out as the augmented
    # image: same crop, same flip, same padding (0), bit for bit, whatever the scale.
    source = NoiseSource()
    flips, pads, frames = set(), set(), {}
    for draw, (index, image, _, geometry) in enumerate(
        augmented_with_geometry(source, crop, scale_range, held=held)
    ):
        assert torch.equal(geometry.view([frame_image(source, index, geometry)])[0], image)
        assert geometry.index.tolist() == [index]
        flips.add(bool(geometry.flipped))
        pads.add(bool(geometry.pad.any()))
        frames[draw // len(source), index] = geometry.frames()[0]
    assert flips == {True, False}
    if crop == (65, 83) and scale_range == (1.0, 1.0):
        assert pads == {True}
    assert (len(set(frames.values())) > 5) == (scale_range != (1.0, 1.0))
    if held:  # within a block of 2 epochs an image keeps its frame
        kept = [(epoch, i) for epoch, i in frames if (epoch + i) % 2 == 0 and (epoch + 1, i) in frames]
        assert kept and all(frames[epoch, i] == frames[epoch + 1, i] for epoch, i in kept)


@CROPS
@SCALES
def test_pull_back_returns_the_covered_pixels_of_a_map_exactly_and_zero_elsewhere(crop, scale_range, held):
    source = NoiseSource()
    for index, _, _, geometry in augmented_with_geometry(source, crop, scale_range, draws=10, held=held):
        values = frame_image(source, index, geometry)
        back = geometry.pull_back(geometry.view([values]))[0]
        (y0, x0, h, w), (top, _, left, _) = geometry.crop[0].tolist(), geometry.pad[0].tolist()
        covered = torch.zeros(values.shape[1:], dtype=torch.bool)
        covered[max(y0 - top, 0) : y0 - top + h, max(x0 - left, 0) : x0 - left + w] = True
        assert torch.equal(back[:, covered], values[:, covered])
        assert not back[:, ~covered].any()


def test_view_and_pull_back_move_each_pixel_by_the_pads_and_the_crop_on_their_own_sides():
    # A map whose every value names its position, a frame padded unequally on every side, cropped off-centre.
    frame = (5, 6)
    values = (torch.arange(30, dtype=torch.float32).view(1, *frame) + 1).expand(2, *frame)
    geometry = SampleGeometry(
        index=torch.tensor([0]),
        source_size=torch.tensor([[4, 5]]),
        frame_size=torch.tensor([frame]),
        pad=torch.tensor([[1, 3, 0, 2]]),  # top, bottom, left, right
        crop=torch.tensor([[2, 1, 6, 5]]),  # top, left, height, width of the padded 9 x 8 frame
        flipped=torch.tensor([False]),
    )
    view = geometry.view([values])[0]
    # Crop pixel (i, j) shows padded (2 + i, 1 + j) = frame (1 + i, 1 + j), while inside the frame.
    for i in range(6):
        for j in range(5):
            y, x = 1 + i, 1 + j
            expected = values[0, y, x] if y < 5 and x < 6 else 0.0
            assert view[0, i, j] == expected, (i, j)
    geometry.flipped = torch.tensor([True])
    assert torch.equal(geometry.view([values])[0], view.flip(-1))
    back = geometry.pull_back(geometry.view([values]))[0]
    assert torch.equal(back[:, 1:, 1:], values[:, 1:, 1:])
    assert not back[:, 0].any() and not back[:, :, 0].any()


def test_each_image_keeps_its_scale_for_its_block_of_epochs_staggered_over_the_images():
    held = HeldScale((0.5, 2.0), epochs=3, seed=0)
    scales = [[held.scale(index, epoch) for epoch in range(7)] for index in range(4)]
    for index, row in enumerate(scales):
        blocks = [(epoch + index) // 3 for epoch in range(7)]
        for epoch in range(1, 7):
            assert (row[epoch] == row[epoch - 1]) == (blocks[epoch] == blocks[epoch - 1]), (index, epoch)
    # Staggered: in epoch 1, image 2 draws a new scale and images 0, 1 and 3 do not.
    changed = [scales[index][1] != scales[index][0] for index in range(4)]
    assert changed == [False, False, True, False]
    assert held.frame_size((50, 70), 1, 4) == (int(50 * scales[1][4]), int(70 * scales[1][4]))


@pytest.mark.parametrize("context", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_the_epoch_reaches_persistent_dataloader_workers(context):
    source = NoiseSource(count=4)
    augment = AugmentConfig(scale_range=(0.5, 2.0), **NO_JITTER)
    held = HeldScale(tuple(augment.scale_range), epochs=2, seed=3)
    transform = build_train_transform(
        (32, 48), augment, 255, seed=0, save_applied_params=True, random_scale=False
    )
    dataset = AugmentedDataset(source, transform, geometry=True, held_scale=held)
    loader = DataLoader(
        dataset,
        batch_size=2,
        num_workers=2,
        persistent_workers=True,
        multiprocessing_context=context,
        collate_fn=collate_with_geometry,
    )
    for epoch in range(4):
        dataset.set_epoch(epoch)
        for _, _, geometry in loader:
            for index, frame in zip(geometry.index.tolist(), geometry.frames(), strict=True):
                assert frame == held.frame_size((50, 70), index, epoch), (epoch, index)


def test_the_datamodule_holds_scales_and_knows_each_images_frames(build_datamodule):
    held = build_datamodule(
        "shapes",
        "dataset.train_source.num_images=8",
        "dataset.batch_size=4",
        "+dataset.scale_hold_epochs=4",
        "+dataset.sample_geometry=true",
    )
    plain = build_datamodule("shapes", "dataset.train_source.num_images=8", "dataset.batch_size=4")
    for datamodule in (held, plain):
        datamodule.setup("fit")
    # shapes rescales by [1, 1.25]: 64 px images take frames of 64 to 80 px.
    assert held.train_largest_frames() == [(80, 80)] * 8
    assert plain.train_frame(3, 5) is None
    held.set_epoch(5)
    for index in range(8):
        _, _, geometry = held.train_set[index]
        assert geometry.frames() == [held.train_frame(index, 5)]
        image, mask = held.train_frame_sample(index, held.train_frame(index, 5))
        assert image.shape[1:] == mask.shape == held.train_frame(index, 5)


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
