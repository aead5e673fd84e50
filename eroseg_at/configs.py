"""The project's Hydra configs (``conf/``): where they are, composed outside ``@hydra.main`` (scripts, benchmarks,
tests), and built."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig


def find_conf_dir() -> Path:
    """The configs: ``eroseg_at/conf`` in an installed wheel, else the checkout's top-level ``conf/``.

    ``conf/`` is kept in one place, the top of the repository (where ``python train.py`` reads it); building a
    wheel installs it as the package data ``eroseg_at/conf`` (pyproject.toml), which a checkout never has, so an
    editable install and ``python train.py`` read the checkout's files.
    """
    package = Path(__file__).resolve().parent
    installed = package / "conf"
    return installed if installed.is_dir() else package.parent / "conf"


CONF_DIR = find_conf_dir()


def compose_config(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """``conf/<name>.yaml`` with command-line style ``overrides``, as ``python <name>.py`` would see it.

    ``${hydra:...}`` interpolations (such as ``paths.output_dir``) are not set here: override them.
    """
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def build(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)``, raising the builder's own error where one fails.

    Hydra wraps every error of a ``_target_`` in an ``InstantiationException``, which hides its type (a
    missing weights file is a ``FileNotFoundError``, bad dataset input a ``DatasetError``); the builders'
    messages already name the key and the value.
    """
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, Exception):
            raise error.__cause__ from None
        raise
