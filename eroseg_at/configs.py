"""The project's Hydra configs (``conf/``): where they are, composed outside ``@hydra.main`` (scripts, benchmarks,
tests), and built."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from eroseg_at.errors import ConfigError


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


def group_options(group: str) -> list[str]:
    """The options of config group ``group`` (``suite``, ``hydra/launcher``): the YAML files of its folder."""
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


# For the --help templates (conf/evaluate.yaml): `${eroseg_options:suite}` lists a group's options, so the help
# names the groups a program reads, each with its options as they are on disk.
OmegaConf.register_new_resolver("eroseg_options", lambda group: ", ".join(group_options(group)), replace=True)


def compose_config(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """``conf/<name>.yaml`` with command-line style ``overrides``, as ``python <name>.py`` would see it.

    ``${hydra:...}`` interpolations (such as ``paths.output_dir``) are not set here: override them.
    """
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def compose_option(group: str, option: str) -> DictConfig:
    """The option ``option`` of config group ``group`` (``attack``, ``eroseg``) composed on its own, its defaults
    merged; inside a running Hydra app (``evaluate.py``) with that app's search path, else with ``conf/``.

    Raises:
        ConfigError: Listing the group's options, for an option that is not one of them.
    """
    options = group_options(group)
    if option not in options:
        raise ConfigError(f"{option!r} is not an option of conf/{group}; options: {options}")
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=f"{group}/{option}")[group]
    return compose_config(f"{group}/{option}")[group]


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
