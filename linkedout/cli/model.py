"""``linkedout model summary``: trainable parameters per part."""

from __future__ import annotations

import argparse
import json
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
    print(model_summary(args.config, args.hidden))
    return 0


def model_summary(config: Path | None, hidden: int) -> str:
    import numpy as np
    import torch

    from linkedout.model import ModelConfig, build_model
    from linkedout.model.summary import format_summary, paper_comparison, parameter_summary

    if config is None:
        return paper_comparison() if hidden in (3584, 4096) else _summary_at(hidden)
    cfg = ModelConfig.from_dict(json.loads(Path(config).read_text()))
    with torch.device("meta"):
        model = build_model(cfg, 1000, np.ones(1001, dtype=np.int64))
    return format_summary(parameter_summary(model), title=f"trainable parameters ({config}, 1,000 items)")


def _summary_at(hidden: int) -> str:
    from linkedout.model.summary import format_summary, paper_parameter_summary

    return format_summary(paper_parameter_summary(hidden), title=f"paper config at D={hidden}")
