import pytest
from data_layouts import default_voc, write_ade20k, write_cityscapes, write_folder, write_voc_aug
from hydra.utils import instantiate

from eroseg_at.data.stats import compose_dataset_config

LAYOUT_WRITERS = {
    "voc": (default_voc, "VOCdevkit"),
    "voc_aug": (write_voc_aug, "VOCdevkit"),
    "cityscapes": (write_cityscapes, "cityscapes"),
    "ade20k": (write_ade20k, "ade"),
    "folder": (write_folder, "folder"),
}


@pytest.fixture
def make_root(tmp_path):
    """``make_root(name)`` writes a tiny dataset in ``name``'s real layout and returns its root."""

    def make(name):
        writer, directory = LAYOUT_WRITERS[name]
        return writer(tmp_path / directory)

    return make


@pytest.fixture
def build_datamodule(tmp_path):
    """Compose ``conf/dataset/<name>.yaml`` with overrides and instantiate it (cache in tmp_path)."""

    def build(name, *overrides):
        cfg = compose_dataset_config(
            [
                f"dataset={name}",
                f"dataset.stats_cache_dir={tmp_path / 'cache'}",
                "dataset.num_workers=0",
                *overrides,
            ]
        )
        return instantiate(cfg)

    return build


@pytest.fixture
def folder_root(make_root):
    return make_root("folder")


@pytest.fixture
def build_folder(build_datamodule, folder_root):
    """Build the ``folder`` dataset with 3 classes over ``folder_root``."""

    def build(*overrides):
        return build_datamodule("folder", f"dataset.root={folder_root}", "dataset.num_classes=3", *overrides)

    return build
