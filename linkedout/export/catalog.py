"""The catalogue: the live list of videos a served model recommends from, one version per ranker version.

This is what "catalogue" means in LinkedOut: which video is which row of a ranker version, and what
is known of each. Each published ``NAME_ranker`` version carries its own catalogue; adding or
removing videos publishes a new ranker version with a new catalogue (``linkedout.export.update``),
and the transformer serves the catalogue of the version it routes to.

A ``Catalog`` holds, in row order (row ``r`` of the ranker is ``ids[r-1]``; row 0 is padding):
``ids`` int64 (N,), ``embeddings`` float32 (N, d), ``gate`` and ``contributions`` float32 (N, L)
(empty (N, 0) for models without a layer fusion), ``popularity`` int64 (N,) (training interactions)
and ``published`` int64 (N,) (publish time, ms since the epoch). It is saved beside the ranker's
``model.onnx`` as ``catalog.npz`` (the arrays) and ``catalog.json`` (metadata: model, version,
encoder version, layer names, what changed since the parent version, where it came from).

This module needs numpy alone: the KServe transformer imports it to map video ids to rows.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from linkedout.utils import atomic_write_bytes, atomic_write_text

__all__ = ["CATALOG_FORMAT", "Catalog", "CatalogError", "parse_video_ids"]

CATALOG_FORMAT = 1


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

    def table(self) -> np.ndarray:
        """The ranker's embedding table (N+1, d) float32: row 0 (padding) zero, row r = ``embeddings[r-1]``."""
        out = np.zeros((self.num_items + 1, self.dim), dtype=np.float32)
        out[1:] = self.embeddings
        return out

    def __contains__(self, video_id: object) -> bool:
        try:
            return int(video_id) in self.row_map()  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return False

    # ------------------------------------------------------------------------------ changes

    def with_changes(self, *, add: Mapping[str, np.ndarray] | None = None,
                     remove: Sequence[int] | np.ndarray = ()) -> Catalog:
        """A new catalogue: this one without the ids in ``remove``, plus the videos in ``add``.

        ``add`` holds ``ids`` (M,) and ``embeddings`` (M, d), and optionally ``gate``,
        ``contributions`` (M, L), ``popularity`` (M,) (default 0) and ``published`` (M,) (default:
        now). Kept videos keep their order; new ones are appended. Adding an id that is already in
        the catalogue, or removing one that is not, raises ``CatalogError``. ``meta`` records
        ``added``/``removed``.
        """
        remove = parse_video_ids(remove)
        rows = self.row_map()
        missing = [int(v) for v in remove if int(v) not in rows]
        if missing:
            raise CatalogError(f"cannot remove videos not in the catalogue: {missing[:10]}")
        keep = ~np.isin(self.ids, remove)
        parts: dict[str, list[np.ndarray]] = {
            k: [getattr(self, k)[keep]] for k in ("ids", "embeddings", "gate", "contributions", "popularity",
                                                  "published")}
        added: list[int] = []
        if add is not None:
            new_ids = parse_video_ids(add["ids"])
            m = new_ids.shape[0]
            dup = [int(v) for v in new_ids if int(v) in rows and int(v) not in set(remove.tolist())]
            if dup:
                raise CatalogError(f"videos already in the catalogue: {dup[:10]} (remove them first to replace)")
            if len(set(new_ids.tolist())) != m:
                raise CatalogError("the videos to add hold duplicate ids")
            emb = np.asarray(add["embeddings"], dtype=np.float32)
            if emb.shape != (m, self.dim):
                raise CatalogError(f"embeddings of the new videos must be ({m}, {self.dim}), got {emb.shape}")
            n_layers = self.num_layers
            for k in ("gate", "contributions"):
                arr = np.asarray(add.get(k, np.zeros((m, n_layers))), dtype=np.float32).reshape(m, -1)
                if arr.shape[1] != n_layers:
                    raise CatalogError(f"{k} of the new videos must be ({m}, {n_layers}), got {arr.shape}")
                parts[k].append(arr)
            now = int(time.time() * 1000)
            parts["ids"].append(new_ids)
            parts["embeddings"].append(emb)
            parts["popularity"].append(np.asarray(add.get("popularity", np.zeros(m)), dtype=np.int64).reshape(m))
            parts["published"].append(np.asarray(add.get("published", np.full(m, now)), dtype=np.int64).reshape(m))
            added = new_ids.tolist()
        merged = {k: np.concatenate(v) for k, v in parts.items()}
        if merged["ids"].shape[0] == 0:
            raise CatalogError("the change would leave the catalogue empty")
        meta = {"added": added, "removed": remove.tolist()}
        return Catalog(layers=list(self.layers), meta=meta, **merged)

    # ------------------------------------------------------------------------------ files

    def save(self, directory: str | os.PathLike[str], **meta: Any) -> None:
        """Write ``catalog.npz`` then ``catalog.json`` into ``directory`` (each atomically)."""
        import io

        directory = Path(directory)
        buf = io.BytesIO()
        np.savez(buf, ids=self.ids, embeddings=self.embeddings, gate=self.gate, contributions=self.contributions,
                 popularity=self.popularity, published=self.published)
        atomic_write_bytes(directory / "catalog.npz", buf.getvalue())
        doc = {"format": CATALOG_FORMAT, **self.meta, **meta, "num_items": self.num_items, "dim": self.dim,
               "layers": list(self.layers)}
        self.meta = {k: v for k, v in doc.items() if k not in ("format", "num_items", "dim", "layers")}
        atomic_write_text(directory / "catalog.json", json.dumps(doc, indent=2, default=_json_default))

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Catalog:
        """Read a catalogue written by ``save``; ``CatalogError`` names the file at fault."""
        directory = Path(directory)
        meta_file, arrays_file = directory / "catalog.json", directory / "catalog.npz"
        for f in (meta_file, arrays_file):
            if not f.is_file():
                raise CatalogError(f"{f} is missing (not a catalogue version directory?)")
        try:
            doc = json.loads(meta_file.read_text())
        except json.JSONDecodeError as e:
            raise CatalogError(f"{meta_file} is not valid JSON: {e}") from e
        if not isinstance(doc, dict) or doc.get("format") != CATALOG_FORMAT:
            raise CatalogError(f"{meta_file}: unknown catalogue format {doc.get('format') if isinstance(doc, dict) else doc!r}")
        try:
            with np.load(arrays_file, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("ids", "embeddings", "gate", "contributions", "popularity", "published")}
        except (OSError, ValueError, KeyError) as e:
            raise CatalogError(f"{arrays_file} cannot be read: {e}") from e
        cat = cls(layers=list(doc.get("layers", [])),
                  meta={k: v for k, v in doc.items() if k not in ("format", "num_items", "dim", "layers")},
                  **arrays)
        if cat.num_items != doc.get("num_items", cat.num_items):
            raise CatalogError(f"{meta_file} says {doc.get('num_items')} items, {arrays_file} holds {cat.num_items}")
        return cat


def _json_default(o: object) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
