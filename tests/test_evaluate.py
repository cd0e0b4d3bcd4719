"""Full-catalogue and sampled evaluation on stand-in recommenders whose scores are known."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from linkedout.data.split import EvalSet
from linkedout.evaluation.encode import item_table
from linkedout.evaluation.evaluate import EvalConfig, evaluate, sample_negatives
from linkedout.model.base import ItemEncoding, Recommender
from linkedout.model.build import build_model
from linkedout.model.config import FusionConfig, ModelConfig, SequenceConfig


class ConstUserRecommender(Recommender):
    """Item ``i`` scores ``item_scores[i]`` for every user (a popularity-style model, d = 1)."""

    def __init__(self, item_scores: list[float]) -> None:
        super().__init__()
        self.num_items = len(item_scores)
        self.table = nn.Parameter(torch.tensor([0.0, *item_scores]).unsqueeze(1))  # (N+1, 1)

    def encode_items(self, item_idx: Tensor, features: Tensor | None = None) -> ItemEncoding:
        return ItemEncoding(emb=self.table[item_idx])

    def user_states(self, history_emb: Tensor, history_mask: Tensor) -> Tensor:
        return torch.ones_like(history_emb)  # (B, T, 1)


class LastItemRecommender(Recommender):
    """Random fixed item embeddings; the user state is the embedding of the most recent item."""

    def __init__(self, num_items: int, dim: int = 8, seed: int = 0) -> None:
        super().__init__()
        self.num_items = num_items
        g = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(num_items + 1, dim, generator=g))  # (N+1, d)

    def encode_items(self, item_idx: Tensor, features: Tensor | None = None) -> ItemEncoding:
        return ItemEncoding(emb=self.table[item_idx])

    def user_states(self, history_emb: Tensor, history_mask: Tensor) -> Tensor:
        return history_emb  # causal: the state at t is item t itself


class FeatureRecommender(LastItemRecommender):
    """Needs features: the embedding is the mean of the features over layers and tokens."""

    needs_features = True

    def encode_items(self, item_idx: Tensor, features: Tensor | None = None) -> ItemEncoding:
        assert features is not None
        return ItemEncoding(emb=features.mean(dim=(1, 2)))  # (M, D)


@dataclass
class Eval:
    user_ids: list[str]
    histories: np.ndarray
    targets: np.ndarray
    cold: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __post_init__(self) -> None:
        if self.cold.size == 0:
            self.cold = np.zeros(len(self.user_ids), dtype=bool)


def hand_set() -> Eval:
    # item i scores i (N = 10): the rank of target t is the number of unmasked items above t
    return Eval(
        user_ids=["a", "b", "c"],
        histories=np.array([[0, 0, 9, 3], [0, 0, 10, 2], [0, 4, 2, 3]], dtype=np.int64),
        targets=np.array([5, 10, 1], dtype=np.int64),
        cold=np.array([False, True, False]),
    )


def random_set(num_items: int, users: int, t: int, seed: int) -> Eval:
    rng = np.random.default_rng(seed)
    hist = np.zeros((users, t), dtype=np.int64)
    for u in range(users):
        n = rng.integers(1, t + 1)
        hist[u, t - n :] = rng.choice(np.arange(1, num_items + 1), size=n, replace=False)
    targets = rng.integers(1, num_items + 1, size=users)
    cold = rng.random(users) < 0.3
    return Eval([f"u{i}" for i in range(users)], hist, targets, cold)


def reference_ranks(model: LastItemRecommender, es: Eval, mask_history: bool = True) -> np.ndarray:
    """Brute force, one user at a time, pessimistic ties."""
    e = model.table.detach().numpy()
    out = []
    for hist, tgt in zip(es.histories, es.targets):
        s = e @ e[hist[-1]]
        masked = {0} | (set(hist.tolist()) if mask_history else set())
        out.append(sum(1 for j in range(1, len(e)) if j != tgt and j not in masked and s[j] >= s[tgt]))
    return np.array(out)


def test_known_scores_give_expected_ranks() -> None:
    model = ConstUserRecommender([float(i) for i in range(1, 11)])
    res = evaluate(model, hand_set(), sampled_negatives=0)
    # a: above 5 are 6,7,8,9,10 minus history 9 -> 4; b: target 10 (also in history) is top -> 0;
    # c: above 1 are 2..10 minus history {4,2,3} -> 6
    assert res.ranks_full.tolist() == [4, 0, 6]
    unmasked = evaluate(model, hand_set(), sampled_negatives=0, mask_history=False)
    assert unmasked.ranks_full.tolist() == [5, 0, 9]
    assert res.sampled is None and res.to_dict()["sampled"] is None


def test_target_is_never_masked_even_when_in_history_or_exclude() -> None:
    model = ConstUserRecommender([float(i) for i in range(1, 11)])
    es = hand_set()
    res = evaluate(model, es, sampled_negatives=0, exclude={"a": [5, 6, 7], "b": [10]})
    assert res.ranks_full.tolist() == [2, 0, 6]


def test_exclude_as_mapping_or_aligned_sequence() -> None:
    model = ConstUserRecommender([float(i) for i in range(1, 11)])
    as_map = evaluate(model, hand_set(), sampled_negatives=0, exclude={"c": np.array([9, 10])})
    as_seq = evaluate(model, hand_set(), sampled_negatives=0, exclude=[None, [], [9, 10]])
    assert as_map.ranks_full.tolist() == as_seq.ranks_full.tolist() == [4, 0, 4]
    with pytest.raises(ValueError, match="2 entries"):
        evaluate(model, hand_set(), sampled_negatives=0, exclude=[[1], [2]])
    with pytest.raises(ValueError, match="user 'a'"):
        evaluate(model, hand_set(), sampled_negatives=0, exclude={"a": [11]})


def test_ties_are_pessimistic_by_default() -> None:
    model = ConstUserRecommender([1.0, 2.0, 2.0, 2.0, 3.0])
    es = Eval(["u"], np.array([[0, 1]]), np.array([3]))
    assert evaluate(model, es, sampled_negatives=0).ranks_full.tolist() == [3]
    assert evaluate(model, es, sampled_negatives=0, ties="optimistic").ranks_full.tolist() == [1]


def test_warm_cold_split_and_counts() -> None:
    model = ConstUserRecommender([float(i) for i in range(1, 11)])
    res = evaluate(model, hand_set(), ks=(1, 5), sampled_negatives=0)
    d = res.to_dict()["full"]
    assert d["n_users"] == {"overall": 3, "warm": 2, "cold": 1}
    # warm ranks [4, 6], cold rank [0]
    assert d["warm"]["HR@5"] == pytest.approx(0.5)
    assert d["cold"]["HR@1"] == pytest.approx(1.0)
    assert d["overall"]["HR@5"] == pytest.approx(2 / 3)
    assert d["overall"]["MRR"] == pytest.approx((1 / 5 + 1 + 1 / 7) / 3)


def test_matches_brute_force_and_batching_is_invariant() -> None:
    model = LastItemRecommender(num_items=40, dim=6, seed=1)
    es = random_set(40, users=37, t=5, seed=2)
    ref = reference_ranks(model, es)
    results = [
        evaluate(model, es, batch_size=bs, item_batch_size=ibs, sampled_negatives=10, seed=3)
        for bs, ibs in [(1, 7), (4, 40), (64, 3)]
    ]
    results.append(evaluate(model, es, batch_size=64, max_score_elements=41 * 5, sampled_negatives=10, seed=3))
    for res in results:
        np.testing.assert_array_equal(res.ranks_full, ref)
        np.testing.assert_array_equal(res.ranks_sampled, results[0].ranks_sampled)
        assert res.to_dict()["full"] == results[0].to_dict()["full"]
        assert res.to_dict()["sampled"] == results[0].to_dict()["sampled"]
    np.testing.assert_array_equal(evaluate(model, es, mask_history=False).ranks_full,
                                  reference_ranks(model, es, mask_history=False))


def test_sampled_protocol_properties_via_evaluate() -> None:
    model = LastItemRecommender(num_items=300, dim=4, seed=5)
    es = random_set(300, users=50, t=6, seed=6)
    a = evaluate(model, es, sampled_negatives=20, seed=7)
    b = evaluate(model, es, sampled_negatives=20, seed=7)
    c = evaluate(model, es, sampled_negatives=20, seed=8)
    assert a.ranks_sampled is not None and c.ranks_sampled is not None
    np.testing.assert_array_equal(a.ranks_sampled, b.ranks_sampled)
    assert not np.array_equal(a.ranks_sampled, c.ranks_sampled)
    # negatives are a subset of the unmasked competitors: the sampled rank can only be better
    assert np.all(a.ranks_sampled <= a.ranks_full)
    assert np.all(a.ranks_sampled <= 20)
    sd = a.to_dict()["sampled"]
    assert sd["num_negatives"] == 20 and sd["seed"] == 7 and sd["n_users"]["overall"] == 50


def test_sample_negatives_avoids_forbidden_and_repeats() -> None:
    forbidden = np.array([[1, 2, 3, 0], [5, 6, 7, 8], [0, 0, 0, 0]])
    out = sample_negatives(30, forbidden, 15, np.random.default_rng(0))
    assert out.shape == (3, 15)
    for row, forb in zip(out, forbidden):
        assert len(set(row.tolist())) == 15
        assert not set(row.tolist()) & set(forb.tolist())
        assert row.min() >= 1 and row.max() <= 30
    again = sample_negatives(30, forbidden, 15, np.random.default_rng(0))
    np.testing.assert_array_equal(out, again)


def test_sample_negatives_tiny_catalogue_takes_all_admissible() -> None:
    out = sample_negatives(6, np.array([[1, 2, 0]]), 10, np.random.default_rng(0))
    assert sorted(out[0, :4].tolist()) == [3, 4, 5, 6]
    assert out[0, 4:].tolist() == [0] * 6
    model = ConstUserRecommender([float(i) for i in range(1, 7)])
    res = evaluate(model, Eval(["u"], np.array([[1, 2]]), np.array([4])), sampled_negatives=10)
    assert res.ranks_sampled is not None and res.ranks_sampled.tolist() == [2]  # 5 and 6 beat 4


def test_features_are_passed_and_required() -> None:
    model = FeatureRecommender(num_items=12, dim=4)
    feats = torch.randn(13, 2, 3, 4)

    def item_features(idx: Tensor) -> Tensor:
        return feats[idx]  # (M, L, K, D)

    table = item_table(model, item_features, batch_size=5)
    assert table.emb.shape == (13, 4)
    assert torch.equal(table.emb[0], torch.zeros(4))
    torch.testing.assert_close(table.emb[1:], feats[1:].mean(dim=(1, 2)))
    assert table.gate is None and table.layer_norms is None
    es = random_set(12, users=5, t=3, seed=0)
    res = evaluate(model, es, item_features, sampled_negatives=0)
    assert res.ranks_full.shape == (5,)
    with pytest.raises(ValueError, match="item_features"):
        evaluate(model, es)


def test_training_flag_restored_and_no_grad_kept() -> None:
    model = LastItemRecommender(num_items=10)
    model.train()
    evaluate(model, random_set(10, 4, 3, 0))
    assert model.training
    assert model.table.grad is None


def test_result_is_json_serialisable_with_empty_group() -> None:
    model = ConstUserRecommender([float(i) for i in range(1, 11)])
    es = hand_set()
    es.cold[:] = False
    d = evaluate(model, es, sampled_negatives=5).to_dict()
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    assert back["full"]["n_users"]["cold"] == 0
    assert back["full"]["cold"]["HR@10"] is None
    assert back["settings"]["ks"] == [5, 10, 20]


def test_bad_inputs_name_the_field() -> None:
    model = ConstUserRecommender([1.0, 2.0])
    with pytest.raises(ValueError, match=r"targets\[0\] \(user 'u'\)"):
        evaluate(model, Eval(["u"], np.array([[1]]), np.array([3])))
    with pytest.raises(ValueError, match="histories"):
        evaluate(model, Eval(["u"], np.array([1]), np.array([1])))
    with pytest.raises(ValueError, match=r"EvalConfig\.ks"):
        EvalConfig(ks=(10, 10))
    with pytest.raises(ValueError, match=r"EvalConfig\.batch_size"):
        EvalConfig(batch_size=0)
    with pytest.raises(ValueError, match=r"EvalConfig\.sampled_negatives"):
        EvalConfig(sampled_negatives=-1)


def test_nan_scores_raise_naming_the_user() -> None:
    model = ConstUserRecommender([1.0, float("nan"), 2.0])
    with pytest.raises(ValueError, match=r"NaN scores .*'u'"):
        evaluate(model, Eval(["u"], np.array([[1]]), np.array([3])))


@pytest.mark.parametrize("kind", ["linkedout", "sasrec_id", "popularity"])
def test_real_recommenders_on_a_real_eval_set(kind: str) -> None:
    n = 30
    rng = np.random.default_rng(0)
    es = EvalSet(
        user_ids=[f"u{i}" for i in range(9)],
        histories=rng.integers(0, n + 1, size=(9, 4)).astype(np.int64),
        targets=rng.integers(1, n + 1, size=9).astype(np.int64),
        cold=np.arange(9) % 3 == 0,
    )
    feats = torch.randn(n + 1, 3, 4, 16)
    cfg = ModelConfig(
        kind=kind,  # type: ignore[arg-type]
        d_model=16,
        fusion=FusionConfig(num_layers=3, tokens=4, in_dim=16, d_model=16, gate_hidden=8),
        sequence=SequenceConfig(max_history=4, num_layers=1, num_heads=2, ffn_dim=32),
        head_hidden=0,
    )
    model = build_model(cfg, n, item_counts=np.arange(n + 1))
    small = evaluate(model, es, lambda idx: feats[idx], batch_size=2, item_batch_size=7, sampled_negatives=5)
    large = evaluate(model, es, lambda idx: feats[idx], batch_size=64, sampled_negatives=5)
    np.testing.assert_array_equal(small.ranks_full, large.ranks_full)
    np.testing.assert_array_equal(small.ranks_sampled, large.ranks_sampled)
    d = small.to_dict()
    assert d["full"]["n_users"] == {"overall": 9, "warm": 6, "cold": 3}
    assert all(0 <= r < n for r in small.ranks_full)
    if kind == "popularity":  # score = log(1 + count) = increasing in the item index here
        expected = [
            sum(1 for j in range(t + 1, n + 1) if j not in set(h.tolist())) for h, t in zip(es.histories, es.targets)
        ]
        assert small.ranks_full.tolist() == expected
