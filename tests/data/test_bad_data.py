"""Every bad-data case gives a clear DatasetError naming the file(s) and what was expected."""

import re

import numpy as np
import pytest
from data_layouts import label_blocks, random_image, save_jpeg, save_palette_png, save_png
from PIL import Image

from eroseg_at.data import DatasetError


def message_of(excinfo) -> str:
    return str(excinfo.value)


@pytest.mark.parametrize(
    ("name", "layout_line"),
    [
        ("voc", "JPEGImages/<id>.jpg"),
        ("voc_aug", "SegmentationClassAug/<id>.png"),
        ("cityscapes", "gtFine/{train,val}/<city>/"),
        ("ade20k", "annotations/{training,validation}/"),
        ("folder", "masks/<stem>.png"),
    ],
)
def test_missing_root_prints_the_expected_layout(tmp_path, build_datamodule, name, layout_line):
    datamodule = build_datamodule(name, f"dataset.root={tmp_path / 'nowhere'}")
    with pytest.raises(DatasetError, match="Expected layout") as excinfo:
        datamodule.setup("fit")
    assert str(tmp_path / "nowhere") in message_of(excinfo)
    assert layout_line in message_of(excinfo)


def test_voc_missing_split_list_names_it(make_root, build_datamodule):
    voc_aug_root = make_root("voc_aug")
    split_list = voc_aug_root / "VOC2012" / "ImageSets" / "Segmentation" / "train_aug.txt"
    split_list.unlink()
    with pytest.raises(DatasetError, match=re.escape(str(split_list))):
        build_datamodule("voc_aug", f"dataset.root={voc_aug_root}").setup("fit")


def test_folder_image_without_mask_names_both_paths(folder_root, build_folder):
    save_jpeg(folder_root / "images" / "orphan.jpg", random_image(np.random.default_rng(0)))
    with pytest.raises(DatasetError) as excinfo:
        build_folder().setup("fit")
    assert str(folder_root / "images" / "orphan.jpg") in message_of(excinfo)
    assert str(folder_root / "masks") in message_of(excinfo) and "has no mask" in message_of(excinfo)


def test_folder_mask_without_image_names_both_paths(folder_root, build_folder):
    save_png(folder_root / "masks" / "lonely.png", label_blocks([0, 1]))
    with pytest.raises(DatasetError) as excinfo:
        build_folder().setup("fit")
    assert str(folder_root / "masks" / "lonely.png") in message_of(excinfo)
    assert str(folder_root / "images") in message_of(excinfo) and "has no image" in message_of(excinfo)


@pytest.mark.parametrize(
    ("name", "removed", "stage", "named"),
    [
        (
            "voc",
            "VOC2012/SegmentationClass/2007_000002.png",
            "fit",
            ["VOC2012/JPEGImages/2007_000002.jpg", "VOC2012/SegmentationClass/2007_000002.png"],
        ),
        (
            "cityscapes",
            "leftImg8bit/val/frankfurt/frankfurt_000000_000001_leftImg8bit.png",
            "validate",
            ["gtFine/val/frankfurt/frankfurt_000000_000001_gtFine_labelIds.png", "leftImg8bit/val"],
        ),
        (
            "ade20k",
            "ADEChallengeData2016/annotations/training/ADE_train_00000002.png",
            "fit",
            [
                "ADEChallengeData2016/images/training/ADE_train_00000002.jpg",
                "ADEChallengeData2016/annotations/training",
            ],
        ),
    ],
)
def test_a_file_without_its_partner_names_both_paths(
    make_root, build_datamodule, name, removed, stage, named
):
    root = make_root(name)
    (root / removed).unlink()
    with pytest.raises(DatasetError) as excinfo:
        build_datamodule(name, f"dataset.root={root}").setup(stage)
    for relative in named:
        assert str(root / relative) in message_of(excinfo)


def test_size_mismatch_names_the_file_and_both_sizes(make_root, build_datamodule):
    voc_root = make_root("voc")
    save_palette_png(
        voc_root / "VOC2012" / "SegmentationClass" / "2007_000001.png", label_blocks([0, 1], 30, 20)
    )
    source = build_datamodule("voc", f"dataset.root={voc_root}").source("train")
    with pytest.raises(DatasetError) as excinfo:
        source.load(1)
    assert "2007_000001.jpg" in message_of(excinfo)
    assert "64x48" in message_of(excinfo) and "20x30" in message_of(excinfo)


@pytest.mark.parametrize(
    ("name", "relative_mask", "values", "bad"),
    [
        ("voc", "VOC2012/SegmentationClass/2007_000000.png", [0, 21, 254], "21, 254"),
        (
            "cityscapes",
            "gtFine/train/aachen/aachen_000000_000000_gtFine_labelIds.png",
            [7, 34, 100],
            "34, 100",
        ),
        ("ade20k", "ADEChallengeData2016/annotations/training/ADE_train_00000001.png", [0, 151], "151"),
        ("folder", "masks/tile_000.png", [0, 2, 3, 7], "3, 7"),
    ],
)
def test_label_values_outside_the_classes_name_the_file_and_values(
    make_root, build_datamodule, name, relative_mask, values, bad
):
    root = make_root(name)
    mask_path = root / relative_mask
    (save_palette_png if name == "voc" else save_png)(mask_path, label_blocks(values))
    extra = ["dataset.num_classes=3"] if name == "folder" else []
    datamodule = build_datamodule(name, f"dataset.root={root}", *extra)
    source = datamodule.source("train")
    index = next(i for i, (_, mask) in enumerate(source.pairs) if mask == mask_path)
    with pytest.raises(DatasetError) as excinfo:
        source.load(index)
    assert str(mask_path) in message_of(excinfo)
    assert f"label values {bad} are not valid" in message_of(excinfo)


def test_folder_16_bit_label_above_255_is_named(folder_root, build_folder):
    Image.fromarray(label_blocks([0, 1]).astype(np.uint16) * 300).save(folder_root / "masks" / "tile_000.png")
    source = build_folder().source("train")
    with pytest.raises(DatasetError, match="label values 300 are not valid"):
        source.load_mask(0)


def test_truncated_image_names_the_file(make_root, build_datamodule):
    voc_root = make_root("voc")
    image_path = voc_root / "VOC2012" / "JPEGImages" / "2007_000003.jpg"
    image_path.write_bytes(image_path.read_bytes()[:300])
    source = build_datamodule("voc", f"dataset.root={voc_root}").source("train")
    with pytest.raises(DatasetError, match=f"{re.escape(str(image_path))}: unreadable or truncated"):
        source.load(3)


def test_unreadable_mask_names_the_file(make_root, build_datamodule):
    cityscapes_root = make_root("cityscapes")
    mask_path = (
        cityscapes_root / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000000_gtFine_labelIds.png"
    )
    mask_path.write_bytes(b"not a png")
    source = build_datamodule("cityscapes", f"dataset.root={cityscapes_root}").source("val")
    with pytest.raises(DatasetError, match=f"{re.escape(str(mask_path))}: unreadable or truncated"):
        source.load_mask(0)


def test_colour_mask_is_rejected_with_the_expected_format(folder_root, build_folder):
    save_png(folder_root / "masks" / "tile_000.png", random_image(np.random.default_rng(0)))
    source = build_folder().source("train")
    with pytest.raises(DatasetError, match="tile_000.png: mask has mode RGB.*single-channel"):
        source.load_mask(0)


def test_two_images_with_one_stem_are_ambiguous(folder_root, build_folder):
    save_png(folder_root / "images" / "tile_000.png", random_image(np.random.default_rng(0)))
    with pytest.raises(DatasetError, match="tile_000.jpg and .*tile_000.png have the same stem"):
        build_folder().setup("fit")


def test_folder_split_list_entry_without_image(folder_root, build_folder):
    (folder_root / "train.txt").write_text("tile_000\nmissing_tile\n")
    datamodule = build_folder(
        "dataset.train_source.split_list=train.txt",
    )
    with pytest.raises(DatasetError, match="train.txt: 'missing_tile' has no image"):
        datamodule.setup("fit")


def test_a_bad_sample_stops_the_loader_instead_of_being_skipped(make_root, build_datamodule):
    voc_root = make_root("voc")
    save_palette_png(
        voc_root / "VOC2012" / "SegmentationClass" / "2008_000002.png", label_blocks([0, 99], 40, 56)
    )
    datamodule = build_datamodule("voc", f"dataset.root={voc_root}", "dataset.val_batch_size=1")
    datamodule.setup("validate")
    loader = iter(datamodule.val_dataloader())
    next(loader)
    with pytest.raises(DatasetError, match="2008_000002.png: label values 99"):
        next(loader)
