"""A fast_dev_run training (one train and one val batch) on every real dataset layout."""

import pytest

from eroseg_at.training.runner import train
from tests.conftest import compose_train_config

# Small crops and batches; folder masks have 3 classes.
EXTRA = {"folder": ("dataset.num_classes=3",)}


@pytest.mark.parametrize("name", ["voc", "voc_aug", "cityscapes", "ade20k", "folder"])
def test_fast_dev_run_on_each_dataset(name, make_root, tmp_path):
    cfg = compose_train_config(
        [
            f"dataset={name}",
            f"dataset.root={make_root(name)}",
            "dataset.crop_size=[32,32]",
            "dataset.batch_size=2",
            "dataset.val_batch_size=2",
            "dataset.num_workers=0",
            f"dataset.stats_cache_dir={tmp_path / 'cache'}",
            *EXTRA.get(name, ()),
            "debug=fdr",
            "logger=none",
            "~validation.attacks.pgd10",
        ],
        output_dir=tmp_path / "run",
    )
    result = train(cfg)
    assert 0.0 <= result.validation.miou["clean"] <= 100.0
