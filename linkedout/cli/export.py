"""``linkedout export``: a trained run -> ONNX item encoder and ranker in a versioned Triton model repository."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from linkedout.cli.common import Subparsers


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "export", help="export a trained run to ONNX and publish it into a Triton model repository",
        description="Export a trained run's item encoder and ranker (with its catalogue) to ONNX, check them "
                    "against PyTorch, and publish a new version of NAME_encoder and NAME_ranker into the "
                    "model repository (docs/serving.md §1).")
    p.add_argument("--run-dir", type=Path, default=None, help="the trained run (its best checkpoint is exported)")
    p.add_argument("--repo", required=True, type=Path, help="model repository directory (created if missing)")
    p.add_argument("--name", default=None, help="model name in the repository (default: the run's variant)")
    p.add_argument("--data", type=Path, default=None, help="dataset (default: the one in the run's config.json)")
    p.add_argument("--features", default=None, help="feature store (default: the one in the run's config.json)")
    p.add_argument("--max-k", type=int, default=100, help="most results per user the ranker returns (default 100)")
    p.add_argument("--max-batch-size", type=int, default=64, help="Triton max_batch_size (default 64)")
    p.add_argument("--instance-kind", choices=("gpu", "cpu"), default="gpu",
                   help="Triton instance group kind in config.pbtxt (default gpu)")
    p.add_argument("--cold-scale", type=float, default=None,
                   help="warmcold only: export with this calibration factor on videos without an ID row "
                        "instead of the checkpoint's (IDConfig.cold_scale; > 1 favours new videos; no retraining)")
    p.add_argument("--replace", action="store_true",
                   help="retire existing versions whose configuration differs (default: refuse)")
    p.add_argument("--upload", default=None, help="also copy the repository to this URI (s3://bucket/prefix)")
    p.add_argument("--s3-endpoint", default=None, help="S3 endpoint URL (features and --upload)")
    p.add_argument("--configs-only", action="store_true",
                   help="write only the config.pbtxt files of the embedded default (what model_repository/ holds)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from linkedout.job.defaults import default_repository_configs
    from linkedout.job.publish import export_run

    if args.configs_only:
        for rel, text in default_repository_configs(args.name or "linkedout").items():
            path = args.repo / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
        return 0
    if args.run_dir is None:
        raise ValueError("--run-dir is required (or --configs-only)")
    from linkedout.export import ExportConfig, ModelRepository, TritonConfig

    if not args.run_dir.is_dir():
        raise FileNotFoundError(f"run directory {args.run_dir} does not exist")
    run_cfg_file = args.run_dir / "config.json"
    run_cfg = json.loads(run_cfg_file.read_text()) if run_cfg_file.is_file() else {}
    data = args.data or (Path(run_cfg["data"]) if run_cfg.get("data") else None)
    if data is None:
        raise ValueError(f"{run_cfg_file} names no dataset: pass --data")
    features = args.features if args.features is not None else run_cfg.get("features")
    triton = TritonConfig(max_batch_size=args.max_batch_size, instance_kind=f"KIND_{args.instance_kind.upper()}")
    cfg = ExportConfig(name=args.name or str(run_cfg.get("variant") or args.run_dir.name), max_k=args.max_k,
                       triton=triton, replace=args.replace, cold_scale=args.cold_scale)
    result = export_run(data, features, args.run_dir, args.repo, config=cfg, s3_endpoint=args.s3_endpoint)
    print(json.dumps(result.to_dict(), indent=2))
    if args.upload:
        keys = ModelRepository(args.repo).upload(args.upload, endpoint_url=args.s3_endpoint)
        print(f"uploaded {len(keys)} files to {args.upload}")
    return 0
