"""A training run's logs: ``metrics.jsonl`` rows (one JSON object a line) and TensorBoard scalars.

NaN and infinities are written as ``null`` (JSON has none); NumPy scalars as numbers. A resumed run
first drops the rows that its killed predecessor logged after the checkpoint it resumes from.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from linkedout.utils import atomic_write_text, get_logger

__all__ = ["append_metrics", "finite", "json_default", "open_tensorboard", "truncate_metrics"]

log = get_logger(__name__)


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one line of the ``metrics.jsonl`` at ``path``."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(finite(record), allow_nan=False, default=json_default) + "\n")


def truncate_metrics(path: Path, step: int, epoch: int) -> None:
    """Keep the rows of ``path`` up to ``step`` (epoch rows up to ``epoch``); drop those logged after.

    A run killed after logging an epoch (or a step) but before its checkpoint logs it again when
    it resumes; without this the file would hold that row twice. A fresh run starts an empty file.
    """
    if not path.is_file():
        return
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1  # a torn last line of a killed run
            continue
        keep = isinstance(rec, dict) and int(rec.get("step", 0)) <= step and (
            rec.get("kind") != "epoch" or int(rec.get("epoch", 0)) <= epoch)
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        atomic_write_text(path, "".join(line + "\n" for line in kept))
        log.info("%s: dropped %d rows logged after the checkpoint that is resumed (step %d)", path, dropped, step)


def open_tensorboard(directory: Path, purge_step: int | None) -> Any:
    """A TensorBoard ``SummaryWriter`` on ``directory``, dropping the events after ``purge_step`` (resume)."""
    from torch.utils.tensorboard import SummaryWriter  # loads tensorboard: only for the run's rank 0

    return SummaryWriter(str(directory), purge_step=purge_step)


def finite(o: Any) -> Any:
    """``o`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite(v) for v in o]
    return o


def json_default(o: Any) -> Any:
    """``json.dumps``'s ``default``: NumPy scalars as Python numbers; anything else is refused."""
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
