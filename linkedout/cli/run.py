"""``linkedout run``: the main job end to end on the embedded default."""

from __future__ import annotations

import argparse
from pathlib import Path

from linkedout.cli.common import Subparsers


def register(sub: Subparsers) -> None:
    p = sub.add_parser("run", help="the main job end to end: data -> features -> train -> evaluate -> report")
    p.add_argument("--workdir", type=Path, default=Path("runs/demo"), help="where everything is written")
    p.add_argument("--preset", default="small", help="synthetic dataset preset (default small)")
    p.add_argument("--data", type=Path, default=None, help="use this dataset instead of generating one")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per model")
    p.add_argument("--variants", default=None,
                   help="comma-separated models to train (default: warmcold,linkedout,sasrec_id,popularity,last_layer,uniform)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--stop-after", choices=("data", "extract", "train"), default=None,
                   help="stop after this stage")
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from linkedout import pipeline

    variants = tuple(v.strip() for v in args.variants.split(",")) if args.variants else None
    pipeline.run_all(args.workdir, preset=args.preset, data=args.data, epochs=args.epochs,
                     variants=variants, seed=args.seed, stop_after=args.stop_after)
    return 0
