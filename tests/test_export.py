"""ONNX export of every model under the recommender contract, the Triton model repository, live catalogues.

The catalogue is a real one: the toy synthetic dataset's mp4s read by the tiny LLaVA-OneVision
backbone (2 frames each). onnxruntime is checked against PyTorch independently of the exporter's own
checks, on random features and on those extracted features, for every variant.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import Toy, build_variant

from linkedout.export import (
    Catalog,
    CatalogError,
    ExportConfig,
    ModelRepository,
    RepositoryError,
    TritonConfig,
    encoder_name,
    export_model,
    ranker_name,
    update_catalog,
)
from linkedout.export.catalog import live_rows_of
from linkedout.export.checks import topk_mismatch
from linkedout.export.graphs import EncoderGraph, full_scores, graph_spec_of
from linkedout.export.index import IndexSettings, RetrievalIndex
from linkedout.export.update import CatalogChange
from linkedout.job.defaults import default_repository_configs
from linkedout.shards import FeatureReader

VARIANTS = ("warmcold", "linkedout", "hybrid", "multimodal", "sasrec_id", "popularity", "uniform", "last_layer")
TOL = 1e-4
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Exported:
    variant: str
    model: Any
    repo: ModelRepository
    result: Any
    toy: Toy


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module", params=VARIANTS)
def exported(request: pytest.FixtureRequest, toy: Toy, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    variant = request.param
    model = build_variant(variant, toy)
    repo = ModelRepository(tmp_path_factory.mktemp(f"repo-{variant}"))
    layers = [f"L{layer}" for layer in toy.item_features.reader.spec.layers]
    result = export_model(model, repo, item_ids=toy.split.item_ids,
                          item_features=toy.item_features if model.needs_features else None,
                          popularity=toy.split.item_counts, layers=layers,
                          config=ExportConfig(name=variant, max_k=20))
    return Exported(variant, model, repo, result, toy)


def encoder_feeds(sess: ort.InferenceSession, rows: np.ndarray, feats: np.ndarray | None) -> dict[str, np.ndarray]:
    names = [i.name for i in sess.get_inputs()]
    feeds = {"id_rows": rows.astype(np.int64)}
    if "features" in names:
        assert feats is not None
        feeds["features"] = feats.astype(np.float32)
    return feeds


# ------------------------------------------------------------------------------------- every variant


def test_encoder_matches_pytorch_on_random_and_extracted_features(exported: Exported) -> None:
    model, toy = exported.model, exported.toy
    sess = session(exported.repo.version_dir(encoder_name(exported.variant)) / "model.onnx")
    graph = EncoderGraph(model).eval()
    n = toy.split.num_items
    rng = np.random.default_rng(1)
    all_rows = np.arange(1, n + 1)
    extracted = toy.item_features(torch.from_numpy(all_rows)).numpy()  # (N, L, K, D) from the real store
    random_feats = rng.standard_normal((17, *extracted.shape[1:])).astype(np.float32) * extracted.std()
    random_rows = rng.integers(0, n + 1, size=17)  # 0 = a video the model was not trained on
    for rows, feats in ((all_rows, extracted), (random_rows, random_feats)):
        got = sess.run(None, encoder_feeds(sess, rows, feats))
        with torch.no_grad():
            want = graph(torch.from_numpy(rows), torch.from_numpy(feats) if model.needs_features else None)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == tuple(w.shape)
            assert np.abs(g - w.numpy()).max() <= TOL
    names = [o.name for o in sess.get_outputs()]
    assert names == (["embedding", "gate", "contributions"] if model.needs_features else ["embedding"])


def served_top_k(vdir: Path, hist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What serving does with a ranker version: the ONNX user states of ``hist``'s rows and their
    embeddings, then the catalogue's index top-``k`` with the history masked: (rows, scores, users)."""
    index = RetrievalIndex.load(vdir / "index")
    (user,) = session(vdir / "model.onnx").run(None, {"history": hist, "history_emb": index.vectors(hist)})
    rows, scores = index.search(user, k, hist)
    return rows, scores, user


def test_ranker_matches_pytorch_top_k_for_real_histories(exported: Exported) -> None:
    model, split = exported.model, exported.toy.split
    vdir = exported.repo.version_dir(ranker_name(exported.variant))
    catalog = Catalog.load(vdir)
    for hist in (split.test.histories, split.test.histories[:1], split.valid.histories[:37]):  # dynamic batch
        hist = hist.astype(np.int64)
        rows, scores, user = served_top_k(vdir, hist, 20)
        with torch.no_grad():
            w_full, w_user = (x.numpy() for x in full_scores(model, torch.from_numpy(catalog.embeddings),
                                                             torch.from_numpy(hist)))
        w_rows = np.argsort(-w_full, axis=1, kind="stable")[:, :20]
        assert rows.shape == scores.shape == (len(hist), 20)
        # PyTorch's order, except that rows whose scores tie within TOL may come in any order (equal
        # popularity counts; two videos 5e-7 apart in the uniform ranker, where the float sums of
        # onnxruntime and PyTorch round differently)
        assert topk_mismatch(rows, scores, w_full, TOL) is None
        differ = rows != w_rows
        assert np.all(np.abs(np.take_along_axis(w_full, rows, 1) - np.take_along_axis(w_full, w_rows, 1))[differ] <= TOL)
        assert np.abs(scores - np.take_along_axis(w_full, w_rows, 1)).max() <= TOL
        assert np.abs(user - w_user).max() <= TOL
        # never the padding row, never a video of the history
        assert (rows > 0).all()
        for h, r in zip(hist, rows):
            assert not set(h[h > 0].tolist()) & set(r.tolist())
    assert exported.result.checks["ranker_topk_agreement"] > 0.9


def test_an_ann_catalogue_gives_the_exact_answers_where_it_probes_everything(toy: Toy, tmp_path: Path) -> None:
    """Exact brute force and the ANN index over one catalogue: the same rows and scores where the ANN
    search covers the catalogue (here an IVF index of one list); the export records its recall."""
    model = build_variant("linkedout", toy)
    repo = ModelRepository(tmp_path / "repo")
    common = dict(item_ids=toy.split.item_ids, item_features=toy.item_features, popularity=toy.split.item_counts)
    exact = export_model(model, repo, **common, config=ExportConfig(name="exact", max_k=10))
    ann = export_model(model, repo, **common, config=ExportConfig(
        name="ann", max_k=10, index=IndexSettings(kind="ivf_flat", nlist=1, nprobe=1)))
    assert "ranker_ann_recall" not in exact.checks and ann.checks["ranker_ann_recall"] == 1.0
    assert json.loads((repo.version_dir("ann_ranker") / "catalog.json").read_text())["index"]["kind"] == "ivf_flat"
    hist = toy.split.test.histories.astype(np.int64)
    got = served_top_k(repo.version_dir("ann_ranker"), hist, 10)
    want = served_top_k(repo.version_dir("exact_ranker"), hist, 10)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_catalogue_holds_the_model_item_table(exported: Exported) -> None:
    model, toy = exported.model, exported.toy
    catalog = Catalog.load(exported.repo.version_dir(ranker_name(exported.variant)))
    assert catalog.ids.tolist() == [int(i) for i in toy.split.item_ids[1:]]
    rows = torch.arange(1, toy.split.num_items + 1)
    with torch.no_grad():
        emb = model.encode_items(rows, toy.item_features(rows) if model.needs_features else None).emb
    assert np.abs(catalog.embeddings - emb.numpy()).max() <= TOL
    assert catalog.popularity.tolist() == toy.split.item_counts[1:].tolist()
    if model.needs_features:
        assert catalog.gate.shape == (toy.split.num_items, 6)
        assert np.allclose(catalog.gate.sum(1), 1.0, atol=1e-5)
        assert np.allclose(catalog.contributions.sum(1), 1.0, atol=1e-5)
        assert catalog.layers == ["L0", "L4", "L8", "L12", "L16", "L20"]
    else:
        assert catalog.gate.shape == (toy.split.num_items, 0)
    meta = json.loads((exported.repo.version_dir(ranker_name(exported.variant)) / "catalog.json").read_text())
    assert meta["encoder_version"] == exported.result.encoder_version
    assert meta["max_k"] == 20 and meta["max_history"] == 10


def test_configs_parse_as_triton_model_configs_and_match_the_graphs(exported: Exported) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    dtypes = {"FP32": mc.TYPE_FP32, "INT64": mc.TYPE_INT64}
    for model_name in (encoder_name(exported.variant), ranker_name(exported.variant)):
        cfg = text_format.Parse(exported.repo.config_text(model_name), mc.ModelConfig())
        assert cfg.name == model_name
        assert cfg.backend == "onnxruntime"
        assert cfg.max_batch_size == 64
        assert cfg.HasField("dynamic_batching")
        assert cfg.version_policy.latest.num_versions == 2
        assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
        graph = graph_spec_of(onnx.load(str(exported.repo.version_dir(model_name) / "model.onnx")))
        for tensors, specs in ((cfg.input, graph.inputs), (cfg.output, graph.outputs)):
            assert [t.name for t in tensors] == [s.name for s in specs]
            for t, s in zip(tensors, specs):
                assert t.data_type == dtypes[s.dtype]
                assert s.shape[0] == -1  # the batch axis is dynamic
                dims = list(t.reshape.shape) if t.HasField("reshape") else list(t.dims)
                assert dims == list(s.shape[1:])


# ------------------------------------------------------------------------------------- versions


@pytest.fixture()
def linkedout_repo(toy: Toy, tmp_path: Path) -> Iterator[tuple[Any, ModelRepository]]:
    model = build_variant("linkedout", toy)
    repo = ModelRepository(tmp_path / "repo")
    export_model(model, repo, item_ids=toy.split.item_ids, item_features=toy.item_features,
                 popularity=toy.split.item_counts, config=ExportConfig(name="lo", max_k=10))
    yield model, repo


def test_a_new_export_is_a_new_version_and_the_old_one_stays(toy: Toy, linkedout_repo: tuple[Any, ModelRepository]) -> None:
    model, repo = linkedout_repo
    before = (repo.version_dir("lo_ranker", 1) / "model.onnx").read_bytes()
    result = export_model(model, repo, item_ids=toy.split.item_ids, item_features=toy.item_features,
                          config=ExportConfig(name="lo", max_k=10))
    assert (result.encoder_version, result.ranker_version) == (2, 2)
    assert repo.versions("lo_ranker") == [1, 2]
    assert (repo.version_dir("lo_ranker", 1) / "model.onnx").read_bytes() == before
    assert repo.latest("lo_encoder") == 2


def test_a_corrupt_or_mismatched_version_is_refused_and_nothing_changes(linkedout_repo: tuple[Any, ModelRepository]) -> None:
    _, repo = linkedout_repo
    spec = graph_spec_of(onnx.load(str(repo.version_dir("lo_ranker") / "model.onnx")))
    config = repo.config_text("lo_ranker")
    good = (repo.version_dir("lo_ranker") / "model.onnx").read_bytes()

    def corrupt(d: Path, version: int) -> None:
        (d / "model.onnx").write_bytes(good[: len(good) // 2])

    with pytest.raises(RepositoryError, match="does not load in onnxruntime"):
        repo.publish("lo_ranker", config, spec, corrupt)
    encoder_file = repo.version_dir("lo_encoder") / "model.onnx"

    def wrong_graph(d: Path, version: int) -> None:
        shutil.copy(encoder_file, d / "model.onnx")

    with pytest.raises(RepositoryError, match="does not match its configuration"):
        repo.publish("lo_ranker", config, spec, wrong_graph)
    assert repo.versions("lo_ranker") == [1]
    assert not [p for p in repo.model_dir("lo_ranker").iterdir() if p.name.startswith(".staging")]
    assert repo.config_text("lo_ranker") == config


def test_rollback_retires_the_newest_and_numbers_are_never_reused(
        toy: Toy, linkedout_repo: tuple[Any, ModelRepository]) -> None:
    model, repo = linkedout_repo
    export_model(model, repo, item_ids=toy.split.item_ids, item_features=toy.item_features,
                 config=ExportConfig(name="lo", max_k=10))
    assert repo.rollback("lo_ranker") == 1
    assert repo.versions("lo_ranker") == [1]
    assert [p.name.split("-")[0] for p in (repo.model_dir("lo_ranker") / ".retired").iterdir()] == ["2"]
    result = export_model(model, repo, item_ids=toy.split.item_ids, item_features=toy.item_features,
                          config=ExportConfig(name="lo", max_k=10))
    assert result.ranker_version == 3 and repo.versions("lo_ranker") == [1, 3]
    assert repo.rollback("lo_ranker") == 1
    with pytest.raises(RepositoryError, match="nothing to roll back"):
        repo.rollback("lo_ranker")  # only version 1 is left


def test_another_configuration_under_the_same_name_is_refused_unless_replaced(
        toy: Toy, linkedout_repo: tuple[Any, ModelRepository]) -> None:
    model, repo = linkedout_repo
    other = ExportConfig(name="lo", max_k=10, triton=TritonConfig(max_batch_size=8))
    with pytest.raises(RepositoryError, match="exists with another configuration"):
        export_model(model, repo, item_ids=toy.split.item_ids, item_features=toy.item_features, config=other)
    assert repo.versions("lo_encoder") == [1]
    replaced = export_model(model, repo, item_ids=toy.split.item_ids, item_features=toy.item_features,
                            config=ExportConfig(name="lo", max_k=10, triton=TritonConfig(max_batch_size=8),
                                                replace=True))
    assert repo.versions("lo_ranker") == [replaced.ranker_version] == [2]
    assert "max_batch_size: 8" in repo.config_text("lo_ranker")


# ------------------------------------------------------------------------------------- live catalogue


def test_update_catalog_adds_and_removes_videos_in_place_without_retraining(
        toy: Toy, linkedout_repo: tuple[Any, ModelRepository]) -> None:
    model, repo = linkedout_repo
    vdir = repo.version_dir("lo_ranker", 1)
    parent = Catalog.load(vdir)
    before = {p.relative_to(vdir): p.read_bytes() for p in vdir.rglob("*") if p.is_file()}
    reader = FeatureReader(toy.features)
    twin_of = [str(i) for i in parent.ids[:3]]
    feats = reader.get_many(twin_of)  # new videos whose content equals three known ones
    gone = int(parent.ids[-1])
    change = update_catalog(repo, "lo", add_ids=[900001, 900002, 900003], add_features=feats,
                            remove_ids=[gone], add_published=np.array([7, 8, 9]))
    n = parent.num_items
    assert change == CatalogChange(1, [n + 1, n + 2, n + 3], [n], n + 3 - 1)
    assert repo.versions("lo_ranker") == [1] and repo.versions("lo_encoder") == [1]  # no new version
    # in place: appended to the index's added rows, records and tombstones, committed by its manifest;
    # the graph, the exported columns and the index's table are not rewritten
    after = {p.relative_to(vdir): p.read_bytes() for p in vdir.rglob("*") if p.is_file()}
    changed = sorted(str(f) for f in after if after[f] != before.get(f))
    assert changed == ["index/added-0.f32", "index/manifest.json", "index/payload-0.bin", "index/removed-0.i64"]
    d = parent.dim
    assert len(after[Path("index/added-0.f32")]) == 3 * d * 4 and len(after[Path("index/removed-0.i64")]) == 8
    catalog = Catalog.load(vdir)
    assert catalog.num_items == n + 3 - 1
    assert gone not in catalog and 900002 in catalog
    assert catalog.published[-3:].tolist() == [7, 8, 9] and catalog.popularity[-3:].tolist() == [0, 0, 0]
    assert catalog.gate.shape == (n + 2, 6) and np.allclose(catalog.gate[-3:].sum(1), 1.0, atol=1e-5)
    # an ID-free model encodes a new video exactly like the known video with the same content
    assert np.abs(catalog.embeddings[-3:] - parent.embeddings[:3]).max() <= TOL
    # served: the removed video never comes back, a new twin scores exactly as its original
    hist = np.arange(4, 14, dtype=np.int64)[None, :]  # rows of videos 4..13 of the export
    rows, scores, _ = served_top_k(vdir, hist, n - 8)  # every live video not in the history
    assert n not in rows[0].tolist() and {n + 1, n + 2, n + 3} <= set(rows[0].tolist())
    got = dict(zip(rows[0].tolist(), scores[0].tolist()))
    for twin, original in zip((n + 1, n + 2, n + 3), (1, 2, 3)):
        assert abs(got[twin] - got[original]) <= TOL
    with torch.no_grad():
        w_full, _ = full_scores(model, torch.from_numpy(parent.embeddings), torch.from_numpy(hist))
    assert np.abs(got[1] - float(w_full[0, 1])) <= TOL
    # removing and adding one id in one change replaces the video (a new row, one commit)
    replaced = update_catalog(repo, "lo", add_ids=[900002], add_features=feats[1:2], remove_ids=[900002])
    assert replaced.added_rows == [n + 4] and replaced.removed_rows == [n + 2] and replaced.num_items == n + 2
    assert Catalog.load(vdir).ids.tolist().count(900002) == 1


def test_live_rows_of_finds_each_ids_live_row_for_few_and_many_ids() -> None:
    ids = np.array([5, 7, 9, 7, 11], dtype=np.int64)  # row 2 (video 7) removed, then video 7 added again: row 4
    removed = np.array([2], dtype=np.int64)
    few = np.array([7, 5, 100, 7, 11])
    many = np.concatenate([few, np.arange(1000, 1030)])  # past the per-id scan: the sorted lookup
    assert live_rows_of(ids, removed, few).tolist() == [4, 1, 0, 4, 5]
    assert live_rows_of(ids, removed, many).tolist() == [4, 1, 0, 4, 5] + [0] * 30
    assert live_rows_of(ids, np.array([2, 4]), many)[:5].tolist() == [0, 1, 0, 0, 5]


def test_update_catalog_errors_name_the_problem_and_write_nothing(
        toy: Toy, linkedout_repo: tuple[Any, ModelRepository]) -> None:
    _, repo = linkedout_repo
    vdir = repo.version_dir("lo_ranker")
    before = {p: p.read_bytes() for p in vdir.rglob("*") if p.is_file()}
    known = int(Catalog.load(vdir).ids[0])
    feats = FeatureReader(toy.features).get_many([str(known)])
    with pytest.raises(CatalogError, match="already in the catalogue"):
        update_catalog(repo, "lo", add_ids=[known], add_features=feats)
    with pytest.raises(CatalogError, match="not in the catalogue"):
        update_catalog(repo, "lo", add_ids=[900001], add_features=feats, remove_ids=[123456789])
    with pytest.raises(CatalogError, match="features of the new videos must be"):
        update_catalog(repo, "lo", add_ids=[900001], add_features=feats[:, :2])
    with pytest.raises(CatalogError, match="is not an integer"):
        update_catalog(repo, "lo", add_ids=["clip-7"], add_features=feats)
    with pytest.raises(CatalogError, match="reads backbone features"):
        update_catalog(repo, "lo", add_ids=[900001])
    with pytest.raises(CatalogError, match=rf"the videos to remove hold duplicate ids: \[{known}\]"):
        update_catalog(repo, "lo", add_ids=[900001], add_features=feats, remove_ids=[known, known])
    with pytest.raises(CatalogError, match="fewer than the ranker's top-10"):
        update_catalog(repo, "lo", remove_ids=[int(i) for i in Catalog.load(vdir).ids[:-5]])
    with pytest.raises(RepositoryError, match="no published version"):
        update_catalog(repo, "nope", add_ids=[1], add_features=feats)
    assert repo.versions("lo_ranker") == [1]
    assert {p: p.read_bytes() for p in vdir.rglob("*") if p.is_file()} == before


def test_id_models_encode_new_videos_without_an_id_row(toy: Toy, tmp_path: Path) -> None:
    """A video added live has no ID row: SASRec gets the padding (zero) embedding, the hybrid its content alone."""
    reader = FeatureReader(toy.features)
    for variant in ("sasrec_id", "hybrid"):
        model = build_variant(variant, toy)
        repo = ModelRepository(tmp_path / variant)
        export_model(model, repo, item_ids=toy.split.item_ids,
                     item_features=toy.item_features if model.needs_features else None,
                     config=ExportConfig(name=variant, max_k=10))
        known = str(toy.split.item_ids[1])
        update_catalog(repo, variant, add_ids=[900001], add_features=reader.get_many([known]))
        catalog = Catalog.load(repo.version_dir(ranker_name(variant)))
        new = torch.from_numpy(catalog.embeddings[-1])
        with torch.no_grad():
            feats = toy.item_features(torch.tensor([1]))
            content = model.encode_items(torch.tensor([0]), feats if model.needs_features else None).emb[0]
        assert torch.allclose(new, content, atol=TOL)
        if variant == "sasrec_id":
            assert float(new.abs().max()) == 0.0


def test_cold_scale_is_set_at_export_without_retraining(toy: Toy, tmp_path: Path) -> None:
    """``ExportConfig.cold_scale`` rescales the catalogue rows and live additions of unseen videos only."""
    model = build_variant("warmcold", toy)
    base_scale = model.config.ids.cold_scale
    repo = ModelRepository(tmp_path / "repo")
    common = dict(item_ids=toy.split.item_ids, item_features=toy.item_features, popularity=toy.split.item_counts)
    export_model(model, repo, **common, config=ExportConfig(name="a", max_k=10))  # the checkpoint's factor
    export_model(model, repo, **common, config=ExportConfig(name="b", max_k=10, cold_scale=2.0))
    a, b = (Catalog.load(repo.version_dir(f"{n}_ranker", 1)) for n in "ab")
    seen = toy.split.item_counts[1:] > 0  # (N,) catalogue rows in id-row order
    assert seen.any() and (~seen).any()
    assert np.abs(b.embeddings[seen] - a.embeddings[seen]).max() <= TOL
    assert np.abs(b.embeddings[~seen] - a.embeddings[~seen] * (2.0 / base_scale)).max() <= TOL
    meta = json.loads((repo.version_dir("b_encoder", 1) / "export.json").read_text())
    assert meta["source"]["model_config"]["ids"]["cold_scale"] == 2.0
    assert model.config.ids.cold_scale == base_scale  # the caller's model is left as it was
    feats = FeatureReader(toy.features).get_many([str(toy.split.item_ids[1])])
    for n, scale in (("a", base_scale), ("b", 2.0)):  # a live video has no ID row: it gets the factor too
        update_catalog(repo, n, add_ids=[900001], add_features=feats)
        cat = Catalog.load(repo.version_dir(f"{n}_ranker", 1))
        with torch.no_grad():
            content = model.encode_items(torch.tensor([0]), toy.item_features(torch.tensor([1]))).emb[0]
        assert np.abs(cat.embeddings[-1] - content.numpy() * (scale / base_scale)).max() <= TOL
    with pytest.raises(ValueError, match="warmcold models only"):
        export_model(build_variant("hybrid", toy), repo, **common, config=ExportConfig(name="c", cold_scale=2.0))
    with pytest.raises(ValueError, match=r"ExportConfig\.cold_scale"):
        ExportConfig(cold_scale=0.0)


# ------------------------------------------------------------------------------------- committed configs


def test_committed_model_repository_configs_are_what_the_exporter_writes() -> None:
    expected = default_repository_configs()
    committed = {p.relative_to(REPO_ROOT / "model_repository").as_posix(): p.read_text()
                 for p in (REPO_ROOT / "model_repository").glob("*/config.pbtxt")}
    assert committed == expected, ("model_repository/ is stale: regenerate it with "
                                   "`linkedout export --configs-only --repo model_repository`")
