"""Top-K ranking metrics computed from the rank of the target item.

Everything here starts from ``rank``: the 0-based position of the held-out target among the
candidates of its user, i.e. the number of *competing* candidates that score strictly higher than
the target. Ties are broken against the model by default (``ties="pessimistic"``: every other
candidate with exactly the target's score is counted as ranked above it), so a model that scores
everything alike (a constant, an untrained popularity table with equal counts) cannot look good by
accident. ``ties="optimistic"`` counts only strictly higher scores.

With ``rank`` ``r`` of one user:

- ``HR@K   = 1            if r < K else 0``
- ``NDCG@K = 1/log2(r+2)  if r < K else 0`` (one relevant item, so the ideal DCG is 1)
- ``MRR    = 1/(r+1)`` (over the whole candidate list, not truncated at K)

and the reported figure is the mean over users. The functions are pure: ``target_ranks`` works on
torch tensors (it runs on the scoring device), the metric functions on anything ``numpy`` accepts.

Worked example: ranks ``[0, 3, 12]`` give ``HR@10 = 2/3``, ``NDCG@10 = (1 + 1/log2(5)) / 3`` and
``MRR = (1 + 1/4 + 1/13) / 3``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

TiePolicy = Literal["pessimistic", "optimistic"]
TIE_POLICIES: tuple[str, ...] = ("pessimistic", "optimistic")

__all__ = [
    "TIE_POLICIES",
    "TiePolicy",
    "hit_rate",
    "metric_names",
    "ndcg",
    "ranking_metrics",
    "reciprocal_rank",
    "target_ranks",
    "target_ranks_masked",
]


def target_ranks(
    scores: Tensor,
    target_col: Tensor,
    competes: Tensor | None = None,
    *,
    ties: TiePolicy = "pessimistic",
) -> Tensor:
    """0-based rank of each row's target among the row's competing candidates.

    Args:
        scores: (B, M) float scores of ``M`` candidates for ``B`` users.
        target_col: (B,) int64 column of each user's target in ``scores``.
        competes: optional (B, M) bool, True where a candidate competes with the target (False for
            masked history items, padding, ...). The target's own column never competes with itself,
            whatever this mask says. ``None`` means every other column competes.
        ties: ``"pessimistic"`` (candidates scoring exactly like the target rank above it) or
            ``"optimistic"`` (only strictly higher scores count).

    Returns:
        (B,) int64 ranks in ``0..M-1``.

    Raises:
        ValueError: on shape mismatches, an unknown tie policy, or a NaN target score.
    """
    b, m = _check_scores(scores, target_col, ties)
    if competes is not None and competes.shape != scores.shape:
        raise ValueError(f"competes must have the shape of scores {(b, m)}, got {tuple(competes.shape)}")
    if b == 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    target_col = target_col.to(device=scores.device, dtype=torch.long)
    if int(target_col.min()) < 0 or int(target_col.max()) >= m:
        raise ValueError(f"target_col must lie in 0..{m - 1}")
    rows = torch.arange(b, device=scores.device)
    target_score = scores[rows, target_col].unsqueeze(1)  # (B, 1)
    if torch.isnan(target_score).any():
        raise ValueError("NaN score for the target item; the model produced non-finite scores")
    above = scores >= target_score if ties == "pessimistic" else scores > target_score  # (B, M)
    above[rows, target_col] = False
    if competes is not None:
        above &= competes
    return _count_rows(above)  # (B,)


def target_ranks_masked(
    scores: Tensor,
    target_col: Tensor,
    masked_cols: Tensor,
    *,
    ties: TiePolicy = "pessimistic",
) -> Tensor:
    """:func:`target_ranks` when only a few columns per row are removed from the competition.

    Equivalent to ``target_ranks(scores, target_col, competes)`` with ``competes`` False exactly at
    ``masked_cols``, but without building a ``(B, M)`` mask: all columns are counted once, then the
    masked columns that were counted are subtracted (each distinct column once; a masked column
    equal to the target is ignored, the target is never removed). This is the full-catalogue path,
    where ``M`` is the catalogue and ``E`` (history + exclusions) is small.

    Args:
        scores: (B, M) float scores.
        target_col: (B,) int64 target column per row.
        masked_cols: (B, E) int64 columns to remove; repeats allowed; ``E`` may be 0.
        ties: as in :func:`target_ranks`.

    Returns:
        (B,) int64 ranks.
    """
    b, m = _check_scores(scores, target_col, ties)
    if masked_cols.dim() != 2 or masked_cols.shape[0] != b:
        raise ValueError(f"masked_cols must be ({b}, E), got shape {tuple(masked_cols.shape)}")
    if b == 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    target_col = target_col.to(device=scores.device, dtype=torch.long)
    masked_cols = masked_cols.to(device=scores.device, dtype=torch.long)
    if int(target_col.min()) < 0 or int(target_col.max()) >= m:
        raise ValueError(f"target_col must lie in 0..{m - 1}")
    if masked_cols.numel() and (int(masked_cols.min()) < 0 or int(masked_cols.max()) >= m):
        raise ValueError(f"masked_cols must lie in 0..{m - 1}")
    rows = torch.arange(b, device=scores.device)
    target_score = scores[rows, target_col].unsqueeze(1)  # (B, 1)
    if torch.isnan(target_score).any():
        raise ValueError("NaN score for the target item; the model produced non-finite scores")
    pessimistic = ties == "pessimistic"
    counted = _count_rows(scores >= target_score if pessimistic else scores > target_score)  # (B,)
    if pessimistic:
        counted -= 1  # the target counted itself
    if masked_cols.shape[1]:
        cols, _ = masked_cols.sort(dim=1)  # (B, E)
        first = torch.ones_like(cols, dtype=torch.bool)
        first[:, 1:] = cols[:, 1:] != cols[:, :-1]  # each distinct column once
        ms = scores.gather(1, cols)  # (B, E)
        hit = ms >= target_score if pessimistic else ms > target_score
        counted -= (hit & first & (cols != target_col.unsqueeze(1))).sum(dim=1)
    return counted


def _count_rows(mask: Tensor) -> Tensor:
    """Number of True entries per row of a (B, M) bool tensor, as (B,) int64.

    On the CPU, NumPy's uint8 row sum is an order of magnitude faster than torch's bool reduction
    (measured: 8 ms vs. 107 ms for 512 x 19,739), and this count is the inner loop of evaluation.
    """
    if mask.device.type == "cpu" and mask.shape[1] < 2**31:
        counts = np.ascontiguousarray(mask.numpy()).view(np.uint8).sum(axis=1, dtype=np.int32)  # (B,)
        return torch.from_numpy(counts.astype(np.int64))
    return mask.sum(dim=1)


def _check_scores(scores: Tensor, target_col: Tensor, ties: str) -> tuple[int, int]:
    """Validate ``scores`` (B, M), ``target_col`` (B,) and the tie policy; return ``(B, M)``."""
    if ties not in TIE_POLICIES:
        raise ValueError(f"ties must be one of {TIE_POLICIES}, got {ties!r}")
    if scores.dim() != 2:
        raise ValueError(f"scores must be (B, M), got shape {tuple(scores.shape)}")
    b, m = scores.shape
    if target_col.shape != (b,):
        raise ValueError(f"target_col must be ({b},), got shape {tuple(target_col.shape)}")
    return b, m


def _as_ranks(ranks: npt.ArrayLike | Tensor) -> np.ndarray:
    arr = ranks.detach().cpu().numpy() if isinstance(ranks, Tensor) else np.asarray(ranks)
    if arr.ndim != 1:
        raise ValueError(f"ranks must be one-dimensional, got shape {arr.shape}")
    if arr.size and (not np.all(np.isfinite(arr)) or float(arr.min()) < 0):
        raise ValueError("ranks must be finite and >= 0")
    return arr.astype(np.float64)


def _check_k(k: int) -> None:
    if not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def hit_rate(ranks: npt.ArrayLike | Tensor, k: int) -> np.ndarray:
    """Per-user hit at K: (U,) float64, 1.0 where ``rank < k``."""
    _check_k(k)
    r = _as_ranks(ranks)
    return (r < k).astype(np.float64)


def ndcg(ranks: npt.ArrayLike | Tensor, k: int) -> np.ndarray:
    """Per-user NDCG at K with one relevant item: (U,) float64, ``1/log2(rank+2)`` where ``rank < k``."""
    _check_k(k)
    r = _as_ranks(ranks)
    return np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)


def reciprocal_rank(ranks: npt.ArrayLike | Tensor) -> np.ndarray:
    """Per-user reciprocal rank ``1/(rank+1)``: (U,) float64 (untruncated)."""
    r = _as_ranks(ranks)
    return 1.0 / (r + 1.0)


def metric_names(ks: Iterable[int]) -> list[str]:
    """Metric keys in report order: ``HR@k`` for each k, ``NDCG@k`` for each k, then ``MRR``."""
    ks = list(ks)
    return [f"HR@{k}" for k in ks] + [f"NDCG@{k}" for k in ks] + ["MRR"]


def ranking_metrics(ranks: npt.ArrayLike | Tensor, ks: Iterable[int] = (5, 10, 20)) -> dict[str, float]:
    """Means over users of HR@K and NDCG@K for each K, and MRR.

    Returns a dict keyed by :func:`metric_names`. With no users every value is ``nan`` (there is
    nothing to average; serialisers turn it into ``null``).
    """
    ks = list(ks)
    for k in ks:
        _check_k(k)
    r = _as_ranks(ranks)
    out: dict[str, float] = {}
    if r.size == 0:
        return dict.fromkeys(metric_names(ks), math.nan)
    for k in ks:
        out[f"HR@{k}"] = float(hit_rate(r, k).mean())
    for k in ks:
        out[f"NDCG@{k}"] = float(ndcg(r, k).mean())
    out["MRR"] = float(reciprocal_rank(r).mean())
    return out
