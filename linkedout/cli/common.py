"""Argument helpers shared by the command groups of the ``linkedout`` tool."""

from __future__ import annotations

import argparse

#: The object ``add_subparsers`` returns; each command module's ``register`` adds its commands to it.
Subparsers = argparse._SubParsersAction


def csv_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


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
