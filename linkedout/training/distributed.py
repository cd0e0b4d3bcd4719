"""The ``torchrun`` entry point of data-parallel training (DDP): one ``Trainer`` per process.

``torchrun --nproc-per-node N -m linkedout.training.distributed --split DIR --run-dir DIR ...``
starts N processes; each reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` /
``MASTER_PORT`` from the environment (:func:`linkedout.training.ddp.init_distributed`), joins a
process group (``gloo`` on CPU, ``nccl`` on CUDA) and runs the same ``Trainer``. The trainer then

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
from collections.abc import Sequence
from pathlib import Path

import torch

from linkedout.data.split import SplitData
from linkedout.model import ModelConfig, build_model
from linkedout.shards.items import ItemFeatures
from linkedout.shards.reader import FeatureReader
from linkedout.shards.storage import open_storage
from linkedout.training.config import TrainConfig
from linkedout.training.ddp import cleanup, init_distributed
from linkedout.training.trainer import Trainer
from linkedout.utils import configure_logging


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m linkedout.training.distributed``."""
    p = argparse.ArgumentParser(
        prog="python -m linkedout.training.distributed",
        description="Train a LinkedOut recommender (one process, or one of N under torchrun).",
    )
    p.add_argument("--split", required=True, type=Path, help="directory written by SplitData.save")
    p.add_argument("--run-dir", required=True, type=Path, help="output: metrics.jsonl, tb/, checkpoints/")
    p.add_argument("--features", default=None,
                   help="shard store (path or s3://bucket/prefix); required by feature-reading models")
    p.add_argument("--s3-endpoint", default=None, help="S3 endpoint URL for --features s3://...")
    p.add_argument("--model-config", type=Path, default=None, help="JSON of ModelConfig.to_dict()")
    p.add_argument("--train-config", type=Path, default=None, help="JSON of TrainConfig fields")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                   help="override a TrainConfig field, e.g. --set epochs=3 --set loss='\"bpr\"'")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``torchrun ... -m linkedout.training.distributed``; returns an exit code."""
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
