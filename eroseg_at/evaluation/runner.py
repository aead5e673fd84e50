"""``evaluate(cfg)``: the entry point of an evaluation; models in, report files (and a W&B run) out.

``evaluate.py`` is a thin ``@hydra.main`` over this function, so tests and ``scripts/reproduce.py`` call it
with a config from ``hydra.compose``. Under several processes (torchrun, SLURM) every process runs it; rank 0's
output directory is everyone's, and only rank 0 writes the report and logs to W&B.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from eroseg_at.evaluation.cache import PassCache
from eroseg_at.evaluation.distributed import start_processes
from eroseg_at.evaluation.dry_run import dry_run
from eroseg_at.evaluation.errors import EvaluationError
from eroseg_at.evaluation.output import write_report
from eroseg_at.evaluation.pipeline import evaluate_models
from eroseg_at.evaluation.report import leading_lines, markdown_table
from eroseg_at.evaluation.results import ModelReport
from eroseg_at.evaluation.suite import DATASET_REFERENCE

LOGGER_MODES = ("offline", "online", "disabled")


@dataclass
class EvaluationResult:
    """Where an evaluation run wrote its report, and what it measured (no reports nor files on ranks > 0)."""

    output_dir: Path
    reports: list[ModelReport]
    files: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0


def settings_record(cfg: DictConfig) -> dict[str, Any]:
    """The composed config, resolved, for results.json and W&B.

    Arguments that suite members take from the dataset config (``${dataset.ignore_index}``) are kept as that
    text: the evaluated dataset supplies them (a checkpoint's dataset is not in this config).
    """

    def keep_dataset_references(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(DATASET_REFERENCE):
            return "\\" + value
        if isinstance(value, dict):
            return {key: keep_dataset_references(item) for key, item in value.items()}
        if isinstance(value, list):
            return [keep_dataset_references(item) for item in value]
        return value

    raw = OmegaConf.to_container(cfg, resolve=False)
    escaped = {
        key: value if key == "dataset" else keep_dataset_references(value) for key, value in raw.items()
    }
    return OmegaConf.to_container(OmegaConf.create(escaped), resolve=True)


def log_to_wandb(cfg: DictConfig, reports: list[ModelReport], csv_path: Path, figures: list[Path]) -> None:
    """The results table and figures as one W&B run (offline by default), finished before returning."""
    mode = str(cfg.logger.mode)
    if mode not in LOGGER_MODES:
        raise EvaluationError(f"logger.mode must be one of {LOGGER_MODES}, got {mode!r}")
    if mode == "disabled":
        return
    import wandb

    with csv_path.open(newline="") as handle:
        header, *rows = list(csv.reader(handle))
    run = wandb.init(
        mode=mode,
        dir=str(cfg.output_dir),
        project=cfg.logger.project,
        name=cfg.logger.name,
        tags=list(cfg.logger.tags),
        job_type="evaluate",
        config=settings_record(cfg),
    )
    try:
        run.log(
            {
                "results": wandb.Table(columns=header, data=rows),
                **{f"figures/{figure.stem}": wandb.Image(str(figure)) for figure in figures},
            }
        )
        for report in reports:
            for row in report.rows:
                if row.kind != "iterations":
                    run.summary[f"{report.name}/{row.key}@{row.eps_text}/miou"] = row.miou
    finally:
        wandb.finish()


def evaluate(cfg: DictConfig) -> EvaluationResult:
    """Evaluates every model ``cfg`` names (the checkpoints of ``cfg.ckpt_path``) with ``cfg.suite``.

    Args:
        cfg: A composed ``conf/evaluate.yaml``; ``cfg.output_dir`` must resolve (Hydra sets it; tests and
            scripts pass ``output_dir=...``).

    Returns:
        An :class:`EvaluationResult` naming ``results.json``, ``results.csv``, ``results.md`` and the PNGs.
    """
    started = time.perf_counter()
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    processes = start_processes(cfg, multirun=multirun)
    # Each process composed its own config; rank 0's directory (and so its cache) is the one of all.
    output_dir = Path(processes.broadcast(str(cfg.output_dir)))
    cache = PassCache(output_dir / "cache") if cfg.cache else None
    if cfg.dry_run:
        plan = dry_run(cfg, processes, cache)
        if processes.is_main:
            print(plan)
        return EvaluationResult(output_dir, [], {}, time.perf_counter() - started)
    reports = evaluate_models(cfg, processes, cache)
    if not processes.is_main:
        return EvaluationResult(output_dir, [], {}, time.perf_counter() - started)
    files = write_report(
        reports,
        output_dir,
        settings_record(cfg),
        processes.world_size,
        None if cache is None else cache.directory,
    )
    figures = [path for name, path in files.items() if path.suffix == ".png"]
    log_to_wandb(cfg, reports, files["results.csv"], figures)
    print(markdown_table(reports))
    print("\n".join(leading_lines(reports)))
    print(f"report: {files['results.md']}")
    return EvaluationResult(output_dir, reports, files, time.perf_counter() - started)
