"""Building blocks of the item and user towers: title and cover encoders, the causal sequence model,
the ranking head, and the parameter-part naming shared by the recommenders and the summary.

Every module here is static-shape tensor code (no data-dependent Python control flow in ``forward``),
so the towers export to ONNX with dynamic batch axes.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from linkedout.model.config import ImageConfig, SequenceConfig, TextConfig

__all__ = [
    "GROUPS",
    "PARTS",
    "CausalSequenceModel",
    "ImageEncoder",
    "RankingHead",
    "TextEncoder",
    "TransformerBlock",
    "group_parameters",
    "hash_title_tokens",
    "parameter_part",
]

#: Optimiser groups, in order (``Recommender.param_groups``): paper lr 1e-4 video, 1e-4 text/image,
#: 1e-5 head (sequence model + ranking head); ``id`` for item-ID embeddings.
GROUPS: tuple[str, ...] = ("video", "text", "image", "id", "head")

#: Parameter-name prefix -> (summary part, optimiser group). Every recommender names its submodules
#: by these prefixes (``fusion``, ``text_encoder``, ``image_encoder``, ``id_embedding``, ``id_gate``,
#: ``id_map``, ``id_unknown``, ``sequence``, ``ranking_head``) so that one table drives both ``param_groups`` and ``parameter_summary``.
PARTS: tuple[tuple[str, str, str], ...] = (
    ("fusion.experts.", "video_experts", "video"),
    ("fusion.gate.", "video_gate", "video"),
    ("fusion.kp_decoder.", "video_kp_decoder", "video"),
    ("text_encoder.", "text", "text"),
    ("image_encoder.", "image", "image"),
    ("id_embedding.", "id", "id"),
    ("id_gate.", "id", "id"),
    ("id_map.", "id", "id"),
    ("id_unknown", "id", "id"),
    ("sequence.", "sequence", "head"),
    ("ranking_head.", "ranking_head", "head"),
)


def parameter_part(name: str) -> tuple[str, str]:
    """``(part, group)`` of the parameter called ``name`` (as in ``named_parameters``)."""
    for prefix, part, group in PARTS:
        if name.startswith(prefix):
            return part, group
    raise ValueError(f"parameter {name!r} belongs to no known part (prefixes: {[p for p, _, _ in PARTS]})")


def group_parameters(module: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters of ``module`` by optimiser group (``GROUPS`` order; empty groups omitted)."""
    groups: dict[str, list[nn.Parameter]] = {g: [] for g in GROUPS}
    for name, p in module.named_parameters():
        if p.requires_grad:
            groups[parameter_part(name)[1]].append(p)
    return {g: ps for g, ps in groups.items() if ps}


_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_PIECE_RE = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")


def hash_title_tokens(titles: Sequence[str], max_tokens: int, num_buckets: int) -> np.ndarray:
    """Hashed word-piece ids of ``titles``: int64 ``[len(titles), max_tokens]``, 0 = padding.

    Pieces are lower-cased words (letters/digits runs) and single CJK characters; each maps to
    ``crc32(piece) % (num_buckets - 1) + 1`` (stable across processes, unlike ``hash``). Titles are
    truncated to ``max_tokens`` pieces and right-padded with 0. Row ``i`` is title ``i``; the caller
    puts an empty title at row 0 (the padding item) to get the ``[N+1, Lt]`` layout of
    ``LinkedOutRecommender.set_item_side_info``.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if num_buckets < 2:
        raise ValueError(f"num_buckets must be >= 2, got {num_buckets}")
    out = np.zeros((len(titles), max_tokens), dtype=np.int64)
    for i, title in enumerate(titles):
        pieces = _PIECE_RE.findall(str(title).lower())[:max_tokens]
        for j, piece in enumerate(pieces):
            out[i, j] = zlib.crc32(piece.encode("utf-8")) % (num_buckets - 1) + 1
    return out


class TextEncoder(nn.Module):
    """Title encoder: mean of hashed word-piece embeddings, layer-normalised, projected to d.

    ``tokens`` (M, Lt) int64, 0 = padding (any id >= 0; ids are re-hashed into ``num_buckets``) ->
    (M, d). An all-padding title gives the projection's bias.
    """

    def __init__(self, cfg: TextConfig, d_model: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.num_buckets, self.dim = cfg.num_buckets, cfg.dim
        self.embedding = nn.Embedding(cfg.num_buckets, cfg.dim, padding_idx=0)
        self.proj = nn.Linear(cfg.dim, d_model)
        nn.init.normal_(self.embedding.weight, std=init_std)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        nn.init.normal_(self.proj.weight, std=init_std)
        nn.init.zeros_(self.proj.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        """``tokens`` (M, Lt) int64 -> (M, d)."""
        ids = torch.where(tokens > 0, torch.remainder(tokens - 1, self.num_buckets - 1) + 1,
                          torch.zeros_like(tokens))  # (M, Lt)
        e = self.embedding(ids)  # (M, Lt, dim)
        m = (ids > 0).unsqueeze(-1).to(e.dtype)  # (M, Lt, 1)
        bag = (e * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)  # (M, dim)
        return self.proj(F.layer_norm(bag, (self.dim,)))  # (M, d)


class ImageEncoder(nn.Module):
    """Cover encoder: stride-2 3x3 conv stages with GELU, global average pool, Linear to d.

    ``covers`` (M, 3, S, S) uint8 (0..255) -> (M, d).
    """

    def __init__(self, cfg: ImageConfig, d_model: int, init_std: float = 0.02) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in cfg.channels:
            layers += [nn.Conv2d(c_in, c, kernel_size=3, stride=2, padding=1), nn.GELU()]
            c_in = c
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(c_in, d_model)
        nn.init.normal_(self.proj.weight, std=init_std)
        nn.init.zeros_(self.proj.bias)

    def forward(self, covers: Tensor) -> Tensor:
        """``covers`` (M, 3, S, S) uint8 -> (M, d)."""
        x = covers.to(self.proj.weight.dtype) / 127.5 - 1.0  # (M, 3, S, S) in [-1, 1]
        x = self.convs(x)  # (M, C, S', S')
        return self.proj(x.mean(dim=(2, 3)))  # (M, d)


class TransformerBlock(nn.Module):
    """Pre-LN transformer block: ``x + Attn(LN(x))``, then ``x + FFN(LN(x))``."""

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, ffn_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_dim, d_model))
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        """``x`` (B, T, d), ``allowed`` (B, 1, T, T) bool (query t may attend key s) -> (B, T, d)."""
        b, t, d = x.shape
        h = self.num_heads
        q, k, v = self.qkv(self.norm1(x)).split(d, dim=-1)  # 3 x (B, T, d)
        q, k, v = (z.reshape(b, t, h, d // h).transpose(1, 2) for z in (q, k, v))  # (B, h, T, d/h)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, h, T, d/h)
        a = a.transpose(1, 2).reshape(b, t, d)  # (B, T, d)
        x = x + self.resid_dropout(self.out(a))
        return x + self.resid_dropout(self.ffn(self.norm2(x)))


class CausalSequenceModel(nn.Module):
    """Causal pre-LN transformer over left-padded histories (SASRec shape).

    Positions are right-aligned (recency): the most recent slot ``T-1`` always gets position embedding
    ``max_history - 1``, so a left-padded history gives the same real-item states as the same history
    unpadded. Query ``t`` attends keys ``s <= t`` that are real items, plus itself (so a padding slot
    or an all-padding row never has an empty softmax: no NaN; padding states are finite but
    meaningless).
    """

    def __init__(self, d_model: int, cfg: SequenceConfig, init_std: float = 0.02) -> None:
        super().__init__()
        self.d_model, self.max_history = d_model, cfg.max_history
        self.pos_embedding = nn.Embedding(cfg.max_history, d_model)
        self.input_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(d_model, cfg.num_heads, cfg.ffn_dim, cfg.dropout)
                                    for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(d_model)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=init_std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x`` (B, T, d) item embeddings, ``mask`` (B, T) bool (True = real item) -> (B, T, d)."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"history_emb must be (B, T, {self.d_model}), got shape {tuple(x.shape)}")
        if mask.shape != x.shape[:2]:
            raise ValueError(f"history_mask shape {tuple(mask.shape)} does not match history_emb "
                             f"{tuple(x.shape[:2])}")
        t = x.shape[1]
        if t > self.max_history:
            raise ValueError(f"history length {t} exceeds SequenceConfig.max_history={self.max_history}")
        pos = torch.arange(t, device=x.device) + (self.max_history - t)  # (T,)
        h = self.input_dropout(x + self.pos_embedding(pos))  # (B, T, d)
        eye = torch.eye(t, dtype=torch.bool, device=x.device)  # (T, T)
        causal = torch.tril(torch.ones(t, t, dtype=torch.bool, device=x.device))  # (T, T)
        allowed = causal & (mask.bool().unsqueeze(1) | eye)  # (B, T, T)
        allowed = allowed.unsqueeze(1)  # (B, 1, T, T)
        for block in self.blocks:
            h = block(h, allowed)
        return self.final_norm(h)  # (B, T, d)


class RankingHead(nn.Module):
    """Residual MLP on the user state: ``u + W2 GELU(W1 LN(u))``; scores are dot products with items."""

    def __init__(self, d_model: int, hidden: int, dropout: float, init_std: float = 0.02) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, hidden)
        self.fc2 = nn.Linear(hidden, d_model)
        self.dropout = nn.Dropout(dropout)
        for lin in (self.fc1, self.fc2):
            nn.init.normal_(lin.weight, std=init_std)
            nn.init.zeros_(lin.bias)

    def forward(self, u: Tensor) -> Tensor:
        """``u`` (..., d) -> (..., d)."""
        return u + self.fc2(self.dropout(F.gelu(self.fc1(self.norm(u)))))
