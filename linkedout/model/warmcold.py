"""One recommender for warm and cold videos: LinkedOut's content tower plus an ID row where one was trained.

``WarmColdRecommender`` (kind ``warmcold``) encodes item ``i`` as

    e_i = c_i + w_i * E[i]                                   # (d,)

- ``c_i``: the content embedding of ``LinkedOutRecommender`` (the fused backbone layers, and the
  title and cover when enabled), computed for every video;
- ``E[i]``: a learned ID row, read only when item ``i`` has at least ``IDConfig.min_count`` training
  interactions. The counts are the registered buffer ``id_counts`` (int64 [N+1], saved in every
  ``state_dict``), so a checkpoint alone says which rows were trained. For every other index the
  lookup is redirected to row 0 (the zero padding row) and ``w_i = 0``: a video that had no training
  interactions (cold, but in the catalogue), index 0 (a video added through the live catalogue
  after training, see ``docs/serving.md`` §1) and padding are scored from their content alone, and
  their untrained rows are never read;
- ``w_i``: 1, or with ``IDConfig.gate = "frequency"`` a learned ``sigmoid(a log(1 + count_i) + b)``.

Outside training, the embedding of an item without an ID row is multiplied by
``IDConfig.cold_scale`` (a calibration chosen on a pseudo-cold validation split; 1 = off).

With ``IDConfig.unknown_row`` every item without an ID row (dropped, unseen, index 0) adds one
shared learned row ``u`` instead: ``e_i = c_i + u``. It is not an item's row (no item index reads
it); it learns, from the items dropped in training, what the ID part adds to a typical target.

Training makes the content alone a good embedding: in every training step a share
``IDConfig.dropout`` of the batch's *distinct* items lose their ID row (in every history slot and as
targets alike), so the ranking loss must be met by ``c_i`` for them; with ``IDConfig.batch_dropout``
a share of the steps drop every row (the step trains the content tower alone). Optionally
(``IDConfig.map_weight > 0``) a residual MLP ``m(c)`` learns to predict the ID row from the content
(MSE to the stop-grad rows of the batch's warm items) and stands in for the ID row where there is
none: ``e_i = c_i + m(c_i)`` for dropped and unseen items.

Everything is static-shape tensor code (``torch.where`` masks, no data-dependent Python control
flow), so the item tower exports to ONNX with a dynamic batch axis; in ``eval()`` mode the output is
deterministic.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from linkedout.model.base import ItemEncoding
from linkedout.model.config import ModelConfig
from linkedout.model.recommender import LinkedOutRecommender

__all__ = ["ContentToID", "FrequencyGate", "WarmColdRecommender"]


class FrequencyGate(nn.Module):
    """``w = sigmoid(a * log(1 + count) + b)`` with learned scalars ``a`` (init 1) and ``b`` (init 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, counts: Tensor) -> Tensor:
        """``counts`` (M,) int64 -> weights (M,) float32 in (0, 1)."""
        return torch.sigmoid(self.scale * torch.log1p(counts.float()) + self.bias)


class ContentToID(nn.Module):
    """Residual MLP from the content embedding to the ID space: ``W2 GELU(W1 LN(c))``, (M, d) -> (M, d)."""

    def __init__(self, d_model: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, 2 * d_model)
        self.fc2 = nn.Linear(2 * d_model, d_model)
        for lin in (self.fc1, self.fc2):
            nn.init.normal_(lin.weight, std=init_std)
            nn.init.zeros_(lin.bias)

    def forward(self, content: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(content))))  # (M, d)


class WarmColdRecommender(LinkedOutRecommender):
    """LinkedOut with an ID embedding for the videos seen in training (see the module docstring).

    ``item_counts`` int [N+1] are the training interactions per item index (``SplitData.item_counts``;
    row 0 = padding); they fill the buffer ``id_counts``. Without them every item counts as unseen
    until ``set_item_counts`` is called or a ``state_dict`` is loaded.
    """

    KINDS = ("warmcold",)
    id_counts: Tensor

    def __init__(self, cfg: ModelConfig, num_items: int, item_counts: np.ndarray | Tensor | None = None) -> None:
        super().__init__(cfg, num_items)
        d, std = cfg.d_model, cfg.init_std
        self.id_embedding = nn.Embedding(num_items + 1, d, padding_idx=0)
        nn.init.normal_(self.id_embedding.weight, std=std)
        with torch.no_grad():
            self.id_embedding.weight[0].zero_()
        self.register_buffer("id_counts", torch.zeros(num_items + 1, dtype=torch.int64))  # (N+1,)
        self.id_gate: FrequencyGate | None = FrequencyGate() if cfg.ids.gate == "frequency" else None
        self.id_map: ContentToID | None = ContentToID(d, std) if cfg.ids.map_weight > 0 else None
        self.id_unknown: nn.Parameter | None = nn.Parameter(torch.zeros(d)) if cfg.ids.unknown_row else None
        if item_counts is not None:
            self.set_item_counts(item_counts)

    @torch.no_grad()
    def set_item_counts(self, item_counts: np.ndarray | Tensor) -> None:
        """Set the training interactions per item index: int [N+1], >= 0 (row 0 is forced to 0).

        Raises ``ValueError`` naming the problem on a wrong shape, a non-integer dtype or a negative count.
        """
        c = item_counts.detach().cpu().numpy() if isinstance(item_counts, Tensor) else np.asarray(item_counts)
        n = self.num_items + 1
        if c.shape != (n,):
            raise ValueError(f"item_counts must have shape [N+1={n}], got {tuple(c.shape)}")
        if not np.issubdtype(c.dtype, np.number) or np.issubdtype(c.dtype, np.complexfloating):
            raise ValueError(f"item_counts must be numbers, got dtype {c.dtype}")
        if c.size and not bool(np.isfinite(c).all() and (c == np.round(c)).all()):
            raise ValueError(f"item_counts must hold whole numbers, got dtype {c.dtype} with fractions")
        if c.size and c.min() < 0:
            raise ValueError("item_counts must be >= 0")
        # from numpy, so that it also works while the model is built on the meta device
        self.id_counts.copy_(torch.from_numpy(c.astype(np.int64)))
        self.id_counts[0] = 0

    def seen(self, item_idx: Tensor) -> Tensor:
        """(M,) bool: whether item ``item_idx`` (M,) has a trained ID row (never for index 0)."""
        return self.id_counts[item_idx] >= self.config.ids.min_count

    def encode_items(self, item_idx: Tensor, features: Tensor | None = None) -> ItemEncoding:
        """Item tower: ``item_idx`` (M,) int64 in ``0..N`` and ``features`` (M, L, K, D).

        ``item_idx`` 0, and any item without a trained ID row, is encoded from its content alone (see
        the module docstring). Returns ``ItemEncoding``: ``emb`` (M, d); ``gate`` (M, L) and
        ``layer_outputs`` (M, L, d) of the video fusion; ``aux_loss`` () in training mode when a
        fusion regulariser or the content-to-ID mapping is active.
        """
        ids = self.config.ids
        table = self.id_embedding
        assert table is not None  # built in __init__
        content, video = self.encode_content(item_idx, features)  # (M, d)
        counts = self.id_counts[item_idx]  # (M,)
        use = counts >= ids.min_count  # (M,) bool; id_counts[0] == 0, so index 0 never reads a row
        if self.training and ids.dropout > 0:
            use = use & (torch.rand(item_idx.shape, device=item_idx.device) >= ids.dropout)  # (M,)
        if self.training and ids.batch_dropout > 0:  # one draw per call: the trainer's whole batch
            use = use & (torch.rand((), device=item_idx.device) >= ids.batch_dropout)  # (M,)
        rows = torch.where(use, item_idx, torch.zeros_like(item_idx))  # (M,) unused -> zero row 0
        weight = use.to(content.dtype)  # (M,)
        if self.id_gate is not None:
            weight = weight * self.id_gate(counts).to(content.dtype)  # (M,)
        # Row lookup by indexing (the same as ``table(rows)``): ONNX names the output of an
        # ``aten.embedding`` node "embedding", which would collide with the exported encoder's
        # output of that name (docs/serving.md §1).
        emb = content + weight.unsqueeze(-1) * table.weight[rows]  # (M, d)
        aux = video.aux_loss
        if self.id_unknown is not None:
            emb = emb + (~use).to(content.dtype).unsqueeze(-1) * self.id_unknown  # (M, d) the shared row
        if self.id_map is not None:
            mapped = self.id_map(content)  # (M, d)
            emb = emb + (~use).to(content.dtype).unsqueeze(-1) * mapped  # (M, d) stands in for a missing row
            if self.training:
                warm = (counts >= ids.min_count).to(content.dtype)  # (M,)
                target = table.weight[torch.where(warm > 0, item_idx, torch.zeros_like(item_idx))].detach()
                err = (self.id_map(content.detach()) - target).pow(2).mean(dim=-1)  # (M,)
                map_loss = ids.map_weight * (err * warm).sum() / warm.sum().clamp_min(1.0)
                aux = map_loss if aux is None else aux + map_loss
        if not self.training and ids.cold_scale != 1.0:  # calibration of content-only items, see IDConfig
            scale = torch.where(use, torch.ones_like(weight), torch.full_like(weight, ids.cold_scale))  # (M,)
            emb = emb * scale.unsqueeze(-1)  # (M, d)
        return ItemEncoding(emb=emb, gate=video.gate, layer_outputs=video.layer_outputs, aux_loss=aux)
