"""Changing a served model's catalogue live: videos added and removed with no retraining and no PyTorch.

:func:`update_catalog` encodes the new videos with the published ONNX item encoder (``id_rows`` 0:
content only, unless a video has a row in that encoder's training ID table), gives the parent
ranker's ONNX graph the new embedding table (:func:`swap_catalog_table`: its ``table`` and ``never``
initializers are replaced), checks the result against a NumPy recomputation of the ranking from its
own ``user`` output (``linkedout.export.checks.check_updated_ranker``) and publishes a new ranker
version. The parent version keeps serving until the new one is loaded.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from linkedout.export.catalog import Catalog, CatalogError, parse_video_ids
from linkedout.export.checks import check_updated_ranker, onnx_session
from linkedout.export.exporter import encoder_name, ranker_name
from linkedout.export.graphs import graph_spec_of, never_row, padded_table
from linkedout.export.repository import ModelRepository, RepositoryError
from linkedout.utils import file_sha256, get_logger, utc_now

log = get_logger(__name__)

__all__ = ["swap_catalog_table", "update_catalog"]


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
    ev = parent.meta.get("encoder_version")
    additions = (_encode_new_videos(repo.version_dir(encoder_name(name), ev), name, add, add_features, add_published)
                 if len(add) else None)
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
        check_updated_ranker(rk_file, parent_dir / "model.onnx", parent, catalog, kmax, tolerance, check_samples)

        def write(d: Path, version: int) -> None:
            os.replace(rk_file, d / "model.onnx")
            catalog.save(d, model=name, version=version, encoder_version=ev, max_k=kmax,
                         max_history=parent.meta.get("max_history"), created=utc_now(), parent_version=parent_v,
                         source=parent.meta.get("source", {}), checks=parent.meta.get("checks", {}),
                         parent_sha256=file_sha256(parent_dir / "model.onnx"))

        version = repo.publish(rname, cfg_text, spec, write)
    log.info("published %s catalogue version %d: %d videos (+%d, -%d)", name, version, catalog.num_items,
             len(catalog.meta.get("added", [])), len(catalog.meta.get("removed", [])))
    return version, catalog


def _encode_new_videos(enc_dir: Path, name: str, add: np.ndarray, add_features: np.ndarray | None,
                       add_published: np.ndarray | None) -> dict[str, np.ndarray]:
    """The additions of :meth:`Catalog.with_changes`: ids, embeddings (and gates, publication times) of ``add``,
    encoded by the published encoder version in ``enc_dir``."""
    sess = onnx_session(enc_dir / "model.onnx")
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
    return additions


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
