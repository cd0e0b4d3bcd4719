"""``linkedout train|evaluate|report``: one model at a time, and the HTML report of several."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from linkedout.cli.common import Subparsers, add_s3_args, s3_options


def _data_args(p: argparse.ArgumentParser, *, run_dir_help: str) -> None:
    p.add_argument("--data", required=True, type=Path, help="dataset directory (MicroLens layout)")
    p.add_argument("--features", default=None,
                   help="feature store (directory or s3://bucket/prefix): needed by models that read backbone "
                        "features, and it restricts the split to the videos that have features")
    p.add_argument("--run-dir", required=True, type=Path, help=run_dir_help)


def register(sub: Subparsers) -> None:
    p = sub.add_parser("train", help="train one model on a dataset and its feature store",
                       description="Train one model. Resumes a killed run; refuses a run directory that holds a "
                                   "run of other inputs (another variant, model, training config or seed).")
    _data_args(p, run_dir_help="where checkpoints and logs go (a killed run resumes from it)")
    p.add_argument("--variant", default="linkedout",
                   help="warmcold | linkedout | sasrec_id | popularity | hybrid | multimodal | last_layer | uniform | layer:N")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 100, early-stopped)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per optimiser step (default 256)")
    p.add_argument("--loss", default=None, help="inbatch_logq (default) | bpr | full_softmax")
    p.add_argument("--seed", type=int, default=42, help="training seed (default 42)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--force", action="store_true",
                   help="clear a run directory that holds a run of other inputs and train from scratch")
    p.add_argument("--json", action="store_true", help="print the whole result (with the validation history) as JSON")
    add_s3_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a trained run on the test split")
    _data_args(p, run_dir_help="the trained run (its best checkpoint is evaluated; eval.json is written there)")
    p.add_argument("--split", choices=("valid", "test"), default="test", help="which held-out item (default test)")
    p.add_argument("--json", action="store_true", help="print eval.json instead of the summary")
    add_s3_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="write the HTML report of one or more runs")
    p.add_argument("--runs", required=True, nargs="+", type=Path, help="run directories")
    p.add_argument("--data", type=Path, default=None, help="dataset directory (for the summary section)")
    p.add_argument("--features", default=None, help="feature store (for the gate heatmaps)")
    p.add_argument("--out", required=True, type=Path, help="HTML file to write")
    add_s3_args(p)
    p.set_defaults(func=cmd_report)


def _metrics_line(metrics: dict[str, Any]) -> str:
    keys = [k for k in ("HR@10", "NDCG@10", "MRR") if k in metrics] or sorted(metrics)[:3]
    return ", ".join(f"{k} {metrics[k]:.4f}" for k in keys if isinstance(metrics.get(k), int | float))


def cmd_train(args: argparse.Namespace) -> int:
    from linkedout.job.training import train_variant

    result = train_variant(
        args.data, args.features, args.run_dir, args.variant, seed=args.seed, epochs=args.epochs,
        batch_size=args.batch_size, loss=args.loss, device=args.device, s3_endpoint=s3_options(args),
        force=args.force,
    )
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    best = result.get("best_metric")
    print(f"trained {args.variant} in {args.run_dir}: {result['epochs_completed']} epochs, {result['steps']:,} steps"
          + (" (stopped early)" if result.get("stopped_early") else ""))
    if best is not None:
        print(f"  best validation {result['best_metric_name']} {best:.4f} at epoch {result['best_epoch']}"
              + (f" ({_metrics_line(result.get('best_valid') or {})})" if result.get("best_valid") else ""))
    print(f"  best checkpoint: {result.get('best_checkpoint')}\n"
          f"  per-epoch history: {Path(args.run_dir) / 'metrics.jsonl'}; full result: {Path(args.run_dir) / 'result.json'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from linkedout.job.evaluation import evaluate_run

    result = evaluate_run(args.data, args.features, args.run_dir, which=args.split, s3_endpoint=s3_options(args))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    full = result["full"]
    print(f"{result['model']} on the {args.split} split ({full['n_users']['overall']:,} users), full catalogue:")
    for part in ("overall", "warm", "cold"):
        print(f"  {part:<8}{_metrics_line(full.get(part) or {})}  ({full['n_users'].get(part, 0):,} users)")
    print(f"  written: {Path(args.run_dir) / 'eval.json'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from linkedout.job.report import write_html_report

    out = write_html_report(args.runs, args.out, data=args.data, features=args.features, s3_endpoint=s3_options(args))
    print(f"wrote {out}")
    return 0
