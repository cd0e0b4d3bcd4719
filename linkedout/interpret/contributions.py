"""Which backbone layers a video's LinkedOut embedding is made of.

The Cross-layer Knowledge-Fusion MoE builds a video as ``sum_l pi_l h^(l)`` (gate weights ``pi``,
expert outputs ``h^(l)``). The gate weight alone understates or overstates a layer when the experts'
outputs differ in size, so the paper (arXiv 2512.16891) also shows the *actual contribution*
``pi_l * ||h^(l)||``. Per video ``v`` and layer ``l``:

- ``gate[v, l]    = pi_l / sum_j pi_j`` (a softmax gate already sums to 1);
- ``contrib[v, l] = pi_l ||h^(l)|| / sum_j pi_j ||h^(j)||`` (a share: the row sums to 1);
- ``diff[v, l]    = contrib[v, l] - gate[v, l]`` (the row sums to 0: positive where a layer weighs
  more than its gate weight suggests).

``share_pct[l]`` is the catalogue-level contribution of layer ``l`` in percent: the mean over videos
of ``contrib[:, l]`` times 100 (sums to 100). The paper reports L8 40.9 %, L20 20.5 %, L0 16.4 % and
L4 + L16 below 7 % on MicroLens. A video whose weighted norms are all zero (nothing to share) gets
its gate weights as contribution shares (difference 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from linkedout.evaluation.encode import ItemFeatureFn, ItemTable, encode_items_batched, item_table
from linkedout.model.base import Recommender

__all__ = ["Contributions", "contributions_from_arrays", "default_layer_names", "layer_contributions"]


@dataclass
class Contributions:
    """Per-video gate weights and contribution shares over ``L`` layers for ``M`` videos.

    Attributes:
        item_idx: (M,) int64 item indices (``1..N``) of the rows.
        gate: (M, L) float64 gate weights, normalised per row to sum to 1.
        contrib: (M, L) float64 contribution shares ``pi_l ||h^(l)||``, normalised per row to sum to 1.
        diff: (M, L) float64 ``contrib - gate`` (rows sum to 0).
        layer_names: L names, e.g. ``["L0", "L4", ...]``.
        share_pct: (L,) float64 mean contribution share per layer in percent (sums to 100).
        gate_pct: (L,) float64 mean gate weight per layer in percent (sums to 100).
    """

    item_idx: np.ndarray
    gate: np.ndarray
    contrib: np.ndarray
    diff: np.ndarray
    layer_names: list[str]
    share_pct: np.ndarray
    gate_pct: np.ndarray

    @property
    def num_layers(self) -> int:
        return len(self.layer_names)

    def rows(self, positions: Sequence[int] | np.ndarray) -> Contributions:
        """A subset of the videos (row positions); the catalogue-level percentages are kept."""
        pos = np.asarray(positions, dtype=np.int64)
        return Contributions(
            item_idx=self.item_idx[pos],
            gate=self.gate[pos],
            contrib=self.contrib[pos],
            diff=self.diff[pos],
            layer_names=list(self.layer_names),
            share_pct=self.share_pct.copy(),
            gate_pct=self.gate_pct.copy(),
        )

    def to_dict(self) -> dict[str, Any]:
        """Catalogue-level summary (JSON-serialisable): per-layer contribution and gate percentages."""
        return {
            "layer_names": list(self.layer_names),
            "share_pct": [float(x) for x in self.share_pct],
            "gate_pct": [float(x) for x in self.gate_pct],
            "num_videos": int(self.item_idx.size),
        }


def default_layer_names(num_layers: int, item_features: object | None = None) -> list[str]:
    """``["L0", "L4", ...]`` from the feature shards' spec when ``item_features`` exposes one
    (``item_features.reader.spec.layers``), else ``["layer0", "layer1", ...]``."""
    spec = getattr(getattr(item_features, "reader", None), "spec", None)
    layers = getattr(spec, "layers", None)
    if layers is not None and len(layers) == num_layers:
        return [f"L{int(layer)}" for layer in layers]
    return [f"layer{i}" for i in range(num_layers)]


def contributions_from_arrays(
    gate: np.ndarray | Tensor,
    layer_norms: np.ndarray | Tensor,
    *,
    item_idx: np.ndarray | Tensor | None = None,
    layer_names: Sequence[str] | None = None,
) -> Contributions:
    """Contributions from raw gate weights (M, L) and expert-output norms ``||h^(l)||`` (M, L)."""
    g = _as_np(gate, "gate")
    h = _as_np(layer_norms, "layer_norms")
    if g.ndim != 2 or g.shape != h.shape:
        raise ValueError(f"gate and layer_norms must both be (M, L), got {g.shape} and {h.shape}")
    if (g < 0).any() or (h < 0).any():
        raise ValueError("gate weights and layer norms must be non-negative")
    m, n_layers = g.shape
    names = list(layer_names) if layer_names is not None else default_layer_names(n_layers)
    if len(names) != n_layers:
        raise ValueError(f"layer_names has {len(names)} names for {n_layers} layers")
    idx = np.arange(1, m + 1, dtype=np.int64) if item_idx is None else _as_np(item_idx, "item_idx").astype(np.int64)
    if idx.shape != (m,):
        raise ValueError(f"item_idx must be ({m},), got {idx.shape}")
    gsum = g.sum(axis=1, keepdims=True)  # (M, 1)
    if m and (gsum <= 0).any():
        bad = int(idx[np.flatnonzero(gsum[:, 0] <= 0)[0]])
        raise ValueError(f"gate weights of item {bad} sum to zero")
    gate_share = g / gsum  # (M, L)
    weighted = g * h  # (M, L)
    wsum = weighted.sum(axis=1, keepdims=True)  # (M, 1)
    contrib = np.where(wsum > 0, weighted / np.where(wsum > 0, wsum, 1.0), gate_share)  # (M, L)
    diff = contrib - gate_share
    share = contrib.mean(axis=0) * 100 if m else np.full(n_layers, np.nan)
    gate_pct = gate_share.mean(axis=0) * 100 if m else np.full(n_layers, np.nan)
    return Contributions(idx, gate_share, contrib, diff, names, share, gate_pct)


def layer_contributions(
    model: Recommender,
    item_features: ItemFeatureFn | None,
    item_idx: Sequence[int] | np.ndarray | Tensor | None = None,
    *,
    layer_names: Sequence[str] | None = None,
    batch_size: int = 1024,
    table: ItemTable | None = None,
) -> Contributions:
    """Gate weights and layer contributions of videos ``item_idx`` (all of ``1..N`` when None).

    Uses ``table`` (an :func:`~linkedout.evaluation.encode.item_table`) when given, else runs the
    item tower on the requested items (all of them through ``item_table``).

    Raises:
        ValueError: when the model's item tower reports no gate or no per-layer outputs (an ID-only
            baseline, for instance), or when an index is outside ``1..N``.
    """
    n = int(model.num_items)
    if item_idx is None:
        idx = torch.arange(1, n + 1, dtype=torch.long)
    else:
        idx = torch.as_tensor(np.asarray(item_idx), dtype=torch.long).reshape(-1)
    if idx.numel() and (int(idx.min()) < 1 or int(idx.max()) > n):
        raise ValueError(f"item_idx must lie in 1..{n}")
    if table is None and item_idx is None:
        table = item_table(model, item_features, batch_size)
    if table is not None:
        gate, norms = table.gate, table.layer_norms
        if gate is not None and norms is not None:
            gate, norms = gate[idx], norms[idx]
    else:
        _, gate, norms = encode_items_batched(model, idx, item_features, batch_size, desc="encode items")
    if gate is None or norms is None:
        raise ValueError(
            f"{type(model).__name__} reports no gate weights and per-layer outputs; "
            "layer contributions exist only for the cross-layer fusion model"
        )
    names = list(layer_names) if layer_names is not None else default_layer_names(gate.shape[1], item_features)
    return contributions_from_arrays(gate, norms, item_idx=idx, layer_names=names)


def _as_np(x: np.ndarray | Tensor, name: str) -> np.ndarray:
    arr = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds non-finite values")
    return arr
