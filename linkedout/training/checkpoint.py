"""Training checkpoints: everything needed to resume exactly, and to rebuild the model alone.

A checkpoint is one ``torch.save`` file written atomically (temporary file + ``os.replace``, via
``linkedout.utils.atomic_write_bytes``), so a run killed while saving leaves the previous
checkpoint intact. It holds only tensors and plain Python data, so it loads with
``torch.load(weights_only=True)`` (no pickled code is executed):

==================  =============================================================================
``format_version``  ``CHECKPOINT_VERSION``
``model_class``     class name of the recommender (informative)
``model_config``    ``model.config.to_dict()`` (``ModelConfig``), or None for a model without one
``model_state``     ``model.state_dict()`` (unwrapped from DDP)
``num_items``       N, catalogue size the model was built for
``item_counts``     (N+1,) int64 training popularity (rebuilds popularity-aware models), or None
``train_config``    ``TrainConfig.to_dict()``
``optimizer``       optimiser ``state_dict`` (or None)
``scheduler``       LR scheduler ``state_dict`` (or None)
``scaler``          ``torch.amp.GradScaler`` ``state_dict`` (or None)
``state``           trainer progress: epoch, batch within epoch, global step, best metric, ...
``rng``             python / numpy / torch (and CUDA) RNG states at save time
==================  =============================================================================
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from linkedout.fingerprint import diff_inputs
from linkedout.model.base import Recommender
from linkedout.model.build import build_model
from linkedout.model.config import ModelConfig
from linkedout.utils import atomic_write_bytes, get_logger

log = get_logger(__name__)

CHECKPOINT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or not a LinkedOut training checkpoint."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a ``DistributedDataParallel`` (or the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and every CUDA device) RNG states, as weights-only-safe data."""
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np_state = (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    np.random.set_state(np_state)  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning("checkpoint holds %d CUDA RNG states for %d devices; CUDA RNG not restored",
                        len(cuda), torch.cuda.device_count())


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    scaler: torch.amp.GradScaler | None,
    state: dict[str, Any],
    *,
    train_config: dict[str, Any] | None = None,
    item_counts: torch.Tensor | np.ndarray | None = None,
    rank_rng: list[dict[str, Any]] | None = None,
) -> Path:
    """Write a checkpoint atomically to ``path``; returns the path.

    ``rank_rng``: under DDP, every rank's ``rng_state()`` (rank order), so each rank resumes its own
    random streams; ``rng`` always holds the saving process's.
    """
    module = unwrap(model)
    config = getattr(module, "config", None)
    counts = None
    if item_counts is not None:
        counts = torch.as_tensor(np.asarray(item_counts), dtype=torch.int64).clone()
    payload = {
        "format_version": CHECKPOINT_VERSION,
        "model_class": type(module).__name__,
        "model_config": config.to_dict() if config is not None and hasattr(config, "to_dict") else None,
        "model_state": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "num_items": int(getattr(module, "num_items", 0)),
        "item_counts": counts,
        "train_config": train_config,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "state": dict(state),
        "rng": rng_state(),
        "rank_rng": rank_rng,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` (weights-only: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format_version") != CHECKPOINT_VERSION:
        version = ckpt.get("format_version") if isinstance(ckpt, dict) else None
        raise CheckpointError(f"{path} is not a LinkedOut checkpoint of version {CHECKPOINT_VERSION} "
                              f"(format_version={version!r})")
    return ckpt


def load_model_from_checkpoint(
    path: str | os.PathLike[str],
    num_items: int | None = None,
    item_counts: torch.Tensor | np.ndarray | None = None,
    map_location: str | torch.device = "cpu",
) -> Recommender:
    """Rebuild the recommender of a checkpoint with ``linkedout.model.build_model`` and load its weights.

    ``num_items`` / ``item_counts`` default to the ones saved in the checkpoint; when given, the
    catalogue size must match the saved one.
    """
    ckpt = load_checkpoint(path, map_location)
    if ckpt.get("model_config") is None:
        raise CheckpointError(f"checkpoint {path} has no model_config; it cannot rebuild its model")
    saved_n = int(ckpt["num_items"])
    if num_items is not None and saved_n and num_items != saved_n:
        raise CheckpointError(f"checkpoint {path} is for {saved_n} items, asked for num_items={num_items}")
    n = num_items if num_items is not None else saved_n
    counts = item_counts if item_counts is not None else ckpt.get("item_counts")
    if counts is not None:
        counts = np.asarray(counts.cpu().numpy() if isinstance(counts, torch.Tensor) else counts, dtype=np.int64)
    try:
        return build_model(ModelConfig.from_dict(ckpt["model_config"]), n, counts, state_dict=ckpt["model_state"])
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} does not rebuild its model: {e}") from e


def check_same_model(ckpt: dict[str, Any], model: nn.Module, num_items: int, path: Path, run_dir: Path) -> None:
    """:class:`CheckpointError` naming what differs when the checkpoint ``ckpt`` (read from ``path`` in
    ``run_dir``) holds another model than ``model`` (class, catalogue size, ``ModelConfig``)."""
    module = unwrap(model)
    config = getattr(module, "config", None)
    mine = config.to_dict() if config is not None and hasattr(config, "to_dict") else None
    saved = ckpt.get("model_config")
    problems = []
    if ckpt.get("model_class") != type(module).__name__:
        problems.append(f"model {ckpt.get('model_class')} -> {type(module).__name__}")
    if int(ckpt.get("num_items") or 0) not in (0, num_items):
        problems.append(f"num_items {ckpt.get('num_items')} -> {num_items}")
    if mine is not None and isinstance(saved, dict) and saved != mine:
        problems += diff_inputs(saved, mine)
    if problems:
        raise CheckpointError(
            f"{path} holds a checkpoint of another model than the one asked for "
            f"({'; '.join(problems[:6])}): it cannot be resumed. Use another run directory, or delete "
            f"{run_dir} to train from scratch")
