"""The LinkedOut recommender.

``LinkedOutRecommender`` (kinds ``linkedout`` and ``hybrid``):

- item tower: ``CrossLayerFusion`` over the video's backbone features ``(L, K, D)``, plus, when enabled,
  a title encoder over ``title_tokens[item]``, a cover encoder over ``covers[item]`` and (``hybrid``) an
  item-ID embedding; the item embedding is their sum ``(M, d)``;
- user tower: ``CausalSequenceModel`` over the history's item embeddings, then ``RankingHead``;
- score: dot product of user states and item embeddings.

``WarmColdRecommender`` (kind ``warmcold``, ``linkedout.model.warmcold``) adds an ID row only for the
videos seen in training.

``linkedout.model.build.build_model`` builds any kind.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from linkedout.model.base import ItemEncoding, Recommender
from linkedout.model.config import ModelConfig
from linkedout.model.fusion import CrossLayerFusion, FusionOutput
from linkedout.model.towers import (
    CausalSequenceModel,
    ImageEncoder,
    RankingHead,
    TextEncoder,
    group_parameters,
)

__all__ = ["LinkedOutRecommender"]


class LinkedOutRecommender(Recommender):
    """ID-free (``linkedout``) or ID-augmented (``hybrid``) recommender over LinkedOut features.

    Side inputs (title token ids, covers) live in registered buffers sized from the config
    (``title_tokens`` int64 [N+1, Lt], ``covers`` uint8 [N+1, 3, S, S]) so that they travel with the
    ``state_dict``; fill them with ``set_item_side_info`` before training. Until then they are zeros
    (empty titles, grey covers).
    """

    #: The ``ModelConfig.kind`` values this class builds.
    KINDS: tuple[str, ...] = ("linkedout", "hybrid")
    needs_features = True
    title_tokens: Tensor
    covers: Tensor

    def __init__(self, cfg: ModelConfig, num_items: int) -> None:
        super().__init__()
        if cfg.kind not in self.KINDS:
            raise ValueError(f"{type(self).__name__} needs ModelConfig.kind in {list(self.KINDS)}, "
                             f"got {cfg.kind!r}")
        if isinstance(num_items, bool) or not isinstance(num_items, int) or num_items < 1:
            raise ValueError(f"num_items must be an int >= 1, got {num_items!r}")
        self.config = cfg
        self.num_items = num_items
        d, std = cfg.d_model, cfg.init_std
        self.fusion = CrossLayerFusion(cfg.fusion, init_std=std)
        self.text_encoder: TextEncoder | None = None
        self.image_encoder: ImageEncoder | None = None
        self.id_embedding: nn.Embedding | None = None
        if cfg.text.enabled:
            self.text_encoder = TextEncoder(cfg.text, d, std)
            self.register_buffer("title_tokens", torch.zeros(num_items + 1, cfg.text.max_tokens, dtype=torch.int64))
        if cfg.image.enabled:
            self.image_encoder = ImageEncoder(cfg.image, d, std)
            s = cfg.image.size
            self.register_buffer("covers", torch.zeros(num_items + 1, 3, s, s, dtype=torch.uint8))
        if cfg.kind == "hybrid":
            self.id_embedding = nn.Embedding(num_items + 1, d, padding_idx=0)
            nn.init.normal_(self.id_embedding.weight, std=std)
            with torch.no_grad():
                self.id_embedding.weight[0].zero_()
        self.sequence = CausalSequenceModel(d, cfg.sequence, std)
        self.ranking_head: RankingHead | None = (
            RankingHead(d, cfg.head_hidden, cfg.sequence.dropout, std) if cfg.head_hidden > 0 else None)

    @torch.no_grad()
    def set_item_side_info(self, title_tokens: Tensor | np.ndarray | None = None,
                           covers: Tensor | np.ndarray | None = None) -> None:
        """Set the item side inputs (row ``i`` = item ``i``; row 0 = padding).

        ``title_tokens``: int [N+1, Lt'] with ``Lt' <= TextConfig.max_tokens`` (right-padded with 0;
        see ``towers.hash_title_tokens``). ``covers``: [N+1, 3, S, S] uint8 (0..255) or float in
        [0, 1] (stored as uint8). Raises ``ValueError`` naming the input on a shape, dtype or range
        mismatch, or when the matching encoder is disabled in the config.
        """
        n = self.num_items + 1
        if title_tokens is not None:
            if self.text_encoder is None:
                raise ValueError("title_tokens given but ModelConfig.text.enabled is False")
            t = torch.as_tensor(title_tokens)
            lt = self.config.text.max_tokens
            if t.dim() != 2 or t.shape[0] != n or t.shape[1] > lt:
                raise ValueError(f"title_tokens must be [N+1={n}, <= {lt}], got {tuple(t.shape)}")
            if t.dtype.is_floating_point or t.dtype == torch.bool:
                raise ValueError(f"title_tokens must hold integer token ids, got dtype {t.dtype}")
            if t.numel() and int(t.min()) < 0:
                raise ValueError("title_tokens must be >= 0 (0 = padding)")
            self.title_tokens.zero_()
            self.title_tokens[:, : t.shape[1]] = t.to(torch.int64)
        if covers is not None:
            if self.image_encoder is None:
                raise ValueError("covers given but ModelConfig.image.enabled is False")
            c = torch.as_tensor(covers)
            s = self.config.image.size
            if tuple(c.shape) != (n, 3, s, s):
                raise ValueError(f"covers must be [N+1={n}, 3, {s}, {s}], got {tuple(c.shape)}")
            if c.dtype.is_floating_point:
                if c.numel() and (float(c.min()) < 0.0 or float(c.max()) > 1.0):
                    raise ValueError("float covers must lie in [0, 1]")
                c = (c * 255.0).round()
            elif c.dtype != torch.uint8:
                raise ValueError(f"covers must be uint8 or float in [0, 1], got dtype {c.dtype}")
            self.covers.copy_(c.to(torch.uint8))

    def encode_content(self, item_idx: Tensor, features: Tensor | None) -> tuple[Tensor, FusionOutput]:
        """The ID-free part of the item tower: fused layers (+ title, + cover).

        ``item_idx`` (M,) int64 in ``0..N`` (0 = padding or a video outside the trained catalogue:
        its title and cover rows are the empty ones), ``features`` (M, L, K, D). Returns the content
        embedding (M, d) and the fusion's output (gate, layer outputs, regularisers).
        """
        if features is None:
            raise ValueError(f"{type(self).__name__}.encode_items needs features (M, L, K, D), got None")
        if item_idx.dim() != 1 or features.shape[0] != item_idx.shape[0]:
            raise ValueError(f"item_idx (M,) and features (M, L, K, D) disagree: {tuple(item_idx.shape)} "
                             f"vs {tuple(features.shape)}")
        video = self.fusion(features, valid=item_idx > 0)
        emb = video.emb  # (M, d)
        if self.text_encoder is not None:
            emb = emb + self.text_encoder(self.title_tokens[item_idx])  # (M, d)
        if self.image_encoder is not None:
            emb = emb + self.image_encoder(self.covers[item_idx])  # (M, d)
        return emb, video

    def encode_items(self, item_idx: Tensor, features: Tensor | None = None) -> ItemEncoding:
        """Item tower: ``item_idx`` (M,) int64 in ``0..N`` (0 = padding) and ``features`` (M, L, K, D).

        Returns ``ItemEncoding``: ``emb`` (M, d); ``gate`` (M, L) and ``layer_outputs`` (M, L, d) of the
        video fusion; ``aux_loss`` () in training mode when a fusion regulariser is active, else None.
        """
        emb, video = self.encode_content(item_idx, features)  # (M, d)
        if self.id_embedding is not None:
            emb = emb + self.id_embedding(item_idx)  # (M, d)
        return ItemEncoding(emb=emb, gate=video.gate, layer_outputs=video.layer_outputs,
                            aux_loss=video.aux_loss)

    def user_states(self, history_emb: Tensor, history_mask: Tensor) -> Tensor:
        """``history_emb`` (B, T, d), ``history_mask`` (B, T) bool -> causal user states (B, T, d)."""
        h = self.sequence(history_emb, history_mask)  # (B, T, d)
        return self.ranking_head(h) if self.ranking_head is not None else h

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """``video`` (fusion), ``text``, ``image``, ``id``, ``head`` (sequence + ranking head); the
        groups with no parameters in this configuration are left out."""
        return group_parameters(self)
