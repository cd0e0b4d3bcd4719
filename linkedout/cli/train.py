"""``linkedout train|evaluate|report``: one model at a time, and the HTML report of several."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from linkedout.cli.common import Subparsers


def register(sub: Subparsers) -> None:
    p = sub.add_parser("train", help="train one model on a dataset and its feature store")
    p.add_argument("--data", required=True, type=Path, help="dataset directory")
    p.add_argument("--features", default=None, help="feature store (needed by LinkedOut models)")
    p.add_argument("--run-dir", required=True, type=Path, help="where checkpoints and logs go (resumes)")
    p.add_argument("--variant", default="linkedout",
                   help="warmcold | linkedout | sasrec_id | popularity | hybrid | last_layer | uniform | layer:N")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--loss", default=None, help="inbatch_logq | bpr | full_softmax")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="auto")
    p.add_argument("--s3-endpoint", default=None)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a trained run on the test split")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--features", default=None)
    p.add_argument("--run-dir", required=True, type=Path)
    p.add_argument("--split", choices=("valid", "test"), default="test")
    p.add_argument("--s3-endpoint", default=None)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="write the HTML report of one or more runs")
    p.add_argument("--runs", required=True, nargs="+", type=Path, help="run directories")
    p.add_argument("--data", type=Path, default=None, help="dataset directory (for the summary section)")
    p.add_argument("--features", default=None, help="feature store (for the gate heatmaps)")
    p.add_argument("--out", required=True, type=Path, help="HTML file to write")
    p.set_defaults(func=cmd_report)


def cmd_train(args: argparse.Namespace) -> int:
    from linkedout import pipeline

    result = pipeline.train_variant(
        args.data, args.features, args.run_dir, args.variant, seed=args.seed, epochs=args.epochs,
        batch_size=args.batch_size, loss=args.loss, device=args.device, s3_endpoint=args.s3_endpoint,
    )
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from linkedout import pipeline

    result = pipeline.evaluate_run(args.data, args.features, args.run_dir, which=args.split,
                                   s3_endpoint=args.s3_endpoint)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from linkedout import pipeline

    out = pipeline.report(args.runs, args.out, data=args.data, features=args.features)
    print(f"wrote {out}")
    return 0
