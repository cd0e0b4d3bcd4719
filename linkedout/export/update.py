"""Changing a served model's catalogue live: videos added and removed with no retraining and no PyTorch.

:func:`update_catalog` encodes the new videos with the published ONNX item encoder (``id_rows`` 0:
content only, unless a video has a row in that encoder's training ID table) and appends them to the
catalogue of the latest ranker version in place (``linkedout.export.catalog.append_videos``: their
rows and records appended to the retrieval index, committed by its manifest; O(new videos) bytes,
nothing rewritten, the ranker graph untouched, no new Triton version). Removals are tombstones. A
serving transformer sees the change on its next catalogue poll; a change killed midway leaves the
catalogue as it was.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from linkedout.export.catalog import (
    CatalogError,
    change_videos,
    live_ids,
    live_rows_of,
    parse_video_ids,
    read_meta,
)
from linkedout.export.checks import onnx_session
from linkedout.export.exporter import encoder_name, ranker_name
from linkedout.export.repository import ModelRepository
from linkedout.utils import get_logger

log = get_logger(__name__)

__all__ = ["CatalogChange", "update_catalog"]


@dataclass(frozen=True)
class CatalogChange:
    """What ``update_catalog`` changed: the ranker version whose catalogue changed, the rows of the added
    and removed videos, how many videos it serves now, and the added videos as encoded (``ids``,
    ``embeddings``, ``gate``, ``contributions``, ``published``; empty without additions)."""

    version: int
    added_rows: list[int]
    removed_rows: list[int]
    num_items: int
    additions: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)


def update_catalog(
    repository: ModelRepository | str | os.PathLike[str],
    name: str,
    *,
    add_ids: Sequence[object] = (),
    add_features: np.ndarray | None = None,
    add_published: np.ndarray | None = None,
    remove_ids: Sequence[object] = (),
) -> CatalogChange:
    """Add videos to and remove videos from the catalogue of the latest ``NAME_ranker`` version, in place.

    ``add_features`` (M, L, K, D) are the new videos' backbone features (for models that read them);
    the encoder version the ranker version was exported with encodes them, with ``id_rows`` 0 unless a
    video has a row in that encoder's training ID table. The removals and additions are one change
    (``change_videos``: one manifest commits both; removing and adding one id replaces the video).
    Raises ``CatalogError`` (unknown or duplicate ids, wrong shapes, fewer videos left than the
    ranker's top-K) or ``RepositoryError`` (no version) before writing anything.
    """
    repo = repository if isinstance(repository, ModelRepository) else ModelRepository(repository)
    vdir = repo.version_dir(ranker_name(name))
    version = int(vdir.name)
    meta = read_meta(vdir)
    add = parse_video_ids(add_ids)
    remove = parse_video_ids(remove_ids)
    if not len(add) and not len(remove):
        raise CatalogError("nothing to change: give videos to add or to remove")
    ids, removed = live_ids(vdir)  # checked early (before encoding), and again under the lock when written
    unknown = remove[live_rows_of(ids, removed, remove) == 0]
    if unknown.size:
        raise CatalogError(f"cannot remove videos not in the catalogue: {unknown[:10].tolist()}")
    left = ids.size - removed.size + len(add) - len(np.unique(remove))
    kmax = int(meta.get("max_k", 0))
    if left < kmax:
        raise CatalogError(f"the catalogue would have {left} videos, fewer than the ranker's top-{kmax}: "
                           "export the model again with a smaller max_k")
    additions = None
    if len(add):
        ev = meta.get("encoder_version")
        additions = _encode_new_videos(repo.version_dir(encoder_name(name), ev), name, add, add_features, add_published)
    added, gone = change_videos(vdir, additions, remove, min_items=max(1, kmax))
    log.info("catalogue of %s_ranker version %d: %d videos (+%d, -%d), in place", name, version, left,
             len(added), len(gone))
    return CatalogChange(version, added.tolist(), gone.tolist(), left, additions or {})


def _encode_new_videos(enc_dir: Path, name: str, add: np.ndarray, add_features: np.ndarray | None,
                       add_published: np.ndarray | None) -> dict[str, np.ndarray]:
    """The additions of ``change_videos``: ids, embeddings (and gates, publication times) of ``add``,
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
    additions["published"] = (np.full(len(add), int(time.time() * 1000), dtype=np.int64) if add_published is None
                              else np.asarray(add_published, dtype=np.int64))
    return additions
