"""Retrieval over a catalogue's embedding table: exact brute force or a faiss ANN index, with live additions.

Rows follow the catalogue's convention (``linkedout.export.catalog``): row ``r`` (1..N) is the
``r``-th embedding given to ``RetrievalIndex.build`` (``Catalog.ids[r-1]`` when built from
``Catalog.embeddings``), rows added later take the next numbers, and row 0 is padding: never
returned, ignored in ``exclude``. Scores are inner products user · item (the ranker's scoring),
recomputed in float32 against the table: an ANN index only proposes candidates, and the exact search
only pre-selects them, so both give the same rows and scores wherever they find the same candidates.
Ties are broken by the lower row.

Kinds: ``exact`` (faiss's brute-force search over the memory-mapped table, in blocks: no copy of it,
no index to build) and the faiss kinds ``ivf_flat``, ``ivf_sq8``, ``ivf_pq`` and ``hnsw`` (inner
product). ``IndexSettings(kind="auto")`` builds ``exact`` below ``exact_below`` rows and ``ann_kind``
from there; the defaults were measured with bench/scale.py (bench/results/scale.json). faiss is
imported on the first search or ANN build.

On disk (``save``, ``load``; the format is ``linkedout.export.index_files``'s) the table is
memory-mapped, and ``add`` and ``remove`` append O(changed rows) bytes and replace a small manifest,
never rewriting the rest; ``save`` writes a new generation (the added rows then join the table and
the ANN index). Writers serialise on a lock; another process's index sees their changes after
``refresh``. Removed rows keep their numbers (and vectors) and are never returned by ``search``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from linkedout.export.index_files import (
    MANIFEST,
    RetrievalIndexError,
    append_rows,
    check_vectors,
    checked_payload,
    dtype_from_json,
    dtype_to_json,
    generation_files,
    grown,
    read_items,
    read_manifest,
    remove_rows,
    remove_stale,
    write_manifest,
    write_table,
    writer_lock,
)
from linkedout.export.index_kinds import (
    ANN_KINDS,
    KINDS,
    IndexSettings,
    auto_nlist,
    faiss_module,
    new_ann,
)
from linkedout.utils import atomic_write_bytes, is_int

_RESCORE_PAD = 16  # rows pre-selected by the exact search beyond n, so that rounding cannot change its answer
_ADD_BLOCK = 1 << 20  # rows given to faiss at once

__all__ = ["ANN_KINDS", "KINDS", "IndexSettings", "RetrievalIndex", "RetrievalIndexError",
           "auto_nlist"]


class RetrievalIndex:
    """Top-n rows by inner product for user states, over a table that grows in place (module docstring).

    Made by ``build`` or ``load``. Not thread-safe: no ``add``, ``remove`` or ``refresh`` while it searches.
    """

    def __init__(self, base: np.ndarray, settings: IndexSettings, kind: str, ann: Any, nlist: int) -> None:
        self.settings, self.kind, self.nlist = settings, kind, nlist
        self.dim = int(base.shape[1])
        self._base = base  # (Nb, d) float32: rows 1..Nb (memory-mapped when loaded)
        self._extra = np.empty((0, self.dim), dtype=np.float32)  # rows Nb+1..: a buffer grown by doubling
        self._n_extra = 0
        self._ann = ann  # faiss index of every row (faiss id = row - 1), or None for the exact kind
        self._removed = np.empty(0, dtype=np.int64)  # sorted tombstoned rows
        self._selector: tuple[Any, ...] = ()  # faiss selectors of the live rows (kept alive here)
        self._block_live: dict[tuple[int, int], tuple[np.ndarray, Any]] = {}  # the exact search's, per block
        # per-row records of the rows from ``payload_from`` on (what the catalogue knows of each added video):
        # a structured array grown like ``_extra``, or no payload at all (dtype None)
        self.payload_dtype: np.dtype | None = None
        self.payload_from = 0
        self._payload: np.ndarray = np.empty(0)
        self._n_payload = 0
        self._dir: Path | None = None  # the directory this index is saved in and appends to
        self._gen = -1
        self._removed_seen = 0  # entries of the removed file read (duplicates included)

    # ------------------------------------------------------------------------------ building

    @classmethod
    def build(cls, embeddings: np.ndarray, settings: IndexSettings | None = None, *,
              payload_dtype: np.dtype | None = None) -> RetrievalIndex:
        """An index of ``embeddings`` (N, d) float32 (row r = ``embeddings[r-1]``), in memory until ``save``.

        The array is used as is when already float32 and C-contiguous (not copied). With
        ``payload_dtype`` (a structured numpy dtype), every row added later carries one record of it,
        appended and committed with the row (``add``, ``added_payload``): the catalogue keeps what it
        knows of an added video there, so that a crash never leaves a row without its record.
        """
        settings = settings or IndexSettings()
        table = check_vectors(embeddings, None, "embeddings")
        n, d = table.shape
        kind = settings.kind_for(n)
        nlist = 0
        if kind.startswith("ivf"):
            nlist = settings.nlist or auto_nlist(n)
            if nlist > n:
                raise RetrievalIndexError(f"IndexSettings.nlist ({nlist}) must be <= the rows to index ({n})")
        if kind == "ivf_pq" and d % settings.pq_m:
            raise RetrievalIndexError(f"IndexSettings.pq_m ({settings.pq_m}) must divide the dimension ({d})")
        ann = new_ann(kind, d, nlist, settings) if kind != "exact" else None
        if ann is not None and kind.startswith("ivf"):
            rng = np.random.default_rng(settings.seed)
            sample = np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))
            ann.cp.seed = settings.seed
            ann.train(np.ascontiguousarray(table[sample]))
        if ann is not None:
            for lo in range(0, n, _ADD_BLOCK):
                ann.add(np.ascontiguousarray(table[lo:lo + _ADD_BLOCK]))
        index = cls(table, settings, kind, ann, nlist)
        if payload_dtype is not None:
            index._set_payload(np.dtype(payload_dtype), n + 1)
        return index

    def _set_payload(self, dtype: np.dtype, first: int) -> None:
        if dtype.names is None:
            raise RetrievalIndexError(f"payload_dtype must be a structured dtype (named fields), got {dtype}")
        self.payload_dtype, self.payload_from = dtype, first
        self._payload, self._n_payload = np.empty(0, dtype=dtype), 0

    # ------------------------------------------------------------------------------ reading

    @property
    def num_rows(self) -> int:
        """Rows 1..num_rows exist (removed ones included)."""
        return int(self._base.shape[0]) + self._n_extra

    def removed_rows(self) -> np.ndarray:
        """The removed rows, sorted (int64)."""
        return self._removed.copy()

    def vectors(self, rows: np.ndarray | Sequence[int]) -> np.ndarray:
        """The embeddings of ``rows`` (any shape, 0..num_rows) as float32 (..., d); row 0 gives zeros."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() > self.num_rows):
            raise RetrievalIndexError(f"rows must be in 0..{self.num_rows}, got {int(rows.min())}..{int(rows.max())}")
        flat = rows.reshape(-1)
        out = np.zeros((flat.size, self.dim), dtype=np.float32)
        nb = self._base.shape[0]
        in_base = (flat > 0) & (flat <= nb)
        out[in_base] = self._base[flat[in_base] - 1]
        in_extra = flat > nb
        out[in_extra] = self._extra[flat[in_extra] - nb - 1]
        return out.reshape((*rows.shape, self.dim))

    def search(self, users: np.ndarray, n: int,
               exclude: np.ndarray | Sequence[Iterable[int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` best rows per user: ``rows`` (B, n) int64 and ``scores`` (B, n) float32, best first.

        ``users`` (B, d): user states. ``exclude``: per user, rows never returned (a (B, T) array of
        rows with 0 as padding, as the ranker's histories, or B iterables). Removed rows are never
        returned. Where fewer than ``n`` rows are left, the answer ends with row 0 and score -inf.
        """
        users = check_vectors(users, self.dim, "users")
        if not is_int(n) or n < 1:
            raise RetrievalIndexError(f"n must be an integer >= 1, got {n!r}")
        excl = self._exclusions(exclude, users.shape[0])
        if self._ann is None:
            cand = self._exact_candidates(users, n + _RESCORE_PAD, excl)
        else:
            cand = self._ann_candidates(users, max(n, self.settings.candidates), excl)
        return self._rescored_top(users, cand, n, excl)

    def _exclusions(self, exclude: np.ndarray | Sequence[Iterable[int]] | None, b: int) -> list[np.ndarray]:
        """Per user, the sorted unique rows > 0 to exclude."""
        if exclude is None:
            return [np.empty(0, dtype=np.int64)] * b
        if len(exclude) != b:
            raise RetrievalIndexError(f"exclude must hold one list of rows per user ({b}), got {len(exclude)}")
        out = []
        for i, rows in enumerate(exclude):
            r = np.unique(np.asarray(rows if isinstance(rows, np.ndarray) else list(rows), dtype=np.int64))
            if r.size and (r[0] < 0 or r[-1] > self.num_rows):
                raise RetrievalIndexError(f"exclude[{i}] holds rows outside 0..{self.num_rows}: "
                                          f"{r[(r < 0) | (r > self.num_rows)][:5].tolist()}")
            out.append(r[r > 0])
        return out

    def _segments(self) -> Iterator[tuple[int, np.ndarray]]:
        """(row of the first, rows) of the table's two parts."""
        yield 1, self._base
        if self._n_extra:
            yield self._base.shape[0] + 1, self._extra[: self._n_extra]

    def _exact_candidates(self, users: np.ndarray, k: int, excl: list[np.ndarray]) -> np.ndarray:
        """The ``k`` best live rows per user (B, k + most excluded), by faiss's brute-force inner product
        over each block of the table (its SIMD kernel and a heap per user, without the GIL); 0 where
        none is left. Excluded rows are dropped by ``_rescored_top``: enough are asked for to cover them.
        """
        faiss = faiss_module()
        b = users.shape[0]
        want = k + max((e.size for e in excl), default=0)
        per_block = self.settings.exact_block  # faiss bounds its own memory: the blocks do not depend on b
        best_rows = np.zeros((b, 0), dtype=np.int64)
        best = np.zeros((b, 0), dtype=np.float32)
        ptr = faiss.swig_ptr
        for first, seg in self._segments():
            for lo in range(0, seg.shape[0], per_block):
                block = np.ascontiguousarray(seg[lo:lo + per_block])
                start, n = first + lo, block.shape[0]
                dead = self._removed[np.searchsorted(self._removed, start):np.searchsorted(self._removed, start + n)]
                kk = min(want, n - dead.size)
                if kk <= 0:
                    continue
                scores = np.empty((b, kk), dtype=np.float32)
                labels = np.empty((b, kk), dtype=np.int64)
                live = (self._live_selector(start, n, dead),) if dead.size else ()
                faiss.knn_inner_product(ptr(users), ptr(block), self.dim, b, n, kk, ptr(scores), ptr(labels), *live)
                best_rows, best = _top_k(np.concatenate([best_rows, np.where(labels >= 0, labels + start, 0)], 1),
                                         np.concatenate([best, scores], 1), want)
        return best_rows

    def _live_selector(self, start: int, n: int, dead: np.ndarray) -> Any:
        """A faiss selector of the live rows of the block of ``n`` rows from ``start`` (``dead``: its removed
        rows), made once per block and set of removed rows (a bitmap: one bit test per row)."""
        key = (start, n)
        if key not in self._block_live:
            faiss = faiss_module()
            live = np.ones(n, dtype=bool)
            live[dead - start] = False
            bits = np.packbits(live, bitorder="little")
            self._block_live[key] = (bits, faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits)))
        return self._block_live[key][1]

    def _ann_candidates(self, users: np.ndarray, k: int, excl: list[np.ndarray]) -> np.ndarray:
        """Rows proposed by the ANN index (B, k + most excluded); 0 where it proposed none."""
        faiss = faiss_module()
        k = min(k + max((e.size for e in excl), default=0), self.num_rows)
        sel = {"sel": self._selector[-1]} if self._selector else {}
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(self.settings.ef_search, k), **sel)
        else:
            params = faiss.SearchParametersIVF(nprobe=min(self.settings.nprobe, self.nlist), **sel)
        _, ids = self._ann.search(users, k, params=params)
        return ids.astype(np.int64) + 1  # faiss's -1 (no candidate) becomes row 0

    def _rescored_top(self, users: np.ndarray, cand: np.ndarray, n: int,
                      excl: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The candidates re-scored exactly, excluded and removed ones dropped, best ``n`` by (score, row)."""
        cand = cand.copy()
        # every user's excluded rows at once: user i's row r is the key r + i * (num_rows + 1), and the
        # keys of the sorted per-user lists are sorted as well
        span = self.num_rows + 1
        keys = np.concatenate([ex + i * span for i, ex in enumerate(excl)])
        cand[_member(keys, cand + np.arange(cand.shape[0])[:, None] * span)] = 0
        cand[_member(self._removed, cand)] = 0
        scores = (self.vectors(cand) * users[:, None, :]).sum(-1)  # (B, K): the same sum for a row in any path
        scores[cand == 0] = -np.inf
        order = np.lexsort((cand, -scores), axis=-1)[:, :n]
        rows, top = np.take_along_axis(cand, order, 1), np.take_along_axis(scores, order, 1)
        if rows.shape[1] < n:
            pad = n - rows.shape[1]
            rows = np.pad(rows, ((0, 0), (0, pad)))
            top = np.pad(top, ((0, 0), (0, pad)), constant_values=-np.inf)
        rows[~np.isfinite(top)] = 0
        return rows, top.astype(np.float32)

    def exact(self) -> RetrievalIndex:
        """An exact-kind index of the same rows and removed rows, sharing this one's table (in memory only):
        the reference an ANN answer is checked against."""
        index = RetrievalIndex(self._base, replace(self.settings, kind="exact"), "exact", None, 0)
        index._extra, index._n_extra, index._removed = self._extra[: self._n_extra], self._n_extra, self._removed
        return index

    def tune(self, **search_settings: int) -> None:
        """Change search-time settings (``IndexSettings.SEARCH_FIELDS``) of this index in memory, checked."""
        wrong = sorted(set(search_settings) - set(IndexSettings.SEARCH_FIELDS))
        if wrong:
            raise RetrievalIndexError(f"tune changes only {IndexSettings.SEARCH_FIELDS}, not {wrong}")
        changes: dict[str, Any] = dict(search_settings)
        self.settings = replace(self.settings, **changes)

    # ------------------------------------------------------------------------------ changing

    def add(self, embeddings: np.ndarray, payload: np.ndarray | None = None) -> np.ndarray:
        """Append rows (M, d) float32 and return their row numbers (M,) int64 (the next ones).

        ``payload``: their M records, required when the index has a ``payload_dtype`` (and refused
        otherwise). A saved index appends them to its directory first (``append_rows``: O(M) bytes,
        visible to other processes after their ``refresh``) and then reads back what changed there.
        """
        x = check_vectors(embeddings, self.dim, "embeddings")
        rec = checked_payload(self.payload_dtype, payload, x.shape[0])
        if self._dir is not None:
            rows = append_rows(self._dir, x, rec)
            self._refresh_unlocked()
            return rows
        first = self.num_rows + 1
        self._extend(x, rec)
        return np.arange(first, first + x.shape[0], dtype=np.int64)

    def added_payload(self) -> np.ndarray:
        """The records of rows ``payload_from``..``num_rows``, in row order (a structured array, not a copy)."""
        if self.payload_dtype is None:
            raise RetrievalIndexError("this index carries no payload (built without payload_dtype)")
        return self._payload[: self._n_payload]

    def remove(self, rows: np.ndarray | Sequence[int]) -> None:
        """Tombstone ``rows`` (1..num_rows, not yet removed): ``search`` never returns them again."""
        r = np.asarray(rows, dtype=np.int64).reshape(-1)
        if r.size == 0:
            return
        if self._dir is not None:
            remove_rows(self._dir, r)
            self._refresh_unlocked()
            return
        if len(np.unique(r)) != r.size:
            raise RetrievalIndexError("the rows to remove hold duplicates")
        bad = r[(r < 1) | (r > self.num_rows) | np.isin(r, self._removed)]
        if bad.size:
            raise RetrievalIndexError(f"cannot remove rows that are not live rows 1..{self.num_rows}: {bad[:10].tolist()}")
        self._tombstone(r)

    def _extend(self, x: np.ndarray, payload: np.ndarray | None = None) -> None:
        """Rows ``x`` (and their records) join the table (amortised O(M): the buffers double) and the ANN index."""
        self._extra, self._n_extra = grown(self._extra, self._n_extra, x)
        nb = self._base.shape[0]  # the added rows' blocks changed: their selectors go (the base's stay)
        self._block_live = {key: v for key, v in self._block_live.items() if key[0] <= nb}
        if payload is not None:
            self._payload, self._n_payload = grown(self._payload, self._n_payload, payload)
        if self._ann is not None:
            self._ann.add(np.ascontiguousarray(x))

    def _tombstone(self, rows: np.ndarray) -> None:
        self._removed = np.union1d(self._removed, rows)
        self._block_live.clear()
        if self._ann is not None and self._removed.size:
            faiss = faiss_module()
            batch = faiss.IDSelectorBatch(self._removed - 1)
            self._selector = (batch, faiss.IDSelectorNot(batch))

    # ------------------------------------------------------------------------------ files

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the whole index as a new generation of ``directory``; the index then appends there."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        with writer_lock(d):
            gen = read_manifest(d)["generation"] + 1 if (d / MANIFEST).exists() else 0
            files = generation_files(gen)
            write_table(d / files["table"], [seg for _, seg in self._segments()])
            if self._ann is not None:
                tmp = d / f".{files['ann']}.tmp"
                faiss_module().write_index(self._ann, str(tmp))
                os.replace(tmp, d / files["ann"])
            atomic_write_bytes(d / files["added"], b"")
            atomic_write_bytes(d / files["removed"], self._removed.tobytes())
            if self.payload_dtype is not None:
                atomic_write_bytes(d / files["payload"], self.added_payload().tobytes())
            self._base = np.load(d / files["table"], mmap_mode="r")
            self._extra, self._n_extra = np.empty((0, self.dim), dtype=np.float32), 0
            self._dir, self._gen, self._removed_seen = d, gen, int(self._removed.size)
            self._write_manifest(d, added=0, removed=self._removed_seen)
            remove_stale(d, gen)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> RetrievalIndex:
        """The index saved in ``directory``, in the state its manifest names (the table memory-mapped)."""
        d = Path(directory)
        for _ in range(3):  # a save may replace the generation between reading the manifest and its files
            try:
                return cls._load(d)
            except FileNotFoundError as e:
                missing = e
        raise RetrievalIndexError(f"{d}: a file its manifest names is missing: {missing}")

    @classmethod
    def _load(cls, d: Path) -> RetrievalIndex:
        doc = read_manifest(d)
        files = generation_files(doc["generation"])
        if doc["kind"] not in KINDS:
            raise RetrievalIndexError(f"{d}: unknown index kind {doc['kind']!r}")
        try:
            settings = IndexSettings(**doc["settings"])
            kind, dim, base_rows = doc["kind"], int(doc["dim"]), int(doc["base_rows"])
            base = np.load(d / files["table"], mmap_mode="r")
        except (KeyError, TypeError, ValueError) as e:
            raise RetrievalIndexError(f"{d} (manifest or {files['table']}) is malformed: {e}") from e
        if base.dtype != np.float32 or base.shape != (base_rows, dim):
            raise RetrievalIndexError(f"{d / files['table']} holds {base.dtype} {base.shape}, the manifest "
                                      f"says float32 ({base_rows}, {dim})")
        ann = None
        if kind != "exact":
            if not (d / files["ann"]).is_file():
                raise FileNotFoundError(d / files["ann"])
            ann = faiss_module().read_index(str(d / files["ann"]))
            if ann.ntotal != base_rows or ann.d != dim:
                raise RetrievalIndexError(f"{d / files['ann']} indexes {ann.ntotal} rows of dimension {ann.d}, "
                                          f"the manifest says {base_rows} of {dim}")
        index = cls(base, settings, kind, ann, int(doc.get("nlist", 0)))
        payload = doc.get("payload")
        if payload:
            try:
                index._set_payload(dtype_from_json(payload["dtype"]), int(payload["from"]))
            except (KeyError, TypeError, ValueError) as e:
                raise RetrievalIndexError(f"{d / MANIFEST}: malformed payload {payload!r}: {e}") from e
            have = base_rows + 1 - index.payload_from  # base rows that carry a record (after a save)
            if have > 0:
                index._payload = read_items(d / files["payload"], index.payload_dtype, 0, have)
                index._n_payload = have
        index._dir, index._gen = d, int(doc["generation"])
        index._catch_up(doc)
        return index

    def refresh(self) -> int:
        """Read what other writers appended to this index's directory since; returns the rows added.

        A new generation (another process's ``save``) is loaded whole.
        """
        if self._dir is None:
            raise RetrievalIndexError("refresh needs an index that was saved or loaded")
        return self._refresh_unlocked()

    def _refresh_unlocked(self) -> int:
        assert self._dir is not None
        doc = read_manifest(self._dir)
        if doc["generation"] == self._gen:
            with contextlib.suppress(FileNotFoundError):  # else a save replaced the generation meanwhile
                return self._catch_up(doc)
        before = self.num_rows
        self.__dict__.update(RetrievalIndex.load(self._dir).__dict__)
        return self.num_rows - before

    def _catch_up(self, doc: dict[str, Any]) -> int:
        """Read the added rows and removed entries the manifest names past those already read."""
        assert self._dir is not None
        files = generation_files(self._gen)
        new = int(doc["added_rows"]) - self._n_extra
        if new > 0:
            x = read_items(self._dir / files["added"], np.float32, self._n_extra * self.dim, new * self.dim)
            rec = (read_items(self._dir / files["payload"], self.payload_dtype, self._n_payload, new)
                   if self.payload_dtype is not None else None)
            self._extend(x.reshape(new, self.dim), rec)
        gone = int(doc["removed_count"]) - self._removed_seen
        if gone > 0:
            self._tombstone(read_items(self._dir / files["removed"], np.int64, self._removed_seen, gone))
            self._removed_seen += gone
        return max(new, 0)

    def _write_manifest(self, d: Path, *, added: int, removed: int) -> None:
        write_manifest(d, {"generation": self._gen, "kind": self.kind, "dim": self.dim, "nlist": self.nlist,
                           "base_rows": int(self._base.shape[0]), "added_rows": added, "removed_count": removed,
                           "settings": asdict(self.settings),
                           "payload": None if self.payload_dtype is None else
                           {"dtype": dtype_to_json(self.payload_dtype), "from": self.payload_from}})


# ---------------------------------------------------------------------------------- helpers

def _member(sorted_keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Whether each of ``values`` is in ``sorted_keys`` (sorted int64), by binary search: O(values log keys)."""
    if not sorted_keys.size:
        return np.zeros(values.shape, dtype=bool)
    at = np.minimum(np.searchsorted(sorted_keys, values), sorted_keys.size - 1)
    return sorted_keys[at] == values


def _top_k(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` highest ``scores`` per line (unordered) and their rows."""
    if scores.shape[1] <= k:
        return rows, scores
    idx = np.argpartition(scores, scores.shape[1] - k, axis=1)[:, scores.shape[1] - k:]
    return np.take_along_axis(rows, idx, 1), np.take_along_axis(scores, idx, 1)
