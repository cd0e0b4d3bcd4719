"""``linkedout catalog add``: new videos recommendable at once, with no retraining and no restart."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from linkedout.cli.common import Subparsers


def register(sub: Subparsers) -> None:
    cat = sub.add_parser("catalog", help="the served catalogue: add videos live")
    csub = cat.add_subparsers(dest="catalog_command", required=True, metavar="SUBCOMMAND")
    p = csub.add_parser(
        "add", help="extract, encode and append these videos to the served catalogue, push them to Feast",
        description="Read the videos with the frozen backbone (the feature store's own extraction config), "
                    "encode them with the published ONNX item encoder, append them to the catalogue of the "
                    "served MODEL_ranker version in place (its retrieval index: O(new videos) bytes, no new "
                    "model version) and push them to Feast. A running transformer serves them from its next "
                    "catalogue poll: no retraining, no restart, no reload.")
    p.add_argument("videos", nargs="+", type=Path, help="video files (named by video id: 1234.mp4, or give --ids)")
    p.add_argument("--workdir", type=Path, default=Path("runs/demo"),
                   help="the main job's work directory (features/, model_repository/, feast/)")
    p.add_argument("--model", default="linkedout", help="the served model NAME (default linkedout)")
    p.add_argument("--ids", default=None, help="comma-separated video ids, one per file (default: the file names)")
    p.add_argument("--features", default=None, help="the feature store of the catalogue (default W/features)")
    p.add_argument("--no-check", action="store_true",
                   help="skip re-extracting one stored video to check the backbone reproduces the store")
    p.set_defaults(func=cmd_catalog_add)


def cmd_catalog_add(args: argparse.Namespace) -> int:
    from linkedout.job.catalog import add_videos
    from linkedout.serving.local import StackError, read_stack

    ids = None
    if args.ids:
        try:
            ids = [int(x) for x in args.ids.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"--ids: expected comma-separated integers, got {args.ids!r}") from None
    w = args.workdir
    out = add_videos(args.videos, repository=w / "model_repository", name=args.model,
                             features=args.features or str(w / "features"), added_store=w / "features-added",
                             ids=ids, feast_dir=w / "feast", check=not args.no_check)
    try:
        stack = read_stack(w)
    except StackError:
        out["served"] = "no local stack runs for this work directory: `linkedout serve` will serve it"
    else:
        out["served"] = (f"the running stack's transformer (gRPC {stack['transformer']['grpc']}) serves them from "
                         "its next catalogue poll (--catalog_poll_s)")
    print(json.dumps(out, indent=2))
    return 0
