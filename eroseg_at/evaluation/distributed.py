"""The processes of an evaluation: one per device, on one node or several.

Lightning Fabric reads the cluster environment (torchrun's variables, SLURM's tasks as submitit starts them,
LSF, MPI), gives each process its device and starts the process group; on one node without a launcher it
starts the other processes itself. The evaluation needs little of it: rank 0 tells the others what is left
to compute and learns what they computed. Those objects travel over a gloo group on the CPU, whatever the
devices, so NCCL's device rules never apply to them. The model is never wrapped (no DDP): each process
attacks its own batches with its own copy, and no gradient is synchronised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from lightning.fabric import Fabric
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from omegaconf import DictConfig

from eroseg_at.evaluation.errors import EvaluationError

T = TypeVar("T")


class DistributedError(RuntimeError):
    """A failure on one process, raised on every process so that none waits forever for it."""


@dataclass
class Processes:
    """This process's place among the evaluation's processes, and the collectives the evaluation uses.

    Attributes:
        rank: 0 for the process that writes the report.
        world_size: Processes in all.
        device: Where this process evaluates.
        group: The gloo process group of the objects; None for a single process.
    """

    rank: int
    world_size: int
    device: torch.device
    group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value``, on every process."""
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, value: T) -> list[T] | None:
        """Every process's ``value`` in rank order, on rank 0 (None on the others)."""
        if self.world_size == 1:
            return [value]
        values = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, values, dst=0, group=self.group)
        return values

    def on_main(self, compute: Callable[[], T]) -> T:
        """``compute()`` on rank 0, its result on every process; its error raised on every process."""
        if not self.is_main:
            ok, value = self.broadcast(None)
            if ok:
                return value
            raise DistributedError(f"rank 0 failed: {value}")
        try:
            value = compute()
        except Exception as error:
            self.broadcast((False, f"{type(error).__name__}: {error}"))
            raise
        self.broadcast((True, value))
        return value


def single_process(device: torch.device) -> Processes:
    return Processes(rank=0, world_size=1, device=device)


def accelerator_and_devices(device: str, processes_per_node: int) -> tuple[str, int | list[int]]:
    """Fabric's ``accelerator`` and ``devices`` for the ``device`` setting (auto, cpu, cuda, cuda:N)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EvaluationError(f"device={device!r} but CUDA is not available; use device=cpu or auto")
    if device == "cpu" or device == "cuda":
        return device, processes_per_node
    if device.startswith("cuda:") and device[5:].isdigit():
        if processes_per_node != 1:
            raise EvaluationError(
                f"device={device!r} names one GPU, but distributed.devices={processes_per_node}: use device=cuda "
                "with several processes (each takes the GPU of its local rank)"
            )
        return "cuda", [int(device[5:])]
    raise EvaluationError(f"device must be auto, cpu, cuda or cuda:<index>, got {device!r}")


def started_elsewhere() -> int:
    """Processes that torchrun or SLURM started for this job (1 if none did)."""
    for environment in (TorchElasticEnvironment, SLURMEnvironment):
        if environment.detect():
            return environment().world_size()
    return 1


def start_processes(cfg: DictConfig, multirun: bool = False) -> Processes:
    """This process's place among ``distributed.devices`` × ``distributed.num_nodes`` processes.

    Args:
        cfg: The evaluation settings (``device``, ``distributed.devices``, ``distributed.num_nodes``).
        multirun: Whether Hydra runs this job as part of a sweep (``-m``).

    Raises:
        ValueError: Naming the keys, when the settings contradict how the processes were started.
    """
    devices, nodes = int(cfg.distributed.devices), int(cfg.distributed.num_nodes)
    if devices < 1 or nodes < 1:
        raise EvaluationError(
            f"distributed.devices={devices} and distributed.num_nodes={nodes} must be positive integers"
        )
    started = started_elsewhere()
    if devices * nodes == 1:
        if started > 1:
            raise EvaluationError(
                f"this process is one of {started} that torchrun or SLURM started, but distributed.devices x "
                "distributed.num_nodes = 1: set distributed.devices=<processes per node> and "
                "distributed.num_nodes=<nodes>, or every process would evaluate everything"
            )
        accelerator, device_ids = accelerator_and_devices(str(cfg.device), 1)
        fabric = Fabric(accelerator=accelerator, devices=device_ids, strategy="auto")
        return single_process(fabric.device)
    accelerator, device_ids = accelerator_and_devices(str(cfg.device), devices)
    try:
        fabric = Fabric(accelerator=accelerator, devices=device_ids, num_nodes=nodes, strategy="ddp")
    except (ValueError, RuntimeError) as error:
        raise EvaluationError(
            f"distributed.devices={devices}, distributed.num_nodes={nodes}, device={cfg.device}: {error}"
        ) from error
    if multirun and not fabric.strategy.cluster_environment.creates_processes_externally:
        # Lightning's own launcher re-runs the command line per process, and in a sweep that re-runs the sweep.
        raise EvaluationError(
            f"distributed.devices={devices} in a Hydra multirun needs processes started by a launcher: use "
            "hydra/launcher=slurm_evaluate (SLURM) or torchrun, not the basic launcher"
        )
    fabric.launch()
    group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    return Processes(fabric.global_rank, fabric.world_size, fabric.device, group)
