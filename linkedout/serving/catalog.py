"""The served catalog: the catalogue versions of the ranker models in the model repository, loaded once.

The model repository (a directory, or ``s3://bucket/prefix`` — what Triton's ``storageUri`` points
at) holds each ranker version's ``catalog.json`` and ``catalog.npz`` beside its ``model.onnx``
(docs/serving.md §1). ``ServedCatalogs`` lists the versions of the models it is asked about,
loads a version's catalogue when it is first needed (S3 files are copied into a local cache
first) and keeps it: ids <-> rows, the gate weights and contributions for ``explain``, and the
cold-start list. Which version serves is decided by the engine (the newest one Triton reports
ready, or the version a routing variant pins). numpy and the shards' storage only: no torch.
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from linkedout.export.catalog import Catalog
from linkedout.shards.storage import open_storage
from linkedout.utils import atomic_write_bytes, get_logger

log = get_logger(__name__)

__all__ = ["COLD_START_HALF_LIFE_DAYS", "CatalogView", "ServedCatalogs"]

#: Recency half-life of the cold-start answer, in days of catalogue time (see ``CatalogView``).
COLD_START_HALF_LIFE_DAYS = 14.0


@dataclass
class CatalogView:
    """One loaded catalogue version and what the transformer derives from it.

    ``cold_start`` is the answer for a user with no history: videos ordered by
    ``log1p(popularity) / log1p(max popularity) + 2 ** (-age / half-life)``, where ``age`` is the
    time since publication counted back from the newest video of the catalogue (so a replayed,
    historical catalogue behaves like a live one): popular and recently published videos first.
    """

    model: str
    version: int
    catalog: Catalog
    cold_start_rows: np.ndarray  # (N,) rows, best first
    cold_start_scores: np.ndarray  # (N,) their scores

    @classmethod
    def build(cls, model: str, version: int, catalog: Catalog,
              half_life_days: float = COLD_START_HALF_LIFE_DAYS) -> CatalogView:
        pop = np.log1p(catalog.popularity.astype(np.float64))
        pop = pop / pop.max() if pop.max() > 0 else pop
        age_days = (catalog.published.max() - catalog.published).astype(np.float64) / 86_400_000.0
        recency = np.exp2(-age_days / half_life_days) if half_life_days > 0 else np.zeros_like(age_days)
        score = pop + recency
        order = np.argsort(-score, kind="stable")
        return cls(model, version, catalog, order + 1, score[order].astype(np.float32))


class ServedCatalogs:
    """Catalogue versions of ranker models in a model repository (thread-safe)."""

    def __init__(self, repository: str, *, cache_dir: str | os.PathLike[str] | None = None,
                 s3_endpoint: str | None = None) -> None:
        self.repository = repository
        self._local = None if repository.startswith("s3://") else Path(repository)
        self._storage = None
        if self._local is None:
            self._storage = open_storage(repository, endpoint_url=s3_endpoint)
        self.cache_dir = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="linkedout-catalogs-"))
        self._views: dict[tuple[str, int], CatalogView] = {}
        self._lock = threading.Lock()

    def versions(self, model: str) -> list[int]:
        """Ranker versions of ``model`` that hold a catalogue, ascending."""
        rdir = f"{model}_ranker"
        if self._local is not None:
            d = self._local / rdir
            if not d.is_dir():
                return []
            return sorted(int(p.name) for p in d.iterdir()
                          if p.name.isdigit() and not p.name.startswith("0") and (p / "catalog.json").is_file())
        assert self._storage is not None
        found = set()
        for key in self._storage.list(f"{rdir}/"):
            parts = key.split("/")
            if len(parts) == 3 and parts[1].isdigit() and parts[2] == "catalog.json":
                found.add(int(parts[1]))
        return sorted(found)

    def view(self, model: str, version: int) -> CatalogView:
        """The loaded catalogue of ``model`` version ``version`` (read once, then kept)."""
        key = (model, version)
        with self._lock:
            if key in self._views:
                return self._views[key]
        directory = self._version_dir(model, version)
        view = CatalogView.build(model, version, Catalog.load(directory))
        with self._lock:
            self._views[key] = view
            # keep the newest few versions of each model in memory
            for old in sorted(v for m, v in self._views if m == model)[:-3]:
                self._views.pop((model, old), None)
        log.info("catalogue %s v%d loaded: %d videos", model, version, view.catalog.num_items)
        return view

    def _version_dir(self, model: str, version: int) -> Path:
        if self._local is not None:
            return self._local / f"{model}_ranker" / str(version)
        assert self._storage is not None
        target = self.cache_dir / f"{model}_ranker" / str(version)
        if not (target / "catalog.json").is_file():
            target.mkdir(parents=True, exist_ok=True)
            for name in ("catalog.npz", "catalog.json"):  # the JSON last: its presence means complete
                data = self._storage.read_bytes(f"{model}_ranker/{version}/{name}")
                atomic_write_bytes(target / name, data)
        return target

