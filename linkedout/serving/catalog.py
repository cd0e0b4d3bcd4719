"""The served catalogues: each ranker version's videos and retrieval index, loaded once, followed live.

The model repository (a directory, or ``s3://bucket/prefix`` — what Triton's ``storageUri`` points
at) holds beside each ranker version's ``model.onnx`` its catalogue (``linkedout.export.catalog``):
``catalog.json``, ``catalog.npz`` and ``index/``. ``ServedCatalogs`` lists the versions of the models
it is asked about, loads a version's catalogue when it is first needed (S3 files are copied into a
local cache first) and keeps it as a ``CatalogView``: ids <-> rows, the rows' embeddings (the
index's memory-mapped table) for the ranker's input, the retrieval of the top-K for a user state
(exact or ANN), the gate weights and contributions for ``explain``, and the cold-start list.

Videos added or removed in place (``linkedout catalog add``) reach a loaded view with ``refresh``:
it reads what the index's manifest commits past what the view has read (O(change), plus the
cold-start list again), so a new video is served without reloading anything. A view is not
thread-safe against its own refresh: the engine runs searches and refreshes on one worker thread,
and the row numbers a request holds stay valid across refreshes (rows only grow; removed rows are
never returned again). numpy, faiss (ANN indexes) and the shards' storage only: no torch.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from linkedout.export.catalog import INDEX_DIR, CatalogError, open_index, read_columns, read_meta
from linkedout.export.index_files import MANIFEST, dtype_from_json, generation_files
from linkedout.shards.storage import open_storage
from linkedout.utils import atomic_write_bytes, get_logger

log = get_logger(__name__)

__all__ = ["COLD_START_HALF_LIFE_DAYS", "CatalogView", "ServedCatalogs"]

#: Recency half-life of the cold-start answer, in days of catalogue time (see ``CatalogView``).
COLD_START_HALF_LIFE_DAYS = 14.0
#: Videos of the cold-start list kept (the best ones): a cold user's answer is its first ``k`` not watched.
COLD_START_TOP = 10_000


@dataclass(frozen=True)
class _Rows:
    """What a view knows of its rows at one point (replaced whole by ``refresh``)."""

    ids: np.ndarray  # (R+1,) int64: video id of rows 0..R, -1 for the padding row 0
    live: np.ndarray  # (R+1,) bool: row served (row 0 and removed rows False)
    added: dict[int, int]  # video id -> its newest row, for rows added after the export
    gate: np.ndarray  # (R_added, L) of the added rows
    contributions: np.ndarray  # (R_added, L)
    num_items: int  # live videos
    cold_start_rows: np.ndarray  # (C,) rows, best first
    cold_start_scores: np.ndarray  # (C,) their scores


class CatalogView:
    """One loaded catalogue version (a ranker version's) and what the transformer derives from it.

    ``cold_start_rows`` is the answer for a user with no history: the best ``COLD_START_TOP`` videos by
    ``log1p(popularity) / log1p(max popularity) + 2 ** (-age / half-life)``, where ``age`` is the
    time since publication counted back from the newest video of the catalogue (so a replayed,
    historical catalogue behaves like a live one): popular and recently published videos first.
    """

    def __init__(self, model: str, version: int, directory: str | os.PathLike[str],
                 half_life_days: float = COLD_START_HALF_LIFE_DAYS) -> None:
        d = Path(directory)
        self.model, self.version, self.directory = model, version, d
        self.half_life_days = half_life_days
        doc = read_meta(d)
        self.meta: dict[str, Any] = {k: v for k, v in doc.items() if k not in ("format", "num_items", "dim", "layers")}
        self.layers: list[str] = list(doc.get("layers", []))
        self.max_history = int(doc.get("max_history") or 10)
        self.max_k = int(doc.get("max_k") or 100)
        base = read_columns(d)
        n0 = int(base["ids"].shape[0])
        self.index = open_index(d, n0)
        self._base = base
        self._n0 = n0
        order = np.argsort(base["ids"], kind="stable")
        self._base_sorted, self._base_rows = base["ids"][order], order.astype(np.int64) + 1
        # what the cold-start score needs of the exported videos, computed once (float32)
        self._ids0 = np.concatenate([np.array([-1], dtype=np.int64), base["ids"].astype(np.int64)])
        self._t0 = int(base["published"].min()) if n0 else 0
        self._pop0 = np.log1p(base["popularity"].astype(np.float32))
        self._days0 = ((base["published"] - self._t0) / 86_400_000.0).astype(np.float32)
        snap = self._snapshot()
        self.rows = self._build_rows(snap)
        self._seen = (snap.num_rows, snap.removed.size)  # what the current rows were built from

    # ------------------------------------------------------------------------------ lookups

    @property
    def num_items(self) -> int:
        """Live videos (removed ones not counted)."""
        return self.rows.num_items

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def cold_start_rows(self) -> np.ndarray:
        return self.rows.cold_start_rows

    @property
    def cold_start_scores(self) -> np.ndarray:
        return self.rows.cold_start_scores

    def rows_of(self, video_ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """Rows (int64) of ``video_ids``; 0 for an id not (or no longer) in the catalogue."""
        q = np.asarray(video_ids, dtype=np.int64).reshape(-1)
        st = self.rows
        out = np.zeros(q.shape[0], dtype=np.int64)
        if self._base_sorted.size and q.size:
            pos = np.minimum(np.searchsorted(self._base_sorted, q), self._base_sorted.size - 1)
            hit = self._base_sorted[pos] == q
            out[hit] = self._base_rows[pos[hit]]
        if st.added:
            for j, v in enumerate(q.tolist()):
                r = st.added.get(v)
                if r is not None and st.live[r]:
                    out[j] = r
        return np.where(st.live[out], out, 0)

    def ids_of(self, rows: np.ndarray) -> np.ndarray:
        """Video ids of ``rows`` (any shape); -1 where a row is 0 (padding)."""
        return self.rows.ids[np.asarray(rows, dtype=np.int64)]

    def gate_of(self, rows: np.ndarray) -> np.ndarray:
        """The layer gate weights (M, L) of ``rows`` (M,) >= 1."""
        return self._column("gate", self.rows.gate, rows)

    def contributions_of(self, rows: np.ndarray) -> np.ndarray:
        """The layer contributions (M, L) of ``rows`` (M,) >= 1."""
        return self._column("contributions", self.rows.contributions, rows)

    def _column(self, name: str, added: np.ndarray, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros((rows.shape[0], self.num_layers), dtype=np.float32)
        in_base = rows <= self._n0
        out[in_base] = self._base[name][rows[in_base] - 1]
        out[~in_base] = added[rows[~in_base] - self._n0 - 1]
        return out

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The embeddings (..., d) of ``rows`` (any shape), zeros for row 0: the ranker's ``history_emb``."""
        return self.index.vectors(rows)

    def search(self, users: np.ndarray, n: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` best rows and scores (B, n) for user states (B, d), ``exclude`` (B, T) rows never returned."""
        return self.index.search(users, n, exclude)

    # ------------------------------------------------------------------------------ changes

    def refresh(self) -> bool:
        """Read the videos added or removed since (the index's manifest); whether anything changed.

        ``refresh_index`` then ``apply`` in one thread; the engine runs the first on its retrieval
        thread (the index is searched there) and the second, the O(catalogue) part, off it."""
        snap = self.refresh_index()
        if snap is None:
            return False
        self.apply(snap)
        return True

    def refresh_index(self) -> _Snapshot | None:
        """Bring the index up to its manifest (O(change)); what changed, for ``apply``, or None.

        Rows the index returns from then on may be newer than ``rows`` knows until ``apply``: the
        engine skips those (``len(rows.ids)``) rather than serve a video it cannot name yet."""
        self.index.refresh()
        if (self.index.num_rows, self.index.removed_rows().size) == self._seen:
            return None
        return self._snapshot()

    def _snapshot(self) -> _Snapshot:
        """The index's added records and removed rows now (views and copies that later appends leave as they are)."""
        return _Snapshot(self.index.num_rows, self.index.added_payload(), self.index.removed_rows())

    def apply(self, snap: _Snapshot) -> None:
        """Make ``rows`` what ``snap`` says (built aside, then swapped in whole)."""
        rows = self._build_rows(snap)
        if snap.num_rows >= self.rows.ids.shape[0] - 1:
            self.rows = rows
            self._seen = (snap.num_rows, snap.removed.size)
            log.info("catalogue %s v%d refreshed: %d videos", self.model, self.version, self.num_items)

    def _build_rows(self, snap: _Snapshot) -> _Rows:
        n0, extra, removed = self._n0, snap.payload, snap.removed
        ids = np.concatenate([self._ids0, extra["id"].astype(np.int64)]) if extra.size else self._ids0
        live = np.ones(ids.shape[0], dtype=bool)
        live[0] = False
        live[removed] = False
        added = {int(v): r for r, v in enumerate(extra["id"].tolist(), start=n0 + 1)}
        pop = np.concatenate([self._pop0, np.log1p(extra["popularity"].astype(np.float32))])
        days = np.concatenate([self._days0, ((extra["published"] - self._t0) / 86_400_000.0).astype(np.float32)])
        cs_rows, cs_scores = _cold_start(pop, days, live[1:], self.half_life_days)
        return _Rows(ids, live, added, np.asarray(extra["gate"], dtype=np.float32),
                     np.asarray(extra["contributions"], dtype=np.float32), int(live.sum()), cs_rows, cs_scores)


@dataclass(frozen=True)
class _Snapshot:
    """What a view's index held at one point: its rows, the added videos' records, the removed rows."""

    num_rows: int
    payload: np.ndarray
    removed: np.ndarray


def _cold_start(log_popularity: np.ndarray, days: np.ndarray, live: np.ndarray,
                half_life_days: float) -> tuple[np.ndarray, np.ndarray]:
    """The best ``COLD_START_TOP`` live rows by the cold-start score, best first (ties: lower row), and
    their scores; ``days`` are publication times in days (any origin)."""
    if not live.any():
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    top = log_popularity[live].max()
    pop = log_popularity / top if top > 0 else log_popularity
    newest = days[live].max()
    recency = (np.exp2((days - newest) / np.float32(half_life_days)) if half_life_days > 0
               else np.zeros_like(days))
    score = pop + recency
    score[~live] = -np.inf
    c = min(COLD_START_TOP, int(live.sum()))
    cand = np.argpartition(-score, c - 1)[:c] if c < score.shape[0] else np.arange(score.shape[0])
    order = cand[np.lexsort((cand, -score[cand]))][:c]
    return order.astype(np.int64) + 1, score[order].astype(np.float32)


def local_versions(repository: Path, model: str) -> list[int]:
    """Ranker versions of ``model`` in the local model repository ``repository`` that hold a catalogue, ascending."""
    d = repository / f"{model}_ranker"
    if not d.is_dir():
        return []
    return sorted(int(p.name) for p in d.iterdir()
                  if p.name.isdigit() and not p.name.startswith("0") and (p / "catalog.json").is_file())


class ServedCatalogs:
    """Catalogue versions of ranker models in a model repository (loading is thread-safe)."""

    def __init__(self, repository: str, *, cache_dir: str | os.PathLike[str] | None = None,
                 s3_endpoint: str | None = None) -> None:
        self.repository = repository
        self._local = None if repository.startswith("s3://") else Path(repository)
        self._storage = None
        if self._local is None:
            self._storage = open_storage(repository, endpoint_url=s3_endpoint)
        # an S3 repository's catalogues are read from local copies: in ``cache_dir``, else in a temporary
        # directory removed by ``close`` (or when this object goes, or at exit); a local one is read in place
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if cache_dir is None and self._storage is not None:
            self._tmp = tempfile.TemporaryDirectory(prefix="linkedout-catalogs-")
            cache_dir = self._tmp.name
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._views: dict[tuple[str, int], CatalogView] = {}
        self._lock = threading.Lock()

    def versions(self, model: str) -> list[int]:
        """Ranker versions of ``model`` that hold a catalogue, ascending."""
        rdir = f"{model}_ranker"
        if self._local is not None:
            return local_versions(self._local, model)
        assert self._storage is not None
        found = set()
        for key in self._storage.list(f"{rdir}/"):
            parts = key.split("/")
            if len(parts) == 3 and parts[1].isdigit() and parts[2] == "catalog.json":
                found.add(int(parts[1]))
        return sorted(found)

    def loaded(self, model: str, version: int) -> CatalogView | None:
        """The view of ``model`` version ``version`` when it is loaded already, else None (never loads)."""
        with self._lock:
            return self._views.get((model, version))

    def view(self, model: str, version: int) -> CatalogView:
        """The loaded catalogue of ``model`` version ``version`` (read once, then kept)."""
        key = (model, version)
        with self._lock:
            if key in self._views:
                return self._views[key]
        directory = self._version_dir(model, version)
        view = CatalogView(model, version, directory)
        with self._lock:
            view = self._views.setdefault(key, view)
            # keep the newest few versions of each model in memory
            for old in sorted(v for m, v in self._views if m == model)[:-3]:
                self._views.pop((model, old), None)
        log.info("catalogue %s v%d loaded: %d videos, %s index", model, version, view.num_items, view.index.kind)
        return view

    def refresh(self, model: str, version: int) -> bool:
        """Bring a loaded view up to the repository's catalogue (additions, removals); whether it changed.
        (``sync`` then ``CatalogView.refresh``; the engine runs their parts on its own threads.)"""
        view = self.loaded(model, version)
        if view is None:
            return False
        self.sync(model, version)
        return view.refresh()

    def close(self) -> None:
        """Remove the temporary copies of an S3 repository's catalogues (a given ``cache_dir`` is kept)."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def sync(self, model: str, version: int) -> None:
        """For an S3 repository, copy the catalogue changes of a loaded version into the local cache."""
        if self._storage is not None and self.loaded(model, version) is not None:
            self._sync_index(model, version)

    def _version_dir(self, model: str, version: int) -> Path:
        if self._local is not None:
            return self._local / f"{model}_ranker" / str(version)
        assert self._storage is not None and self.cache_dir is not None
        target = self.cache_dir / f"{model}_ranker" / str(version)
        if not (target / "catalog.json").is_file():
            (target / INDEX_DIR).mkdir(parents=True, exist_ok=True)
            self._sync_index(model, version)
            atomic_write_bytes(target / "catalog.npz", self._storage.read_bytes(f"{model}_ranker/{version}/catalog.npz"))
            # the JSON last: its presence means complete
            atomic_write_bytes(target / "catalog.json",
                               self._storage.read_bytes(f"{model}_ranker/{version}/catalog.json"))
        return target

    def _sync_index(self, model: str, version: int) -> None:
        """Copy the S3 index into the local cache, its manifest last, when the manifest changed.

        A generation's table and ANN files never change (copied when missing); the appended files
        (added rows, records, removals) are copied whole and must hold what the manifest names, else
        nothing is committed locally and the next poll tries again (an upload still under way)."""
        assert self._storage is not None and self.cache_dir is not None
        prefix = f"{model}_ranker/{version}/{INDEX_DIR}"
        local = self.cache_dir / f"{model}_ranker" / str(version) / INDEX_DIR
        local.mkdir(parents=True, exist_ok=True)
        manifest = self._storage.read_bytes(f"{prefix}/{MANIFEST}")
        if (local / MANIFEST).is_file() and (local / MANIFEST).read_bytes() == manifest:
            return
        doc = json.loads(manifest)
        files = generation_files(int(doc["generation"]))
        payload = doc.get("payload") or {}
        records = int(doc["base_rows"]) + int(doc["added_rows"]) + 1 - int(payload.get("from", 1)) if payload else 0
        need = {files["added"]: int(doc["added_rows"]) * int(doc["dim"]) * 4, files["removed"]: int(doc["removed_count"]) * 8,
                files["payload"]: max(records, 0) * (dtype_from_json(payload["dtype"]).itemsize if payload else 0)}
        for kind, name in files.items():
            key = f"{prefix}/{name}"
            if kind == "ann" and doc["kind"] == "exact":
                continue
            if not self._storage.exists(key):
                raise CatalogError(f"{self.repository}/{key} is named by its manifest but missing (an upload under way?)")
            appended = name in need
            if appended or not (local / name).is_file() or (local / name).stat().st_size != self._storage.size(key):
                data = self._storage.read_bytes(key)
                if appended and len(data) < need[name]:
                    raise CatalogError(f"{self.repository}/{key} holds {len(data)} bytes, its manifest names "
                                       f"{need[name]} (an upload under way?)")
                atomic_write_bytes(local / name, data)
        atomic_write_bytes(local / MANIFEST, manifest)
