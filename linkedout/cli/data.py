"""``linkedout data synth|validate|stats``: datasets in the MicroLens layout."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from linkedout.cli.common import Subparsers


def register(sub: Subparsers) -> None:
    data = sub.add_parser("data", help="datasets in the MicroLens layout")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    p = dsub.add_parser("synth", help="write a synthetic, content-driven dataset with real mp4 videos")
    p.add_argument("--out", required=True, type=Path, help="dataset directory to write")
    p.add_argument("--preset", default="toy", help="toy | small | microlens-100k (default toy)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the preset's)")
    p.add_argument("--videos", type=int, default=None, help="override the number of videos")
    p.add_argument("--users", type=int, default=None, help="override the number of users")
    p.add_argument("--workers", type=int, default=None, help="video-encoding processes")
    p.add_argument("--no-videos", action="store_true", help="write the tables only (scale tests)")
    p.add_argument("--force", action="store_true",
                   help="replace a dataset of the same prefix already in --out (default: refuse)")
    p.set_defaults(func=cmd_data_synth)
    p = dsub.add_parser("validate", help="check a dataset and list every problem found")
    p.add_argument("root", type=Path, help="dataset directory (MicroLens layout)")
    p.add_argument("--prefix", default=None, help="which dataset, when the directory holds several (e.g. MicroLens-50k)")
    p.add_argument("--no-videos", action="store_true", help="skip the per-video readability probe")
    p.set_defaults(func=cmd_data_validate)
    p = dsub.add_parser("stats", help="dataset statistics after MicroLens preprocessing")
    p.add_argument("root", type=Path, help="dataset directory (MicroLens layout)")
    p.add_argument("--prefix", default=None, help="which dataset, when the directory holds several")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_data_stats)


def cmd_data_synth(args: argparse.Namespace) -> int:
    from linkedout.data import synth

    overrides: dict[str, Any] = {}
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.videos is not None:
        overrides["num_videos"] = args.videos
    if args.users is not None:
        overrides["num_users"] = args.users
    if args.workers is not None:
        overrides["workers"] = args.workers
    cfg = synth.SynthConfig.preset(args.preset, **overrides)
    root = synth.generate(args.out, cfg, write_videos=not args.no_videos, overwrite=args.force)
    print(f"wrote {root}")
    return 0


def cmd_data_validate(args: argparse.Namespace) -> int:
    from linkedout.data.microlens import validate_microlens

    report = validate_microlens(args.root, check_videos=not args.no_videos, prefix=args.prefix)
    print(report.format())
    return 1 if report.errors else 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from linkedout.data.microlens import load_microlens
    from linkedout.data.stats import dataset_stats, format_stats

    stats = dataset_stats(load_microlens(args.root, check_videos=False, prefix=args.prefix))
    print(json.dumps(stats, indent=2, default=str) if args.json else format_stats(stats))
    return 0
