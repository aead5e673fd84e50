"""Compute and cache the class pixel frequencies of a dataset's training split.

Usage::

    python -m eroseg_at.data.stats dataset=voc dataset.root=/data/VOCdevkit

Any ``dataset.*`` override of the training command line works here too. The frequencies
are cached (see :mod:`eroseg_at.data.class_frequencies`), so training and class-balanced
attacks read them instead of scanning the labels again.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from eroseg_at.data.class_frequencies import cache_path
from eroseg_at.data.errors import DatasetError

DEFAULT_CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"
USAGE = "usage: python -m eroseg_at.data.stats dataset=<name> [dataset.root=DIR] [dataset.<key>=<value> ...]"


def compose_dataset_config(
    overrides: Sequence[str], config_dir: str | Path = DEFAULT_CONFIG_DIR
) -> DictConfig:
    """The ``dataset`` config node selected by command-line overrides like ``dataset=voc``."""
    # There is no primary config here, so the group is added rather than overridden.
    overrides = [f"+{item}" if item.startswith("dataset=") else item for item in overrides]
    if not any(item.startswith("+dataset=") for item in overrides):
        raise SystemExit(USAGE)
    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
        return compose(overrides=list(overrides)).dataset


def main(argv: Sequence[str] | None = None) -> None:
    """Compute (or read) and print the class frequencies of a dataset's training split."""
    datamodule = instantiate(compose_dataset_config(sys.argv[1:] if argv is None else argv))
    try:
        frequencies = datamodule.class_frequencies()
    except DatasetError as error:
        raise SystemExit(f"error: {error}") from error
    width = max(len(class_name) for class_name in datamodule.class_names)
    for index, (class_name, frequency) in enumerate(
        zip(datamodule.class_names, frequencies.tolist(), strict=True)
    ):
        print(f"{index:4d}  {class_name:<{width}}  {frequency:.6f}")
    print(f"cached in {cache_path(datamodule.name, datamodule.source('train'), datamodule.stats_cache_dir)}")


if __name__ == "__main__":
    main()
