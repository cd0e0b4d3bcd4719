"""Ranking metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from linkedout.evaluation.metrics import (
    hit_rate,
    metric_names,
    ndcg,
    ranking_metrics,
    reciprocal_rank,
    target_ranks,
    target_ranks_masked,
)


def test_hand_computed_ranks_0_3_12() -> None:
    m = ranking_metrics([0, 3, 12], ks=(5, 10, 20))
    assert m["HR@5"] == pytest.approx(2 / 3)
    assert m["HR@10"] == pytest.approx(2 / 3)
    assert m["HR@20"] == pytest.approx(1.0)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / math.log2(5)) / 3)
    assert m["NDCG@20"] == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(14)) / 3)
    assert m["MRR"] == pytest.approx((1 + 1 / 4 + 1 / 13) / 3)


def test_cutoff_is_strict() -> None:
    # rank K-1 is inside the top K, rank K is not
    assert hit_rate([9, 10], 10).tolist() == [1.0, 0.0]
    assert ndcg([9, 10], 10).tolist() == pytest.approx([1 / math.log2(11), 0.0])
    assert reciprocal_rank([0, 1, 9]).tolist() == pytest.approx([1.0, 0.5, 0.1])


def test_metric_order_and_empty_input() -> None:
    assert metric_names((5, 10)) == ["HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR"]
    empty = ranking_metrics(np.zeros(0, dtype=np.int64), ks=(10,))
    assert list(empty) == ["HR@10", "NDCG@10", "MRR"]
    assert all(math.isnan(v) for v in empty.values())


def test_metrics_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="k must be"):
        hit_rate([1], 0)
    with pytest.raises(ValueError, match=">= 0"):
        ranking_metrics([-1])
    with pytest.raises(ValueError, match="one-dimensional"):
        ranking_metrics([[1, 2]])


def test_target_ranks_counts_strictly_higher_and_masks() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.3, 0.2, 0.1, 0.0]])
    target = torch.tensor([2, 0])
    # row 0: target 0.5, higher: 0.9, 0.7 -> 2 ; row 1: target 0.3 is the best -> 0
    assert target_ranks(scores, target).tolist() == [2, 0]
    competes = torch.tensor([[True, False, True, True], [True, True, True, True]])
    assert target_ranks(scores, target, competes).tolist() == [1, 0]
    # the target never competes with itself, even if the mask says it does or does not
    competes[0, 2] = False
    assert target_ranks(scores, target, competes).tolist() == [1, 0]


def test_target_ranks_tie_policies() -> None:
    scores = torch.tensor([[1.0, 1.0, 1.0, 2.0]])
    target = torch.tensor([1])
    assert target_ranks(scores, target, ties="pessimistic").tolist() == [3]
    assert target_ranks(scores, target, ties="optimistic").tolist() == [1]
    with pytest.raises(ValueError, match="ties"):
        target_ranks(scores, target, ties="average")  # type: ignore[arg-type]


def test_target_ranks_rejects_nan_target_and_bad_shapes() -> None:
    with pytest.raises(ValueError, match="NaN"):
        target_ranks(torch.tensor([[float("nan"), 1.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="target_col"):
        target_ranks(torch.zeros(2, 3), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"0\.\.2"):
        target_ranks(torch.zeros(1, 3), torch.tensor([3]))


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
def test_masked_columns_path_equals_the_mask_path(ties: str) -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (50, 12), generator=g).float()  # many ties
    target = torch.randint(0, 12, (50,), generator=g)
    masked = torch.randint(0, 12, (50, 5), generator=g)  # repeats and the target itself included
    masked[0] = target[0]
    competes = torch.ones(50, 12, dtype=torch.bool)
    competes.scatter_(1, masked, False)
    expected = target_ranks(scores, target, competes, ties=ties)  # type: ignore[arg-type]
    got = target_ranks_masked(scores, target, masked, ties=ties)  # type: ignore[arg-type]
    assert got.tolist() == expected.tolist()
    no_mask = target_ranks_masked(scores, target, torch.zeros(50, 0, dtype=torch.long), ties=ties)  # type: ignore[arg-type]
    assert no_mask.tolist() == target_ranks(scores, target, ties=ties).tolist()  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="masked_cols"):
        target_ranks_masked(scores, target, torch.full((50, 1), 12))
