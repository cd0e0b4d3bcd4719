"""The training objective of one batch, as a module so that ``DistributedDataParallel`` can wrap it.

The batch's distinct items go through ``model.encode_items`` once, their embeddings are gathered
back onto the histories, ``model.user_states`` gives a state per position, and the ranking loss of
``TrainConfig.loss`` (:mod:`.losses`) scores the valid positions; the model's auxiliary loss
(gate balance, knowledge preservation) is added.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from linkedout.model.base import Recommender, gather_history
from linkedout.training.batches import Batch
from linkedout.training.losses import bpr_loss, full_softmax_loss, inbatch_logq_loss

__all__ = ["LossModule"]


class LossModule(nn.Module):
    """The loss of one batch as a module, so that ``DistributedDataParallel`` can wrap it.

    ``forward(batch) -> (total, main)``: ``main`` is the ranking loss, ``total`` adds the model's
    auxiliary loss (both scalars).
    """

    def __init__(self, model: Recommender, loss: str, log_q: Tensor, temperature: float):
        super().__init__()
        self.model = model
        self.loss = loss
        self.temperature = temperature
        self.log_q = log_q  # (N+1,) not a buffer: it is data, not model state

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        model = self.model
        features = batch.features if model.needs_features else None
        enc = model.encode_items(batch.items, features)
        emb = enc.emb  # (U, d)
        table = torch.cat([emb.new_zeros(1, emb.shape[1]), emb]) if batch.has_pad else emb  # (U[+1], d)
        hist, mask = gather_history(table, batch.inputs_inv, batch.inputs)  # (B, T, d), (B, T)
        states = model.user_states(hist, mask)  # (B, T, d)
        valid = batch.targets > 0  # (B, T)
        user = states[valid]  # (P, d)
        targets = batch.targets[valid]  # (P,)
        if self.loss == "inbatch_logq":
            main = inbatch_logq_loss(user, targets, batch.items, emb, self.log_q,
                                     temperature=self.temperature, score=model.score)
        elif self.loss == "bpr":
            assert batch.negatives is not None
            main = bpr_loss(user, targets, batch.negatives[valid], batch.items, emb, score=model.score)
        else:
            main = full_softmax_loss(user, targets, batch.items, emb, temperature=self.temperature,
                                     score=model.score)
        total = main if enc.aux_loss is None else main + enc.aux_loss.float()
        return total, main.detach()
