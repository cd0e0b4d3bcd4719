"""``linkedout extract`` and ``linkedout features info``: the feature store."""

from __future__ import annotations

import argparse
from pathlib import Path

from linkedout.cli.common import Subparsers, add_backbone_args, add_extraction_args


def register(sub: Subparsers) -> None:
    p = sub.add_parser("extract", help="extract frozen video-LLM features into feature shards (resumable)")
    p.add_argument("--data", required=True, type=Path, help="dataset directory (MicroLens layout)")
    p.add_argument("--out", required=True, help="feature store: a directory or s3://bucket/prefix")
    add_backbone_args(p)
    add_extraction_args(p)
    p.set_defaults(func=cmd_extract)

    feats = sub.add_parser("features", help="feature store inspection")
    fsub = feats.add_subparsers(dest="features_command", required=True, metavar="SUBCOMMAND")
    p = fsub.add_parser("info", help="bytes per video and totals, for a store or a given setting")
    p.add_argument("--store", default=None, help="a feature store to inspect (directory or s3://...)")
    p.add_argument("--s3-endpoint", default=None)
    p.add_argument("--layers", type=int, default=6, help="number of kept layers (default 6)")
    p.add_argument("--tokens", type=int, default=64, help="tokens per layer (default 64)")
    p.add_argument("--hidden", type=int, default=4096, help="hidden size D (paper table: 4096)")
    p.add_argument("--dtype", choices=("float16", "int8"), default="float16")
    p.add_argument("--videos", type=int, default=19738, help="catalogue size (MicroLens-100K: 19,738)")
    p.set_defaults(func=cmd_features_info)


def cmd_extract(args: argparse.Namespace) -> int:
    from linkedout import pipeline

    summary = pipeline.extract(args.data, args.out, pipeline.extraction_configs(args),
                               s3_endpoint=args.s3_endpoint)
    print(summary.to_json())
    return 0


def cmd_features_info(args: argparse.Namespace) -> int:
    from linkedout import pipeline

    print(pipeline.features_info(args))
    return 0
