"""Export a trained recommender into a versioned Triton model repository.

``export_model`` (any model under the ``Recommender`` contract):

1. exports the item encoder (``EncoderGraph``) to ONNX and checks onnxruntime against PyTorch on
   random features and on the catalogue's own features (max abs diff <= ``tolerance``);
2. encodes the whole catalogue once (PyTorch, batched) into the embedding table, gate weights and
   layer contributions;
3. exports the ranker (``UserGraph``: histories -> user states; ``export_ranker``), builds the
   catalogue's retrieval index (exact below ``IndexSettings.exact_below`` videos, ANN above) and
   checks onnxruntime against PyTorch on random histories: user states within ``tolerance``, and
   the index's top-K of onnxruntime's user states is PyTorch's full-catalogue top-K (up to ties; an
   ANN index: its exact re-search is, and its recall is recorded);
4. publishes a new version of ``NAME_encoder`` and of ``NAME_ranker`` (with the catalogue files).

The checks are in ``linkedout.export.checks``; changing the catalogue of a published model with no
retraining is ``linkedout.export.update``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from linkedout.evaluation.encode import ItemFeatureFn
from linkedout.export.catalog import Catalog, parse_video_ids, record_dtype
from linkedout.export.checks import (
    max_abs_diff,
    onnx_session,
    random_histories,
    require,
    topk_mismatch,
)
from linkedout.export.graphs import (
    EncoderGraph,
    GraphSpec,
    UserGraph,
    encoder_spec,
    export_onnx,
    full_scores,
    history_embeddings,
    max_history,
    ranker_spec,
)
from linkedout.export.index import IndexSettings, RetrievalIndex
from linkedout.export.repository import ModelRepository, TritonConfig, config_pbtxt
from linkedout.model.base import Recommender
from linkedout.utils import atomic_write_text, get_logger, progress, utc_now

log = get_logger(__name__)

__all__ = ["ExportConfig", "ExportResult", "encoder_name", "export_model", "export_ranker", "ranker_name"]


def encoder_name(name: str) -> str:
    """The repository name of model NAME's item encoder: ``NAME_encoder``."""
    return f"{name}_encoder"


def ranker_name(name: str) -> str:
    """The repository name of model NAME's ranker (with its catalogue): ``NAME_ranker``."""
    return f"{name}_ranker"


@dataclass(frozen=True)
class ExportConfig:
    """How a model is exported and served."""

    # Model name in the repository: NAME_encoder and NAME_ranker (letters, digits, '_', '-').
    name: str = "linkedout"
    # Most results the ranker returns per user (KMAX = min(max_k, N)); >= 1.
    max_k: int = 100
    # How the catalogue's retrieval index is built and searched (exact brute force or ANN by size).
    index: IndexSettings = field(default_factory=IndexSettings)
    # Triton settings written to config.pbtxt (batching, instance kind, version policy).
    triton: TritonConfig = field(default_factory=TritonConfig)
    # Largest allowed |onnxruntime - PyTorch| difference of any output in the checks; > 0.
    tolerance: float = 1e-4
    # Users (random histories) and videos (real features) in the checks; >= 1.
    check_samples: int = 64
    # Items per PyTorch batch when encoding the catalogue; >= 1.
    batch_size: int = 512
    # Retire every existing version when the model's configuration changed (else refuse).
    replace: bool = False
    # ``warmcold`` only: the calibration factor on the embedding of videos without an ID row
    # (``IDConfig.cold_scale``) to export instead of the checkpoint's; None = the checkpoint's. It is
    # not used in training, so moving along the warm/cold trade-off needs no retraining; > 0.
    cold_scale: float | None = None

    def __post_init__(self) -> None:
        config_pbtxt(ranker_name(self.name), GraphSpec((), ()))  # validates the name
        for f, lo in (("max_k", 1), ("check_samples", 1), ("batch_size", 1)):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"ExportConfig.{f} must be an int >= {lo}, got {v!r}")
        if not isinstance(self.tolerance, float | int) or not self.tolerance > 0:
            raise ValueError(f"ExportConfig.tolerance must be > 0, got {self.tolerance!r}")
        if not isinstance(self.index, IndexSettings):
            raise ValueError(f"ExportConfig.index must be an IndexSettings, got {type(self.index).__name__}")
        if not isinstance(self.triton, TritonConfig):
            raise ValueError(f"ExportConfig.triton must be a TritonConfig, got {type(self.triton).__name__}")
        if self.cold_scale is not None and (isinstance(self.cold_scale, bool)
                                            or not isinstance(self.cold_scale, float | int) or not self.cold_scale > 0):
            raise ValueError(f"ExportConfig.cold_scale must be a number > 0 or None, got {self.cold_scale!r}")


@dataclass
class ExportResult:
    """What was published and how well onnxruntime agreed with PyTorch."""

    name: str
    repository: str
    encoder_version: int | None
    ranker_version: int
    num_items: int
    checks: dict[str, float] = field(default_factory=dict)  # max abs differences, top-K agreement
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------- export


def _encoder_inputs(spec: GraphSpec, id_rows: np.ndarray, features: np.ndarray | None) -> dict[str, np.ndarray]:
    """The onnxruntime feeds of an encoder with ``spec``: ``id_rows``, and ``features`` when it reads them."""
    feeds = {"id_rows": id_rows.astype(np.int64)}
    if any(t.name == "features" for t in spec.inputs):
        if features is None:
            raise ValueError("this encoder reads backbone features: give them")
        feeds["features"] = features.astype(np.float32)
    return feeds


def export_model(
    model: Recommender,
    repository: ModelRepository | str | os.PathLike[str],
    *,
    item_ids: Sequence[str],
    item_features: ItemFeatureFn | None = None,
    popularity: np.ndarray | None = None,
    published: np.ndarray | None = None,
    layers: Sequence[str] | None = None,
    source: Mapping[str, Any] | None = None,
    config: ExportConfig | None = None,
) -> ExportResult:
    """Export ``model`` and its catalogue into ``repository``; see the module docstring.

    ``item_ids`` is the model's item table (``item_ids[0] == ""`` is padding; row ``i`` is video
    ``item_ids[i]``, an integer id): the catalogue served is those videos in that order.
    ``item_features`` maps item rows (M,) to backbone features (M, L, K, D) (models that read them).
    ``popularity`` int [N+1] (training interactions per row), ``published`` int [N] (ms) per video.
    """
    cfg = config or ExportConfig()
    repo = repository if isinstance(repository, ModelRepository) else ModelRepository(repository)
    model = with_cold_scale(model.eval().to("cpu"), cfg.cold_scale)
    n = int(model.num_items)
    if len(item_ids) != n + 1:
        raise ValueError(f"item_ids must hold padding + {n} items (the model's catalogue), got {len(item_ids)}")
    ids = parse_video_ids(item_ids[1:])
    if model.needs_features and item_features is None:
        raise ValueError(f"{type(model).__name__} reads backbone features: give item_features")
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    checks: dict[str, float] = {}

    probe_rows = torch.arange(1, min(n, cfg.check_samples) + 1)
    probe_feats = item_features(probe_rows).float() if model.needs_features and item_features else None
    feat_shape = tuple(probe_feats.shape[1:]) if probe_feats is not None else None
    enc_spec = encoder_spec(model, feat_shape)
    enc_graph = EncoderGraph(model).eval()

    with tempfile.TemporaryDirectory(prefix="linkedout-export-") as tmp:
        # 1. the encoder, checked on random and on real features
        enc_file = Path(tmp) / "encoder.onnx"
        ex_rows = probe_rows[: min(4, len(probe_rows))]
        ex_args: tuple[Tensor, ...] = (ex_rows,)
        if probe_feats is not None:
            ex_args = (ex_rows, probe_feats[: len(ex_rows)])
        export_onnx(enc_graph, ex_args, enc_spec, enc_file)
        seconds["export_encoder"] = time.perf_counter() - t0
        _check_encoder(enc_file, enc_graph, enc_spec, probe_rows, probe_feats, feat_shape, n, cfg, checks)

        # 2. the catalogue, encoded once
        t1 = time.perf_counter()
        catalog = _catalogue(enc_graph, ids, item_features, popularity, published, layers, cfg.batch_size)
        seconds["encode_catalogue"] = time.perf_counter() - t1

        # 3. publish the encoder, then the ranker over the catalogue (checked against PyTorch)
        src = dict(source or {})
        src.setdefault("model_class", type(model).__name__)
        src.setdefault("model_config", getattr(getattr(model, "config", None), "to_dict", dict)())
        ev = _publish_encoder(repo, enc_file, enc_spec, ids, src, checks, cfg)
        t2 = time.perf_counter()
        rv = export_ranker(model, catalog, repo, cfg, encoder_version=ev, source=src, checks=checks)
        seconds["export_ranker"] = time.perf_counter() - t2
    seconds["total"] = time.perf_counter() - t0
    log.info("exported %s: encoder v%d, ranker v%d, %d videos, checks %s", cfg.name, ev, rv, n,
             {k: round(v, 8) for k, v in checks.items()})
    return ExportResult(cfg.name, str(repo.root), ev, rv, n, checks, seconds)


def _check_encoder(enc_file: Path, enc_graph: EncoderGraph, enc_spec: GraphSpec, probe_rows: Tensor,
                   probe_feats: Tensor | None, feat_shape: tuple[int, ...] | None, n: int, cfg: ExportConfig,
                   checks: dict[str, float]) -> None:
    """onnxruntime against PyTorch on random rows and features, then on the catalogue's own (into ``checks``)."""
    rng = np.random.default_rng(0)
    sess = onnx_session(enc_file)
    probes: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    m = min(cfg.check_samples, n)
    rand_rows = rng.integers(0, n + 1, size=m).astype(np.int64)  # 0 = not in training
    rand_feats = (rng.standard_normal((m, *feat_shape)).astype(np.float32) if feat_shape else None)
    probes.append(("random", rand_rows, rand_feats))
    probes.append(("catalogue", probe_rows.numpy(), None if probe_feats is None else probe_feats.numpy()))
    for what, rows_np, feats_np in probes:
        got = sess.run(None, _encoder_inputs(enc_spec, rows_np, feats_np))
        with torch.no_grad():
            want = enc_graph(torch.from_numpy(rows_np), None if feats_np is None else torch.from_numpy(feats_np))
        diff = max_abs_diff(got, [w.numpy() for w in want])
        checks[f"encoder_{what}_max_abs_diff"] = diff
        require(diff <= cfg.tolerance, f"encoder on {what} inputs differs from PyTorch by {diff:.3g} > {cfg.tolerance}")


def _catalogue(enc_graph: EncoderGraph, ids: np.ndarray, item_features: ItemFeatureFn | None,
               popularity: np.ndarray | None, published: np.ndarray | None, layers: Sequence[str] | None,
               batch_size: int) -> Catalog:
    """The catalogue of the model's items ``ids`` (rows 1..N), encoded once by ``enc_graph``."""
    n = len(ids)
    emb, gate, contrib = _encode_catalogue(enc_graph, n, item_features, batch_size)
    counts = np.zeros(n + 1, dtype=np.int64) if popularity is None else np.asarray(popularity, dtype=np.int64)
    if counts.shape != (n + 1,):
        raise ValueError(f"popularity must be [N+1={n + 1}], got {counts.shape}")
    pub = np.zeros(n, dtype=np.int64) if published is None else np.asarray(published, dtype=np.int64)
    names = list(layers) if layers is not None else [f"layer{i}" for i in range(gate.shape[1])]
    return Catalog(ids=ids, embeddings=emb, gate=gate, contributions=contrib, popularity=counts[1:],
                   published=pub, layers=names if gate.shape[1] else [])


def _publish_encoder(repo: ModelRepository, enc_file: Path, enc_spec: GraphSpec, ids: np.ndarray,
                     src: dict[str, Any], checks: dict[str, float], cfg: ExportConfig) -> int:
    """Publish ``enc_file`` as a new ``NAME_encoder`` version with its ID rows and export record; its number."""
    enc_cfg = config_pbtxt(encoder_name(cfg.name), enc_spec, cfg.triton)
    id_rows = {str(int(v)): r for r, v in enumerate(ids.tolist(), start=1)}

    def write_encoder(d: Path, version: int) -> None:
        os.replace(enc_file, d / "model.onnx")
        atomic_write_text(d / "id_rows.json", json.dumps(id_rows))
        atomic_write_text(d / "export.json", json.dumps(
            {"spec": enc_spec.to_dict(), "source": src, "checks": checks}, indent=2, default=str))

    return repo.publish(encoder_name(cfg.name), enc_cfg, enc_spec, write_encoder, replace=cfg.replace)


def with_cold_scale(model: Recommender, cold_scale: float | None) -> Recommender:
    """``model`` itself, or with ``cold_scale`` a shallow copy (shared weights) whose ``IDConfig.cold_scale`` is it.

    Raises ``ValueError`` for a model without an ID part that tells seen from unseen videos (not ``warmcold``).
    """
    if cold_scale is None:
        return model
    cfg = getattr(model, "config", None)
    if getattr(cfg, "kind", None) != "warmcold":
        raise ValueError(f"cold_scale applies to warmcold models only, not to {getattr(cfg, 'kind', type(model).__name__)}")
    assert cfg is not None
    out = copy.copy(model)
    object.__setattr__(out, "config", dataclasses.replace(cfg, ids=dataclasses.replace(cfg.ids, cold_scale=float(cold_scale))))
    return out


def export_ranker(model: Recommender, catalog: Catalog, repository: ModelRepository | str | os.PathLike[str],
                  config: ExportConfig | None = None, *, encoder_version: int | None = None,
                  source: Mapping[str, Any] | None = None, checks: dict[str, float] | None = None) -> int:
    """Export ``model``'s ranker (its user-state graph) with ``catalog`` and its retrieval index, check, publish.

    onnxruntime is checked against PyTorch on random histories: the user states within
    ``tolerance``; the index's top-K for onnxruntime's user states is PyTorch's full-catalogue top-K
    (the scores within ``tolerance``, the rows the same up to ties); an ANN index is checked through
    its exact re-search and its recall@KMAX recorded (``ranker_ann_recall``). Returns the new
    ``NAME_ranker`` version; ``checks`` (when given) gets the measured differences.
    """
    cfg = config or ExportConfig()
    repo = repository if isinstance(repository, ModelRepository) else ModelRepository(repository)
    checks = {} if checks is None else checks
    model = model.eval().to("cpu")
    n = catalog.num_items
    rng = np.random.default_rng(1)
    t_hist = max_history(model)
    kmax = min(cfg.max_k, n)
    rk_spec = ranker_spec(t_hist, catalog.dim)
    graph = UserGraph(model).eval()
    emb = torch.from_numpy(catalog.embeddings)
    t0 = time.perf_counter()
    index = RetrievalIndex.build(catalog.embeddings, cfg.index, payload_dtype=record_dtype(catalog.num_layers))
    log.info("retrieval index of %d videos: %s in %.1f s", n, index.kind, time.perf_counter() - t0)
    with tempfile.TemporaryDirectory(prefix="linkedout-ranker-") as tmp:
        rk_file = Path(tmp) / "ranker.onnx"
        ex = torch.from_numpy(random_histories(n, t_hist, 4, rng))
        export_onnx(graph, (ex, history_embeddings(emb, ex)), rk_spec, rk_file)
        # PyTorch's full scores are (users, N): bounded to ~64 M values at large catalogues
        users = max(1, min(cfg.check_samples, (1 << 26) // (n + 1)))
        hist = random_histories(n, t_hist, users, rng)
        (got_user,) = onnx_session(rk_file).run(None, {"history": hist, "history_emb": index.vectors(hist)})
        with torch.no_grad():
            w_full, w_user = (x.numpy() for x in full_scores(model, emb, torch.from_numpy(hist)))
        checks["ranker_user_max_abs_diff"] = max_abs_diff([got_user], [w_user])
        require(checks["ranker_user_max_abs_diff"] <= cfg.tolerance,
                f"ranker user states differ from PyTorch by {checks['ranker_user_max_abs_diff']:.3g}")
        exact = index if index.kind == "exact" else index.exact()
        rows, scores = exact.search(got_user, kmax, exclude=hist)
        finite = np.isfinite(scores)
        w_rows = np.argsort(-w_full, axis=1, kind="stable")[:, :kmax]
        checks["ranker_topk_agreement"] = float(np.mean(rows[finite] == w_rows[finite]))
        # ties (equal scores, e.g. popularity) may be broken in another order: what must hold is that
        # every row returned has the score PyTorch gives it, and those are PyTorch's best K scores
        mismatch = topk_mismatch(rows, scores, w_full, cfg.tolerance)
        require(mismatch is None, f"the catalogue's top-{kmax} is not PyTorch's: {mismatch}")
        if exact is not index:
            ann_rows, _ = index.search(got_user, kmax, exclude=hist)
            checks["ranker_ann_recall"] = float(np.mean([len(set(a[f].tolist()) & set(b[f].tolist())) / max(1, f.sum())
                                                         for a, b, f in zip(ann_rows, rows, finite)]))
        rk_cfg = config_pbtxt(ranker_name(cfg.name), rk_spec, cfg.triton)
        src = dict(source or {})

        def write_ranker(d: Path, version: int) -> None:
            os.replace(rk_file, d / "model.onnx")
            catalog.save(d, index=index, model=cfg.name, version=version, encoder_version=encoder_version, max_k=kmax,
                         max_history=t_hist, created=utc_now(), source=src, checks=checks)

        return repo.publish(ranker_name(cfg.name), rk_cfg, rk_spec, write_ranker, replace=cfg.replace)


def _encode_catalogue(graph: EncoderGraph, n: int, item_features: ItemFeatureFn | None,
                      batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings (N, d), gate (N, L) and contributions (N, L) of rows 1..N (L = 0 without a fusion)."""
    embs, gates, contribs = [], [], []
    starts = range(1, n + 1, batch_size)
    with torch.no_grad():
        for s in progress(starts, total=len(starts), desc="encode catalogue", unit="batch"):
            rows = torch.arange(s, min(s + batch_size, n + 1))
            feats = item_features(rows).float() if graph.with_features and item_features else None
            out = graph(rows, feats)
            embs.append(out[0].numpy())
            if graph.with_gate:
                gates.append(out[1].numpy())
                contribs.append(out[2].numpy())
    emb = np.concatenate(embs)
    if gates:
        return emb, np.concatenate(gates), np.concatenate(contribs)
    return emb, np.zeros((n, 0), np.float32), np.zeros((n, 0), np.float32)
