"""Data-parallel primitives (DDP): where a process sits in the job, the process group, model
wrapping, and the collectives the trainer uses (mean, broadcast, barrier).

A single process is the default context: every helper is then the identity or a no-op, so the
``Trainer`` runs the same code alone and under ``torchrun`` (:mod:`.distributed`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as torch_dist
from torch import nn

from linkedout.utils import get_logger

__all__ = [
    "DistContext",
    "all_reduce_mean",
    "barrier",
    "broadcast_flag",
    "cleanup",
    "init_distributed",
    "training_device",
    "wrap_model",
]

log = get_logger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job. The default is a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # "gloo" | "nccl" when a process group is up, else None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that evaluates, logs and writes checkpoints."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Join the process group described by the ``torchrun`` environment variables.

    Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) nothing is initialised and a single-process
    context is returned. The backend is ``nccl`` when training on CUDA, ``gloo`` otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={world} but {var} is not set; launch with torchrun")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    use_cuda = torch.cuda.is_available() and device != "cpu"
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                                      timeout=timedelta(seconds=timeout_s))
    log.info("joined process group: rank %d/%d (local %d), backend %s", rank, world, local_rank, backend)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, backend=backend)


def training_device(name: str, ctx: DistContext) -> torch.device:
    """The device this process trains on: ``TrainConfig.device`` (``auto``: CUDA when available), a bare
    ``cuda`` being this process's local GPU. ``ValueError`` when CUDA is asked for and not available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", ctx.local_rank if ctx.is_distributed else 0)
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"TrainConfig.device is {name!r} but CUDA is not available")
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", ctx.local_rank if ctx.is_distributed else 0)
    return dev


def cleanup() -> None:
    """Leave the process group (no-op when none is up)."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def wrap_model(module: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(module)`` when distributed, else ``module``.

    ``find_unused_parameters=True``: ablations (single-layer fusion, disabled regularisers) may leave
    trainable parameters out of a step's graph, which plain DDP would wait for forever.
    """
    if not ctx.is_distributed:
        return module
    device_ids = [device.index] if device.type == "cuda" and device.index is not None else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)


def all_reduce_mean(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean of ``value`` over the processes (identity in a single process)."""
    if not ctx.is_distributed:
        return value
    out = value.detach().clone()
    torch_dist.all_reduce(out, op=torch_dist.ReduceOp.SUM)
    return out / ctx.world_size


def broadcast_flag(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every process."""
    if not ctx.is_distributed:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device)
    torch_dist.broadcast(t, src=0)
    return bool(t.item())


def barrier(ctx: DistContext) -> None:
    """Wait for every process (no-op in a single process)."""
    if ctx.is_distributed:
        torch_dist.barrier()
