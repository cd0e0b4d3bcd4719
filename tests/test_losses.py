"""Training losses against hand-computed values, and the negative sampler."""

from __future__ import annotations

import math

import pytest
import torch

from linkedout.training.losses import (
    bpr_loss,
    full_softmax_loss,
    inbatch_logq_loss,
    log_popularity,
    positions_in,
    sample_negatives,
)

# Two users, three candidate items (indices 2, 5, 7) in d=2.
USER = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # (P=2, d=2)
CAND_IDX = torch.tensor([2, 5, 7])  # (C=3,)
CAND_EMB = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])  # (C, d)
# scores = USER @ CAND_EMB.T = [[1, 0, 2], [0, 2, 2]]


def _ce(logits: list[float], target: int) -> float:
    return -logits[target] + math.log(sum(math.exp(v) for v in logits))


def test_log_popularity_is_log_share_and_finite_for_cold_items() -> None:
    counts = torch.tensor([0, 6, 0, 2])  # item 2 never seen in training -> counted once
    logq = log_popularity(counts)
    assert logq[0] == 0
    assert torch.allclose(logq[1:], torch.log(torch.tensor([6 / 9, 1 / 9, 2 / 9])))


def test_inbatch_logq_matches_hand_computation() -> None:
    log_q = torch.zeros(8)
    log_q[2], log_q[5], log_q[7] = math.log(0.5), math.log(0.25), math.log(0.25)
    targets = torch.tensor([2, 7])
    loss = inbatch_logq_loss(USER, targets, CAND_IDX, CAND_EMB, log_q, temperature=1.0)
    row0 = [1 - math.log(0.5), 0 - math.log(0.25), 2 - math.log(0.25)]
    row1 = [0 - math.log(0.5), 2 - math.log(0.25), 2 - math.log(0.25)]
    expected = (_ce(row0, 0) + _ce(row1, 2)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_inbatch_logq_temperature_scales_scores_not_correction() -> None:
    log_q = torch.zeros(8)
    log_q[5] = math.log(0.5)
    loss = inbatch_logq_loss(USER[:1], torch.tensor([5]), CAND_IDX, CAND_EMB, log_q, temperature=0.5)
    row = [2.0, 0.0 - math.log(0.5), 4.0]
    assert loss.item() == pytest.approx(_ce(row, 1), rel=1e-6)


def test_inbatch_logq_uniform_popularity_equals_plain_softmax() -> None:
    targets = torch.tensor([5, 2])
    log_q = torch.full((8,), math.log(1 / 3))
    a = inbatch_logq_loss(USER, targets, CAND_IDX, CAND_EMB, log_q)
    b = full_softmax_loss(USER, targets, CAND_IDX, CAND_EMB)
    assert torch.allclose(a, b)


def test_full_softmax_matches_hand_computation() -> None:
    loss = full_softmax_loss(USER, torch.tensor([5, 5]), CAND_IDX, CAND_EMB, temperature=2.0)
    expected = (_ce([0.5, 0.0, 1.0], 1) + _ce([0.0, 1.0, 1.0], 1)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_bpr_matches_hand_computation() -> None:
    targets = torch.tensor([7, 5])
    negatives = torch.tensor([[2, 5], [2, 7]])  # (P, n=2)
    loss = bpr_loss(USER, targets, negatives, CAND_IDX, CAND_EMB)
    # user 0: s(7)=2, s(2)=1, s(5)=0; user 1: s(5)=2, s(2)=0, s(7)=2
    pairs = [2 - 1, 2 - 0, 2 - 0, 2 - 2]
    expected = sum(math.log(1 + math.exp(-x)) for x in pairs) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_losses_use_the_model_score_function() -> None:
    def neg_dist(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return -torch.cdist(u, v)

    loss = full_softmax_loss(USER[:1], torch.tensor([2]), CAND_IDX, CAND_EMB, score=neg_dist)
    row = [0.0, -math.sqrt(2), -math.sqrt(2)]
    assert loss.item() == pytest.approx(_ce(row, 0), rel=1e-6)


def test_gradients_flow_to_users_and_items() -> None:
    user = USER.clone().requires_grad_(True)
    emb = CAND_EMB.clone().requires_grad_(True)
    full_softmax_loss(user, torch.tensor([2, 7]), CAND_IDX, emb).backward()
    assert user.grad is not None and emb.grad is not None
    assert user.grad.abs().sum() > 0 and emb.grad.abs().sum() > 0


def test_target_missing_from_candidates_raises() -> None:
    with pytest.raises(ValueError, match=r"\[3\]"):
        full_softmax_loss(USER, torch.tensor([2, 3]), CAND_IDX, CAND_EMB)
    with pytest.raises(ValueError, match="negative"):
        bpr_loss(USER, torch.tensor([2, 5]), torch.tensor([[9], [2]]), CAND_IDX, CAND_EMB)


def test_empty_batch_raises() -> None:
    with pytest.raises(ValueError, match="no valid positions"):
        full_softmax_loss(USER[:0], torch.tensor([], dtype=torch.long), CAND_IDX, CAND_EMB)


def test_positions_in_keeps_shape() -> None:
    pos = positions_in(CAND_IDX, torch.tensor([[7, 2], [5, 5]]))
    assert pos.tolist() == [[2, 0], [1, 1]]


def test_sample_negatives_uniform_over_other_items_and_zero_on_padding() -> None:
    gen = torch.Generator().manual_seed(0)
    targets = torch.tensor([[0, 3], [1, 5]])  # (B=2, T=2), one padding slot
    neg = sample_negatives(targets, num_items=5, num=4000, generator=gen)  # (2, 2, 4000)
    assert neg.shape == (2, 2, 4000)
    assert (neg[0, 0] == 0).all()
    for t, row in ((3, neg[0, 1]), (1, neg[1, 0]), (5, neg[1, 1])):
        assert not (row == t).any()
        assert row.min() >= 1 and row.max() <= 5
        counts = torch.bincount(row, minlength=6)[1:].float()
        others = torch.cat([counts[: t - 1], counts[t:]])  # the 4 admissible items
        assert counts[t - 1] == 0
        assert (others - 1000).abs().max() < 150  # ~4.7 standard deviations of a binomial(4000, 1/4)


def test_sample_negatives_is_deterministic_in_the_generator() -> None:
    t = torch.tensor([1, 2, 3])
    a = sample_negatives(t, 10, 3, torch.Generator().manual_seed(7))
    b = sample_negatives(t, 10, 3, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="at least 2 items"):
        sample_negatives(torch.tensor([1]), 1, 1, torch.Generator())
