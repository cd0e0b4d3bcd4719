"""Offline evaluation of any :class:`~linkedout.model.base.Recommender` on an ``EvalSet``.

Two protocols, reported side by side and never mixed:

``full`` (the paper's protocol, DESIGN.md §1)
    Each user's next-item state is scored against the **whole catalogue** (items ``1..N``). The
    padding item 0 and, with ``mask_history=True``, every item of the user's history window
    (``eval_set.histories``) plus an optional per-user exclusion set (``exclude``: items seen before
    the window) are removed from the competition; the target itself is never removed, even when it
    also occurs in the history (a re-watch). The rank of the target is the number of remaining
    items scoring higher (ties pessimistic by default, see :mod:`linkedout.evaluation.metrics`).

``sampled`` (SASRec-style papers)
    The target competes with ``sampled_negatives`` (default 100) distinct items drawn uniformly from
    the catalogue minus the user's interactions (history window, ``exclude``) and the target. The
    draw depends only on ``seed``, the order of the users and their interactions, not on the batch
    size. When a user has fewer admissible items than requested (tiny catalogues) all of them are
    used. Sampled figures are much higher than full-catalogue ones and are not comparable with them.

Both protocols report HR@K, NDCG@K (K in ``ks``) and MRR overall and split by whether the target is
a warm or a cold video (``eval_set.cold``: never seen in training), with the user count of each.

Cost. Item embeddings are computed once (:func:`linkedout.evaluation.encode.item_table`, chunked,
``torch.no_grad``), then users are processed in batches; one batch holds a ``(B, N+1)`` score matrix
(the masked items are handled by gathering their few scores, not by a ``(B, N+1)`` mask), and ``B``
is capped so that ``B * (N+1) <= max_score_elements``, which bounds the memory whatever the
catalogue size. Sampled negatives are drawn up front (``U * n`` int64).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from linkedout.evaluation.encode import ItemFeatureFn, ItemTable, eval_mode, item_table
from linkedout.evaluation.metrics import (
    TIE_POLICIES,
    TiePolicy,
    ranking_metrics,
    target_ranks,
    target_ranks_masked,
)
from linkedout.model.base import Recommender
from linkedout.utils import get_logger, progress

log = get_logger(__name__)

Exclusions = Mapping[str, Any] | Sequence[Any]
"""Per-user extra items to mask: a mapping ``user_id -> item indices`` or a sequence aligned with
``eval_set.user_ids``. Entries may be arrays, lists or ``None``; index 0 is ignored."""

_SAMPLE_BLOCK = 1024  # users per seeded sampling block (fixed: keeps draws independent of batch_size)

__all__ = [
    "EvalConfig",
    "EvalResult",
    "EvalSetLike",
    "ProtocolResult",
    "evaluate",
    "run_evaluation",
    "sample_negatives",
]


class EvalSetLike(Protocol):
    """What the evaluator reads from ``linkedout.data.split.EvalSet``."""

    user_ids: list[str]
    histories: Any  # int64 (U, T), left-padded with 0, most recent item last
    targets: Any  # int64 (U,) in 1..N
    cold: Any  # bool (U,)


@dataclass
class EvalConfig:
    """Settings of one evaluation run (saved with its results).

    Attributes:
        ks: cut-offs K of HR@K and NDCG@K; positive, distinct.
        batch_size: users per scoring batch (upper bound; see ``max_score_elements``), >= 1.
        item_batch_size: items per ``encode_items`` call when building the item table, >= 1.
        max_score_elements: cap on ``batch * (N+1)`` score entries held at once, >= 1.
        mask_history: mask the user's history items (and ``exclude``) in the full protocol.
        sampled_negatives: negatives per user in the sampled protocol; 0 disables it.
        seed: seed of the negative sampling.
        ties: ``"pessimistic"`` or ``"optimistic"`` tie counting.
    """

    ks: tuple[int, ...] = (5, 10, 20)
    batch_size: int = 512
    item_batch_size: int = 1024
    max_score_elements: int = 1 << 25
    mask_history: bool = True
    sampled_negatives: int = 100
    seed: int = 0
    ties: TiePolicy = "pessimistic"

    def __post_init__(self) -> None:
        self.ks = tuple(int(k) for k in self.ks)
        if not self.ks or any(k < 1 for k in self.ks) or len(set(self.ks)) != len(self.ks):
            raise ValueError(f"EvalConfig.ks must be distinct positive integers, got {self.ks}")
        for name in ("batch_size", "item_batch_size", "max_score_elements"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"EvalConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.sampled_negatives < 0:
            raise ValueError(f"EvalConfig.sampled_negatives must be >= 0, got {self.sampled_negatives}")
        if self.ties not in TIE_POLICIES:
            raise ValueError(f"EvalConfig.ties must be one of {TIE_POLICIES}, got {self.ties!r}")


@dataclass
class ProtocolResult:
    """Metrics of one protocol: ``overall``/``warm``/``cold`` dicts keyed ``HR@K``, ``NDCG@K``, ``MRR``."""

    overall: dict[str, float]
    warm: dict[str, float]
    cold: dict[str, float]
    n_users: dict[str, int]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "overall": _finite_or_none(self.overall),
            "warm": _finite_or_none(self.warm),
            "cold": _finite_or_none(self.cold),
            "n_users": dict(self.n_users),
        }
        out.update(self.extra)
        return out


@dataclass
class EvalResult:
    """Result of :func:`evaluate`.

    Attributes:
        full: full-catalogue protocol.
        sampled: sampled protocol, or None when ``sampled_negatives == 0``.
        ranks_full: (U,) int64 rank of each user's target in the full protocol.
        ranks_sampled: (U,) int64 rank in the sampled protocol, or None.
        config: the settings used.
        elapsed_s: wall time of the evaluation (not serialised).
    """

    full: ProtocolResult
    sampled: ProtocolResult | None
    ranks_full: np.ndarray
    ranks_sampled: np.ndarray | None
    config: EvalConfig
    elapsed_s: float = 0.0

    def summary(self) -> dict[str, float]:
        """Overall full-catalogue metrics (``{"HR@10": ..., "NDCG@10": ..., ...}``), e.g. for training logs."""
        return dict(self.full.overall)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: ``{"full": {...}, "sampled": {...} | None, "settings": {...}}``.

        Each protocol is ``{"overall": {metric: value}, "warm": {...}, "cold": {...},
        "n_users": {"overall": U, "warm": W, "cold": C}}`` (the sampled one adds ``num_negatives``
        and ``seed``); a metric over zero users is ``null``.
        """
        settings = asdict(self.config)
        settings["ks"] = list(self.config.ks)
        return {
            "full": self.full.to_dict(),
            "sampled": None if self.sampled is None else self.sampled.to_dict(),
            "settings": settings,
        }


def _finite_or_none(metrics: Mapping[str, float]) -> dict[str, float | None]:
    return {k: (float(v) if math.isfinite(v) else None) for k, v in metrics.items()}


def sample_negatives(num_items: int, forbidden: np.ndarray, num: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``num`` distinct items per row uniformly from ``1..num_items`` minus the row's forbidden items.

    Args:
        num_items: N.
        forbidden: (B, F) int64 item indices each row must not draw (0 entries are padding).
        num: negatives per row.
        rng: the random generator (consumed deterministically).

    Returns:
        (B, num) int64. When a row has fewer than ``num`` admissible items, it gets all of them
        (in random order) followed by 0 (= no sample).
    """
    forbidden = np.asarray(forbidden, dtype=np.int64)
    if forbidden.ndim != 2:
        raise ValueError(f"forbidden must be (B, F), got shape {forbidden.shape}")
    b = forbidden.shape[0]
    out = np.zeros((b, num), dtype=np.int64)
    if b == 0 or num == 0:
        return out
    # Rejection sampling, vectorised: draw more candidates than needed, drop forbidden and repeated
    # ones (keeping draw order), take the first `num`. Rows left short fall back to an exact draw.
    m = 2 * num + 32
    cand = rng.integers(1, num_items + 1, size=(b, m), dtype=np.int64)  # (B, m)
    bad = (cand[:, :, None] == forbidden[:, None, :]).any(axis=2)  # (B, m)
    order = np.argsort(cand, axis=1, kind="stable")  # (B, m)
    srt = np.take_along_axis(cand, order, axis=1)
    repeat_sorted = np.zeros_like(bad)
    repeat_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]  # later draws of an already drawn value
    repeat = np.zeros_like(bad)
    np.put_along_axis(repeat, order, repeat_sorted, axis=1)
    ok = ~bad & ~repeat  # (B, m)
    take = ok & (np.cumsum(ok, axis=1) <= num)
    full = take.sum(axis=1) == num  # (B,)
    out[full] = cand[full][take[full]].reshape(-1, num)
    for row in np.flatnonzero(~full):
        allowed = np.setdiff1d(np.arange(1, num_items + 1, dtype=np.int64), forbidden[row])
        pick = rng.permutation(allowed)[:num]
        out[row, : pick.size] = pick
    return out


def _exclusion_lists(eval_set: EvalSetLike, exclude: Exclusions | None, num_items: int) -> list[np.ndarray] | None:
    """Normalise ``exclude`` to one int64 array per user (aligned with ``eval_set.user_ids``)."""
    if exclude is None:
        return None
    users = list(eval_set.user_ids)
    if isinstance(exclude, Mapping):
        raw = [exclude.get(u) for u in users]
    else:
        raw = list(exclude)
        if len(raw) != len(users):
            raise ValueError(f"exclude has {len(raw)} entries but eval_set has {len(users)} users")
    out: list[np.ndarray] = []
    for user, items in zip(users, raw):
        arr = np.zeros(0, dtype=np.int64) if items is None else np.asarray(items, dtype=np.int64).reshape(-1)
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > num_items):
            raise ValueError(f"exclude for user {user!r} holds item indices outside 0..{num_items}")
        out.append(arr)
    return out


def _pad_rows(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Stack variable-length int64 rows into (B, max_len), right-padded with 0."""
    width = max((r.size for r in rows), default=0)
    out = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : r.size] = r
    return out


def _check_eval_set(eval_set: EvalSetLike, num_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    histories = np.asarray(eval_set.histories)
    targets = np.asarray(eval_set.targets)
    cold = np.asarray(eval_set.cold)
    u = len(eval_set.user_ids)
    if histories.ndim != 2 or histories.shape[0] != u:
        raise ValueError(f"EvalSet.histories must be ({u}, T), got shape {histories.shape}")
    if targets.shape != (u,):
        raise ValueError(f"EvalSet.targets must be ({u},), got shape {targets.shape}")
    if cold.shape != (u,):
        raise ValueError(f"EvalSet.cold must be ({u},), got shape {cold.shape}")
    if not np.issubdtype(histories.dtype, np.integer) or not np.issubdtype(targets.dtype, np.integer):
        raise ValueError("EvalSet.histories and EvalSet.targets must hold integer item indices")
    if u and (int(targets.min()) < 1 or int(targets.max()) > num_items):
        bad = int(np.flatnonzero((targets < 1) | (targets > num_items))[0])
        raise ValueError(
            f"EvalSet.targets[{bad}] (user {eval_set.user_ids[bad]!r}) = {int(targets[bad])} is outside 1..{num_items}"
        )
    if histories.size and (int(histories.min()) < 0 or int(histories.max()) > num_items):
        raise ValueError(f"EvalSet.histories holds item indices outside 0..{num_items}")
    return histories.astype(np.int64), targets.astype(np.int64), cold.astype(bool)


def _protocol(ranks: np.ndarray, cold: np.ndarray, ks: Sequence[int], **extra: Any) -> ProtocolResult:
    return ProtocolResult(
        overall=ranking_metrics(ranks, ks),
        warm=ranking_metrics(ranks[~cold], ks),
        cold=ranking_metrics(ranks[cold], ks),
        n_users={"overall": int(ranks.size), "warm": int((~cold).sum()), "cold": int(cold.sum())},
        extra=extra,
    )


def _draw_negatives(n: int, histories: np.ndarray, targets: np.ndarray, extra: list[np.ndarray] | None,
                    cfg: EvalConfig) -> np.ndarray:
    """(U, sampled_negatives) negatives of the sampled protocol, drawn per block of users from ``cfg.seed``."""
    u = targets.size
    blocks = []
    for bi, start in enumerate(range(0, u, _SAMPLE_BLOCK)):
        stop = min(u, start + _SAMPLE_BLOCK)
        parts = [histories[start:stop], targets[start:stop, None]]
        if extra is not None:
            parts.append(_pad_rows(extra[start:stop]))
        rng = np.random.default_rng([cfg.seed, bi])
        blocks.append(sample_negatives(n, np.concatenate(parts, axis=1), cfg.sampled_negatives, rng))
    return np.concatenate(blocks) if blocks else np.zeros((0, cfg.sampled_negatives), dtype=np.int64)


def _rank_targets(model: Recommender, eval_set: EvalSetLike, table: ItemTable, cfg: EvalConfig,
                  histories: np.ndarray, targets: np.ndarray, extra: list[np.ndarray] | None,
                  negatives: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Each user's target rank in the full protocol and, with ``negatives``, in the sampled one."""
    n, u = table.num_items, targets.size
    device = table.emb.device
    ranks_full = np.zeros(u, dtype=np.int64)
    ranks_sampled = np.zeros(u, dtype=np.int64) if negatives is not None else None
    step = max(1, min(cfg.batch_size, cfg.max_score_elements // (n + 1)))
    starts = range(0, u, step)
    with eval_mode(model):
        for start in progress(starts, total=len(starts), desc="evaluate", unit="batch"):
            stop = min(u, start + step)
            b = stop - start
            hist = torch.from_numpy(histories[start:stop]).to(device)  # (B, T)
            tgt = torch.from_numpy(targets[start:stop]).to(device)  # (B,)
            scores = _batch_scores(model, eval_set, table, hist, start)  # (B, N+1)

            # Removed from the competition: padding (column 0) and, with mask_history, the history
            # window and the extra exclusions. The target is never removed (target_ranks_masked).
            masked = [torch.zeros(b, 1, dtype=torch.long, device=device)]
            if cfg.mask_history:
                masked.append(hist)
                if extra is not None:
                    masked.append(torch.from_numpy(_pad_rows(extra[start:stop])).to(device))  # (B, E)
            cols = torch.cat(masked, dim=1)  # (B, 1 + T + E)
            ranks_full[start:stop] = target_ranks_masked(scores, tgt, cols, ties=cfg.ties).cpu().numpy()

            if negatives is not None and ranks_sampled is not None:
                neg = torch.from_numpy(negatives[start:stop]).to(device)  # (B, n_neg)
                cand = torch.cat([tgt.unsqueeze(1), neg], dim=1)  # (B, 1 + n_neg)
                cand_scores = scores.gather(1, cand)  # (B, 1 + n_neg)
                zero = torch.zeros(b, dtype=torch.long, device=device)
                ranks_sampled[start:stop] = target_ranks(cand_scores, zero, cand > 0, ties=cfg.ties).cpu().numpy()
    return ranks_full, ranks_sampled


def _batch_scores(model: Recommender, eval_set: EvalSetLike, table: ItemTable, hist: Tensor, start: int) -> Tensor:
    """(B, N+1) float scores of the users whose histories are ``hist`` (B, T), checked for shape and NaN."""
    b, n = hist.shape[0], table.num_items
    hmask = hist > 0  # (B, T)
    hemb = table.emb[hist] * hmask.unsqueeze(-1).to(table.emb.dtype)  # (B, T, d)
    user = model.last_state(hemb, hmask)  # (B, d)
    scores = model.score(user, table.emb).float()  # (B, N+1)
    if scores.shape != (b, n + 1):
        raise ValueError(f"{type(model).__name__}.score returned {tuple(scores.shape)}, expected {(b, n + 1)}")
    if torch.isnan(scores.sum(dim=1)).any() and torch.isnan(scores[:, 1:]).any():  # cheap check first
        bad = int(torch.isnan(scores[:, 1:]).any(dim=1).nonzero()[0, 0]) + start
        raise ValueError(f"{type(model).__name__} produced NaN scores (first user {eval_set.user_ids[bad]!r})")
    return scores


def evaluate(
    model: Recommender,
    eval_set: EvalSetLike,
    item_features: ItemFeatureFn | None = None,
    *,
    ks: Sequence[int] = (5, 10, 20),
    batch_size: int = 512,
    item_batch_size: int = 1024,
    max_score_elements: int = 1 << 25,
    mask_history: bool = True,
    exclude: Exclusions | None = None,
    sampled_negatives: int = 100,
    seed: int = 0,
    ties: TiePolicy = "pessimistic",
    table: ItemTable | None = None,
) -> EvalResult:
    """Evaluate ``model`` on ``eval_set`` with the full-catalogue and the sampled protocols.

    Args:
        model: any recommender; its train/eval flag is restored afterwards.
        eval_set: users, histories (U, T), targets (U,), cold flags (U,).
        item_features: ``item_idx -> (M, L, K, D)`` features, required when ``model.needs_features``.
        ks, batch_size, item_batch_size, max_score_elements, mask_history, sampled_negatives, seed,
            ties: see :class:`EvalConfig`.
        exclude: extra per-user items to mask (items seen before the history window). With a
            ``SplitData``: ``split.train_sequences`` for ``split.valid`` (aligned with its users), and
            ``[np.append(s, t) for s, t in zip(split.train_sequences, split.valid.targets)]`` for
            ``split.test``. Ignored by the full protocol when ``mask_history=False``; always kept
            out of the sampled negatives.
        table: a precomputed :func:`item_table` (skips encoding the catalogue again).

    Returns:
        :class:`EvalResult`.
    """
    cfg = EvalConfig(
        ks=tuple(ks),
        batch_size=batch_size,
        item_batch_size=item_batch_size,
        max_score_elements=max_score_elements,
        mask_history=mask_history,
        sampled_negatives=sampled_negatives,
        seed=seed,
        ties=ties,
    )
    return run_evaluation(model, eval_set, cfg, item_features, exclude=exclude, table=table)


def run_evaluation(
    model: Recommender,
    eval_set: EvalSetLike,
    cfg: EvalConfig,
    item_features: ItemFeatureFn | None = None,
    *,
    exclude: Exclusions | None = None,
    table: ItemTable | None = None,
) -> EvalResult:
    """:func:`evaluate` with its settings given as an :class:`EvalConfig`."""
    t0 = time.perf_counter()
    n = int(model.num_items)
    if table is None:
        table = item_table(model, item_features, cfg.item_batch_size)
    elif table.num_items != n:
        raise ValueError(f"table has {table.num_items} items but {type(model).__name__}.num_items = {n}")
    histories, targets, cold = _check_eval_set(eval_set, n)
    extra = _exclusion_lists(eval_set, exclude, n)
    u = targets.size
    negatives = _draw_negatives(n, histories, targets, extra, cfg) if cfg.sampled_negatives > 0 else None
    ranks_full, ranks_sampled = _rank_targets(model, eval_set, table, cfg, histories, targets, extra, negatives)
    full = _protocol(ranks_full, cold, cfg.ks)
    sampled = None
    if ranks_sampled is not None:
        sampled = _protocol(ranks_sampled, cold, cfg.ks, num_negatives=cfg.sampled_negatives, seed=cfg.seed)
    elapsed = time.perf_counter() - t0
    log.info(
        "evaluated %d users (%d cold) over %d items in %.1fs: %s",
        u,
        int(cold.sum()),
        n,
        elapsed,
        ", ".join(f"{k}={v:.4f}" for k, v in full.overall.items() if k in ("HR@10", "NDCG@10", "MRR")),
    )
    return EvalResult(
        full=full,
        sampled=sampled,
        ranks_full=ranks_full,
        ranks_sampled=ranks_sampled,
        config=cfg,
        elapsed_s=elapsed,
    )
