"""Argument helpers shared by the command groups of the ``linkedout`` tool."""

from __future__ import annotations

import argparse
from typing import Any

#: The object ``add_subparsers`` returns; each command module's ``register`` adds its commands to it.
Subparsers = argparse._SubParsersAction


def csv_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def share(text: str) -> float:
    """A fraction in [0, 1] (``0.01``) or a percentage (``1%``)."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a fraction such as 0.01 or a percentage such as 1%, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a share in [0, 1] (or 0%..100%), got {text!r}")
    return value


def add_backbone_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default="tiny",
                   help="'tiny' (seeded random weights, the embedded default), a local directory with a "
                        "saved LLaVA-OneVision checkpoint, or a hub id (needs network/cache)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--backbone-dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16")
    p.add_argument("--seed", type=int, default=0, help="seed of the tiny backbone's random weights")


def add_extraction_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", type=csv_ints, default=(0, 4, 8, 12, 16, 20),
                   help="hidden-state layers to keep (0 = embedding output), default 0,4,8,12,16,20")
    p.add_argument("--tokens", type=int, default=64, help="token budget K per layer (default 64)")
    p.add_argument("--text-tokens", type=int, default=8,
                   help="of the K tokens, those pooling the prompt span (default 8; the rest pool the video)")
    p.add_argument("--frames", type=int, default=8, help="frames sampled uniformly per video (default 8)")
    p.add_argument("--frame-size", type=int, default=224, help="frame side in pixels (default 224)")
    p.add_argument("--frame-sampling", choices=("exact", "keyframe"), default="exact",
                   help="exact: uniform frames (LLaVA-OneVision's sampling, default); keyframe: the nearest key "
                        "frame within half the sampling interval (about 10x less decoding of long videos: 0.13 "
                        "instead of 1.6 CPU s for 161 s at 720p; other features, recorded in the store's spec)")
    p.add_argument("--dtype", choices=("float16", "int8"), default="float16", help="storage dtype")
    p.add_argument("--prompt", action="append", dest="prompts", default=None,
                   help="a query prompt (repeat for several); default: objects, scene mood, action type")
    p.add_argument("--batch-size", type=int, default=4, help="videos per forward pass")
    p.add_argument("--shard-size", type=int, default=64, help="videos per feature shard")
    p.add_argument("--decode-workers", type=int, default=2,
                   help="processes decoding the next videos while the backbone runs (0: decode in-process)")
    p.add_argument("--decode-threads", type=int, default=0,
                   help="FFmpeg threads per decoding process (0: the cores shared among the workers)")
    p.add_argument("--no-early-exit", action="store_true",
                   help="run every decoder layer (reference; early exit stops at the deepest kept layer)")


def add_s3_args(p: argparse.ArgumentParser) -> None:
    """``--s3-endpoint`` and the S3 client's bounds (flags win over the LINKEDOUT_S3_* variables)."""
    g = p.add_argument_group("S3 (for s3://bucket/prefix stores)")
    g.add_argument("--s3-endpoint", default=None,
                   help="S3 endpoint URL (MinIO, Ceph, ...); default: boto3's (AWS_ENDPOINT_URL, ~/.aws, AWS)")
    g.add_argument("--s3-connect-timeout", type=float, default=None, metavar="S",
                   help="seconds to connect (env LINKEDOUT_S3_CONNECT_TIMEOUT; default 3)")
    g.add_argument("--s3-read-timeout", type=float, default=None, metavar="S",
                   help="seconds without a byte from the server (env LINKEDOUT_S3_READ_TIMEOUT; default 6)")
    g.add_argument("--s3-retries", type=int, default=None, metavar="N",
                   help="retries after a failed request (env LINKEDOUT_S3_RETRIES; default 2): an endpoint that "
                        "never answers fails within 30 s by default")


def s3_options(args: argparse.Namespace) -> Any:
    """The ``S3Config`` of a command's S3 flags (and the environment)."""
    from linkedout.shards.storage import S3Config

    return S3Config.from_env(args.s3_endpoint, connect_timeout=args.s3_connect_timeout,
                             read_timeout=args.s3_read_timeout, retries=args.s3_retries)


def extraction_configs(args: argparse.Namespace) -> tuple[Any, Any]:
    """``(ExtractionConfig, BackboneConfig)`` from ``linkedout extract`` arguments."""
    from linkedout.extraction.backbone import BackboneConfig
    from linkedout.extraction.extractor import DEFAULT_PROMPTS, ExtractionConfig

    ecfg = ExtractionConfig(
        layers=args.layers, prompts=tuple(args.prompts) if args.prompts else DEFAULT_PROMPTS,
        num_frames=args.frames, frame_size=args.frame_size, tokens=args.tokens, text_tokens=args.text_tokens,
        dtype=args.dtype,
        batch_size=args.batch_size, shard_size=args.shard_size, early_exit=not args.no_early_exit,
        frame_sampling=args.frame_sampling, decode_workers=args.decode_workers, decode_threads=args.decode_threads,
    )
    bcfg = BackboneConfig(source=args.backbone, device=args.device, dtype=args.backbone_dtype, seed=args.seed)
    return ecfg, bcfg
