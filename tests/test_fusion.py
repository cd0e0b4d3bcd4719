"""Cross-layer Knowledge-Fusion MoE: shapes, gate semantics, ablation modes, regularisers, config checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from linkedout.model.fusion import CrossLayerFusion, FusionConfig, LayerExperts

L, K, D, DM = 6, 8, 32, 32


def tiny(**kw: object) -> FusionConfig:
    base: dict[str, object] = dict(num_layers=L, tokens=K, in_dim=D, d_model=DM, gate_hidden=16)
    base.update(kw)
    return FusionConfig(**base)  # type: ignore[arg-type]


def feats(m: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, L, K, D, generator=g) * 3.0 + 1.0  # (M, L, K, D)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("mode", ["moe", "uniform", "single"])
@pytest.mark.parametrize("gate_input", ["expert", "backbone"])
@pytest.mark.parametrize("queries,hidden", [(1, 0), (3, 16)])
def test_output_shapes_and_finite(mode: str, gate_input: str, queries: int, hidden: int) -> None:
    fusion = CrossLayerFusion(tiny(mode=mode, gate_input=gate_input, expert_queries=queries,
                                   expert_hidden=hidden)).eval()
    out = fusion(feats(5))
    assert out.emb.shape == (5, DM)
    assert out.gate.shape == (5, L)
    assert out.layer_outputs.shape == (5, L, DM)
    assert out.aux_loss is None  # eval mode
    assert torch.isfinite(out.emb).all() and torch.isfinite(out.gate).all()
    torch.testing.assert_close(out.gate.sum(-1), torch.ones(5))
    torch.testing.assert_close(out.emb, (out.gate.unsqueeze(-1) * out.layer_outputs).sum(1))


def test_moe_gate_is_per_video_and_differs() -> None:
    fusion = CrossLayerFusion(tiny(gate_temperature=0.05)).eval()
    gate = fusion(feats(6)).gate  # (M, L)
    assert (gate > 0).all()
    torch.testing.assert_close(gate.sum(-1), torch.ones(6))
    # Different videos get different layer weights.
    assert (gate - gate[:1]).abs().amax() > 1e-3
    # A video's gate depends only on that video (no mixing across the batch).
    alone = fusion(feats(6)[2:3]).gate
    torch.testing.assert_close(alone[0], gate[2], atol=1e-5, rtol=1e-5)


def test_temperature_sharpens_gate() -> None:
    f_warm = CrossLayerFusion(tiny(gate_temperature=1.0)).eval()
    f_cold = CrossLayerFusion(tiny(gate_temperature=0.01)).eval()
    f_cold.load_state_dict(f_warm.state_dict())
    x = feats(8)
    ent = lambda p: -(p * p.clamp_min(1e-12).log()).sum(-1).mean()  # noqa: E731
    assert ent(f_cold(x).gate) < ent(f_warm(x).gate)


def test_uniform_mode_has_fixed_equal_weights_and_no_gate() -> None:
    fusion = CrossLayerFusion(tiny(mode="uniform")).eval()
    out = fusion(feats(4))
    torch.testing.assert_close(out.gate, torch.full((4, L), 1.0 / L))
    torch.testing.assert_close(out.emb, out.layer_outputs.mean(1))
    assert fusion.gate is None
    assert not any(n.startswith("gate.") for n, _ in fusion.named_parameters())


@pytest.mark.parametrize("single_layer,expected", [(2, 2), (-1, L - 1)])
def test_single_mode_uses_only_its_layer(single_layer: int, expected: int) -> None:
    fusion = CrossLayerFusion(tiny(mode="single", single_layer=single_layer)).eval()
    assert fusion.experts.num_experts == 1
    x = feats(3)
    out = fusion(x)
    torch.testing.assert_close(out.gate, F.one_hot(torch.full((3,), expected), L).float())
    others = [i for i in range(L) if i != expected]
    assert out.layer_outputs[:, others].abs().max() == 0
    torch.testing.assert_close(out.layer_outputs[:, expected], out.emb)
    # Changing every other layer's features leaves the embedding unchanged ...
    y = x.clone()
    y[:, others] = torch.randn_like(y[:, others]) * 10
    torch.testing.assert_close(fusion(y).emb, out.emb)
    # ... changing the chosen layer does not.
    z = x.clone()
    z[:, expected] = torch.randn_like(z[:, expected])
    assert not torch.allclose(fusion(z).emb, out.emb)


def _reference_expert(x: torch.Tensor, ex: LayerExperts, e: int) -> torch.Tensor:
    """Project-then-pool, one expert at a time: the textbook form of the batched expert."""
    z = F.layer_norm(x, (ex.in_dim,)) @ ex.proj_weight[e] + ex.proj_bias[e]  # (M, K, d)
    a = torch.softmax(z @ ex.query[e].T / math.sqrt(ex.d_model), dim=1)  # (M, K, Q)
    pooled = torch.einsum("mkq,mkd->mqd", a, z)  # (M, Q, d)
    if ex.mix_weight is not None:
        assert ex.mix_bias is not None
        return pooled.flatten(1) @ ex.mix_weight[e] + ex.mix_bias[e]
    return pooled[:, 0]


@pytest.mark.parametrize("queries", [1, 4])
def test_batched_experts_match_per_layer_reference(queries: int) -> None:
    fusion = CrossLayerFusion(tiny(expert_queries=queries))
    with torch.no_grad():  # non-trivial biases so that their handling is checked too
        fusion.experts.proj_bias.normal_()
        fusion.experts.query.normal_()
    x = feats(4)
    h = fusion.experts(x)
    for e in range(L):
        torch.testing.assert_close(h[:, e], _reference_expert(x[:, e], fusion.experts, e), atol=1e-4,
                                   rtol=1e-4)


def test_expert_parameter_count_formula() -> None:
    ex = LayerExperts(num_experts=L, in_dim=D, d_model=DM, queries=1)
    assert sum(p.numel() for p in ex.parameters()) == L * (D * DM + DM + DM)
    ex4 = LayerExperts(num_experts=L, in_dim=D, d_model=DM, queries=4)
    assert sum(p.numel() for p in ex4.parameters()) == L * (D * DM + DM + 4 * DM + 4 * DM * DM + DM)


def test_regularisers_train_mode_and_gradients() -> None:
    fusion = CrossLayerFusion(tiny(balance_weight=0.1, entropy_weight=0.01, kp_weight=1.0)).train()
    out = fusion(feats(6))
    assert out.aux_loss is not None and out.aux_loss.dim() == 0 and torch.isfinite(out.aux_loss)
    assert set(out.aux_terms) == {"balance", "entropy", "kp"}
    assert out.aux_terms["balance"] >= 0  # a KL divergence
    assert 0 <= out.aux_terms["entropy"] <= math.log(L) + 1e-5
    expected = 0.1 * out.aux_terms["balance"] + 0.01 * out.aux_terms["entropy"] + out.aux_terms["kp"]
    torch.testing.assert_close(out.aux_loss, expected)
    (out.emb.sum() + out.aux_loss).backward()
    for name, p in fusion.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert fusion.kp_decoder is not None and fusion.kp_decoder.weight.grad is not None
    assert fusion.kp_decoder.weight.grad.abs().sum() > 0


def test_no_regulariser_means_no_aux_and_no_decoder() -> None:
    fusion = CrossLayerFusion(tiny(balance_weight=0.0, entropy_weight=0.0, kp_weight=0.0)).train()
    assert fusion.kp_decoder is None
    out = fusion(feats(3))
    assert out.aux_loss is None and out.aux_terms == {}


def test_balance_ignores_invalid_rows() -> None:
    fusion = CrossLayerFusion(tiny(balance_weight=1.0)).train()
    x = feats(5)
    valid = torch.tensor([True, True, False, True, False])
    masked = fusion(x, valid=valid).aux_terms["balance"]
    subset = fusion(x[valid]).aux_terms["balance"]
    torch.testing.assert_close(masked, subset)


def test_balance_is_zero_for_uniform_usage() -> None:
    fusion = CrossLayerFusion(tiny(balance_weight=1.0)).train()
    with torch.no_grad():
        fusion.gate.score.weight.zero_()  # type: ignore[union-attr]
    assert fusion(feats(4)).aux_terms["balance"].abs() < 1e-6


def test_padding_video_of_zeros_is_finite() -> None:
    fusion = CrossLayerFusion(tiny(kp_weight=1.0)).train()
    out = fusion(torch.zeros(2, L, K, D))
    assert torch.isfinite(out.emb).all() and out.aux_loss is not None and torch.isfinite(out.aux_loss)


@pytest.mark.parametrize("shape,field", [((2, L - 1, K, D), "num_layers"), ((2, L, K + 1, D), "tokens"),
                                         ((2, L, K, D + 1), "in_dim")])
def test_feature_shape_mismatch_names_field(shape: tuple[int, ...], field: str) -> None:
    fusion = CrossLayerFusion(tiny())
    with pytest.raises(ValueError, match=field):
        fusion(torch.zeros(shape))


@pytest.mark.parametrize("kw,field", [
    ({"num_layers": 0}, "num_layers"),
    ({"tokens": 0}, "tokens"),
    ({"in_dim": -1}, "in_dim"),
    ({"d_model": 0}, "d_model"),
    ({"expert_queries": K + 1}, "expert_queries"),
    ({"expert_hidden": -1}, "expert_hidden"),
    ({"gate_hidden": 0}, "gate_hidden"),
    ({"gate_temperature": 0.0}, "gate_temperature"),
    ({"gate_input": "tokens"}, "gate_input"),
    ({"balance_weight": -0.1}, "balance_weight"),
    ({"entropy_weight": float("nan")}, "entropy_weight"),
    ({"kp_weight": -1.0}, "kp_weight"),
    ({"mode": "topk"}, "mode"),
    ({"single_layer": L}, "single_layer"),
    ({"single_layer": -2}, "single_layer"),
    ({"num_layers": 2.5}, "num_layers"),
])
def test_bad_config_raises_naming_field(kw: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=rf"FusionConfig\.{field}"):
        tiny(**kw)


def test_config_round_trip() -> None:
    cfg = tiny(mode="single", single_layer=3, expert_queries=2, kp_weight=0.5)
    assert FusionConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="num_layer"):
        FusionConfig.from_dict({**cfg.to_dict(), "num_layer": 3})
