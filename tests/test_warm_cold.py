"""The warm/cold recommender: ID rows only where trained, content alone elsewhere, ID dropout, export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from linkedout.job.evaluation import evaluate_run
from linkedout.job.extraction import extract
from linkedout.job.report import write_html_report
from linkedout.job.split import build_split
from linkedout.job.training import train_variant
from linkedout.job.variants import DEFAULT_VARIANTS, parse_variant
from linkedout.model import (
    FusionConfig,
    IDConfig,
    ModelConfig,
    SequenceConfig,
    WarmColdRecommender,
    build_model,
    gather_history,
    unique_items,
)
from linkedout.model.summary import parameter_summary

N, L, K, D, DM, T = 24, 3, 4, 16, 16, 6
#: training counts: items 1..15 seen (1..4 times), 16..24 never (cold); index 0 is padding
COUNTS = np.array([0] + [1 + i % 4 for i in range(15)] + [0] * 9, dtype=np.int64)
WARM = torch.from_numpy(np.flatnonzero(COUNTS > 0))
COLD = torch.from_numpy(np.flatnonzero(COUNTS[1:] == 0) + 1)


def cfg(**ids: object) -> ModelConfig:
    return ModelConfig(
        kind="warmcold", d_model=DM,
        fusion=FusionConfig(num_layers=L, tokens=K, in_dim=D, d_model=DM, gate_hidden=8, expert_queries=2,
                            expert_hidden=8),
        sequence=SequenceConfig(max_history=T, num_layers=1, num_heads=2, ffn_dim=32, dropout=0.0),
        head_hidden=32, ids=IDConfig(**ids),  # type: ignore[arg-type]
    )


def make(**ids: object) -> WarmColdRecommender:
    torch.manual_seed(0)
    model = build_model(cfg(**ids), N, COUNTS)
    assert isinstance(model, WarmColdRecommender)
    with torch.no_grad():  # trained-looking ID rows, large enough to matter
        model.id_embedding.weight[1:].normal_(std=1.0)  # type: ignore[union-attr]
    return model


@pytest.fixture(scope="module")
def feats() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(N + 1, L, K, D, generator=g)  # (N+1, L, K, D)


ALL_IDS = [{}, {"gate": "frequency"}, {"map_weight": 1.0}, {"min_count": 2}, {"unknown_row": True}]


@pytest.mark.parametrize("ids", ALL_IDS)
def test_cold_videos_never_read_an_untrained_id_row(ids: dict[str, object], feats: torch.Tensor) -> None:
    model = make(**ids).eval()
    trained_mask = np.asarray(model.id_counts) >= model.config.ids.min_count  # (N+1,) from the buffer
    idx = torch.arange(0, N + 1)
    before = model.encode_items(idx, feats[idx]).emb
    untrained = torch.from_numpy(np.flatnonzero(~trained_mask))  # includes row 0
    with torch.no_grad():
        model.id_embedding.weight[untrained] = 1e3 * torch.randn(len(untrained), DM)  # type: ignore[union-attr]
    after = model.encode_items(idx, feats[idx]).emb
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    # ...while the rows of trained items are read (so the check above could fail)
    trained = torch.from_numpy(np.flatnonzero(trained_mask))
    with torch.no_grad():
        model.id_embedding.weight[trained] += 1.0  # type: ignore[union-attr]
    changed = (model.encode_items(idx, feats[idx]).emb - after).abs().amax(dim=1) > 1e-4  # (N+1,)
    assert torch.equal(changed, torch.from_numpy(trained_mask))
    assert trained_mask.sum() == (model.config.ids.min_count <= COUNTS).sum() > 0


def test_index_zero_and_untrained_items_are_their_content_alone(feats: torch.Tensor) -> None:
    model = make(map_weight=0.0, cold_scale=1.0).eval()
    with torch.no_grad():
        content, _ = model.encode_content(torch.arange(N + 1), feats)  # (N+1, d)
        emb = model.encode_items(torch.arange(N + 1), feats).emb
        torch.testing.assert_close(emb[COLD], content[COLD])
        torch.testing.assert_close(emb[0], content[0])
        table = model.id_embedding.weight  # type: ignore[union-attr]
        torch.testing.assert_close(emb[WARM], content[WARM] + table[WARM])
        # a warm video's features under index 0 (a video added through the live catalogue) = content only
        live = model.encode_items(torch.zeros(len(WARM), dtype=torch.long), feats[WARM]).emb
        torch.testing.assert_close(live, content[WARM])


def test_default_model_scores_unseen_videos_from_content_and_its_mapping(feats: torch.Tensor) -> None:
    """The main job's configuration: an unseen video is c + m(c), a function of its features alone."""
    model = make().eval()
    assert model.config.ids == IDConfig() and model.id_map is not None
    with torch.no_grad():
        content, _ = model.encode_content(torch.arange(N + 1), feats)
        emb = model.encode_items(torch.arange(N + 1), feats).emb
        scale = model.config.ids.cold_scale  # the calibration factor of content-only videos
        torch.testing.assert_close(emb[COLD], scale * (content[COLD] + model.id_map(content[COLD])))
        live = model.encode_items(torch.zeros(len(COLD), dtype=torch.long), feats[COLD]).emb
        torch.testing.assert_close(live, emb[COLD])  # index 0 (live catalogue) = an unseen catalogue video
        table = model.id_embedding.weight  # type: ignore[union-attr]
        torch.testing.assert_close(emb[WARM], content[WARM] + table[WARM])


def test_untrained_rows_get_no_gradient(feats: torch.Tensor) -> None:
    model = make(dropout=0.0).train()
    idx = torch.arange(1, N + 1)
    model.encode_items(idx, feats[idx]).emb.pow(2).sum().backward()
    grad = model.id_embedding.weight.grad  # type: ignore[union-attr]
    assert grad is not None
    assert grad[COLD].abs().max() == 0 and grad[0].abs().max() == 0
    assert (grad[WARM].abs().amax(dim=1) > 0).all()


def test_id_dropout_drops_whole_rows_in_training_only(feats: torch.Tensor) -> None:
    model = make(dropout=0.5, map_weight=0.0)
    idx = WARM.repeat(40)  # (600,) warm items, many draws
    f = feats[idx]
    with torch.no_grad():
        content, _ = model.encode_content(idx, f)
        model.train()
        torch.manual_seed(1)
        emb = model.encode_items(idx, f).emb
        dropped = (emb - content).abs().amax(dim=1) < 1e-6  # (600,)
        # every row is content alone or content + its full ID row: nothing in between
        table = model.id_embedding.weight  # type: ignore[union-attr]
        torch.testing.assert_close(emb[~dropped], content[~dropped] + table[idx[~dropped]])
        assert 0.4 < dropped.float().mean() < 0.6
        model.eval()
        assert ((model.encode_items(idx, f).emb - content).abs().amax(dim=1) > 1e-6).all()


def test_batch_dropout_drops_every_row_of_a_step(feats: torch.Tensor) -> None:
    model = make(dropout=0.0, batch_dropout=0.5, map_weight=0.0).train()
    with torch.no_grad():
        content, _ = model.encode_content(WARM, feats[WARM])
        outcomes = []
        for step in range(40):
            torch.manual_seed(step)
            delta = (model.encode_items(WARM, feats[WARM]).emb - content).abs().amax(dim=1) > 1e-6  # (W,)
            assert bool(delta.all()) or not bool(delta.any())  # all rows kept, or none
            outcomes.append(bool(delta.all()))
    assert 10 < sum(outcomes) < 30


def test_one_draw_per_distinct_item_covers_history_and_target(feats: torch.Tensor) -> None:
    """The trainer encodes a batch's distinct items once, so a dropped video is dropped everywhere."""
    model = make(dropout=0.5).train()
    hist = WARM[:8].view(2, 4)  # (B, T)
    uniq, (inv,) = unique_items(hist)
    torch.manual_seed(3)
    enc = model.encode_items(uniq, feats[uniq])
    h, _ = gather_history(enc.emb, inv, hist)  # (B, T, d)
    for b in range(2):
        for t in range(4):
            torch.testing.assert_close(h[b, t], enc.emb[(uniq == hist[b, t]).nonzero()[0, 0]])


def test_frequency_gate_weighs_rows_by_count_and_map_stands_in(feats: torch.Tensor) -> None:
    model = make(gate="frequency").eval()
    with torch.no_grad():
        content, _ = model.encode_content(torch.arange(N + 1), feats)
        emb = model.encode_items(torch.arange(N + 1), feats).emb
        table = model.id_embedding.weight  # type: ignore[union-attr]
        w = torch.sigmoid(torch.log1p(torch.from_numpy(COUNTS).float()))  # a = 1, b = 0 at init
        torch.testing.assert_close(emb[WARM], content[WARM] + w[WARM, None] * table[WARM])
    mapped = make(map_weight=1.0, cold_scale=1.0)
    assert mapped.id_map is not None
    with torch.no_grad():
        mapped.id_map.fc2.bias.fill_(0.5)  # a mapping that is not zero
        c, _ = mapped.eval().encode_content(torch.arange(N + 1), feats)
        e = mapped.encode_items(torch.arange(N + 1), feats).emb
        torch.testing.assert_close(e[COLD], c[COLD] + mapped.id_map(c[COLD]))
    mapped.train()
    enc = mapped.encode_items(WARM, feats[WARM])
    assert enc.aux_loss is not None and enc.aux_loss > 0  # the mapping regresses the warm rows
    assert {"id"} <= set(mapped.param_groups()) and parameter_summary(mapped)["id"] > (N + 1) * DM


def test_unknown_row_is_shared_by_items_without_an_id_row(feats: torch.Tensor) -> None:
    model = make(unknown_row=True, dropout=0.5, map_weight=0.0, cold_scale=1.0)
    assert model.id_unknown is not None and "id" in model.param_groups()
    with torch.no_grad():
        model.id_unknown.normal_()
        content, _ = model.eval().encode_content(torch.arange(N + 1), feats)
        emb = model.encode_items(torch.arange(N + 1), feats).emb
        table = model.id_embedding.weight  # type: ignore[union-attr]
    torch.testing.assert_close(emb[COLD], content[COLD] + model.id_unknown)
    torch.testing.assert_close(emb[0], content[0] + model.id_unknown)
    torch.testing.assert_close(emb[WARM], content[WARM] + table[WARM])
    model.train()  # a dropped item takes the shared row, so it learns from the dropped items
    model.encode_items(WARM.repeat(4), feats[WARM.repeat(4)]).emb.sum().backward()
    assert model.id_unknown.grad is not None and model.id_unknown.grad.abs().sum() > 0


def test_cold_scale_multiplies_content_only_items_outside_training_only(feats: torch.Tensor) -> None:
    base, scaled = make(cold_scale=1.0), make(cold_scale=1.5)
    scaled.load_state_dict(base.state_dict())
    idx = torch.arange(N + 1)
    with torch.no_grad():
        want = base.eval().encode_items(idx, feats).emb
        got = scaled.eval().encode_items(idx, feats).emb
        torch.testing.assert_close(got[WARM], want[WARM], rtol=0, atol=0)  # ID-carrying items untouched
        torch.testing.assert_close(got[COLD], 1.5 * want[COLD])
        torch.testing.assert_close(got[0], 1.5 * want[0])  # index 0: a video added to the live catalogue
        base.train(), scaled.train()
        torch.manual_seed(1)
        a = base.encode_items(idx, feats).emb
        torch.manual_seed(1)
        b = scaled.encode_items(idx, feats).emb  # the same dropout draws
        torch.testing.assert_close(b, a, rtol=0, atol=0)  # training never sees the factor
    with pytest.raises(ValueError, match=r"IDConfig\.cold_scale"):
        IDConfig(cold_scale=0.0)


def test_state_dict_alone_rebuilds_counts_and_outputs(feats: torch.Tensor) -> None:
    model = make(gate="frequency").eval()
    config = ModelConfig.from_dict(json.loads(json.dumps(model.config.to_dict())))
    again = build_model(config, N, state_dict=model.state_dict()).eval()
    assert isinstance(again, WarmColdRecommender) and torch.equal(again.id_counts, model.id_counts)
    idx = torch.arange(N + 1)
    torch.testing.assert_close(again.encode_items(idx, feats).emb, model.encode_items(idx, feats).emb)
    with pytest.raises(ValueError, match="item_counts"):
        build_model(config, N)


def test_counts_and_config_are_validated() -> None:
    model = make()
    with pytest.raises(ValueError, match="shape"):
        model.set_item_counts(np.zeros(N, dtype=np.int64))
    with pytest.raises(ValueError, match=">= 0"):
        model.set_item_counts(-np.ones(N + 1, dtype=np.int64))
    with pytest.raises(ValueError, match="whole numbers"):
        model.set_item_counts(np.full(N + 1, 0.5))
    model.set_item_counts(np.ones(N + 1, dtype=np.int64))
    assert int(model.id_counts[0]) == 0  # the padding index never counts as seen
    for bad, field in (({"dropout": 1.0}, "dropout"), ({"min_count": 0}, "min_count"),
                       ({"gate": "popularity"}, "gate"), ({"map_weight": -1.0}, "map_weight"),
                       ({"unknown_row": 1}, "unknown_row"), ({"batch_dropout": -0.1}, "batch_dropout")):
        with pytest.raises(ValueError, match=f"IDConfig.{field}"):
            IDConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind"):
        WarmColdRecommender(ModelConfig(kind="linkedout", d_model=DM, fusion=cfg().fusion), N)


@pytest.mark.parametrize("ids", [{}, {"cold_scale": 1.3}])
def test_encode_items_exports_to_onnx_and_matches_onnxruntime(ids: dict[str, object], tmp_path: Path,
                                                             feats: torch.Tensor) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = make(**ids).eval()

    class ItemEncoder(torch.nn.Module):
        def __init__(self, m: WarmColdRecommender) -> None:
            super().__init__()
            self.m = m

        def forward(self, id_rows: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            enc = self.m.encode_items(id_rows, features)
            assert enc.gate is not None
            return enc.emb, enc.gate

    enc = ItemEncoder(model).eval()
    m_dim = torch.export.Dim("N", min=1, max=65536)
    path = tmp_path / "encoder.onnx"
    example = (torch.tensor([1, 2, 20]), feats[[1, 2, 20]])
    torch.onnx.export(enc, example, str(path), dynamo=True, input_names=["id_rows", "features"],
                      output_names=["embedding", "gate"],
                      dynamic_shapes={"id_rows": {0: m_dim}, "features": {0: m_dim}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rows = torch.tensor([0, 3, 17, 9, 0, 24, 1])  # index 0 (live catalogue), warm and cold rows
    f = feats[[5, 3, 17, 9, 11, 24, 1]]
    got = sess.run(None, {"id_rows": rows.numpy(), "features": f.numpy()})
    with torch.no_grad():
        want = enc(rows, f)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=0)


FAST_DATA = dict(num_videos=20, num_users=40, num_topics=3, video_size=32, max_interactions_per_user=12,
                 num_frames=4, workers=0)


def test_main_job_trains_warmcold_by_default_and_reports_its_gate(tmp_path: Path) -> None:
    from linkedout.data.synth import SynthConfig, generate
    from linkedout.extraction.extractor import ExtractionConfig

    assert DEFAULT_VARIANTS[0] == "warmcold"
    assert parse_variant("warmcold").kind == "warmcold"
    torch.set_num_threads(1)
    data = generate(tmp_path / "data", SynthConfig.preset("toy", **FAST_DATA))  # type: ignore[arg-type]
    store = tmp_path / "features"
    extract(data, store, (ExtractionConfig(layers=(0, 4, 8), num_frames=2, tokens=8, text_tokens=2,
                                                    batch_size=8, shard_size=8, decode_workers=0), None))
    run = tmp_path / "runs" / "warmcold"
    train_variant(data, str(store), run, "warmcold", epochs=1)
    ev = evaluate_run(data, str(store), run)
    assert ev["model"] == "LinkedOut + seen-video IDs"
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    split = build_split(data, str(store))
    assert torch.equal(ckpt["model_state"]["id_counts"], torch.from_numpy(split.item_counts))
    html = write_html_report([run], tmp_path / "report.html", data=data, features=str(store)).read_text()
    assert "L0" in html and "L8" in html  # the gate heatmap's columns: the warm/cold model's gate is shown
