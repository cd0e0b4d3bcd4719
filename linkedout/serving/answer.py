"""The answer to a request (``RecResult``) and how the engine fills it: each user's best ``k`` unseen
rows (``fill``), the layer gates and contributions behind them (``explain``) and the request log's
records (``log_records``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from linkedout.serving.catalog import CatalogView
from linkedout.serving.routing import RoutingVariant

__all__ = ["RecResult", "explain", "fill", "log_records"]


@dataclass
class RecResult:
    """The answer for ``B`` users (see docs/serving.md §3 for the tensors)."""

    request_id: str
    user_ids: list[str]
    items: np.ndarray  # (B, k) int64 video ids, -1 where fewer are left
    scores: np.ndarray  # (B, k) float32, 0 where padded
    variants: list[str]
    model_versions: list[str]  # "NAME_ranker:v"
    cold_start: np.ndarray  # (B,) bool
    unknown_items: list[list[int]]
    gate: np.ndarray | None = None  # (B, k, L) with explain
    contributions: np.ndarray | None = None  # (B, k, L) with explain
    layers: list[str] = field(default_factory=list)
    latency_ms: float = 0.0


def log_records(result: RecResult, experiment: str, variants: Sequence[RoutingVariant],
                now_ms: int) -> list[dict[str, object]]:
    """The request log's records of one answer, one per user."""
    records = []
    for i, v in enumerate(variants):
        n = int((result.items[i] >= 0).sum())
        records.append({
            "request_id": result.request_id, "ts": now_ms, "user_id": result.user_ids[i],
            "experiment": experiment, "variant": v.name, "model": v.model,
            "model_version": result.model_versions[i], "items": result.items[i, :n].tolist(),
            "scores": [round(float(s), 6) for s in result.scores[i, :n]],
            "cold_start": bool(result.cold_start[i]), "latency_ms": round(result.latency_ms, 3)})
    return records


def fill(i: int, rows: np.ndarray, row_scores: np.ndarray, seen: set[int], k: int, ids: np.ndarray,
         result: RecResult, result_rows: np.ndarray) -> None:
    """Put the first ``k`` rows not in ``seen`` (and finite) into user ``i``'s answer (``ids``: of rows 0..R;
    a row past R, added to the index since that state, is skipped until the state knows it)."""
    row_scores = row_scores[: rows.shape[0]]
    ok = np.flatnonzero((rows > 0) & (rows < ids.shape[0]) & np.isfinite(row_scores))
    if seen:  # the candidates are about k + |seen|: a set lookup each
        ok = np.asarray([j for j, r in zip(ok.tolist(), rows[ok].tolist()) if r not in seen], dtype=np.int64)
    ok = ok[:k]
    n = ok.shape[0]
    chosen = rows[ok]
    result.items[i, :n] = ids[chosen]
    result.scores[i, :n] = row_scores[ok]
    result_rows[i, :n] = chosen


def explain(result: RecResult, groups: Sequence[tuple[CatalogView, list[int]]], result_rows: np.ndarray) -> None:
    """The gate weights and contributions of each result's catalogue row, (B, k, L); ``groups``: each
    catalogue version's view and the users (positions in the answer) it served."""
    n_layers = max((view.num_layers for view, _ in groups), default=0)
    b, k = result_rows.shape
    gate = np.zeros((b, k, n_layers), dtype=np.float32)
    contrib = np.zeros((b, k, n_layers), dtype=np.float32)
    layers: list[str] = []
    for view, users in groups:
        if not view.num_layers:
            continue
        layers = layers or list(view.layers)
        for i in users:
            rows = result_rows[i]
            ok = rows > 0
            gate[i, ok, : view.num_layers] = view.gate_of(rows[ok])
            contrib[i, ok, : view.num_layers] = view.contributions_of(rows[ok])
    result.gate, result.contributions, result.layers = gate, contrib, layers
