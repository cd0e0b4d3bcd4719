"""The one contract every recommender follows (LinkedOut, SASRec on IDs, popularity, ablations).

RecBole-style: the trainer, the evaluator and the ONNX exporter only use the methods below, so the
LinkedOut model and the baselines are trained, scored and exported alike. Items are numbered
``1..N``; index 0 is padding and never recommended.

The flow for a batch of histories ``(B, T)``:

1. ``encode_items`` on the *distinct* items of the batch (each video goes through the item tower
   once, however many sequences hold it), with their backbone features when ``needs_features``;
2. gather the item embeddings back into ``(B, T, d)`` and run ``user_states`` (causal);
3. ``score`` user states against candidate item embeddings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class ItemEncoding:
    """What the item tower returns for ``M`` items."""

    emb: Tensor  # (M, d) item embeddings
    gate: Tensor | None = None  # (M, L) soft gate weights pi_l per video (MoE only)
    layer_outputs: Tensor | None = None  # (M, L, d) per-layer expert outputs h^(l)
    aux_loss: Tensor | None = None  # () regularisers already weighted (gate balance, knowledge preservation)


class Recommender(nn.Module, ABC):
    """Base class of every recommender.

    Subclasses set ``num_items`` (N, not counting padding) and ``needs_features`` and implement
    ``encode_items`` and ``user_states``. ``score`` defaults to a dot product.
    """

    num_items: int
    needs_features: bool = False

    @abstractmethod
    def encode_items(self, item_idx: Tensor, features: Tensor | None = None) -> ItemEncoding:
        """Item tower. ``item_idx`` (M,) int64 in ``1..N``; ``features`` (M, L, K, D) float or None."""

    @abstractmethod
    def user_states(self, history_emb: Tensor, history_mask: Tensor) -> Tensor:
        """Sequence model. ``history_emb`` (B, T, d), ``history_mask`` (B, T) bool, True = real item.

        Returns (B, T, d): the state at position t has seen items ``<= t`` only (causal), so the state
        at the last position is the user's state for recommending the next item.
        """

    def score(self, user: Tensor, items: Tensor) -> Tensor:
        """Scores (B, M) of users (B, d) against items (M, d)."""
        return user @ items.T

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by optimiser group (``video``, ``text``, ``image``, ``id``, ``head``).

        The trainer gives each group its own learning rate (paper: 1e-4 video and text/image
        encoders, 1e-5 ranking head). Default: everything in ``head``.
        """
        return {"head": [p for p in self.parameters() if p.requires_grad]}

    def last_state(self, history_emb: Tensor, history_mask: Tensor) -> Tensor:
        """The user state (B, d) for the next item: ``user_states`` at the last position.

        Histories are left-padded, so the most recent item is always at position T-1.
        """
        return self.user_states(history_emb, history_mask)[:, -1]


def gather_history(item_emb: Tensor, inverse: Tensor, histories: Tensor) -> tuple[Tensor, Tensor]:
    """Map unique-item embeddings back onto histories.

    ``item_emb`` (U, d) are the embeddings of the distinct items, ``inverse`` (B*T,) the position of
    each history slot in them (``torch.unique(..., return_inverse=True)``), ``histories`` (B, T).
    Returns ``history_emb`` (B, T, d) with padding slots zeroed, and ``mask`` (B, T) bool.
    """
    b, t = histories.shape
    mask = histories > 0  # (B, T)
    emb = item_emb[inverse].view(b, t, -1) * mask.unsqueeze(-1).to(item_emb.dtype)  # (B, T, d)
    return emb, mask


def unique_items(*index_tensors: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Distinct item indices across tensors, and each tensor's inverse map (flattened)."""
    flat = torch.cat([t.reshape(-1) for t in index_tensors])
    uniq, inverse = torch.unique(flat, return_inverse=True)
    out, start = [], 0
    for t in index_tensors:
        out.append(inverse[start : start + t.numel()])
        start += t.numel()
    return uniq, out
