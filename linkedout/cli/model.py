"""``linkedout model summary``: trainable parameters per part."""

from __future__ import annotations

import argparse
from pathlib import Path

from linkedout.cli.common import Subparsers


def register(sub: Subparsers) -> None:
    model = sub.add_parser("model", help="model inspection")
    msub = model.add_subparsers(dest="model_command", required=True, metavar="SUBCOMMAND")
    p = msub.add_parser("summary", help="trainable parameters per part")
    p.add_argument("--config", type=Path, default=None, help="a ModelConfig JSON (default: the paper's)")
    p.add_argument("--hidden", type=int, default=3584, help="backbone hidden size D at the paper config")
    p.set_defaults(func=cmd_model_summary)


def cmd_model_summary(args: argparse.Namespace) -> int:
    from linkedout import pipeline

    print(pipeline.model_summary(args.config, args.hidden))
    return 0
