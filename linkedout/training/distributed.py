"""Data-parallel training under ``torchrun`` (DDP): process group, model wrapping, rank-0 duties.

``torchrun --nproc-per-node N -m linkedout.training.distributed --split DIR --run-dir DIR ...``
starts N processes; each reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` /
``MASTER_PORT`` from the environment (``init_distributed``), joins a process group (``gloo`` on
CPU, ``nccl`` on CUDA) and runs the same ``Trainer``. The trainer then

- wraps the loss module in ``DistributedDataParallel`` (gradients are averaged over the processes
  by all-reduce during ``backward``; parameters start equal because DDP broadcasts rank 0's);
- gives rank ``r`` the ``r``-th slice of every global batch (``batches.ShardedOrder``), so one
  optimiser step consumes ``TrainConfig.batch_size`` sequences in all;
- lets only rank 0 evaluate, log, write TensorBoard and checkpoints; the early-stopping decision
  is broadcast from rank 0 so every process stops at the same epoch.

Equivalence with one process: the DDP gradient is the mean of the per-rank gradients of the
per-rank mean losses. It equals the single-process gradient of the full global batch when every
rank's loss is a mean over the same number of terms that do not depend on the other ranks' rows —
true of ``full_softmax`` (and ``bpr``) with equal shards, *not* of ``inbatch_logq``, whose
negatives are the items of the local shard only (a smaller candidate set per rank). That is the
usual behaviour of in-batch losses under DDP and is documented rather than "fixed" with a
cross-rank gather.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch import nn

from linkedout.utils import get_logger

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
        from datetime import timedelta

        torch_dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                                      timeout=timedelta(seconds=timeout_s))
    log.info("joined process group: rank %d/%d (local %d), backend %s", rank, world, local_rank, backend)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, backend=backend)


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
    if ctx.is_distributed:
        torch_dist.barrier()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m linkedout.training.distributed",
        description="Train a LinkedOut recommender (one process, or one of N under torchrun).",
    )
    p.add_argument("--split", required=True, type=Path, help="directory written by SplitData.save")
    p.add_argument("--run-dir", required=True, type=Path, help="output: metrics.jsonl, tb/, checkpoints/")
    p.add_argument("--features", default=None,
                   help="feature store (path or s3://bucket/prefix); required by feature-reading models")
    p.add_argument("--s3-endpoint", default=None, help="S3 endpoint URL for --features s3://...")
    p.add_argument("--model-config", type=Path, default=None, help="JSON of ModelConfig.to_dict()")
    p.add_argument("--train-config", type=Path, default=None, help="JSON of TrainConfig fields")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                   help="override a TrainConfig field, e.g. --set epochs=3 --set loss='\"bpr\"'")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``torchrun ... -m linkedout.training.distributed``; returns an exit code."""
    from linkedout.data.split import SplitData
    from linkedout.model import ModelConfig, build_model
    from linkedout.training.config import TrainConfig
    from linkedout.training.trainer import Trainer
    from linkedout.utils import configure_logging

    args = build_parser().parse_args(argv)
    ctx = init_distributed()
    configure_logging("INFO" if ctx.is_main else "WARNING")
    try:
        train_fields = json.loads(args.train_config.read_text()) if args.train_config else {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--set expects FIELD=JSON, got {item!r}")
            try:
                train_fields[key] = json.loads(value)
            except json.JSONDecodeError:
                train_fields[key] = value  # a bare string
        cfg = TrainConfig.from_dict(train_fields)
        model_cfg = (ModelConfig.from_dict(json.loads(args.model_config.read_text()))
                     if args.model_config else ModelConfig())
        split = SplitData.load(args.split)
        item_features = None
        if model_cfg.needs_features:
            if args.features is None:
                raise ValueError(f"model kind {model_cfg.kind!r} reads backbone features: pass --features")
            from linkedout.shards.items import ItemFeatures
            from linkedout.shards.reader import FeatureReader
            from linkedout.shards.storage import open_storage

            item_features = ItemFeatures(FeatureReader(open_storage(args.features, args.s3_endpoint)),
                                         split.item_ids)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DDP broadcasts anyway)
        model = build_model(model_cfg, split.num_items, split.item_counts)
        result = Trainer(model, split, item_features, cfg, args.run_dir, dist=ctx).fit()
        if ctx.is_main:
            print(json.dumps(result.to_dict(), indent=2))
        return 0
    finally:
        cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
