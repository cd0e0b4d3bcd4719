"""Baselines under the same ``Recommender`` contract: SASRec on item IDs and popularity.

- ``SASRecID`` (kind ``sasrec_id``): the classic SASRec shape (Kang & McAuley, 2018; RecBole's
  ``SASRec``): item-ID embedding table shared by input and output, learned positions, a causal
  pre-LN transformer; score = dot product of the last state with the item embeddings. No ranking MLP.
- ``Popularity`` (kind ``popularity``): no trainable parameters. Item embedding ``[log(1 + count),
  0, ..., 0]`` and a fixed user state ``[1, 0, ..., 0]``, so every user's score of an item is its log
  training popularity.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from linkedout.model.base import ItemEncoding, Recommender
from linkedout.model.config import ModelConfig
from linkedout.model.towers import CausalSequenceModel, group_parameters

__all__ = ["Popularity", "SASRecID"]


def _check_num_items(num_items: object) -> int:
    if isinstance(num_items, bool) or not isinstance(num_items, int) or num_items < 1:
        raise ValueError(f"num_items must be an int >= 1, got {num_items!r}")
    return num_items


class SASRecID(Recommender):
    """SASRec on item IDs: ``encode_items`` is an embedding lookup (features are ignored)."""

    needs_features = False

    def __init__(self, cfg: ModelConfig, num_items: int) -> None:
        super().__init__()
        if cfg.kind != "sasrec_id":
            raise ValueError(f"SASRecID needs ModelConfig.kind 'sasrec_id', got {cfg.kind!r}")
        self.config = cfg
        self.num_items = _check_num_items(num_items)
        self.id_embedding = nn.Embedding(num_items + 1, cfg.d_model, padding_idx=0)
        nn.init.normal_(self.id_embedding.weight, std=cfg.init_std)
        with torch.no_grad():
            self.id_embedding.weight[0].zero_()
        self.sequence = CausalSequenceModel(cfg.d_model, cfg.sequence, cfg.init_std)

    def encode_items(self, item_idx: Tensor, features: Tensor | None = None) -> ItemEncoding:
        """``item_idx`` (M,) int64 -> ``ItemEncoding(emb (M, d))``; ``features`` is ignored."""
        return ItemEncoding(emb=self.id_embedding(item_idx))

    def user_states(self, history_emb: Tensor, history_mask: Tensor) -> Tensor:
        """``history_emb`` (B, T, d), ``history_mask`` (B, T) bool -> causal states (B, T, d)."""
        return self.sequence(history_emb, history_mask)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """``id`` (item embeddings) and ``head`` (the sequence model)."""
        return group_parameters(self)


class Popularity(Recommender):
    """Most-popular baseline: score(user, item) = log(1 + training count of item), for every user.

    ``item_counts`` int/float [N+1] (``SplitData.item_counts``; row 0 = padding) is kept as the
    buffer ``log_counts`` so the ``state_dict`` alone restores it. No trainable parameters:
    ``param_groups()`` is empty and the trainer has nothing to optimise.
    """

    needs_features = False
    log_counts: Tensor
    user_unit: Tensor

    def __init__(self, cfg: ModelConfig, num_items: int, item_counts: np.ndarray | Tensor) -> None:
        super().__init__()
        if cfg.kind != "popularity":
            raise ValueError(f"Popularity needs ModelConfig.kind 'popularity', got {cfg.kind!r}")
        self.config = cfg
        self.num_items = _check_num_items(num_items)
        counts = torch.as_tensor(np.asarray(item_counts), dtype=torch.float64)
        if tuple(counts.shape) != (num_items + 1,):
            raise ValueError(f"item_counts must have shape [N+1={num_items + 1}], got {tuple(counts.shape)}")
        if counts.numel() and (not bool(torch.isfinite(counts).all()) or float(counts.min()) < 0):
            raise ValueError("item_counts must be finite and >= 0")
        self.register_buffer("log_counts", torch.log1p(counts).to(torch.float32))  # (N+1,)
        unit = torch.zeros(cfg.d_model)
        unit[0] = 1.0
        self.register_buffer("user_unit", unit, persistent=False)  # (d,)

    def encode_items(self, item_idx: Tensor, features: Tensor | None = None) -> ItemEncoding:
        """``item_idx`` (M,) -> ``emb`` (M, d) = ``[log(1 + count), 0, ..., 0]``."""
        pop = self.log_counts[item_idx].unsqueeze(-1)  # (M, 1)
        return ItemEncoding(emb=pop * self.user_unit)  # (M, d)

    def user_states(self, history_emb: Tensor, history_mask: Tensor) -> Tensor:
        """The same state ``[1, 0, ..., 0]`` at every position: (B, T, d)."""
        return torch.zeros_like(history_emb) + self.user_unit.to(history_emb.dtype)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Empty: popularity has no trainable parameters."""
        return {}
