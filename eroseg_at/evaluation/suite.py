"""The attacks of an evaluation suite (``conf/suite/*.yaml``), expanded into concrete runs.

A suite has ``attacks`` (key -> entry), an optional ``iterations`` curve, ``worst_case`` (the member keys, or
``all``) and optional ``presets``: named groups of attack arguments (a protocol such as SEA's) that an entry
takes with ``preset: <name>``; the entry's own arguments win over its preset's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eroseg_at.attacks import available_attacks, build_attack
from eroseg_at.attacks.arguments import parse_number
from eroseg_at.attacks.base import Attack, DatasetFacts

# Keys of a suite entry that describe the entry; every other key is an argument of the attack.
ENTRY_KEYS = ("attack", "label", "preset")


@dataclass(frozen=True)
class AttackRun:
    """One attack at one budget, as a report row.

    Attributes:
        key: The suite entry's key (``pgd10``); iteration-curve runs append ``@<steps>``.
        label: Column name in reports (``PGD10``).
        kind: ``"attack"`` (a suite attack, worst-case member) or ``"iterations"`` (attack-strength curve).
        attack: Registered attack name (``pgd``).
        eps_text: The budget as configured (``"8/255"``); ``eps`` is its value.
        params: Keyword arguments of ``build_attack`` besides ``eps`` and the dataset-derived ones.
    """

    key: str
    label: str
    kind: str
    attack: str
    eps_text: str
    eps: float
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int | None:
        return self.params.get("steps")


def _entry(
    key: str, entry: Mapping[str, Any], where: str, presets: Mapping[str, Mapping[str, Any]]
) -> tuple[str, str, dict[str, Any]]:
    if not isinstance(entry, Mapping) or "attack" not in entry:
        raise ValueError(
            f"{where}.{key} must be a mapping with an 'attack' key (one of {available_attacks()})"
        )
    name = entry["attack"]
    if name not in available_attacks():
        raise ValueError(
            f"{where}.{key}.attack={name!r} is not an attack; available attacks: {available_attacks()}"
        )
    preset = entry.get("preset")
    if preset is not None and preset not in presets:
        raise ValueError(
            f"{where}.{key}.preset={preset!r} is not a preset of the suite; presets: {sorted(presets)}"
        )
    params = {**(presets[preset] if preset is not None else {})}
    params.update({k: v for k, v in entry.items() if k not in ENTRY_KEYS})
    if "eps" in params:
        raise ValueError(
            f"{where}.{key} sets eps; budgets come from the top-level eps list (or iterations.eps)"
        )
    if "seed" in params:
        # An attack's own generator would run on through the batches of whichever process attacks them.
        raise ValueError(
            f"{where}.{key} sets seed; the evaluation seeds every batch's random start from the top-level "
            "seed, the run and the batch, so that results do not depend on how many processes share the batches"
        )
    return name, str(entry.get("label", key)), params


def eps_text(value: Any) -> str:
    return value if isinstance(value, str) else f"{float(value):g}"


def expand_suite(suite: Mapping[str, Any], eps: Sequence[Any]) -> list[AttackRun]:
    """Every run of ``suite``: each attack at each budget of ``eps``, then the iterations curve.

    Raises:
        ValueError: Naming the entry, for an unknown attack, a misplaced eps, or an empty eps list.
    """
    runs = []
    attacks = suite.get("attacks") or {}
    presets = suite.get("presets") or {}
    if attacks and not eps:
        raise ValueError("eps is empty: give at least one budget, e.g. eps=[8/255]")
    for budget in eps:
        for key, entry in attacks.items():
            name, label, params = _entry(key, entry, "suite.attacks", presets)
            runs.append(
                AttackRun(key, label, "attack", name, eps_text(budget), parse_number(budget, "eps"), params)
            )
    curve = suite.get("iterations")
    if curve:
        budget = curve["eps"]
        for key, entry in curve["attacks"].items():
            name, label, params = _entry(key, entry, "suite.iterations.attacks", presets)
            # A preset's steps give way to the curve's.
            if "steps" in entry:
                raise ValueError(
                    f"suite.iterations.attacks.{key} sets steps; they come from iterations.steps"
                )
            for steps in curve["steps"]:
                runs.append(
                    AttackRun(
                        f"{key}@{steps}",
                        label,
                        "iterations",
                        name,
                        eps_text(budget),
                        parse_number(budget, "suite.iterations.eps"),
                        {**params, "steps": int(steps)},
                    )
                )
    return runs


def worst_case_members(suite: Mapping[str, Any]) -> list[str]:
    """Keys of the suite attacks that form the worst-case ensemble."""
    members = suite.get("worst_case")
    keys = list((suite.get("attacks") or {}).keys())
    if members == "all":
        return keys
    members = list(members or [])
    unknown = [member for member in members if member not in keys]
    if unknown:
        raise ValueError(f"suite.worst_case names {unknown}, which are not keys of suite.attacks {keys}")
    return members


def build_run_attack(run: AttackRun, dataset: DatasetFacts) -> Attack:
    """The attack of ``run`` at its budget, with what its class takes from ``dataset``."""
    return build_attack(run.attack, dataset=dataset, eps=run.eps_text, **run.params)
