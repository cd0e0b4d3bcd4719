"""Training losses over user states and candidate item embeddings.

All three losses take the same inputs:

- ``user`` (P, d): user states at the P valid (non-padding) positions of a batch;
- ``targets`` (P,): the item index (``1..N``) each position must predict;
- ``cand_idx`` (C,): the *sorted, distinct* item indices whose embeddings are at hand — the
  batch's distinct items (in-batch softmax, BPR) or ``1..N`` (full softmax) — and ``cand_emb``
  (C, d) their embeddings. Every target (and BPR negative) must be among them.

and a ``score`` function ``(P, d), (C, d) -> (P, C)`` (``Recommender.score``; a dot product by
default). Each returns a scalar mean over the P positions.

- ``inbatch_logq_loss``: softmax over the batch's distinct items with the log-popularity (logQ)
  correction of Yi et al. (RecSys 2019): ``logit(u, i) = score(u, i) / temperature - log q(i)``,
  ``q(i)`` = the item's share of training interactions. Popular items appear as in-batch negatives
  more often; subtracting ``log q`` removes that sampling bias. Because the candidates are
  *distinct* items, a positive never also appears as its own negative (the collision an in-batch
  softmax over the raw target column would have).
- ``bpr_loss``: ``-log sigmoid(s(u, pos) - s(u, neg))`` averaged over positions and their sampled
  negatives (drawn by ``sample_negatives``: uniform over ``1..N`` minus the positive).
- ``full_softmax_loss``: cross-entropy over the whole catalogue (small catalogues only).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

ScoreFn = Callable[[Tensor, Tensor], Tensor]


def dot_score(user: Tensor, items: Tensor) -> Tensor:
    """(P, d), (C, d) -> (P, C) dot products."""
    return user @ items.T


def log_popularity(item_counts: Tensor) -> Tensor:
    """``log q(i)`` (N+1,) from training counts (N+1,) int (index 0 = padding).

    ``q(i) = max(count_i, 1) / sum_j max(count_j, 1)`` over items ``1..N``: items never seen in
    training (cold) count as seen once so their correction stays finite. Entry 0 is 0.
    """
    counts = item_counts.detach().to(torch.float64).clamp_min(1.0)  # (N+1,)
    counts[0] = 0.0
    logq = torch.zeros_like(counts)
    logq[1:] = torch.log(counts[1:]) - torch.log(counts[1:].sum())
    return logq.to(torch.float32)


def positions_in(cand_idx: Tensor, items: Tensor, what: str = "target") -> Tensor:
    """Column of each of ``items`` (any shape) in the sorted candidate list ``cand_idx`` (C,).

    Raises ``ValueError`` if an item is not a candidate.
    """
    pos = torch.searchsorted(cand_idx, items.reshape(-1)).clamp_max(cand_idx.numel() - 1)
    found = cand_idx[pos] == items.reshape(-1)
    if not bool(found.all()):
        missing = items.reshape(-1)[~found][:5].tolist()
        raise ValueError(f"{what} item(s) {missing} are not among the candidate items")
    return pos.view(items.shape)


def inbatch_logq_loss(
    user: Tensor,
    targets: Tensor,
    cand_idx: Tensor,
    cand_emb: Tensor,
    log_q: Tensor,
    *,
    temperature: float = 1.0,
    score: ScoreFn = dot_score,
) -> Tensor:
    """In-batch sampled softmax with logQ correction.

    ``log_q`` (N+1,) is ``log_popularity(item_counts)`` indexed by item index. Returns () mean
    cross-entropy of each position's target against all distinct batch items.
    """
    return _softmax_loss(user, targets, cand_idx, cand_emb, temperature, score, log_q)


def bpr_loss(
    user: Tensor,
    targets: Tensor,
    negatives: Tensor,
    cand_idx: Tensor,
    cand_emb: Tensor,
    *,
    score: ScoreFn = dot_score,
) -> Tensor:
    """Bayesian personalised ranking with sampled negatives.

    ``negatives`` (P, n) item indices (none equal to its row's target). Returns () mean of
    ``softplus(s_neg - s_pos)`` = ``-log sigmoid(s_pos - s_neg)`` over the P*n pairs.
    """
    _check(user, targets, cand_idx, cand_emb)
    if negatives.dim() != 2 or negatives.shape[0] != targets.shape[0]:
        raise ValueError(f"negatives must be (P, n) with P={targets.shape[0]}, got {tuple(negatives.shape)}")
    scores = score(user, cand_emb).float()  # (P, C)
    s_pos = scores.gather(1, positions_in(cand_idx, targets).unsqueeze(1))  # (P, 1)
    s_neg = scores.gather(1, positions_in(cand_idx, negatives, "negative"))  # (P, n)
    return F.softplus(s_neg - s_pos).mean()


def full_softmax_loss(
    user: Tensor,
    targets: Tensor,
    cand_idx: Tensor,
    cand_emb: Tensor,
    *,
    temperature: float = 1.0,
    score: ScoreFn = dot_score,
) -> Tensor:
    """Cross-entropy over every candidate (``cand_idx`` = ``1..N``, the whole catalogue)."""
    return _softmax_loss(user, targets, cand_idx, cand_emb, temperature, score)


def _softmax_loss(user: Tensor, targets: Tensor, cand_idx: Tensor, cand_emb: Tensor, temperature: float,
                  score: ScoreFn, log_q: Tensor | None = None) -> Tensor:
    """Mean cross-entropy of each target among the candidates, logits ``score / tau - log q``."""
    _check(user, targets, cand_idx, cand_emb)
    logits = score(user, cand_emb).float() / temperature  # (P, C)
    if log_q is not None:
        logits = logits - log_q.to(logits.device)[cand_idx].unsqueeze(0)  # (P, C)
    return F.cross_entropy(logits, positions_in(cand_idx, targets))


def sample_negatives(targets: Tensor, num_items: int, num: int, generator: torch.Generator) -> Tensor:
    """Uniform negatives (..., num) from ``1..N`` excluding each position's own target.

    ``targets`` (...) int64 in ``1..N`` (0 = padding gets negatives 0); ``generator`` is a CPU
    generator (the draw is moved to ``targets.device``). Draws ``r`` uniformly from
    ``1..N-1`` and shifts ``r >= target`` up by one, which is exactly uniform over the other items.
    """
    if num_items < 2:
        raise ValueError(f"negative sampling needs at least 2 items, got num_items={num_items}")
    r = torch.randint(1, num_items, (*targets.shape, num), generator=generator).to(targets.device)
    t = targets.unsqueeze(-1)  # (..., 1)
    neg = r + (r >= t).long()  # (..., num)
    return torch.where(t > 0, neg, torch.zeros_like(neg))


def _check(user: Tensor, targets: Tensor, cand_idx: Tensor, cand_emb: Tensor) -> None:
    if user.dim() != 2 or targets.dim() != 1 or user.shape[0] != targets.shape[0]:
        raise ValueError(f"user must be (P, d) and targets (P,), got {tuple(user.shape)} and {tuple(targets.shape)}")
    if cand_idx.dim() != 1 or cand_emb.dim() != 2 or cand_emb.shape[0] != cand_idx.shape[0]:
        raise ValueError(
            f"cand_idx must be (C,) and cand_emb (C, d), got {tuple(cand_idx.shape)} and {tuple(cand_emb.shape)}")
    if user.shape[0] == 0:
        raise ValueError("no valid positions in the batch (all targets are padding)")
