"""Adversarial attacks on semantic segmentation models; depends on torch only.

``attack = build_attack(name, **kwargs)`` then ``x_adv = attack(model, images, labels)``.
"""

from eroseg_at.attacks.apgd import APGD
from eroseg_at.attacks.base import Attack, DatasetFacts, IterativeAttack
from eroseg_at.attacks.cospgd import CosPGD
from eroseg_at.attacks.cw import CW
from eroseg_at.attacks.eroseg import EroSeg
from eroseg_at.attacks.padam import PAdam
from eroseg_at.attacks.pgd import PGD
from eroseg_at.attacks.registry import available_attacks, build_attack
from eroseg_at.attacks.rppgd import RPPGD
from eroseg_at.attacks.segpgd import SegPGD
from eroseg_at.attacks.square import Square

__all__ = [
    "APGD",
    "CW",
    "PGD",
    "RPPGD",
    "PAdam",
    "Attack",
    "CosPGD",
    "DatasetFacts",
    "EroSeg",
    "IterativeAttack",
    "SegPGD",
    "Square",
    "available_attacks",
    "build_attack",
]
