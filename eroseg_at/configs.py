"""The project's Hydra configs (``conf/``) composed outside ``@hydra.main``: scripts, benchmarks, tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """``conf/<name>.yaml`` with command-line style ``overrides``, as ``python <name>.py`` would see it.

    ``${hydra:...}`` interpolations (such as ``paths.output_dir``) are not set here: override them.
    """
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))
