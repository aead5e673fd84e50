"""Attacks by name: ``build_attack("eroseg", eps="8/255")`` and ``available_attacks()``."""

from __future__ import annotations

from typing import Any

from eroseg_at.attacks.apgd import APGD
from eroseg_at.attacks.base import Attack, DatasetFacts
from eroseg_at.attacks.cospgd import CosPGD
from eroseg_at.attacks.cw import CW
from eroseg_at.attacks.eroseg import EroSeg
from eroseg_at.attacks.padam import PAdam
from eroseg_at.attacks.pgd import PGD
from eroseg_at.attacks.rppgd import RPPGD
from eroseg_at.attacks.segpgd import SegPGD
from eroseg_at.attacks.square import Square

ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls for cls in (PGD, SegPGD, CosPGD, RPPGD, CW, EroSeg, APGD, PAdam, Square)
}


def available_attacks() -> list[str]:
    """The registered attack names, sorted."""
    return sorted(ATTACKS)


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
