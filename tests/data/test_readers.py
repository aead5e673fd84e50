"""Each real dataset layout: loading, class mapping and ignore handling."""

import numpy as np
import pytest
import torch
from data_layouts import CITYSCAPES_TRAIN_IDS, HEIGHT, WIDTH, label_blocks, write_folder
from PIL import Image

from eroseg_at.data import SegmentationDataModule


def stripe_values(mask: np.ndarray) -> list[int]:
    """Values of the vertical stripes written by ``label_blocks``, left to right."""
    row = mask[0].tolist()
    return [value for index, value in enumerate(row) if index == 0 or row[index - 1] != value]


def check_val_batch(datamodule: SegmentationDataModule) -> None:
    datamodule.setup("validate")
    images, masks = next(iter(datamodule.val_dataloader()))
    assert images.dtype == torch.float32 and masks.dtype == torch.int64
    assert images.shape[-2] % datamodule.pad_divisor == 0 and images.shape[-1] % datamodule.pad_divisor == 0
    assert 0 <= images.min() and images.max() <= 1
    valid = masks[masks != 255]
    assert ((0 <= valid) & (valid < datamodule.num_classes)).all()


def test_voc_reads_palette_indices_as_classes(make_root, build_datamodule):
    voc_root = make_root("voc")
    datamodule = build_datamodule("voc", f"dataset.root={voc_root}")
    train = datamodule.source("train")
    assert len(train) == 4 and len(datamodule.source("val")) == 2
    image, mask = train.load(1)
    assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8
    assert stripe_values(mask) == [0, 2, 15, 255]
    assert datamodule.num_classes == 21 and datamodule.class_names[15] == "person"
    assert datamodule.background_class == 0
    check_val_batch(datamodule)


def test_voc_root_may_be_the_voc2012_directory(make_root, build_datamodule):
    voc_root = make_root("voc")
    datamodule = build_datamodule("voc", f"dataset.root={voc_root / 'VOC2012'}")
    assert len(datamodule.source("train")) == 4


def test_voc_aug_trains_on_sbd_labels_and_validates_on_voc(make_root, build_datamodule):
    voc_aug_root = make_root("voc_aug")
    datamodule = build_datamodule("voc_aug", f"dataset.root={voc_aug_root}")
    train, val = datamodule.source("train"), datamodule.source("val")
    assert len(train) == 5 and len(val) == 2
    assert "SegmentationClassAug" in str(train.pairs[0][1])
    assert stripe_values(train.load_mask(2)) == [0, 5, 255]
    assert "SegmentationClass/" in str(val.pairs[0][1]).replace("\\", "/")
    assert datamodule.name == "voc_aug" and datamodule.num_classes == 21


def test_cityscapes_maps_label_ids_to_train_ids(make_root, build_datamodule):
    cityscapes_root = make_root("cityscapes")
    datamodule = build_datamodule("cityscapes", f"dataset.root={cityscapes_root}")
    train = datamodule.source("train")
    assert len(train) == 4 and len(datamodule.source("val")) == 2
    assert stripe_values(train.load(0)[1]) == [0, 13, 18, 255]
    full = train.load_mask(3)
    expected = label_blocks(CITYSCAPES_TRAIN_IDS)
    np.testing.assert_array_equal(full, expected)
    assert datamodule.class_names[13] == "car" and datamodule.palette[0] == [128, 64, 128]
    assert datamodule.background_class is None
    check_val_batch(datamodule)


@pytest.mark.parametrize("inside", [False, True])
def test_ade20k_ignores_other_and_shifts_labels(make_root, build_datamodule, inside):
    ade20k_root = make_root("ade20k")
    root = ade20k_root / "ADEChallengeData2016" if inside else ade20k_root
    datamodule = build_datamodule("ade20k", f"dataset.root={root}")
    train = datamodule.source("train")
    assert len(train) == 4 and len(datamodule.source("val")) == 2
    assert stripe_values(train.load_mask(0)) == [255, 0, 149, 74]
    assert len(datamodule.class_names) == 150 and datamodule.class_names[0] == "wall"
    check_val_batch(datamodule)


def test_ade20k_val_batch_pads_images_of_different_sizes(make_root, build_datamodule):
    ade20k_root = make_root("ade20k")
    datamodule = build_datamodule("ade20k", f"dataset.root={ade20k_root}", "dataset.val_batch_size=2")
    datamodule.setup("validate")
    images, masks = next(iter(datamodule.val_dataloader()))
    # 48x64 and 40x72 images, each padded to multiples of 32, then to the larger of the two.
    assert images.shape == (2, 3, 64, 96) and masks.shape == (2, 64, 96)
    assert (masks[0, :, 64:] == 255).all() and (images[0, :, :, 64:] == 0).all()
    assert (masks[1, 40:] == 255).all() and (masks[1, :40, :72] != 255).any()


def test_full_resolution_loader_batches_each_size_apart_without_padding(make_root, build_datamodule):
    ade20k_root = make_root("ade20k")
    datamodule = build_datamodule("ade20k", f"dataset.root={ade20k_root}", "dataset.val_batch_size=2")
    source = datamodule.source("val")
    loader = datamodule.full_resolution_dataloader()
    assert list(loader.batch_sampler) == [[0], [1]]
    for (images, masks), (index,) in zip(loader, loader.batch_sampler, strict=True):
        image, mask = source[index]
        # 48x64 and 40x72: no image is padded to 32-multiples nor to the other's size.
        assert images.shape[-2:] == source.sample_size(index) == image.shape[-2:]
        assert torch.equal(masks[0], mask) and torch.equal(images[0], image)


def test_folder_holds_out_a_seeded_validation_split(folder_root, build_folder):
    datamodule = build_folder()
    train, val = datamodule.source("train"), datamodule.source("val")
    train_stems = {image.stem for image, _ in train.pairs}
    val_stems = {image.stem for image, _ in val.pairs}
    assert len(train_stems) == 8 and len(val_stems) == 2 and not train_stems & val_stems
    assert datamodule.class_names == ["class_0", "class_1", "class_2"]
    again = build_folder()
    assert [pair[0] for pair in again.source("val").pairs] == [pair[0] for pair in val.pairs]
    check_val_batch(datamodule)


def test_folder_split_lists_and_class_names(folder_root, build_folder):
    (folder_root / "train.txt").write_text("tile_000\ntile_001\ntile_002\n")
    (folder_root / "val.txt").write_text("tile_009\n")
    datamodule = build_folder(
        "dataset.class_names=[land,water,road]",
        "dataset.train_source.split_list=train.txt",
        f"dataset.val_source.split_list={folder_root / 'val.txt'}",
    )
    assert [image.stem for image, _ in datamodule.source("train").pairs] == [
        "tile_000",
        "tile_001",
        "tile_002",
    ]
    assert [image.name for image, _ in datamodule.source("val").pairs] == ["tile_009.png"]
    assert stripe_values(datamodule.source("train").load_mask(1)) == [1, 255, 2]
    assert datamodule.class_names == ["land", "water", "road"]


def test_folder_reads_16_bit_masks(tmp_path, build_datamodule):
    root = write_folder(tmp_path / "wide", num_images=3)
    mask = label_blocks([0, 2, 255]).astype(np.uint16)
    Image.fromarray(mask).save(root / "masks" / "tile_000.png")
    datamodule = build_datamodule(
        "folder", f"dataset.root={root}", "dataset.num_classes=3", "dataset.train_source.val_fraction=0"
    )
    np.testing.assert_array_equal(datamodule.source("train").load_mask(0), mask.astype(np.uint8))


def test_folder_reads_1_bit_masks_as_classes_0_and_1(build_folder, folder_root):
    Image.fromarray(label_blocks([0, 1]).astype(bool)).save(folder_root / "masks" / "tile_000.png")
    source = build_folder("dataset.train_source.val_fraction=0").source("train")
    assert stripe_values(source.load_mask(0)) == [0, 1]
