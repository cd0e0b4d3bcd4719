"""The catalogue: the live list of videos a served model recommends from, one per ranker version.

This is what "catalogue" means in LinkedOut: which video is which row of a ranker version, and what
is known of each. Each published ``NAME_ranker`` version carries its own catalogue, and the
transformer retrieves from the catalogue of the version it routes to (docs/serving.md §1).

A ``Catalog`` holds, in row order (row ``r`` is ``ids[r-1]``; row 0 is padding): ``ids`` int64 (N,),
``embeddings`` float32 (N, d), ``gate`` and ``contributions`` float32 (N, L) (empty (N, 0) for models
without a layer fusion), ``popularity`` int64 (N,) (training interactions) and ``published`` int64
(N,) (publish time, ms since the epoch). ``save`` writes it beside the ranker's ``model.onnx``:

- ``index/``: the embeddings as the retrieval index's table (``linkedout.export.index``: exact or
  ANN, memory-mapped when served), and the records of videos added later (its payload);
- ``catalog.npz``: the other columns of the exported videos;
- ``catalog.json``: metadata (model, version, encoder version, layer names, the index's kind and
  settings, where it came from), written last.

Videos are added and removed in place (``append_videos``, ``remove_videos``): O(changed videos)
bytes appended to the index's files and committed by replacing its small manifest, never a rewrite,
so a 10 M-video catalogue takes a new video in milliseconds and a writer killed mid-change leaves
the previous catalogue. Removed videos keep their rows (tombstones) and are never served.

This module needs numpy alone (faiss for an ANN index): the KServe transformer imports it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from linkedout.export.index import IndexSettings, RetrievalIndex, RetrievalIndexError
from linkedout.export.index_files import (
    change_rows,
    dtype_from_json,
    generation_files,
    read_items,
    read_manifest,
)
from linkedout.utils import atomic_write_bytes, atomic_write_text

__all__ = ["CATALOG_FORMAT", "Catalog", "CatalogError", "append_videos", "change_videos", "live_ids", "live_rows_of",
           "open_index", "parse_video_ids", "read_columns", "read_meta", "record_dtype", "remove_videos"]

CATALOG_FORMAT = 2


class CatalogError(ValueError):
    """A catalogue is inconsistent, a file is missing or malformed, or an id is unknown or duplicated."""


def parse_video_ids(ids: Iterable[object]) -> np.ndarray:
    """Video ids as int64 (N,): the serving interface carries non-negative integer ids (DESIGN.md §4).

    Raises ``CatalogError`` naming the first id that is not a non-negative integer.
    """
    out = []
    for v in ids:
        try:
            i = int(str(v).strip())
        except ValueError:
            raise CatalogError(f"video id {v!r} is not an integer: the serving interface needs integer ids") from None
        if i < 0:
            raise CatalogError(f"video id {v!r} is negative: ids must be >= 0 (-1 pads histories)")
        out.append(i)
    return np.asarray(out, dtype=np.int64)


@dataclass
class Catalog:
    """One catalogue version: the videos of one ranker version (module docstring for the arrays)."""

    ids: np.ndarray
    embeddings: np.ndarray
    gate: np.ndarray
    contributions: np.ndarray
    popularity: np.ndarray
    published: np.ndarray
    layers: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ids = np.ascontiguousarray(self.ids, dtype=np.int64)
        n = self.ids.shape[0]
        if self.ids.ndim != 1 or n < 1:
            raise CatalogError(f"Catalog.ids must be (N,) with N >= 1, got shape {self.ids.shape}")
        self.embeddings = np.ascontiguousarray(self.embeddings, dtype=np.float32)
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != n:
            raise CatalogError(f"Catalog.embeddings must be (N={n}, d), got {self.embeddings.shape}")
        for name in ("gate", "contributions"):
            arr = np.ascontiguousarray(getattr(self, name), dtype=np.float32)
            if arr.size == 0:
                arr = np.zeros((n, 0), dtype=np.float32)
            if arr.ndim != 2 or arr.shape[0] != n:
                raise CatalogError(f"Catalog.{name} must be (N={n}, L), got {arr.shape}")
            setattr(self, name, arr)
        if self.gate.shape[1] != self.contributions.shape[1]:
            raise CatalogError(f"Catalog.gate has {self.gate.shape[1]} layers, contributions "
                               f"{self.contributions.shape[1]}")
        if self.layers and len(self.layers) != self.gate.shape[1]:
            raise CatalogError(f"Catalog.layers names {len(self.layers)} layers, gate has {self.gate.shape[1]}")
        for name in ("popularity", "published"):
            arr = np.ascontiguousarray(getattr(self, name), dtype=np.int64)
            if arr.shape != (n,):
                raise CatalogError(f"Catalog.{name} must be (N={n},), got {arr.shape}")
            setattr(self, name, arr)
        if (self.ids < 0).any():
            raise CatalogError(f"Catalog.ids must be >= 0, got {int(self.ids.min())}")
        uniq, counts = np.unique(self.ids, return_counts=True)
        if (counts > 1).any():
            raise CatalogError(f"Catalog.ids holds duplicates: {uniq[counts > 1][:5].tolist()}")
        if not np.isfinite(self.embeddings).all():
            raise CatalogError("Catalog.embeddings holds non-finite values")
        self._rows: dict[int, int] | None = None

    # ------------------------------------------------------------------------------ lookups

    @property
    def num_items(self) -> int:
        return int(self.ids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def num_layers(self) -> int:
        return int(self.gate.shape[1])

    def row_map(self) -> dict[int, int]:
        """``{video id: row}`` (rows 1..N), built once."""
        if self._rows is None:
            self._rows = {int(v): r for r, v in enumerate(self.ids.tolist(), start=1)}
        return self._rows

    def rows_of(self, video_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows (int64) of ``video_ids``; 0 for an id not in the catalogue."""
        rows = self.row_map()
        return np.fromiter((rows.get(int(v), 0) for v in video_ids), dtype=np.int64, count=len(video_ids))

    def ids_of(self, rows: np.ndarray) -> np.ndarray:
        """Video ids of ``rows`` (any shape, rows 1..N); -1 where a row is 0 (padding)."""
        rows = np.asarray(rows, dtype=np.int64)
        padded = np.concatenate([np.array([-1], dtype=np.int64), self.ids])  # (N+1,)
        return padded[rows]

    def __contains__(self, video_id: object) -> bool:
        try:
            return int(video_id) in self.row_map()  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return False

    # ------------------------------------------------------------------------------ changes

    # ------------------------------------------------------------------------------ files

    def save(self, directory: str | os.PathLike[str], *, index: IndexSettings | RetrievalIndex | None = None,
             **meta: Any) -> None:
        """Write the catalogue into ``directory``: ``index/`` (the embeddings, their retrieval index and
        the records of videos added later), ``catalog.npz`` (the other columns), then ``catalog.json``
        (its presence means complete). ``index``: how the retrieval index is built (default settings),
        or the index already built from these embeddings with ``record_dtype`` as its payload.
        """
        import io

        directory = Path(directory)
        if isinstance(index, RetrievalIndex):
            if index.num_rows != self.num_items or index.payload_dtype != record_dtype(self.num_layers):
                raise CatalogError(f"the index given has {index.num_rows} rows and payload {index.payload_dtype}, "
                                   f"the catalogue {self.num_items} videos of {self.num_layers} layers")
            built = index
        else:
            built = RetrievalIndex.build(self.embeddings, index or IndexSettings(),
                                         payload_dtype=record_dtype(self.num_layers))
        built.save(directory / INDEX_DIR)
        buf = io.BytesIO()
        np.savez(buf, ids=self.ids, gate=self.gate, contributions=self.contributions,
                 popularity=self.popularity, published=self.published)
        atomic_write_bytes(directory / "catalog.npz", buf.getvalue())
        doc = {"format": CATALOG_FORMAT, **self.meta, **meta, "num_items": self.num_items, "dim": self.dim,
               "layers": list(self.layers), "index": {"kind": built.kind, "nlist": built.nlist,
                                                       "settings": dataclasses.asdict(built.settings)}}
        self.meta = {k: v for k, v in doc.items() if k not in ("format", "num_items", "dim", "layers")}
        atomic_write_text(directory / "catalog.json", json.dumps(doc, indent=2, default=_json_default))

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Catalog:
        """The catalogue saved in ``directory`` as it stands: the exported videos, less the removed ones,
        plus the added ones (``change_videos``), in the index's row order. With removals, the rows of the
        ``Catalog`` are renumbered (the served rows keep their numbers: ``CatalogView``). Reads the whole
        table: for a catalogue's ids alone, ``live_ids``. ``CatalogError`` names the file at fault."""
        directory = Path(directory)
        doc = read_meta(directory)
        base = read_columns(directory)
        index = open_index(directory, base["ids"].shape[0])
        extra = index.added_payload()
        cols = {k: np.concatenate([base[k], extra[PAYLOAD_FIELDS[k]]]) for k in COLUMNS}
        live = np.ones(index.num_rows, dtype=bool)
        live[index.removed_rows() - 1] = False
        embeddings = index.vectors(np.flatnonzero(live) + 1)
        cat = cls(layers=list(doc.get("layers", [])), embeddings=embeddings,
                  meta={k: v for k, v in doc.items() if k not in ("format", "num_items", "dim", "layers")},
                  **{k: v[live] for k, v in cols.items()})
        return cat


#: The columns of ``catalog.npz`` (all but the embeddings, which live in the retrieval index).
COLUMNS = ("ids", "gate", "contributions", "popularity", "published")
#: Column -> field of an added video's record (the index's payload).
PAYLOAD_FIELDS = {"ids": "id", "gate": "gate", "contributions": "contributions", "popularity": "popularity",
                  "published": "published"}
#: The retrieval index's directory inside a catalogue version.
INDEX_DIR = "index"


def record_dtype(num_layers: int) -> np.dtype:
    """The record of one added video (the retrieval index's payload): id, popularity, published, and its
    gate and contributions over ``num_layers`` layers."""
    return np.dtype([("id", "<i8"), ("popularity", "<i8"), ("published", "<i8"),
                     ("gate", "<f4", (num_layers,)), ("contributions", "<f4", (num_layers,))])


def read_meta(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """``catalog.json`` of a catalogue version; ``CatalogError`` when missing, malformed or of another format."""
    meta_file = Path(directory) / "catalog.json"
    if not meta_file.is_file():
        raise CatalogError(f"{meta_file} is missing (not a catalogue version directory?)")
    try:
        doc = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise CatalogError(f"{meta_file} is not valid JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != CATALOG_FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else doc
        raise CatalogError(f"{meta_file}: catalogue format {found!r}, this version reads {CATALOG_FORMAT} "
                           "(export the model again)")
    return doc


def read_columns(directory: str | os.PathLike[str], names: Sequence[str] = COLUMNS) -> dict[str, np.ndarray]:
    """The exported videos' columns ``names`` of ``catalog.npz`` (not the embeddings: those are the index's)."""
    arrays_file = Path(directory) / "catalog.npz"
    if not arrays_file.is_file():
        raise CatalogError(f"{arrays_file} is missing (not a catalogue version directory?)")
    try:
        with np.load(arrays_file, allow_pickle=False) as z:
            cols = {k: z[k] for k in names}
    except (OSError, ValueError, KeyError) as e:
        raise CatalogError(f"{arrays_file} cannot be read: {e}") from e
    n = cols["ids"].shape[0] if "ids" in cols else next(iter(cols.values())).shape[0]
    if any(v.shape[0] != n for v in cols.values()):
        raise CatalogError(f"{arrays_file}: its columns have different lengths")
    return cols


def open_index(directory: str | os.PathLike[str], exported: int) -> RetrievalIndex:
    """The catalogue's retrieval index (memory-mapped), checked against the ``exported`` videos of ``catalog.npz``."""
    directory = Path(directory)
    try:
        index = RetrievalIndex.load(directory / INDEX_DIR)
    except RetrievalIndexError as e:
        raise CatalogError(f"{directory}: the catalogue's retrieval index cannot be read: {e}") from e
    if index.payload_from != exported + 1:
        raise CatalogError(f"{directory}: the index's added rows start at row {index.payload_from}, catalog.npz "
                           f"holds {exported} exported videos (not one catalogue)")
    return index


def live_ids(directory: str | os.PathLike[str], manifest: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(ids of every row 1..R, removed rows)`` of the catalogue saved in ``directory``, read without
    loading its embeddings or index (what a change checks its ids against), as ``manifest`` (the
    index's; default: read now) names them."""
    directory = Path(directory)
    ids = read_columns(directory, ("ids",))["ids"]
    d = directory / INDEX_DIR
    doc = read_manifest(d) if manifest is None else manifest
    files = generation_files(int(doc["generation"]))
    base, added = int(doc["base_rows"]), int(doc["added_rows"])
    pdoc = doc.get("payload") or {}
    records = base + added + 1 - int(pdoc.get("from", ids.shape[0] + 1))
    extra = (read_items(d / files["payload"], dtype_from_json(pdoc["dtype"]), 0, records)["id"] if records > 0
             else np.empty(0, np.int64))
    removed = read_items(d / files["removed"], np.int64, 0, int(doc["removed_count"]))
    all_ids = np.concatenate([ids, extra]).astype(np.int64)
    if all_ids.shape[0] != base + added:
        raise CatalogError(f"{directory}: {all_ids.shape[0]} ids for {base + added} rows of its index "
                           f"(catalog.npz and index/ are not one catalogue)")
    return all_ids, np.unique(removed)


def live_rows_of(ids: np.ndarray, removed: np.ndarray, video_ids: np.ndarray) -> np.ndarray:
    """The live row (1..R) of each of ``video_ids`` (M,), 0 where it is not live; ``ids`` (R,) and
    ``removed`` are ``live_ids``'s. One pass over the catalogue: a few ids are compared with every row
    (0.01 s per id at 10 M videos), more are looked up in their sorted list (O(R log M))."""
    q = np.asarray(video_ids, dtype=np.int64).reshape(-1)
    out = np.zeros(q.shape[0], dtype=np.int64)
    if not q.size or not ids.size:
        return out
    live = np.ones(ids.shape[0], dtype=bool)
    live[removed - 1] = False
    if q.size <= 16:
        for j, v in enumerate(q.tolist()):
            rows = np.flatnonzero((ids == v) & live)
            out[j] = rows[-1] + 1 if rows.size else 0
        return out
    order = np.argsort(q, kind="stable")
    sq = q[order]
    pos = np.minimum(np.searchsorted(sq, ids), sq.size - 1)  # (R,) where each catalogue id falls among q
    rows = np.flatnonzero((sq[pos] == ids) & live) + 1
    right = np.searchsorted(sq, sq, side="right")  # an id asked twice: every copy gets its row
    for r in rows.tolist():
        j = int(pos[r - 1])
        out[order[j:right[j]]] = r
    return out


def change_videos(directory: str | os.PathLike[str], additions: Mapping[str, np.ndarray] | None = None,
                  remove: Sequence[object] | np.ndarray = (), *, min_items: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Remove and add videos of the catalogue saved in ``directory`` in place, as one change; ``(rows
    added, rows removed)``.

    ``additions`` holds ``ids`` (M,) and ``embeddings`` (M, d), and optionally ``gate``,
    ``contributions`` (M, L), ``popularity`` (M,) (default 0) and ``published`` (M,) (default: now).
    The removals are tombstones and the additions M rows and M records appended to the retrieval
    index, all committed by one manifest (O(changed videos) bytes, nothing rewritten); a reader (the
    transformer) sees them on its next refresh. Checked under the index's writer lock, before anything
    is written (``CatalogError``, nothing written): an id to add already live (unless removed in the
    same change: a replacement) or twice, an id to remove not live or twice, fewer than ``min_items``
    videos left.
    """
    directory = Path(directory)
    doc = read_meta(directory)
    gone = parse_video_ids(remove)
    if len(np.unique(gone)) != gone.size:
        raise CatalogError(f"the videos to remove hold duplicate ids: {_repeated(gone)}")
    emb, rec = _records(doc, additions) if additions is not None else (None, None)
    new_ids = rec["id"] if rec is not None else np.empty(0, dtype=np.int64)
    if emb is None and not gone.size:
        raise CatalogError("nothing to change: give videos to add or to remove")

    removed_rows: list[np.ndarray] = []

    def precheck(manifest: dict[str, Any]) -> np.ndarray:  # under the writer lock: the rows to remove
        ids, removed = live_ids(directory, manifest)
        gone_rows = live_rows_of(ids, removed, gone)
        if not gone_rows.all():
            raise CatalogError(f"cannot remove videos not in the catalogue: {gone[gone_rows == 0][:10].tolist()}")
        dup = new_ids[(live_rows_of(ids, removed, new_ids) > 0) & ~np.isin(new_ids, gone)]
        if dup.size:
            raise CatalogError(f"videos already in the catalogue: {dup[:10].tolist()} (remove them first to replace)")
        left = ids.size - removed.size - gone.size + new_ids.size
        if left < min_items:
            raise CatalogError(f"the change would leave {left} videos in the catalogue, fewer than {min_items}")
        removed_rows.append(gone_rows)
        return gone_rows

    try:
        rows = change_rows(directory / INDEX_DIR, emb, rec, precheck=precheck)
    except RetrievalIndexError as e:
        raise CatalogError(f"{directory}: {e}") from e
    return rows, removed_rows[0]


def _repeated(ids: np.ndarray) -> list[int]:
    uniq, counts = np.unique(ids, return_counts=True)
    return uniq[counts > 1][:10].tolist()


def _records(doc: Mapping[str, Any], additions: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The embeddings (M, d) and the records (``record_dtype``) of ``additions``, checked."""
    new_ids = parse_video_ids(additions["ids"])
    m = new_ids.shape[0]
    if m == 0:
        raise CatalogError("no videos to add")
    if len(np.unique(new_ids)) != m:
        raise CatalogError(f"the videos to add hold duplicate ids: {_repeated(new_ids)}")
    n_layers = len(doc.get("layers", []))
    emb = np.asarray(additions["embeddings"], dtype=np.float32)
    if emb.shape != (m, int(doc["dim"])):
        raise CatalogError(f"embeddings of the new videos must be ({m}, {doc['dim']}), got {emb.shape}")
    rec = np.zeros(m, dtype=record_dtype(n_layers))
    rec["id"] = new_ids
    for k in ("gate", "contributions"):
        arr = np.asarray(additions.get(k, np.zeros((m, n_layers))), dtype=np.float32).reshape(m, -1)
        if arr.shape[1] != n_layers:
            raise CatalogError(f"{k} of the new videos must be ({m}, {n_layers}), got {arr.shape}")
        rec[k] = arr
    rec["popularity"] = np.asarray(additions.get("popularity", np.zeros(m)), dtype=np.int64).reshape(m)
    rec["published"] = np.asarray(additions.get("published", np.full(m, int(time.time() * 1000))),
                                  dtype=np.int64).reshape(m)
    return emb, rec


def append_videos(directory: str | os.PathLike[str], additions: Mapping[str, np.ndarray]) -> np.ndarray:
    """Add videos to the catalogue saved in ``directory`` in place (``change_videos``); their rows."""
    return change_videos(directory, additions)[0]


def remove_videos(directory: str | os.PathLike[str], video_ids: Sequence[object] | np.ndarray) -> np.ndarray:
    """Remove videos from the catalogue saved in ``directory`` in place (``change_videos``); their rows.
    Removing every video is refused (a catalogue is never empty)."""
    return change_videos(directory, remove=video_ids)[1]


def _json_default(o: object) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
