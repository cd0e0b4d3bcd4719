"""The item tower's output for the whole catalogue, computed once and shared.

:func:`item_table` runs a recommender's item tower over items ``1..N`` in chunks under
``torch.no_grad`` in eval mode, and keeps the embeddings with the gate weights and the per-layer
expert-output norms when the model reports them. The evaluator scores users against it
(``linkedout.evaluation.evaluate``) and the interpretation reads the gates and norms
(``linkedout.interpret.contributions``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from linkedout.model.base import Recommender
from linkedout.utils import progress

ItemFeatureFn = Callable[[Tensor], Tensor]
"""``item_idx (M,) int64 -> features (M, L, K, D)`` (e.g. :class:`linkedout.shards.items.ItemFeatures`)."""

__all__ = ["ItemFeatureFn", "ItemTable", "encode_items_batched", "eval_mode", "item_table"]


@dataclass
class ItemTable:
    """The item tower's output for the whole catalogue (row ``i`` = item index ``i``; row 0 = padding).

    Attributes:
        emb: (N+1, d) item embeddings on the model's device; row 0 is zeros.
        gate: (N+1, L) float32 gate weights pi_l on the CPU (row 0 zeros), or None (no gate).
        layer_norms: (N+1, L) float32 norms ``||h^(l)||`` of the per-layer expert outputs on the CPU
            (row 0 zeros), or None.
    """

    emb: Tensor
    gate: Tensor | None = None
    layer_norms: Tensor | None = None

    @property
    def num_items(self) -> int:
        """N, the catalogue size without padding."""
        return int(self.emb.shape[0]) - 1



def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode under ``no_grad`` and restore its training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def encode_items_batched(
    model: Recommender,
    item_idx: Tensor,
    item_features: ItemFeatureFn | None,
    batch_size: int,
    desc: str = "encode items",
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Run the item tower on ``item_idx`` (M,) in chunks of ``batch_size`` under ``no_grad`` in eval mode.

    Returns ``emb`` (M, d) on the model's device, and on the CPU ``gate`` (M, L) and the expert-output
    norms ``||h^(l)||`` (M, L), each None when the model does not report them.
    """
    if model.needs_features and item_features is None:
        raise ValueError(f"{type(model).__name__} needs backbone features: pass item_features")
    device = _model_device(model)
    embs: list[Tensor] = []
    gates: list[Tensor] = []
    norms: list[Tensor] = []
    starts = range(0, item_idx.numel(), batch_size)
    with eval_mode(model):
        for start in progress(starts, total=len(starts), desc=desc, unit="batch"):
            idx = item_idx[start : start + batch_size]  # (m,)
            feats = item_features(idx).to(device) if model.needs_features and item_features else None
            enc = model.encode_items(idx.to(device), feats)
            if enc.emb.dim() != 2 or enc.emb.shape[0] != idx.numel():
                raise ValueError(
                    f"{type(model).__name__}.encode_items returned emb of shape {tuple(enc.emb.shape)}, "
                    f"expected ({idx.numel()}, d)"
                )
            embs.append(enc.emb.float())  # (m, d)
            if enc.gate is not None:
                gates.append(enc.gate.float().cpu())  # (m, L)
            if enc.layer_outputs is not None:
                norms.append(enc.layer_outputs.float().norm(dim=-1).cpu())  # (m, L)
    n_batches = len(embs)
    emb = torch.cat(embs) if embs else torch.zeros(0, 0, device=device)
    gate = torch.cat(gates) if gates and len(gates) == n_batches else None
    norm = torch.cat(norms) if norms and len(norms) == n_batches else None
    return emb, gate, norm


def item_table(model: Recommender, item_features: ItemFeatureFn | None = None, batch_size: int = 1024) -> ItemTable:
    """Encode the whole catalogue once, in chunks of ``batch_size`` items, under ``torch.no_grad``.

    Returns an :class:`ItemTable` with ``emb`` (N+1, d) (row 0 zeros), and ``gate`` / ``layer_norms``
    (N+1, L) when the model's item tower reports them. The model's train/eval flag is restored.
    """
    if batch_size < 1:
        raise ValueError(f"item_table batch_size must be >= 1, got {batch_size}")
    n = int(model.num_items)
    if n < 1:
        raise ValueError(f"{type(model).__name__}.num_items must be >= 1, got {n}")
    idx = torch.arange(1, n + 1, dtype=torch.long)  # (N,)
    emb, gate, norms = encode_items_batched(model, idx, item_features, batch_size, desc="encode items")

    def pad(t: Tensor) -> Tensor:
        return torch.cat([torch.zeros(1, *t.shape[1:], dtype=t.dtype, device=t.device), t])  # (N+1, ...)

    return ItemTable(
        emb=pad(emb),
        gate=None if gate is None else pad(gate),
        layer_norms=None if norms is None else pad(norms),
    )
