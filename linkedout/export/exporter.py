"""Export a trained recommender into a versioned Triton model repository, and change its catalogue live.

``export_model`` (any model under the ``Recommender`` contract):

1. exports the item encoder (``EncoderGraph``) to ONNX and checks onnxruntime against PyTorch on
   random features and on the catalogue's own features (max abs diff <= ``tolerance``);
2. encodes the whole catalogue once (PyTorch, batched) into the embedding table, gate weights and
   layer contributions;
3. exports the ranker (``RankerGraph``, the table inside; ``export_ranker``) and checks onnxruntime against PyTorch on
   random histories: identical top-K rows, scores within ``tolerance``;
4. publishes a new version of ``NAME_encoder`` and of ``NAME_ranker`` (with the catalogue files).

``update_catalog`` adds and removes videos with no retraining and no PyTorch: the new videos are
encoded by the published ONNX encoder (``id_rows`` 0: content only, no ID row), the parent ranker's
ONNX graph gets the new embedding table (its ``table`` and ``never`` initializers are replaced), the
result is checked against a NumPy recomputation of the ranking from its own ``user`` output, and a new
ranker version is published. The parent version keeps serving until the new one is loaded.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from linkedout.export.catalog import Catalog, CatalogError, parse_video_ids
from linkedout.export.graphs import (
    EncoderGraph,
    GraphSpec,
    RankerGraph,
    encoder_spec,
    export_onnx,
    graph_spec_of,
    max_history,
    never_row,
    padded_table,
    ranker_spec,
)
from linkedout.export.repository import ModelRepository, RepositoryError, TritonConfig, config_pbtxt
from linkedout.model.base import Recommender
from linkedout.utils import atomic_write_text, get_logger, progress

log = get_logger(__name__)

__all__ = ["ExportConfig", "ExportResult", "encoder_name", "export_model", "export_ranker", "ranker_name",
           "swap_catalog_table", "update_catalog"]

ItemFeatureFn = Callable[[Tensor], Tensor]


def encoder_name(name: str) -> str:
    return f"{name}_encoder"


def ranker_name(name: str) -> str:
    return f"{name}_ranker"


@dataclass(frozen=True)
class ExportConfig:
    """How a model is exported and served."""

    # Model name in the repository: NAME_encoder and NAME_ranker (letters, digits, '_', '-').
    name: str = "linkedout"
    # Most results the ranker returns per user (KMAX = min(max_k, N)); >= 1.
    max_k: int = 100
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
        from linkedout.export.repository import config_pbtxt as _check_name

        _check_name(ranker_name(self.name), GraphSpec((), ()))  # validates the name
        for f, lo in (("max_k", 1), ("check_samples", 1), ("batch_size", 1)):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"ExportConfig.{f} must be an int >= {lo}, got {v!r}")
        if not isinstance(self.tolerance, float | int) or not self.tolerance > 0:
            raise ValueError(f"ExportConfig.tolerance must be > 0, got {self.tolerance!r}")
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


# ---------------------------------------------------------------------------------------------- checks


def _session(path: str | os.PathLike[str]) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: no constant-folding chatter
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _max_diff(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    return max((float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max()) if x.size else 0.0)
               for x, y in zip(a, b))


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise RepositoryError(f"export check failed: {what}")


def _encoder_inputs(spec: GraphSpec, id_rows: np.ndarray, features: np.ndarray | None) -> dict[str, np.ndarray]:
    feeds = {"id_rows": id_rows.astype(np.int64)}
    if any(t.name == "features" for t in spec.inputs):
        if features is None:
            raise ValueError("this encoder reads backbone features: give them")
        feeds["features"] = features.astype(np.float32)
    return feeds


def _random_histories(n_items: int, t: int, users: int, rng: np.random.Generator) -> np.ndarray:
    """(users, T) int64: left-padded histories of random length 1..T over rows 1..N (repeats allowed)."""
    hist = np.zeros((users, t), dtype=np.int64)
    for u in range(users):
        length = int(rng.integers(1, t + 1))
        hist[u, t - length:] = rng.integers(1, n_items + 1, size=length)
    return hist


# ---------------------------------------------------------------------------------------------- export


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
    rng = np.random.default_rng(0)
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
        sess = _session(enc_file)
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
            diff = _max_diff(got, [w.numpy() for w in want])
            checks[f"encoder_{what}_max_abs_diff"] = diff
            _check(diff <= cfg.tolerance, f"encoder on {what} inputs differs from PyTorch by {diff:.3g} > {cfg.tolerance}")

        # 2. the catalogue, encoded once
        t1 = time.perf_counter()
        emb, gate, contrib = _encode_catalogue(enc_graph, n, item_features, cfg.batch_size)
        seconds["encode_catalogue"] = time.perf_counter() - t1
        counts = np.zeros(n + 1, dtype=np.int64) if popularity is None else np.asarray(popularity, dtype=np.int64)
        if counts.shape != (n + 1,):
            raise ValueError(f"popularity must be [N+1={n + 1}], got {counts.shape}")
        pub = np.zeros(n, dtype=np.int64) if published is None else np.asarray(published, dtype=np.int64)
        names = list(layers) if layers is not None else [f"layer{i}" for i in range(gate.shape[1])]
        catalog = Catalog(ids=ids, embeddings=emb, gate=gate, contributions=contrib, popularity=counts[1:],
                          published=pub, layers=names if gate.shape[1] else [])

        # 3. publish the encoder, then the ranker over the catalogue (checked against PyTorch)
        src = dict(source or {})
        src.setdefault("model_class", type(model).__name__)
        src.setdefault("model_config", getattr(getattr(model, "config", None), "to_dict", dict)())
        enc_cfg = config_pbtxt(encoder_name(cfg.name), enc_spec, cfg.triton)
        id_rows = {str(int(v)): r for r, v in enumerate(ids.tolist(), start=1)}

        def write_encoder(d: Path, version: int) -> None:
            os.replace(enc_file, d / "model.onnx")
            atomic_write_text(d / "id_rows.json", json.dumps(id_rows))
            atomic_write_text(d / "export.json", json.dumps(
                {"spec": enc_spec.to_dict(), "source": src, "checks": checks}, indent=2, default=str))

        ev = repo.publish(encoder_name(cfg.name), enc_cfg, enc_spec, write_encoder, replace=cfg.replace)
        t2 = time.perf_counter()
        rv = export_ranker(model, catalog, repo, cfg, encoder_version=ev, source=src, checks=checks)
        seconds["export_ranker"] = time.perf_counter() - t2
    seconds["total"] = time.perf_counter() - t0
    log.info("exported %s: encoder v%d, ranker v%d, %d videos, checks %s", cfg.name, ev, rv, n,
             {k: round(v, 8) for k, v in checks.items()})
    return ExportResult(cfg.name, str(repo.root), ev, rv, n, checks, seconds)


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
    """Export ``model``'s ranker over ``catalog`` (its embedding table inside), check it, publish it.

    onnxruntime is checked against PyTorch on random histories (the scores within ``tolerance``, the
    top-K the same up to ties). Returns the new ``NAME_ranker`` version; ``checks`` (when given) gets
    the measured differences.
    """
    cfg = config or ExportConfig()
    repo = repository if isinstance(repository, ModelRepository) else ModelRepository(repository)
    checks = {} if checks is None else checks
    model = model.eval().to("cpu")
    n = catalog.num_items
    rng = np.random.default_rng(1)
    t_hist = max_history(model)
    kmax = min(cfg.max_k, n)
    rk_spec = ranker_spec(t_hist, kmax, catalog.dim)
    rk_graph = RankerGraph(model, torch.from_numpy(catalog.table()), kmax).eval()
    with tempfile.TemporaryDirectory(prefix="linkedout-ranker-") as tmp:
        rk_file = Path(tmp) / "ranker.onnx"
        # not optimised by onnxscript (onnxruntime optimises at load anyway): the table stays the
        # initializer called ``table``, which ``update_catalog`` replaces
        export_onnx(rk_graph, (torch.from_numpy(_random_histories(n, t_hist, 4, rng)),), rk_spec, rk_file,
                    optimize=False)
        _check_table_initializers(rk_file, n + 1, catalog.dim)
        hist = _random_histories(n, t_hist, cfg.check_samples, rng)
        got_rows, got_scores, got_user = _session(rk_file).run(None, {"history": hist})
        with torch.no_grad():
            w_rows, w_scores, w_user = (x.numpy() for x in rk_graph(torch.from_numpy(hist)))
            w_full = rk_graph.full_scores(torch.from_numpy(hist)).numpy()  # (B, N+1), masked
        finite = np.isfinite(w_scores)
        checks["ranker_scores_max_abs_diff"] = _max_diff([np.where(finite, got_scores, 0)],
                                                         [np.where(finite, w_scores, 0)])
        checks["ranker_user_max_abs_diff"] = _max_diff([got_user], [w_user])
        checks["ranker_topk_agreement"] = float(np.mean(got_rows[finite] == w_rows[finite]))
        _check(checks["ranker_scores_max_abs_diff"] <= cfg.tolerance,
               f"ranker scores differ from PyTorch by {checks['ranker_scores_max_abs_diff']:.3g}")
        # ties (equal scores, e.g. popularity) may be broken in another order: what must hold is that
        # every row returned has the score PyTorch gives it, and those are PyTorch's best K scores
        mismatch = topk_mismatch(got_rows, got_scores, w_full, cfg.tolerance)
        _check(mismatch is None, f"ranker top-{kmax} is not PyTorch's: {mismatch}")
        rk_cfg = config_pbtxt(ranker_name(cfg.name), rk_spec, cfg.triton)
        parent = repo.latest(ranker_name(cfg.name))
        src = dict(source or {})

        def write_ranker(d: Path, version: int) -> None:
            os.replace(rk_file, d / "model.onnx")
            catalog.save(d, model=cfg.name, version=version, encoder_version=encoder_version, max_k=kmax,
                         max_history=t_hist, created=_now(), parent_version=parent, added=[], removed=[],
                         source=src, checks=checks)

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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------- live catalogue


def update_catalog(
    repository: ModelRepository | str | os.PathLike[str],
    name: str,
    *,
    add_ids: Sequence[object] = (),
    add_features: np.ndarray | None = None,
    add_published: np.ndarray | None = None,
    remove_ids: Sequence[object] = (),
    tolerance: float = 1e-4,
    check_samples: int = 64,
) -> tuple[int, Catalog]:
    """Publish a new catalogue version of ``NAME_ranker``: the latest one, plus and minus videos.

    ``add_features`` (M, L, K, D) are the new videos' backbone features (for models that read them);
    the published encoder of the latest ranker version encodes them with ``id_rows`` 0 unless a video
    has a row in that encoder's training ID table. Returns ``(new version, new catalogue)``.
    Raises ``CatalogError`` (unknown or duplicate ids, wrong shapes) or ``RepositoryError`` (no
    version to start from, a check failed) and publishes nothing then.
    """
    import onnx

    repo = repository if isinstance(repository, ModelRepository) else ModelRepository(repository)
    rname = ranker_name(name)
    parent_dir = repo.version_dir(rname)
    parent_v = int(parent_dir.name)
    parent = Catalog.load(parent_dir)
    add = parse_video_ids(add_ids)
    if not len(add) and not len(remove_ids):
        raise CatalogError("nothing to change: give videos to add or to remove")
    additions: dict[str, np.ndarray] | None = None
    ev = parent.meta.get("encoder_version")
    if len(add):
        enc_dir = repo.version_dir(encoder_name(name), ev)
        sess = _session(enc_dir / "model.onnx")
        in_names = [i.name for i in sess.get_inputs()]
        known = json.loads((enc_dir / "id_rows.json").read_text()) if (enc_dir / "id_rows.json").is_file() else {}
        rows = np.asarray([int(known.get(str(int(v)), 0)) for v in add], dtype=np.int64)
        feeds: dict[str, np.ndarray] = {"id_rows": rows}
        if "features" in in_names:
            if add_features is None:
                raise CatalogError(f"{name}'s encoder reads backbone features: give the new videos' features")
            feats = np.asarray(add_features, dtype=np.float32)
            want = sess.get_inputs()[in_names.index("features")].shape[1:]
            if feats.ndim != 4 or feats.shape[0] != len(add) or list(feats.shape[1:]) != [int(s) for s in want]:
                raise CatalogError(f"features of the new videos must be ({len(add)}, {', '.join(map(str, want))}), "
                                   f"got {feats.shape}")
            feeds["features"] = feats
        out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
        additions = {"ids": add, "embeddings": out["embedding"]}
        if "gate" in out:
            additions["gate"], additions["contributions"] = out["gate"], out["contributions"]
        if add_published is not None:
            additions["published"] = np.asarray(add_published, dtype=np.int64)
    catalog = parent.with_changes(add=additions, remove=parse_video_ids(remove_ids))
    kmax = int(parent.meta.get("max_k", 0))
    if catalog.num_items < kmax:
        raise CatalogError(f"the catalogue would have {catalog.num_items} videos, fewer than the ranker's top-{kmax}: "
                           "export the model again with a smaller max_k")

    proto = swap_catalog_table(onnx.load(str(parent_dir / "model.onnx")), catalog, where=f"{parent_dir}/model.onnx")
    spec = graph_spec_of(proto)
    cfg_text = repo.config_text(rname)

    with tempfile.TemporaryDirectory(prefix="linkedout-catalog-") as tmp:
        rk_file = Path(tmp) / "model.onnx"
        onnx.save(proto, str(rk_file))
        _check_ranker(rk_file, parent_dir / "model.onnx", parent, catalog, kmax, tolerance, check_samples)

        def write(d: Path, version: int) -> None:
            os.replace(rk_file, d / "model.onnx")
            catalog.save(d, model=name, version=version, encoder_version=ev, max_k=kmax,
                         max_history=parent.meta.get("max_history"), created=_now(), parent_version=parent_v,
                         source=parent.meta.get("source", {}), checks=parent.meta.get("checks", {}),
                         parent_sha256=_sha256(parent_dir / "model.onnx"))

        version = repo.publish(rname, cfg_text, spec, write)
    log.info("published %s catalogue version %d: %d videos (+%d, -%d)", name, version, catalog.num_items,
             len(catalog.meta.get("added", [])), len(catalog.meta.get("removed", [])))
    return version, catalog


def swap_catalog_table(proto: Any, catalog: Catalog, *, where: str = "ranker") -> Any:
    """The ranker graph ``proto`` (``onnx.ModelProto``, changed in place) over ``catalog``'s table.

    Replaces the initializers ``table`` (N+1, d) and ``never`` (N+1,) and drops the inferred shapes
    that named the old size; ``RepositoryError`` when the graph is not a linkedout ranker or the
    embedding width differs.
    """
    from onnx import numpy_helper

    new_inits = {"table": padded_table(torch.from_numpy(catalog.table())).numpy(),
                 "never": never_row(catalog.num_items).numpy()}
    found = set()
    for init in proto.graph.initializer:
        if init.name in new_inits:
            old = numpy_helper.to_array(init)
            arr = new_inits[init.name]
            if old.ndim != arr.ndim or old.shape[1:] != arr.shape[1:]:
                raise RepositoryError(f"{where}: initializer {init.name} is {old.shape}, the new catalogue needs "
                                      f"{arr.shape}")
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
            found.add(init.name)
    if found != set(new_inits):
        raise RepositoryError(f"{where} has no initializer(s) {sorted(set(new_inits) - found)}: "
                              "not a ranker exported by linkedout")
    del proto.graph.value_info[:]  # shapes inferred from the old table size no longer hold
    return proto


def _check_ranker(new_file: Path, parent_file: Path, parent: Catalog, catalog: Catalog, kmax: int,
                  tolerance: float, samples: int) -> None:
    """The new ranker ranks its own table: check it against NumPy, and its user states against the parent's."""
    rng = np.random.default_rng(0)
    t = int(parent.meta.get("max_history") or 10)
    kept = np.flatnonzero(np.isin(parent.ids, catalog.ids))  # parent rows - 1 that survive
    if kept.size == 0:
        return
    hist_parent = np.zeros((samples, t), dtype=np.int64)
    for u in range(samples):
        length = int(rng.integers(1, t + 1))
        hist_parent[u, t - length:] = rng.choice(kept, size=length) + 1
    hist_new = np.where(hist_parent > 0, catalog.rows_of(parent.ids_of(hist_parent).reshape(-1)).reshape(hist_parent.shape), 0)
    rows, scores, user = _session(new_file).run(None, {"history": hist_new})
    _, _, user_parent = _session(parent_file).run(None, {"history": hist_parent})
    diff = float(np.abs(user - user_parent).max())
    _check(diff <= tolerance, f"user states of the new catalogue version differ from the parent's by {diff:.3g}")
    full = user.astype(np.float64) @ catalog.table().astype(np.float64).T  # (B, N+1)
    full[:, 0] = -np.inf
    np.put_along_axis(full, hist_new, -np.inf, axis=1)
    want = np.take_along_axis(full, rows, axis=1)  # (B, KMAX) what the table says of the rows returned
    finite = np.isfinite(want)
    _check(bool(finite.all()) or kmax > catalog.num_items - t, "the new ranker returned masked rows")
    sdiff = float(np.abs(want[finite] - scores[finite]).max()) if finite.any() else 0.0
    _check(sdiff <= tolerance * 10, f"new ranker scores disagree with its table by {sdiff:.3g}")
    best = -np.sort(-full, axis=1)[:, :kmax]  # (B, KMAX) the best scores the table allows
    got = -np.sort(-scores.astype(np.float64), axis=1)
    ok = np.isfinite(best)
    _check(bool(np.all(np.abs(best[ok] - got[ok]) <= tolerance * 10)), "the new ranker's top-K is not the best K of its table")


def topk_mismatch(rows: np.ndarray, scores: np.ndarray, full: np.ndarray, tol: float) -> str | None:
    """Why ``rows``/``scores`` (B, K) are not a top-K of ``full`` (B, N+1) scores, or None when they are.

    Ties may be broken in any order: each returned row must carry its score in ``full`` and the
    returned scores must be ``full``'s best K, both within ``tol``.
    """
    k = rows.shape[1]
    own = np.take_along_axis(full, rows, axis=1)  # (B, K)
    both = np.isfinite(own) & np.isfinite(scores)
    if not np.array_equal(np.isfinite(own), np.isfinite(scores)):
        return "masked rows disagree"
    if both.any() and float(np.abs(own[both] - scores[both]).max()) > tol:
        return f"returned scores differ from the rows' own scores by {float(np.abs(own[both] - scores[both]).max()):.3g}"
    best = -np.sort(-full, axis=1)[:, :k]  # (B, K)
    ok = np.isfinite(best)
    got = -np.sort(-scores.astype(np.float64), axis=1)
    if not np.array_equal(ok, np.isfinite(got)) or (ok.any() and float(np.abs(best[ok] - got[ok]).max()) > tol):
        return "the returned scores are not the best K"
    for b in range(rows.shape[0]):
        if len(set(rows[b][np.isfinite(scores[b])].tolist())) != int(np.isfinite(scores[b]).sum()):
            return f"user {b} gets a row twice"
    return None


def _check_table_initializers(path: Path, rows: int, dim: int) -> None:
    """The ranker's catalogue lives in exactly the initializers ``table`` (N+1, d) and ``never`` (N+1,)."""
    import onnx

    inits = {i.name: list(i.dims) for i in onnx.load(str(path), load_external_data=False).graph.initializer}
    _check(inits.get("table") == [rows, dim] and inits.get("never") == [rows],
           f"ranker graph keeps its catalogue outside the initializers 'table' and 'never': {inits.get('table')}, "
           f"{inits.get('never')}")
    others = [n for n, dims in inits.items() if n not in ("table", "never") and rows in dims]
    _check(not others, f"ranker graph has other catalogue-sized constants {others}; a catalogue update could not "
                       "replace them")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
