"""``linkedout extract`` and ``linkedout features info|verify``: the feature store."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from linkedout.cli.common import (
    Subparsers,
    add_backbone_args,
    add_extraction_args,
    add_s3_args,
    extraction_configs,
    s3_options,
    share,
)


def register(sub: Subparsers) -> None:
    p = sub.add_parser("extract", help="extract frozen video-LLM features into feature shards (resumable)",
                       description="Extract the features of every video of a dataset into a feature store. "
                                   "Resumable: finished shards are kept; failed videos whose file changed are "
                                   "tried again. The failure summary goes to failures.json in the store; the "
                                   "exit code is 1 when more videos failed than --max-failed-share.")
    p.add_argument("--data", required=True, type=Path, help="dataset directory (MicroLens layout)")
    p.add_argument("--out", required=True, help="feature store: a directory or s3://bucket/prefix")
    add_backbone_args(p)
    add_extraction_args(p)
    p.add_argument("--retry-failed", action="store_true", help="try every failed video again (not only changed files)")
    p.add_argument("--max-failed-share", type=share, default=0.01, metavar="SHARE",
                   help="exit 1 when more than this share of the videos failed (default 0.01 = 1%%)")
    p.add_argument("--force", action="store_true",
                   help="when the store holds another extraction config's or another dataset's features, delete "
                        "them and extract again (default: refuse)")
    p.add_argument("--json", action="store_true", help="print the run's summary as JSON")
    add_s3_args(p)
    p.set_defaults(func=cmd_extract)

    feats = sub.add_parser("features", help="feature store inspection")
    fsub = feats.add_subparsers(dest="features_command", required=True, metavar="SUBCOMMAND")
    p = fsub.add_parser("info", help="bytes per video and totals, for a store or a given setting")
    p.add_argument("--store", default=None, help="a feature store to inspect (directory or s3://...)")
    p.add_argument("--layers", type=int, default=6, help="number of kept layers (default 6)")
    p.add_argument("--tokens", type=int, default=64, help="tokens per layer (default 64)")
    p.add_argument("--hidden", type=int, default=4096, help="hidden size D (paper table: 4096)")
    p.add_argument("--dtype", choices=("float16", "int8"), default="float16", help="storage dtype of the setting")
    p.add_argument("--videos", type=int, default=19738, help="catalogue size (MicroLens-100K: 19,738)")
    add_s3_args(p)
    p.set_defaults(func=cmd_features_info)

    p = fsub.add_parser("verify", help="re-hash every shard file and check that every video id is in one place",
                        description="Read the whole store (on S3: download it) and check every shard file's size "
                                    "and sha256 against its manifest, that every id is in exactly one place, that "
                                    "index.json agrees with the manifests, and (with --data) that every catalogue "
                                    "video is there. Exit 0 when the store is sound, 1 otherwise.")
    p.add_argument("store", help="the feature store (directory or s3://bucket/prefix)")
    p.add_argument("--data", type=Path, default=None, help="also check that this dataset's catalogue is covered")
    p.add_argument("--repair", action="store_true",
                   help="delete the manifests of damaged shards, so that `linkedout extract` redoes them")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_s3_args(p)
    p.set_defaults(func=cmd_features_verify)


def cmd_extract(args: argparse.Namespace) -> int:
    s3 = s3_options(args)
    if str(args.out).startswith("s3://"):
        from linkedout.shards.storage import open_storage

        # Reach the store first, before torch and the backbone are even imported (seconds on a
        # loaded machine): an endpoint that never answers fails within the S3 bounds, naming it.
        open_storage(args.out, s3).exists("spec.json")
    from linkedout.extraction.driver import failures_document
    from linkedout.job.extraction import TooManyFailures, check_failures, extract
    from linkedout.shards.verify import format_failures

    summary = extract(args.data, args.out, extraction_configs(args), s3_endpoint=s3,
                      retry_failed=args.retry_failed, force=args.force)
    if args.json:
        print(summary.to_json())
    else:
        state = "complete" if summary.complete else "stopped early"
        print(f"extraction {state}: {summary.uri}\n"
              f"  {summary.videos:,} videos: {summary.encoded:,} encoded by this run "
              f"({summary.videos_per_second:.2f} videos/s), {summary.shards_skipped:,} of {summary.shards:,} "
              f"shards already complete, {len(summary.retried):,} failed videos retried, "
              f"{len(summary.changed):,} changed videos re-extracted")
        doc = failures_document(summary)
        if summary.failed:
            print("  " + format_failures(doc).replace("\n", "\n  "))
        print(f"  failure summary: {summary.uri}/failures.json")
    try:
        check_failures(summary, args.max_failed_share)
    except TooManyFailures as e:
        print(f"linkedout extract: {e}", flush=True)
        return 1
    return 0


def cmd_features_info(args: argparse.Namespace) -> int:
    from linkedout.shards import FeatureReader, FeatureSpec
    from linkedout.shards.info import format_info, info_from_store, storage_summary

    if args.store:
        reader = FeatureReader(args.store, endpoint_url=s3_options(args))
        print(format_info(info_from_store(reader)))
        return 0
    spec = FeatureSpec(backbone="(setting)", layers=tuple(range(0, 4 * args.layers, 4)), prompts=("-",),
                       num_frames=8, frame_size=224, tokens=args.tokens, hidden=args.hidden, dtype=args.dtype)
    print(format_info(storage_summary(spec, args.videos)))
    return 0


def cmd_features_verify(args: argparse.Namespace) -> int:
    from linkedout.shards.verify import verify_store

    catalog = None
    if args.data is not None:
        from linkedout.data.microlens import load_microlens

        catalog = load_microlens(args.data, check_videos=False).item_ids
    report = verify_store(args.store, endpoint_url=s3_options(args), catalog=catalog, repair=args.repair)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0 if report.ok else 1
