"""SegmentationDataModule: batches, padding, settings errors, class frequencies and the stats CLI."""

import json

import numpy as np
import pytest
import torch
from test_transforms import MarkerSource

from eroseg_at.data import DatasetError, SegmentationDataModule, ShapesDataset
from eroseg_at.data import class_frequencies as class_frequencies_module
from eroseg_at.data.datamodule import AugmentedDataset, pad_collate, same_size_batches
from eroseg_at.data.stats import main as stats_main
from eroseg_at.data.transforms import AugmentConfig, build_train_transform

SHAPES_SMALL = (
    "dataset.train_source.num_images=20",
    "dataset.val_source.num_images=6",
    "dataset.batch_size=4",
)


def test_shapes_datamodule_exposes_the_shared_interface(build_datamodule):
    datamodule = build_datamodule("shapes", *SHAPES_SMALL)
    assert datamodule.num_classes == 7 and len(datamodule.class_names) == 7
    assert datamodule.ignore_index == 255 and datamodule.background_class == 0
    datamodule.setup("fit")
    batches = list(datamodule.train_dataloader())
    assert len(batches) == 5
    images, masks = batches[0]
    crop_h, crop_w = datamodule.crop_size
    assert images.shape == (4, 3, crop_h, crop_w) and images.dtype == torch.float32
    assert masks.shape == (4, crop_h, crop_w) and masks.dtype == torch.int64
    assert 0 <= images.min() and images.max() <= 1


def test_training_drops_the_last_incomplete_batch(build_datamodule):
    datamodule = build_datamodule("shapes", *SHAPES_SMALL, "dataset.train_source.num_images=9")
    datamodule.setup("fit")
    assert [len(images) for images, _ in datamodule.train_dataloader()] == [4, 4]


def test_validation_pads_to_the_divisor_with_ignore(build_datamodule):
    datamodule = build_datamodule("shapes", *SHAPES_SMALL, "dataset.val_source.image_size=[100,90]")
    datamodule.setup("validate")
    images, masks = next(iter(datamodule.val_dataloader()))
    assert images.shape[-2:] == (128, 96)
    assert (masks[:, 100:] == 255).all() and (masks[:, :, 90:] == 255).all()
    assert (images[:, :, 100:] == 0).all()
    raw_image, raw_mask = datamodule.source("val")[0]
    assert torch.equal(masks[0, :100, :90], raw_mask)


def test_pad_collate_pads_to_the_largest_sample():
    small = (torch.ones(3, 32, 64), torch.zeros(32, 64, dtype=torch.int64))
    large = (torch.ones(3, 64, 32), torch.ones(64, 32, dtype=torch.int64))
    images, masks = pad_collate([small, large], ignore_index=255)
    assert images.shape == (2, 3, 64, 64) and masks.shape == (2, 64, 64)
    assert (masks[0, 32:] == 255).all() and (masks[1, :, 32:] == 255).all()
    assert (images[0, :, 32:] == 0).all() and (masks[0, :32, :64] == 0).all()


def make_datamodule(**overrides):
    settings = {
        "name": "shapes",
        "num_classes": 7,
        "class_names": list("abcdefg"),
        "train_source": ShapesDataset(num_images=8, image_size=64),
        "val_source": ShapesDataset(num_images=2, image_size=64, seed=1),
        "batch_size": 2,
    }
    return SegmentationDataModule(**{**settings, **overrides})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"class_names": ["a", "b"]}, "class_names has 2 entries but num_classes=7"),
        ({"ignore_index": 3}, "ignore_index=3 is a valid class index"),
        ({"background_class": 7}, "background_class=7"),
        ({"crop_size": [64]}, "crop_size"),
        ({"val_batch_size": 0}, "val_batch_size=0"),
        ({"palette": [[0, 0, 0]]}, "palette has 1 colours"),
    ],
)
def test_invalid_settings_name_the_key(overrides, message):
    with pytest.raises(DatasetError, match=message):
        make_datamodule(**overrides)


def test_num_classes_must_match_the_dataset(make_root, build_datamodule):
    voc_root = make_root("voc")
    datamodule = build_datamodule(
        "voc", f"dataset.root={voc_root}", "dataset.num_classes=3", "dataset.class_names=[a,b,c]"
    )
    with pytest.raises(DatasetError, match="num_classes=3 but its train split has 21 classes"):
        datamodule.setup("fit")


def test_too_few_training_samples_for_one_batch():
    with pytest.raises(DatasetError, match="8 training samples < batch_size=16"):
        make_datamodule(batch_size=16).setup("fit")


def test_empty_validation_split_is_an_error(folder_root, build_folder):
    datamodule = build_folder(
        "dataset.train_source.val_fraction=0",
    )
    with pytest.raises(DatasetError, match="the val split is empty"):
        datamodule.setup("fit")


def test_class_frequencies_count_training_labels_and_are_cached(tmp_path, monkeypatch):
    train = ShapesDataset(num_images=12, image_size=64)
    counts = np.bincount(np.concatenate([train.load_mask(i).ravel() for i in range(12)]), minlength=256)[:7]
    frequencies = make_datamodule(train_source=train, stats_cache_dir=str(tmp_path)).class_frequencies()
    assert frequencies.shape == (7,)
    np.testing.assert_allclose(frequencies.numpy(), counts / counts.sum())
    (cache_file,) = (tmp_path / "class_frequencies").glob("shapes-*.json")
    assert json.loads(cache_file.read_text())["pixel_counts"] == counts.tolist()

    def fail(*args, **kwargs):
        raise AssertionError("counted again instead of reading the cache")

    monkeypatch.setattr(class_frequencies_module, "count_class_pixels", fail)
    cached = make_datamodule(
        train_source=ShapesDataset(num_images=12, image_size=64), stats_cache_dir=str(tmp_path)
    )
    torch.testing.assert_close(cached.class_frequencies(), frequencies)
    changed = make_datamodule(
        train_source=ShapesDataset(num_images=13, image_size=64), stats_cache_dir=str(tmp_path)
    )
    with pytest.raises(AssertionError, match="counted again"):
        changed.class_frequencies()


def test_stats_command_prints_and_caches_frequencies(folder_root, tmp_path, capsys):
    stats_main(
        [
            "dataset=folder",
            f"dataset.root={folder_root}",
            "dataset.num_classes=3",
            f"dataset.stats_cache_dir={tmp_path / 'stats'}",
            "dataset.num_workers=0",
        ]
    )
    output = capsys.readouterr().out
    lines = output.splitlines()
    assert lines[0].split()[:2] == ["0", "class_0"] and len(lines) == 4
    assert float(lines[0].split()[-1]) + float(lines[1].split()[-1]) + float(
        lines[2].split()[-1]
    ) == pytest.approx(1, abs=1e-5)
    assert f"cached in {tmp_path / 'stats' / 'class_frequencies'}" in output


def test_stats_command_without_a_dataset_prints_usage():
    with pytest.raises(SystemExit, match="usage: python -m eroseg_at.data.stats dataset=<name>"):
        stats_main(["dataset.root=/data"])


def test_each_worker_draws_its_own_augmentations():
    """Identical samples in two workers must not get identical augmentations."""

    class Repeated(MarkerSource):
        """One fixed noise image, so two different crops or jitters never coincide."""

        def __len__(self):
            return 8

        def load(self, index):
            image = np.random.default_rng(0).integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
            return image, np.zeros((60, 80), dtype=np.uint8)

    dataset = AugmentedDataset(Repeated(), build_train_transform((32, 32), AugmentConfig(), 255, seed=0))
    datamodule = make_datamodule(num_workers=2)
    datamodule.train_set = dataset
    images = torch.cat([batch[0] for batch in datamodule.train_dataloader()])
    assert all(not torch.equal(images[i], images[j]) for i in range(len(images)) for j in range(i))


def test_stats_command_on_a_missing_root_exits_with_the_layout(tmp_path):
    with pytest.raises(SystemExit, match="error: voc: no VOC2012/JPEGImages .*Expected layout"):
        stats_main(
            ["dataset=voc", f"dataset.root={tmp_path / 'absent'}", f"dataset.stats_cache_dir={tmp_path}"]
        )


def test_same_size_batches_keep_the_order_within_a_size():
    sizes = [(2, 2), (3, 3), (2, 2), (2, 2), (3, 3)]
    assert same_size_batches(sizes, 2) == [[0, 2], [3], [1, 4]]
    assert same_size_batches([(5, 5)] * 5, 2) == [[0, 1], [2, 3], [4]]
