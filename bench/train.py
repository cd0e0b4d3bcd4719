"""Benchmark training throughput, peak memory and evaluation time.

Training: the real ``Trainer.train_step`` (batch building with one item-tower pass per distinct
item, forward, backward, clip, AdamW) on synthetic data — random backbone features ``(L, K, D)``
for the LinkedOut model, item IDs for SASRec — at ``--items`` items, batch ``--batch-size``
sequences of ``--history`` items. Reports the median sequences/s over ``--steps`` timed steps after
``--warmup`` untimed ones, and the peak memory (process peak RSS on CPU via ``resource``;
``torch.cuda.max_memory_allocated`` on GPU).

Evaluation: ``linkedout.evaluation.evaluate`` (full catalogue with history masking, plus the
sampled N=100 protocol) at MicroLens-100K scale — 100,000 users x 19,738 items — with a SASRec
model on synthetic histories. ``--quick`` evaluates 10,000 users and also reports the time
extrapolated linearly to 100,000 (the per-user work is identical).

    python bench/train.py            # full (about 3-5 minutes on a 2-core CPU)
    python bench/train.py --quick    # about a minute
    python bench/train.py --device cuda

Writes ``bench/results/train.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from linkedout.data.split import EvalSet, SplitData, leave_one_out
from linkedout.evaluation import evaluate
from linkedout.model import FusionConfig, ModelConfig, SequenceConfig, build_model
from linkedout.shards.items import ItemFeatures
from linkedout.training import TrainConfig, Trainer, iterate_batches

ML100K_USERS, ML100K_ITEMS = 100_000, 19_738


class RandomReader:
    """Feature reader protocol over seeded random features (float16 in the store, like real shards)."""

    def __init__(self, ids: list[str], shape: tuple[int, int, int], seed: int = 0):
        rng = np.random.default_rng(seed)
        self.index = {v: i for i, v in enumerate(ids)}
        self.table = rng.standard_normal((len(ids), *shape), dtype=np.float32).astype(np.float16)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self.index

    def get_many(self, ids: Any) -> np.ndarray:
        return self.table[[self.index[i] for i in ids]].astype(np.float32)


def synthetic_split(num_users: int, num_items: int, length: int, history: int, seed: int = 0) -> SplitData:
    """Users with ``length`` interactions each, items drawn with a Zipf-like popularity."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, num_items + 1) ** 0.8
    items = rng.choice(num_items, size=(num_users, length), p=p / p.sum()) + 1
    df = pd.DataFrame({"user": np.repeat([f"u{u}" for u in range(num_users)], length),
                       "item": items.ravel().astype(str), "timestamp": np.tile(np.arange(length) * 1000, num_users)})
    return leave_one_out(df, max_history=history, catalog=[str(i) for i in range(1, num_items + 1)])


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def bench_training(name: str, model_cfg: ModelConfig, split: SplitData, features: ItemFeatures | None,
                   args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build_model(model_cfg, split.num_items, split.item_counts)
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, max_history=args.history, device=str(device),
                      loss=args.loss, log_every=10**6)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(model, split, features, cfg, run_dir)
        n_steps = args.warmup + args.steps
        times: list[float] = []
        losses: list[float] = []
        epoch = 0
        while len(times) < n_steps:
            for batch in iterate_batches(trainer.builder, trainer.order, epoch):
                if len(times) >= n_steps:
                    break
                t0 = time.perf_counter()
                loss = trainer.train_step(batch)
                losses.append(float(loss))  # synchronises the device
                times.append(time.perf_counter() - t0)
            epoch += 1
    timed = times[args.warmup:]
    step_s = statistics.median(timed)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out = {
        "model": name, "kind": model_cfg.kind, "trainable_params": params, "loss": args.loss,
        "batch_size": args.batch_size, "history": args.history, "items": split.num_items,
        "timed_steps": len(timed), "median_step_s": step_s, "seq_per_s": args.batch_size / step_s,
        "min_step_s": min(timed), "max_step_s": max(timed), "peak_memory_mb": peak_memory_mb(device),
        "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS",
        "first_loss": losses[0], "last_loss": losses[-1],
    }
    print(f"[train] {name:10s} {params / 1e6:6.2f} M params  {out['seq_per_s']:9.1f} seq/s  "
          f"(median step {step_s * 1e3:.1f} ms over {len(timed)})  peak {out['peak_memory_mb']:.0f} MB")
    return out


def bench_eval(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    users = ML100K_USERS if not args.quick else ML100K_USERS // 10
    n, t = ML100K_ITEMS, args.history
    rng = np.random.default_rng(1)
    lengths = rng.integers(3, t + 1, size=users)
    hist = rng.integers(1, n + 1, size=(users, t))
    hist[np.arange(t)[None, :] < (t - lengths)[:, None]] = 0  # left padding
    eval_set = EvalSet(user_ids=[f"u{i}" for i in range(users)], histories=hist.astype(np.int64),
                       targets=rng.integers(1, n + 1, size=users).astype(np.int64), cold=np.zeros(users, dtype=bool))
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="sasrec_id", d_model=args.d_model), n).to(device)
    runs = []
    for _ in range(args.eval_repeats):
        t0 = time.perf_counter()
        result = evaluate(model, eval_set, batch_size=args.eval_batch_size, sampled_negatives=100)
        runs.append(time.perf_counter() - t0)
    elapsed = statistics.median(runs)
    out = {"users": users, "items": n, "d_model": args.d_model, "history": t, "seconds": elapsed,
           "repeats": len(runs), "all_seconds": runs,
           "users_per_s": users / elapsed, "seconds_at_100k_users": elapsed * ML100K_USERS / users,
           "extrapolated": users != ML100K_USERS, "protocols": ["full", "sampled(100)"],
           "ndcg@10_random_model": result.summary()["NDCG@10"]}
    note = f"; ~{out['seconds_at_100k_users']:.0f} s at 100k users" if out["extrapolated"] else ""
    print(f"[eval]  {users} users x {n} items: {elapsed:.1f} s, median of {len(runs)} "
          f"({out['users_per_s']:.0f} users/s{note})")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="fewer steps, 10k evaluation users")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--users", type=int, default=4000, help="synthetic training users (13 interactions each)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--history", type=int, default=10)
    p.add_argument("--layers", type=int, default=6, help="L, kept backbone layers")
    p.add_argument("--tokens", type=int, default=64, help="K, tokens per layer")
    p.add_argument("--hidden", type=int, default=64, help="D, backbone hidden size")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--loss", default="inbatch_logq")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--eval-batch-size", type=int, default=1024)
    p.add_argument("--eval-repeats", type=int, default=3, help="timed evaluations (the median is reported)")
    # The experts of the main job's embedded default (linkedout.job.variants.model_config_for).
    p.add_argument("--expert-queries", type=int, default=4, help="learned queries per expert")
    p.add_argument("--expert-hidden", type=int, default=128, help="per-expert residual MLP width (0: none)")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train.json")
    args = p.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.steps = args.steps if args.steps is not None else (4 if args.quick else 12)
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    split = synthetic_split(args.users, args.items, 13, args.history)
    shape = (args.layers, args.tokens, args.hidden)
    features = ItemFeatures(RandomReader(split.item_ids[1:], shape), split.item_ids)
    seq = SequenceConfig(max_history=args.history, num_layers=2, num_heads=2, ffn_dim=4 * args.d_model, dropout=0.1)
    linkedout_cfg = ModelConfig(kind="linkedout", d_model=args.d_model, sequence=seq, head_hidden=4 * args.d_model,
                                fusion=FusionConfig(num_layers=args.layers, tokens=args.tokens, in_dim=args.hidden,
                                                    d_model=args.d_model, expert_queries=args.expert_queries,
                                                    expert_hidden=args.expert_hidden))
    sasrec_cfg = ModelConfig(kind="sasrec_id", d_model=args.d_model, sequence=seq)
    results: dict[str, Any] = {
        "bench": "train", "quick": args.quick, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "python": sys.version.split()[0],
        "features": {"L": args.layers, "K": args.tokens, "D": args.hidden, "dtype_in_store": "float16"},
        "train": [
            bench_training("sasrec_id", sasrec_cfg, split, None, args, device),
            bench_training("linkedout", linkedout_cfg, split, features, args, device),
        ],
    }
    if not args.skip_eval:
        results["eval"] = bench_eval(args, device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
