"""The checkpoint format that training writes and evaluation reads: where the config goes, safe loading.

It sits below both (training and evaluation are siblings, and neither imports the other). A checkpoint is
Lightning's dict plus the run's resolved config under :data:`CONFIG_KEY` and the format version under
:data:`FORMAT_KEY`, all plain types, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import glob
import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from eroseg_at.errors import UserError

CONFIG_KEY = "eroseg_at_config"
FORMAT_KEY = "eroseg_at_format"
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


@dataclass
class LoadedCheckpoint:
    """What evaluation needs from one checkpoint file.

    Attributes:
        path: The file.
        sha256: Hex SHA-256 of the file's bytes, so a report names exactly the weights it measured.
        config: The training run's resolved config (``conf/train.yaml`` as composed for that run).
        model_state: The model's weights (the ``model.`` prefix removed).
    """

    path: Path
    sha256: str
    config: DictConfig
    model_state: dict[str, torch.Tensor]


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
    return LoadedCheckpoint(
        path=path, sha256=file_sha256(path), config=OmegaConf.create(config), model_state=model_state
    )
