"""``linkedout run``: the main job end to end on the embedded default (the ``linkedout`` pipeline via kfp.local)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from linkedout.cli.common import Subparsers, share


def register(sub: Subparsers) -> None:
    p = sub.add_parser("run", help="the main job end to end: the linkedout pipeline through kfp.local",
                       description="The main job end to end: the `linkedout` Kubeflow pipeline (dataset -> features "
                                   "-> Feast -> training -> evaluation -> report -> model repository -> local "
                                   "serving -> a gRPC query) run on this machine by kfp.local, one subprocess per "
                                   "task. Resumable, and reused stage by stage only when its inputs are the same: "
                                   "a work directory made with another dataset, seed, epochs or config is refused "
                                   "with what differs (or, with --force, redone).")
    p.add_argument("--workdir", type=Path, default=Path("runs/demo"), help="where everything is written")
    p.add_argument("--preset", default="small", help="synthetic dataset preset (default small)")
    p.add_argument("--data", type=Path, default=None, help="use this dataset instead of generating one")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per model (default 100, early-stopped)")
    p.add_argument("--variants", default=None,
                   help="comma-separated models to train, the first one served "
                        "(default: warmcold,linkedout,sasrec_id,popularity,last_layer,uniform)")
    p.add_argument("--seed", type=int, default=42, help="training seed (default 42)")
    p.add_argument("--stop-after", choices=("extract", "report"), default=None,
                   help="extract: run the extract pipeline only; report: stop after the report (no export, Feast "
                        "or serving)")
    p.add_argument("--force", action="store_true",
                   help="redo, instead of refusing, the stages whose recorded inputs differ from the ones asked "
                        "(their old outputs are deleted: the generated dataset, the feature store, trained runs)")
    p.add_argument("--retry-failed", action="store_true", help="try every video whose extraction failed again")
    p.add_argument("--max-failed-share", type=share, default=0.01, metavar="SHARE",
                   help="stop after extraction when more than this share of the videos failed (default 1%%)")
    p.add_argument("--extract-workers", type=int, default=2, metavar="N",
                   help="extraction tasks (shard groups) of the pipeline's ParallelFor (default 2; kfp.local runs "
                        "two at a time)")
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from linkedout.job.step import StepFailed
    from pipelines.local import run_main_job

    variants = tuple(v.strip() for v in args.variants.split(",")) if args.variants else None
    if args.extract_workers < 1:
        raise ValueError(f"--extract-workers must be >= 1, got {args.extract_workers}")
    try:
        run_main_job(args.workdir, preset=args.preset, data=args.data, epochs=args.epochs, variants=variants,
                     seed=args.seed, stop_after=args.stop_after, force=args.force, retry_failed=args.retry_failed,
                     max_failed_share=args.max_failed_share, extract_workers=args.extract_workers)
    except StepFailed as e:
        if e.error_type != "TooManyFailures":
            raise
        # not bad input: the data had more unreadable videos than allowed; exit 1 as `linkedout extract` does
        print(f"linkedout run: {e}", file=sys.stderr)
        return 1
    return 0
