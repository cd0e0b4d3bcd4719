"""Recommenders under the base.Recommender contract: LinkedOut (ID-free and hybrid), SASRec-ID, popularity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from linkedout.model import (
    FusionConfig,
    ImageConfig,
    ItemEncoding,
    LinkedOutRecommender,
    ModelConfig,
    Popularity,
    Recommender,
    SequenceConfig,
    TextConfig,
    build_model,
    gather_history,
    hash_title_tokens,
    unique_items,
)
from linkedout.model.config import COUNT_KINDS, FEATURE_KINDS
from linkedout.model.summary import (
    format_summary,
    paper_comparison,
    paper_parameter_summary,
    parameter_summary,
)

N, L, K, D, DM, T = 20, 6, 8, 32, 32, 10
TRAINABLE = ["linkedout", "hybrid", "warmcold", "sasrec_id"]
ALL_KINDS = [*TRAINABLE, "popularity"]


def tiny_cfg(kind: str = "linkedout", text: bool = False, image: bool = False, **fusion_kw: object) -> ModelConfig:
    fusion: dict[str, object] = dict(num_layers=L, tokens=K, in_dim=D, d_model=DM, gate_hidden=16)
    fusion.update(fusion_kw)
    return ModelConfig(
        kind=kind,  # type: ignore[arg-type]
        d_model=DM,
        fusion=FusionConfig(**fusion),  # type: ignore[arg-type]
        sequence=SequenceConfig(max_history=T, num_layers=2, num_heads=2, ffn_dim=64, dropout=0.1),
        text=TextConfig(enabled=text, num_buckets=64, dim=16, max_tokens=6),
        image=ImageConfig(enabled=image, size=16, channels=(4, 8)),
        head_hidden=64,
    )


COUNTS = np.arange(N + 1, dtype=np.int64) % 7 * 3  # item 0 (padding) has count 0


def make(kind: str = "linkedout", **kw: object) -> Recommender:
    torch.manual_seed(0)
    return build_model(tiny_cfg(kind, **kw), N, item_counts=COUNTS if kind in COUNT_KINDS else None)  # type: ignore[arg-type]


def catalogue_features(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(N + 1, L, K, D, generator=g)
    f[0] = 0  # padding item
    return f  # (N+1, L, K, D)


def encode(model: Recommender, idx: torch.Tensor, feats: torch.Tensor) -> ItemEncoding:
    return model.encode_items(idx, feats[idx] if model.needs_features else None)


def rand_history(b: int = 4, t: int = T, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    h = torch.randint(1, N + 1, (b, t), generator=g)
    lengths = torch.tensor([t, 3, 1, 0][:b])
    for i, n in enumerate(lengths.tolist()):
        h[i, : t - n] = 0  # left padding: most recent item last
    return h  # (B, T)


@pytest.fixture(scope="module")
def feats() -> torch.Tensor:
    return catalogue_features()


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_contract_shapes(kind: str, feats: torch.Tensor) -> None:
    model = make(kind).eval()
    assert model.needs_features == (kind in FEATURE_KINDS)
    assert model.num_items == N and isinstance(model.config, ModelConfig)
    idx = torch.arange(1, N + 1)
    enc = encode(model, idx, feats)
    assert enc.emb.shape == (N, DM)
    if kind in FEATURE_KINDS:
        assert enc.gate is not None and enc.gate.shape == (N, L)
        assert enc.layer_outputs is not None and enc.layer_outputs.shape == (N, L, DM)
    hist = rand_history()
    uniq, (inv,) = unique_items(hist)
    item_emb = encode(model, uniq, feats).emb
    hemb, mask = gather_history(item_emb, inv, hist)
    states = model.user_states(hemb, mask)
    assert states.shape == (4, T, DM) and torch.isfinite(states).all()
    user = model.last_state(hemb, mask)
    scores = model.score(user, enc.emb)
    assert scores.shape == (4, N) and torch.isfinite(scores).all()


@pytest.mark.parametrize("kind", TRAINABLE)
def test_user_states_are_causal(kind: str) -> None:
    model = make(kind).eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, T, DM, generator=g)
    mask = torch.ones(2, T, dtype=torch.bool)
    base = model.user_states(x, mask)
    t = 6
    y = x.clone()
    y[:, t:] = torch.randn(2, T - t, DM, generator=g)
    changed = model.user_states(y, mask)
    torch.testing.assert_close(changed[:, :t], base[:, :t], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(changed[:, t:], base[:, t:])


@pytest.mark.parametrize("kind", TRAINABLE)
def test_left_padding_matches_unpadded_and_all_padding_is_finite(kind: str) -> None:
    model = make(kind).eval()
    g = torch.Generator().manual_seed(4)
    short = torch.randn(1, 3, DM, generator=g)
    unpadded = model.user_states(short, torch.ones(1, 3, dtype=torch.bool))[:, -1]
    padded_emb = torch.cat([torch.randn(1, T - 3, DM, generator=g) * 5, short], dim=1)  # junk in padding
    padded_mask = torch.arange(T).unsqueeze(0) >= T - 3
    padded = model.user_states(padded_emb, padded_mask)[:, -1]
    torch.testing.assert_close(padded, unpadded, atol=1e-5, rtol=1e-4)
    empty = model.user_states(torch.zeros(2, T, DM), torch.zeros(2, T, dtype=torch.bool))
    assert torch.isfinite(empty).all()
    model.train()  # also with dropout on, and backward through an all-padding row
    out = model.user_states(torch.zeros(2, T, DM, requires_grad=True), torch.zeros(2, T, dtype=torch.bool))
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_history_longer_than_max_raises() -> None:
    model = make("linkedout")
    with pytest.raises(ValueError, match="max_history"):
        model.user_states(torch.zeros(1, T + 1, DM), torch.ones(1, T + 1, dtype=torch.bool))


@pytest.mark.parametrize("kind,text,image,groups", [
    ("linkedout", False, False, {"video", "head"}),
    ("linkedout", True, True, {"video", "text", "image", "head"}),
    ("hybrid", True, False, {"video", "text", "id", "head"}),
    ("warmcold", True, False, {"video", "text", "id", "head"}),
    ("sasrec_id", False, False, {"id", "head"}),
    ("popularity", False, False, set()),
])
def test_param_groups_partition_trainable_parameters(kind: str, text: bool, image: bool, groups: set[str]) -> None:
    model = make(kind, text=text, image=image)
    pg = model.param_groups()
    assert set(pg) == groups
    ids = [id(p) for ps in pg.values() for p in ps]
    assert len(ids) == len(set(ids))  # disjoint
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}  # complete
    if "video" in pg:
        video = {id(p) for p in model.fusion.parameters()}  # type: ignore[union-attr]
        assert {id(p) for p in pg["video"]} == video


@pytest.mark.parametrize("kind,text,image", [("linkedout", False, False), ("linkedout", True, True),
                                             ("hybrid", True, True), ("warmcold", True, True),
                                             ("sasrec_id", False, False)])
def test_training_step_reaches_every_parameter(kind: str, text: bool, image: bool, feats: torch.Tensor) -> None:
    model = make(kind, text=text, image=image, kp_weight=0.5)
    if isinstance(model, LinkedOutRecommender):
        titles = ["", *[f"video number {i} about topic {i % 3}" for i in range(1, N + 1)]]
        covers = torch.randint(0, 256, (N + 1, 3, 16, 16), dtype=torch.uint8)
        model.set_item_side_info(hash_title_tokens(titles, 6, 64) if text else None, covers if image else None)
    model.train()
    hist = rand_history()
    targets = torch.randint(1, N + 1, (4,))
    uniq, (inv, tinv) = unique_items(hist, targets)
    enc = encode(model, uniq, feats)
    hemb, mask = gather_history(enc.emb, inv, hist)
    user = model.last_state(hemb, mask)
    logits = model.score(user, enc.emb)  # in-batch candidates
    loss = torch.nn.functional.cross_entropy(logits, tinv)
    if enc.aux_loss is not None:
        loss = loss + enc.aux_loss
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    opt = torch.optim.AdamW([{"params": ps, "lr": 1e-3} for ps in model.param_groups().values()])
    opt.step()


def test_side_info_changes_item_embedding_and_is_validated(feats: torch.Tensor) -> None:
    model = make("linkedout", text=True, image=True).eval()
    assert isinstance(model, LinkedOutRecommender)
    idx = torch.tensor([1, 2])
    before = encode(model, idx, feats).emb
    tokens = np.zeros((N + 1, 4), dtype=np.int64)
    tokens[1, :2] = [5, 9]
    model.set_item_side_info(title_tokens=tokens)
    after = encode(model, idx, feats).emb
    assert not torch.allclose(after[0], before[0]) and torch.allclose(after[1], before[1])
    model.set_item_side_info(covers=torch.rand(N + 1, 3, 16, 16))  # float in [0, 1] is accepted
    assert model.covers.dtype == torch.uint8
    with pytest.raises(ValueError, match="title_tokens"):
        model.set_item_side_info(title_tokens=np.zeros((N, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="title_tokens"):
        model.set_item_side_info(title_tokens=np.zeros((N + 1, 7), dtype=np.int64))
    with pytest.raises(ValueError, match="covers"):
        model.set_item_side_info(covers=torch.zeros(N + 1, 16, 16, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="covers"):
        model.set_item_side_info(covers=torch.full((N + 1, 3, 16, 16), 2.0))
    plain = make("linkedout")
    assert isinstance(plain, LinkedOutRecommender)
    with pytest.raises(ValueError, match=r"text\.enabled"):
        plain.set_item_side_info(title_tokens=tokens)


def test_encode_items_needs_matching_features() -> None:
    model = make("linkedout")
    with pytest.raises(ValueError, match="features"):
        model.encode_items(torch.tensor([1, 2]), None)
    with pytest.raises(ValueError, match="disagree"):
        model.encode_items(torch.tensor([1, 2]), torch.zeros(3, L, K, D))


def test_hash_title_tokens() -> None:
    ids = hash_title_tokens(["", "Cute Cat video", "cute cat", "猫猫 cat", "a b c d e f g"], 4, 50)
    assert ids.shape == (5, 4) and ids.dtype == np.int64
    assert (ids[0] == 0).all()
    assert ((ids >= 0) & (ids < 50)).all()
    assert (ids[1, :2] == ids[2, :2]).all() and ids[2, 2] == 0  # lower-cased, right-padded
    assert ids[3, 0] == ids[3, 1] and ids[3, 2] == ids[2, 1]  # CJK split per character
    assert (ids[4] > 0).all()  # truncated to max_tokens
    np.testing.assert_array_equal(ids, hash_title_tokens(["", "Cute Cat video", "cute cat", "猫猫 cat",
                                                          "a b c d e f g"], 4, 50))


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_config_json_round_trip_rebuilds_identical_model(kind: str, feats: torch.Tensor) -> None:
    cfg = tiny_cfg(kind, text=kind in FEATURE_KINDS, image=kind == "hybrid")
    text = json.dumps(cfg.to_dict())
    cfg2 = ModelConfig.from_dict(json.loads(text))
    assert cfg2 == cfg
    torch.manual_seed(0)
    model = build_model(cfg, N, item_counts=COUNTS if kind in COUNT_KINDS else None).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)  # a different init, overwritten by the state_dict
    rebuilt = build_model(cfg2, N, state_dict=state).eval()
    idx = torch.arange(1, N + 1)
    torch.testing.assert_close(encode(rebuilt, idx, feats).emb, encode(model, idx, feats).emb)
    x, mask = torch.randn(2, T, DM), torch.ones(2, T, dtype=torch.bool)
    torch.testing.assert_close(rebuilt.user_states(x, mask), model.user_states(x, mask))


@pytest.mark.parametrize("make_cfg,field", [
    (lambda: ModelConfig(kind="bert4rec"), "ModelConfig.kind"),  # type: ignore[arg-type]
    (lambda: ModelConfig(d_model=0), "ModelConfig.d_model"),
    (lambda: ModelConfig(d_model=128), "ModelConfig.fusion.d_model"),
    (lambda: ModelConfig(d_model=63, fusion=FusionConfig(d_model=63)), "ModelConfig.sequence.num_heads"),
    (lambda: ModelConfig(head_hidden=-1), "ModelConfig.head_hidden"),
    (lambda: ModelConfig(init_std=0.0), "ModelConfig.init_std"),
    (lambda: ModelConfig(kind="sasrec_id", text=TextConfig(enabled=True)), "ModelConfig.text.enabled"),
    (lambda: SequenceConfig(max_history=0), "SequenceConfig.max_history"),
    (lambda: SequenceConfig(dropout=1.0), "SequenceConfig.dropout"),
    (lambda: SequenceConfig(num_heads=0), "SequenceConfig.num_heads"),
    (lambda: TextConfig(num_buckets=1), "TextConfig.num_buckets"),
    (lambda: TextConfig(enabled=1), "TextConfig.enabled"),  # type: ignore[arg-type]
    (lambda: ImageConfig(size=16, channels=(4, 4, 4, 4, 4)), "ImageConfig.channels"),
    (lambda: ImageConfig(channels=(4, 0)), r"ImageConfig.channels\[1\]"),
    (lambda: ModelConfig.from_dict({"kind": "linkedout", "dmodel": 8}), "dmodel"),
    (lambda: ModelConfig.from_dict({"fusion": {"layers": 3}}), "layers"),
])
def test_bad_model_configs_raise_naming_field(make_cfg: object, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make_cfg()  # type: ignore[operator]


def test_sasrec_does_not_need_fusion_width() -> None:
    cfg = ModelConfig(kind="sasrec_id", d_model=16, sequence=SequenceConfig(num_heads=2))
    assert build_model(cfg, N).encode_items(torch.tensor([1])).emb.shape == (1, 16)


def test_build_model_errors() -> None:
    with pytest.raises(ValueError, match="item_counts"):
        build_model(tiny_cfg("popularity"), N)
    with pytest.raises(ValueError, match="item_counts"):
        build_model(tiny_cfg("popularity"), N, item_counts=np.ones(N))
    with pytest.raises(ValueError, match="item_counts"):
        build_model(tiny_cfg("popularity"), N, item_counts=-np.ones(N + 1))
    with pytest.raises(ValueError, match="num_items"):
        build_model(tiny_cfg("linkedout"), 0)
    with pytest.raises(ValueError, match="item_counts"):
        build_model(tiny_cfg("warmcold"), N)
    with pytest.raises(ValueError, match="item_counts"):
        build_model(tiny_cfg("warmcold"), N, item_counts=np.ones(N))


def test_popularity_ranks_by_counts_for_every_user() -> None:
    model = make("popularity").eval()
    assert isinstance(model, Popularity)
    assert sum(p.numel() for p in model.parameters()) == 0 and model.param_groups() == {}
    items = torch.arange(1, N + 1)
    emb = model.encode_items(items).emb
    hist = rand_history()
    uniq, (inv,) = unique_items(hist)
    hemb, mask = gather_history(model.encode_items(uniq).emb, inv, hist)
    scores = model.score(model.last_state(hemb, mask), emb)  # (B, N)
    expected = torch.log1p(torch.as_tensor(COUNTS[1:], dtype=torch.float32))
    for row in scores:
        torch.testing.assert_close(row, expected)
    order = torch.argsort(scores[0], descending=True, stable=True)
    counts = torch.as_tensor(COUNTS[1:])[order]
    assert (counts[:-1] >= counts[1:]).all()


def test_parameter_summary_of_tiny_model_adds_up() -> None:
    model = make("hybrid", text=True, image=True, kp_weight=1.0)
    s = parameter_summary(model)
    assert s["total"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert isinstance(model, LinkedOutRecommender)
    assert s["video"] == sum(p.numel() for p in model.fusion.parameters())
    assert s["id"] == (N + 1) * DM
    assert s["video_kp_decoder"] == DM * D + D and s["total_inference"] == s["total"] - s["video_kp_decoder"]
    assert min(s[k] for k in ("video_experts", "video_gate", "text", "image", "sequence", "ranking_head")) > 0
    table = format_summary(s)
    assert "video MoE" in table and f"{s['total']:,d}" in table


def test_paper_config_counts_are_in_the_papers_range() -> None:
    s4096 = paper_parameter_summary(4096)
    s3584 = paper_parameter_summary(3584)
    assert 6.2e6 <= s4096["video"] <= 6.4e6  # paper: ~6.3 M
    assert 2.0e6 <= s4096["head"] <= 2.2e6  # paper: ~2.1 M
    assert 8.3e6 <= s4096["total"] <= 8.5e6  # paper: 8.4 M
    assert 5.4e6 <= s3584["video"] < s4096["video"] and s3584["head"] == s4096["head"]
    assert s4096["id"] == s4096["text"] == s4096["image"] == 0
    assert "8.4" in paper_comparison()


def _export(module: torch.nn.Module, args: tuple[torch.Tensor, ...],
            dynamic: dict[str, object]) -> torch.export.ExportedProgram:
    return torch.export.export(module, args, dynamic_shapes=dynamic, strict=False)


@pytest.mark.parametrize("kind", ["linkedout", "warmcold"])
def test_item_and_user_towers_export_with_dynamic_batch(kind: str) -> None:
    """torch.export (what the ONNX exporter traces) succeeds with dynamic batch sizes."""
    model = make(kind, text=True).eval()

    class ItemTower(torch.nn.Module):
        def __init__(self, m: Recommender) -> None:
            super().__init__()
            self.m = m

        def forward(self, idx: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            enc = self.m.encode_items(idx, f)
            assert enc.gate is not None
            return enc.emb, enc.gate

    class UserTower(torch.nn.Module):
        def __init__(self, m: Recommender) -> None:
            super().__init__()
            self.m = m

        def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.m.last_state(h, mask)

    m_dim = torch.export.Dim("M", min=1, max=4096)
    idx, f = torch.tensor([1, 2, 3]), catalogue_features()[1:4]
    ep = _export(ItemTower(model), (idx, f), {"idx": {0: m_dim}, "f": {0: m_dim}})
    idx5, f5 = torch.arange(0, 8), catalogue_features()[0:8]  # index 0 and a cold item (7) included
    for got, want in zip(ep.module()(idx5, f5), ItemTower(model)(idx5, f5)):
        torch.testing.assert_close(got, want)
    b_dim = torch.export.Dim("B", min=1, max=4096)
    h, mask = torch.randn(2, T, DM), rand_history(2) > 0
    ep_u = _export(UserTower(model), (h, mask), {"h": {0: b_dim}, "mask": {0: b_dim}})
    h3, mask3 = torch.randn(3, T, DM), rand_history(3) > 0
    torch.testing.assert_close(ep_u.module()(h3, mask3), UserTower(model)(h3, mask3))
