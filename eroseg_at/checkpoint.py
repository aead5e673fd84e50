"""The checkpoint format that training writes and evaluation reads: where the config goes, safe loading.

It sits below both (training and evaluation are siblings, and neither imports the other). A checkpoint is
Lightning's dict plus the run's resolved config under :data:`CONFIG_KEY`, the format version under
:data:`FORMAT_KEY` and the training method under :data:`METHOD_KEY` (a :class:`TrainingMethod`, which
training derives from the objects it trains with), all plain types, so it loads with
``torch.load(weights_only=True)``. Checkpoints without the method record get it from their stored config
(:meth:`TrainingMethod.from_config`).
"""

from __future__ import annotations

import glob
import hashlib
import math
import pickle
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from eroseg_at.attacks.arguments import parse_number
from eroseg_at.errors import UserError

CONFIG_KEY = "eroseg_at_config"
FORMAT_KEY = "eroseg_at_format"
METHOD_KEY = "eroseg_at_method"
# 1: before the model group built through _target_ and the training-attack settings moved under
# `adversarial` (checkpoints without FORMAT_KEY); 2: now.
FORMAT_VERSION = 2
MODEL_PREFIX = "model."
CKPT_PATH_HINT = (
    "ckpt_path takes a checkpoint that train.py wrote (outputs/train/<date>/<time>/checkpoints/last.ckpt) or a "
    "quoted glob (\"ckpt_path='outputs/train/**/best*.ckpt'\")"
)


class CheckpointError(UserError, ValueError):
    """A checkpoint file that is missing, unreadable, foreign or inconsistent with the dataset."""


# The modes and objectives of ``adversarial`` (eroseg_at.training), spelled as training spells them.
MULTI_STEP, ACCUMULATED, SINGLE_STEP = "multi_step", "accumulated", "single_step"
CLEAN_PLUS_ADV = "clean_plus_adv"
# The attack classes' default eps (eroseg_at.attacks.base.Attack): a label names another eps only.
DEFAULT_EPS = 8 / 255


@dataclass(frozen=True)
class TrainingMethod:
    """How a checkpoint's model was trained: the row name of reports, and what it is made of.

    Attributes:
        attack: The training attack's class name (``EroSeg``, ``PGD``, ...); None for standard training.
        mode: ``multi_step`` (the attack's iterations per batch), ``accumulated`` (a perturbation kept per
            training image, continued at each visit) or ``single_step`` (one large step from wide noise); None
            for standard training.
        steps: Gradient steps of the attack per batch (multi_step), per visit of an image (accumulated), or 1.
        objective: ``clean_plus_adv``, ``half_adv`` or ``adv_only``.
        eps: The training attack's budget after any warm-up.
        clip: single_step only: whether the step is projected onto the eps-ball (FGSM with random start) or
            not (N-FGSM).
    """

    attack: str | None = None
    mode: str | None = None
    steps: int | None = None
    objective: str | None = None
    eps: float | None = None
    clip: bool | None = None

    @property
    def label(self) -> str:
        """``standard``, ``EroSeg3-AT``, ``PGD3-AT (adv_only)``, ``EroSeg-AT accumulated (1 step/visit,
        adv_only)``, ``N-FGSM-AT (pgd, adv_only)``; `` @4/255`` is appended for an eps other than 8/255."""
        if self.attack is None:
            return "standard"
        objective = "" if self.objective == CLEAN_PLUS_ADV else self.objective
        if self.mode == ACCUMULATED:
            visit = f"{self.steps} step{'' if self.steps == 1 else 's'}/visit"
            label = f"{self.attack}-AT accumulated ({', '.join(filter(None, [visit, objective]))})"
        elif self.mode == SINGLE_STEP:
            name = "FGSM-RS-AT" if self.clip else "N-FGSM-AT"
            label = f"{name} ({', '.join(filter(None, [self.attack.lower(), objective]))})"
        else:
            label = f"{self.attack}{self.steps}-AT" + (f" ({objective})" if objective else "")
        if self.eps is not None and not math.isclose(self.eps, DEFAULT_EPS, rel_tol=1e-6):
            label += f" @{budget_text(self.eps)}"
        return label

    def to_record(self) -> dict[str, Any]:
        """Plain types, as the checkpoint stores it."""
        return asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, Any], path: Path) -> TrainingMethod:
        """The method stored under :data:`METHOD_KEY`.

        Raises:
            CheckpointError: Naming the file, when the record is not one this version writes.
        """
        names = {field.name for field in fields(cls)}
        if not isinstance(record, Mapping) or not set(record) <= names:
            raise CheckpointError(
                f"checkpoint {str(path)!r}: {METHOD_KEY!r} holds {record!r}, expected a mapping of {sorted(names)}"
            )
        return cls(**record)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrainingMethod:
        """The method of a checkpoint written before the record existed, from its stored training config.

        Reads the training attack (``attack._target_``, ``attack.steps``, ``attack.eps``) and ``adversarial``
        (``mode``, ``objective``, ``single_step.clip``, and where older configs have them ``attack_steps``, which
        overrode ``attack.steps``, and ``accumulated.steps``, the iterations per visit) with the defaults those
        keys had when such checkpoints were written.
        """
        attack = config.get("attack")
        if not isinstance(attack, Mapping) or "_target_" not in attack:
            return cls()
        adversarial = config.get("adversarial") or {}
        mode = adversarial.get("mode", MULTI_STEP)
        if mode == ACCUMULATED:
            steps = (adversarial.get("accumulated") or {}).get("steps") or attack.get("steps")
        elif mode == SINGLE_STEP:
            steps = 1
        else:
            steps = adversarial.get("attack_steps") or attack.get("steps")
        clip = (
            bool((adversarial.get("single_step") or {}).get("clip", False)) if mode == SINGLE_STEP else None
        )
        return cls(
            attack=str(attack["_target_"]).rsplit(".", 1)[-1],
            mode=mode,
            steps=None if steps is None else int(steps),
            objective=adversarial.get("objective", CLEAN_PLUS_ADV),
            eps=parse_number(attack.get("eps", DEFAULT_EPS), "attack.eps"),
            clip=clip,
        )


def budget_text(eps: float) -> str:
    """``8/255`` where eps is a whole number of 255ths, else the number."""
    levels = eps * 255
    return f"{round(levels)}/255" if math.isclose(levels, round(levels), abs_tol=1e-6) else f"{eps:g}"


@dataclass
class LoadedCheckpoint:
    """What evaluation needs from one checkpoint file.

    Attributes:
        path: The file.
        sha256: Hex SHA-256 of the file's bytes, so a report names exactly the weights it measured.
        config: The training run's resolved config (``conf/train.yaml`` as composed for that run).
        model_state: The model's weights (the ``model.`` prefix removed).
        method: How the model was trained: the stored record, or for older checkpoints its config's account.
    """

    path: Path
    sha256: str
    config: DictConfig
    model_state: dict[str, torch.Tensor]
    method: TrainingMethod


def resolve_checkpoint_paths(pattern: str) -> list[Path]:
    """The checkpoint files named by a path or a glob (``**`` matches any depth), sorted.

    Raises:
        CheckpointError: If nothing matches, naming the pattern.
    """
    if not pattern:
        raise CheckpointError(
            "ckpt_path is empty: give a checkpoint path or a glob such as 'outputs/**/*.ckpt'"
        )
    where = "" if Path(pattern).is_absolute() else f" (relative paths are read from {Path.cwd()})"
    if glob.has_magic(pattern):
        paths = sorted(Path(match) for match in glob.glob(pattern, recursive=True) if Path(match).is_file())
        if not paths:
            raise CheckpointError(f"ckpt_path glob {pattern!r} matches no file{where}; {CKPT_PATH_HINT}")
        return paths
    path = Path(pattern)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not exist or is not a file{where}; {CKPT_PATH_HINT}"
        )
    return [path]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def upgrade_format_1(config: dict[str, Any]) -> dict[str, Any]:
    """A format-1 stored config in today's layout (only what evaluation reads from it changes).

    Format 1 described SMP models by keys without ``_target_`` (built by a function of the old training
    code) and kept the training attack's ``attack_steps`` and ``eps_warmup_epochs`` in ``schedule``.
    """
    config = {**config}
    model = config.get("model")
    if isinstance(model, dict) and "_target_" not in model:
        config["model"] = {"_target_": "eroseg_at.models.build_model", **model}
    schedule = dict(config.get("schedule") or {})
    adversarial = dict(config.get("adversarial") or {})
    for key in ("attack_steps", "eps_warmup_epochs"):
        if key in schedule:
            adversarial.setdefault(key, schedule.pop(key))
    config["schedule"], config["adversarial"] = schedule, adversarial
    return config


def load_checkpoint(path: Path | str) -> LoadedCheckpoint:
    """Loads a checkpoint written by ``train(cfg)`` (:mod:`eroseg_at.training`) without running pickled code.

    ``torch.load(weights_only=True)`` refuses any pickled object other than tensors and plain containers,
    so a tampered file cannot execute code here.

    Raises:
        CheckpointError: Naming the file, if it is not a torch file, holds pickled objects, or lacks the
            ``state_dict`` or the stored training config (``eroseg_at_config``).
    """
    path = Path(path)
    try:
        payload: Any = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds pickled objects that weights_only loading refuses (only tensors "
            f"and plain containers are allowed); not loading it: {str(error).splitlines()[0]}"
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a readable torch checkpoint: {str(error).splitlines()[0]}"
        ) from error
    if not isinstance(payload, dict):
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds a {type(payload).__name__}, expected a Lightning checkpoint dict"
        )
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {str(path)!r} has no 'state_dict' (keys: {sorted(map(str, payload))}); "
            "expected a Lightning checkpoint written by train.py"
        )
    config = payload.get(CONFIG_KEY)
    if not isinstance(config, dict):
        raise CheckpointError(
            f"checkpoint {str(path)!r} has no training config under {CONFIG_KEY!r} "
            "(only checkpoints written by train.py of eroseg-at can be evaluated)"
        )
    version = payload.get(FORMAT_KEY, 1)
    if version not in (1, FORMAT_VERSION):
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format {version!r}, which this version of eroseg-at does not know "
            f"(it reads formats 1 and {FORMAT_VERSION}); evaluate it with the eroseg-at that wrote it"
        )
    if version == 1:
        config = upgrade_format_1(config)
    model_state = {
        key[len(MODEL_PREFIX) :]: value for key, value in state.items() if key.startswith(MODEL_PREFIX)
    }
    if not model_state:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: 'state_dict' has no '{MODEL_PREFIX}*' model weights"
        )
    record = payload.get(METHOD_KEY)
    method = (
        TrainingMethod.from_config(config) if record is None else TrainingMethod.from_record(record, path)
    )
    return LoadedCheckpoint(
        path=path,
        sha256=file_sha256(path),
        config=OmegaConf.create(config),
        model_state=model_state,
        method=method,
    )
