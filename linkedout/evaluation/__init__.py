"""Offline evaluation: full-catalogue and sampled ranking metrics, overall and warm/cold.

``evaluate(model, eval_set, item_features)`` is what the trainer (validation every epoch) and the
CLI (test set) call; ``item_table`` (``encode``) encodes the catalogue once and can be shared
between calls; ``metrics`` holds the rank and ranking-metric functions.
"""

from linkedout.evaluation.encode import ItemTable, item_table
from linkedout.evaluation.evaluate import (
    EvalConfig,
    EvalResult,
    ProtocolResult,
    evaluate,
    run_evaluation,
    sample_negatives,
)
from linkedout.evaluation.metrics import (
    hit_rate,
    metric_names,
    ndcg,
    ranking_metrics,
    reciprocal_rank,
    target_ranks,
    target_ranks_masked,
)

__all__ = [
    "EvalConfig",
    "EvalResult",
    "ItemTable",
    "ProtocolResult",
    "evaluate",
    "hit_rate",
    "item_table",
    "metric_names",
    "ndcg",
    "ranking_metrics",
    "reciprocal_rank",
    "run_evaluation",
    "sample_negatives",
    "target_ranks",
    "target_ranks_masked",
]
