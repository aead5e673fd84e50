"""The attacks of an evaluation suite (``conf/suite/*.yaml``), expanded into concrete runs.

A suite's members are presets of the ``attack`` config group, the same presets training and robust validation
use, composed under ``attacks.<key>`` with the member's own settings on top::

    defaults:
      - /attack@attacks.pgd10: pgd
      - _self_
    attacks:
      pgd10: {label: PGD10, steps: 10, alpha: 0.01}

so any preset (``eroseg_paper``, ``apgd_sea``, a new attack's) can be a member, and
``suite.attacks.<key>.<argument>=...`` / ``~suite.attacks.<key>`` change or drop one from the command line.
Every member sets its ``steps`` (the group's default is no evaluation protocol). Budgets come from the
top-level ``eps`` list; a member runs at each of them, so it may not set its own ``eps`` (nor a ``seed``: the
evaluation seeds each batch). Arguments that a preset takes from the dataset config (``ignore_index:
${dataset.ignore_index}``, EroSeg's ``background_class``) come from the evaluated dataset instead
(:meth:`~eroseg_at.attacks.base.Attack.dataset_arguments`), so a suite needs no dataset config. The optional
``iterations`` curve runs its members (``iterations.attacks``, ``steps: null``) at each of
``iterations.steps`` at ``iterations.eps``; ``worst_case`` lists the members of the per-image worst case (or
``all``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from eroseg_at.attacks.arguments import parse_number
from eroseg_at.attacks.base import Attack, DatasetFacts
from eroseg_at.attacks.registry import ATTACKS, available_attacks
from eroseg_at.configs import CONF_DIR, compose_option
from eroseg_at.errors import ConfigError
from eroseg_at.evaluation.errors import EvaluationError

# Keys of a member that describe the member, not the attack.
MEMBER_KEYS = ("_target_", "label")
# The budget every preset of the attack group carries; a member whose eps differs set its own.
GROUP_EPS = OmegaConf.load(CONF_DIR / "attack" / "common" / "threat.yaml").eps
DATASET_REFERENCE = "${dataset."


class SuiteError(EvaluationError):
    """A suite member or budget that cannot be run as given."""


@dataclass(frozen=True)
class AttackRun:
    """One attack at one budget, as a report row.

    Attributes:
        key: The member's key (``pgd10``); iteration-curve runs append ``@<steps>``.
        label: Column name in reports (``PGD10``).
        kind: ``"attack"`` (a suite member, worst-case candidate), ``"iterations"`` (the strength curve) or
            ``"masking"`` (an extra pass of the gradient-masking checks, :mod:`.masking_passes`).
        attack: The registered name of the member's class (``pgd``).
        eps_text: The budget as configured (``"8/255"``); ``eps`` is its value.
        arguments: Constructor arguments besides ``eps`` and what the dataset supplies (JSON types).
        from_dataset: Arguments the preset takes from the dataset config; the evaluated dataset supplies them.
        where: The member's config key, for messages (``suite.attacks.pgd10``).
    """

    key: str
    label: str
    kind: str
    attack: str
    eps_text: str
    eps: float
    arguments: Mapping[str, Any] = field(default_factory=dict)
    from_dataset: tuple[str, ...] = ()
    where: str = ""

    @property
    def steps(self) -> int:
        return self.arguments["steps"]

    def build(self, dataset: DatasetFacts) -> Attack:
        """The attack of this run at its budget, with what its class takes from ``dataset``.

        Raises:
            SuiteError: When the preset takes from the dataset config an argument the class does not take
                from the evaluated dataset.
            ValueError: The attack's own error for a bad argument.
        """
        attack_class = ATTACKS[self.attack]
        arguments = {**self.arguments, "eps": self.eps_text}
        supplied = attack_class.dataset_arguments(arguments, dataset)
        missing = [key for key in self.from_dataset if key not in supplied]
        if missing:
            raise SuiteError(
                f"{self.where}: {', '.join(missing)} interpolate the dataset config, but {attack_class.__name__} "
                f"takes only {sorted(supplied)} from the evaluated dataset; give the value itself"
            )
        return attack_class(**{**arguments, **supplied})


def budgets(value: Any, key: str = "eps") -> list[str | float]:
    """The budgets of ``eps``: one (``8/255``, ``0.03``) or a list; each a number or a fraction string.

    Raises:
        SuiteError: Naming ``key``, for a value that is not a number, a fraction or a list of them.
    """
    values = (
        list(value) if isinstance(value, (Sequence, ListConfig)) and not isinstance(value, str) else [value]
    )
    for budget in values:
        try:
            if parse_number(budget, key) < 0:
                raise ValueError(f"{key} must be >= 0")
        except ValueError as error:
            raise SuiteError(
                f"{key}={value!r}: {error}; give budgets such as eps=8/255 or eps=[4/255,8/255]"
            ) from None
    return values


def eps_text(value: Any) -> str:
    return value if isinstance(value, str) else f"{float(value):g}"


def attack_class(node: DictConfig, where: str) -> type[Attack]:
    """The registered attack class that the member's ``_target_`` names."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise SuiteError(
            f"{where} must be a preset of the attack group: compose it in the suite's defaults "
            f"(- /attack@{where.split('.', 1)[-1]}: pgd) or give its _target_; attacks: {available_attacks()}"
        )
    target = str(node._target_)
    try:
        found = get_class(target)
    except Exception as error:
        raise SuiteError(f"{where}._target_={target!r} cannot be imported ({error})") from None
    if found not in ATTACKS.values():
        raise SuiteError(
            f"{where}._target_={target!r} is not a registered attack class; attacks: {available_attacks()}"
        )
    return found


def read_member(node: DictConfig, where: str) -> tuple[str, str, dict[str, Any], tuple[str, ...]]:
    """A member's registered attack name, label, arguments (resolved) and the arguments the dataset supplies."""
    name = attack_class(node, where).name
    raw = OmegaConf.to_container(node, resolve=False)
    from_dataset = tuple(
        key for key, value in raw.items() if isinstance(value, str) and value.startswith(DATASET_REFERENCE)
    )
    arguments = {}
    for key in raw:
        if key in MEMBER_KEYS or key in from_dataset:
            continue
        try:
            value = node[key]
        except OmegaConfBaseException as error:
            raise SuiteError(f"{where}.{key}: {str(error).splitlines()[0]}") from None
        arguments[key] = (
            OmegaConf.to_container(value, resolve=True)
            if isinstance(value, (DictConfig, ListConfig))
            else value
        )
    if arguments.get("seed") is not None:
        # An attack's own generator would run on through the batches of whichever process attacks them.
        raise SuiteError(
            f"{where}.seed={arguments['seed']}: the evaluation seeds every batch's random start from the top-level "
            "seed, the run and the batch, so that results do not depend on how many processes share the batches"
        )
    arguments.pop("seed", None)
    if arguments.get("eps", GROUP_EPS) != GROUP_EPS:
        raise SuiteError(
            f"{where}.eps={arguments['eps']}: a member runs at every budget of the top-level eps list "
            "(eps=[4/255,8/255]; the curve's at iterations.eps); set the budgets there"
        )
    arguments.pop("eps", None)
    return name, str(node.get("label") or where.rsplit(".", 1)[-1]), arguments, from_dataset


@dataclass(frozen=True)
class Suite:
    """The runs of a suite at its budgets, and the members of its worst case.

    Attributes:
        name: The suite's name.
        runs: Each member at each budget, then each curve member at each of the curve's steps.
        worst_case: Keys of the members that form the per-image worst case.
    """

    name: str
    runs: tuple[AttackRun, ...]
    worst_case: tuple[str, ...]

    @classmethod
    def from_config(cls, suite: DictConfig, eps: Any) -> Suite:
        """The suite ``suite`` (a composed ``conf/suite`` option, attached to its config) at budgets ``eps``.

        Raises:
            SuiteError: Naming the member or key, for a member that is not an attack preset, sets its own eps,
                seed or (curve members) steps, lacks steps, or for an empty or malformed budget list.
        """
        attacks = suite.get("attacks") or single_member(suite)
        members = {}
        for key in attacks:
            where = f"suite.attacks.{key}"
            name, label, arguments, from_dataset = read_member(attacks[key], where)
            if arguments.get("steps") is None:
                raise SuiteError(f"{where} sets no steps: every member gives its own (e.g. {where}.steps=10)")
            members[key] = (name, label, arguments, from_dataset, where)
        values = budgets(eps) if attacks else []
        if attacks and not values:
            raise SuiteError("eps is empty: give at least one budget, e.g. eps=[8/255]")
        runs = [
            AttackRun(
                key,
                label,
                "attack",
                name,
                eps_text(budget),
                parse_number(budget, "eps"),
                arguments,
                dataset,
                where,
            )
            for budget in values
            for key, (name, label, arguments, dataset, where) in members.items()
        ]
        curve = suite.get("iterations")
        if curve:
            (budget,) = budgets(curve.eps, "suite.iterations.eps")
            for key in curve.attacks:
                where = f"suite.iterations.attacks.{key}"
                name, label, arguments, from_dataset = read_member(curve.attacks[key], where)
                if arguments.pop("steps", None) is not None:
                    raise SuiteError(
                        f"{where}.steps={curve.attacks[key].steps}: a curve member runs at each of "
                        "suite.iterations.steps; set its steps to null"
                    )
                runs += [
                    AttackRun(
                        f"{key}@{steps}",
                        label,
                        "iterations",
                        name,
                        eps_text(budget),
                        parse_number(budget, "suite.iterations.eps"),
                        {**arguments, "steps": int(steps)},
                        from_dataset,
                        where,
                    )
                    for steps in curve.steps
                ]
        return cls(
            str(suite.get("name", "")),
            tuple(runs),
            worst_case_members(suite.get("worst_case"), list(members)),
        )


def single_member(suite: DictConfig) -> dict[str, DictConfig]:
    """The one member of ``suite=single``: the attack preset ``suite.attack`` at ``suite.steps``, with
    ``suite.arguments`` on top, keyed and labelled by the preset's name; none for a suite without ``attack``."""
    name = suite.get("attack")
    if not name:
        return {}
    try:
        preset = compose_option("attack", str(name))
    except ConfigError as error:
        raise SuiteError(f"suite.attack={name}: {error}") from None
    OmegaConf.set_struct(preset, False)
    member = OmegaConf.merge(preset, {"label": str(name), "steps": suite.steps}, suite.get("arguments") or {})
    return {str(name): member}


def worst_case_members(members: Any, keys: Sequence[str]) -> tuple[str, ...]:
    """The keys of the suite members that form the worst-case ensemble (``all``: every member)."""
    if members == "all":
        return tuple(keys)
    members = list(members or [])
    unknown = [member for member in members if member not in keys]
    if unknown:
        raise SuiteError(
            f"suite.worst_case names {unknown}, which are not keys of suite.attacks {list(keys)}"
        )
    return tuple(members)
