"""Attacks by name: ``build_attack("eroseg", eps="8/255")`` and ``available_attacks()``.

The registry is derived from the classes: every module of this package is imported once, and every
:class:`~eroseg_at.attacks.base.Attack` subclass that defines its own ``name`` registers itself
(:meth:`Attack.__init_subclass__`). A new attack is therefore one file here (and its preset in
``conf/attack/``); no list of names is kept by hand.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import eroseg_at.attacks as package
from eroseg_at.attacks.base import REGISTERED_ATTACKS, Attack, DatasetFacts


def discover_attacks() -> dict[str, type[Attack]]:
    """Imports every module of :mod:`eroseg_at.attacks` and returns the registered classes by name, sorted."""
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    return dict(sorted(REGISTERED_ATTACKS.items()))


ATTACKS: dict[str, type[Attack]] = discover_attacks()


def available_attacks() -> list[str]:
    """The registered attack names, sorted."""
    return list(ATTACKS)


def build_attack(name: str, dataset: DatasetFacts | None = None, **kwargs: Any) -> Attack:
    """Builds the attack registered as ``name`` with its keyword arguments.

    Args:
        name: A registered name (:func:`available_attacks`).
        dataset: When given, the arguments the attack class takes from the dataset
            (:meth:`~eroseg_at.attacks.base.Attack.dataset_arguments`) are added to ``kwargs``.
        **kwargs: The attack's constructor arguments.

    Raises:
        ValueError: If ``name`` is not registered; the message lists the valid names.
    """
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; available attacks: {', '.join(available_attacks())}")
    attack_class = ATTACKS[name]
    if dataset is not None:
        kwargs = {**kwargs, **attack_class.dataset_arguments(kwargs, dataset)}
    return attack_class(**kwargs)
