"""The ``linkedout`` command-line tool.

Subcommands map one to one onto library functions, so that every step of the main job can be run,
resumed and inspected on its own::

    linkedout data synth     write a synthetic dataset in the MicroLens layout (real mp4 videos)
    linkedout data validate  check a MicroLens-layout dataset and list what is wrong
    linkedout data stats     users, items, interactions, sequence lengths, popularity, cold start
    linkedout extract        frozen video-LLM features of every video -> feature shards
    linkedout features info  bytes per video and totals (for a store, or for a given setting)
    linkedout model summary  trainable parameters per part
    linkedout train          train one model (LinkedOut, a baseline or an ablation)
    linkedout evaluate       full-catalogue and sampled metrics of a trained run
    linkedout report         one HTML page: metrics, curves, gate heatmaps, layer shares
    linkedout run            the main job end to end on the embedded default

Heavy imports (torch, transformers, av) happen inside the handlers so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from linkedout.utils import configure_logging


def _csv_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def _add_backbone_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default="tiny",
                   help="'tiny' (seeded random weights, the embedded default), a local directory with a "
                        "saved LLaVA-OneVision checkpoint, or a hub id (needs network/cache)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--backbone-dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16")
    p.add_argument("--seed", type=int, default=0, help="seed of the tiny backbone's random weights")


def _add_extraction_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", type=_csv_ints, default=(0, 4, 8, 12, 16, 20),
                   help="hidden-state layers to keep (0 = embedding output), default 0,4,8,12,16,20")
    p.add_argument("--tokens", type=int, default=64, help="token budget K per layer (default 64)")
    p.add_argument("--frames", type=int, default=8, help="frames sampled uniformly per video (default 8)")
    p.add_argument("--frame-size", type=int, default=224, help="frame side in pixels (default 224)")
    p.add_argument("--dtype", choices=("float16", "int8"), default="float16", help="storage dtype")
    p.add_argument("--prompt", action="append", dest="prompts", default=None,
                   help="a query prompt (repeat for several); default: objects, scene mood, action type")
    p.add_argument("--batch-size", type=int, default=4, help="videos per forward pass")
    p.add_argument("--shard-size", type=int, default=64, help="videos per feature shard")
    p.add_argument("--no-early-exit", action="store_true",
                   help="run every decoder layer (reference; early exit stops at the deepest kept layer)")
    p.add_argument("--s3-endpoint", default=None, help="S3 endpoint URL for s3:// stores (e.g. MinIO)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="linkedout", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # data ---------------------------------------------------------------------------------------
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
    p.set_defaults(func=cmd_data_synth)
    p = dsub.add_parser("validate", help="check a dataset and list every problem found")
    p.add_argument("root", type=Path)
    p.add_argument("--no-videos", action="store_true", help="skip the per-video readability probe")
    p.set_defaults(func=cmd_data_validate)
    p = dsub.add_parser("stats", help="dataset statistics after MicroLens preprocessing")
    p.add_argument("root", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_data_stats)

    # extract ------------------------------------------------------------------------------------
    p = sub.add_parser("extract", help="extract frozen video-LLM features into feature shards (resumable)")
    p.add_argument("--data", required=True, type=Path, help="dataset directory (MicroLens layout)")
    p.add_argument("--out", required=True, help="feature store: a directory or s3://bucket/prefix")
    _add_backbone_args(p)
    _add_extraction_args(p)
    p.set_defaults(func=cmd_extract)

    # features -----------------------------------------------------------------------------------
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

    # model --------------------------------------------------------------------------------------
    model = sub.add_parser("model", help="model inspection")
    msub = model.add_subparsers(dest="model_command", required=True, metavar="SUBCOMMAND")
    p = msub.add_parser("summary", help="trainable parameters per part")
    p.add_argument("--config", type=Path, default=None, help="a ModelConfig JSON (default: the paper's)")
    p.add_argument("--hidden", type=int, default=3584, help="backbone hidden size D at the paper config")
    p.set_defaults(func=cmd_model_summary)

    # train / evaluate / report -----------------------------------------------------------------
    p = sub.add_parser("train", help="train one model on a dataset and its feature store")
    p.add_argument("--data", required=True, type=Path, help="dataset directory")
    p.add_argument("--features", default=None, help="feature store (needed by LinkedOut models)")
    p.add_argument("--run-dir", required=True, type=Path, help="where checkpoints and logs go (resumes)")
    p.add_argument("--variant", default="linkedout",
                   help="linkedout | sasrec_id | popularity | hybrid | last_layer | uniform | layer:N")
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

    # run ----------------------------------------------------------------------------------------
    p = sub.add_parser("run", help="the main job end to end: data -> features -> train -> evaluate -> report")
    p.add_argument("--workdir", type=Path, default=Path("runs/demo"), help="where everything is written")
    p.add_argument("--preset", default="small", help="synthetic dataset preset (default small)")
    p.add_argument("--data", type=Path, default=None, help="use this dataset instead of generating one")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per model")
    p.add_argument("--variants", default=None,
                   help="comma-separated models to train (default: linkedout,sasrec_id,popularity,last_layer,uniform)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--stop-after", choices=("data", "extract", "train"), default=None,
                   help="stop after this stage")
    p.set_defaults(func=cmd_run)
    return parser


# ------------------------------------------------------------------------------------------------
# handlers


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
    root = synth.generate(args.out, cfg, write_videos=not args.no_videos)
    print(f"wrote {root}")
    return 0


def cmd_data_validate(args: argparse.Namespace) -> int:
    from linkedout.data.microlens import validate_microlens

    report = validate_microlens(args.root, check_videos=not args.no_videos)
    print(report.format())
    return 1 if report.errors else 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from linkedout.data.microlens import load_microlens
    from linkedout.data.stats import dataset_stats, format_stats

    stats = dataset_stats(load_microlens(args.root, check_videos=False))
    print(json.dumps(stats, indent=2, default=str) if args.json else format_stats(stats))
    return 0


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


def cmd_model_summary(args: argparse.Namespace) -> int:
    from linkedout import pipeline

    print(pipeline.model_summary(args.config, args.hidden))
    return 0


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


def cmd_run(args: argparse.Namespace) -> int:
    from linkedout import pipeline

    variants = tuple(v.strip() for v in args.variants.split(",")) if args.variants else None
    pipeline.run_all(args.workdir, preset=args.preset, data=args.data, epochs=args.epochs,
                     variants=variants, seed=args.seed, stop_after=args.stop_after)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args))
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as e:
        # Bad input of any kind: a clear one-line error naming the problem, no traceback. Of the
        # RuntimeErrors only LinkedOut's own (FeatureStoreError, CheckpointError) are bad input; any
        # other (CUDA out of memory, a shape bug) keeps its traceback.
        own = type(e).__module__.startswith("linkedout.")
        if args.verbose or (isinstance(e, RuntimeError) and not own):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"linkedout {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
