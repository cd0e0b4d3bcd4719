"""The kinds of retrieval index (``linkedout.export.index``) and the settings they are built and searched with.

``exact`` is faiss's brute-force search over the table itself (nothing to build); the ANN kinds
(``ivf_flat``, ``ivf_sq8``, ``ivf_pq``, ``hnsw``: inner product) are faiss indexes, built by ``new_ann``;
faiss is imported on first use (``faiss_module``).
The defaults were measured with bench/scale.py (bench/results/scale.json).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from linkedout.export.index_files import RetrievalIndexError
from linkedout.utils import is_int

__all__ = ["ANN_KINDS", "KINDS", "IndexSettings", "auto_nlist", "faiss_module", "new_ann"]

KINDS = ("exact", "ivf_flat", "ivf_sq8", "ivf_pq", "hnsw")
ANN_KINDS = KINDS[1:]


@dataclass(frozen=True)
class IndexSettings:
    """How an index is built and searched; every field is checked when the settings are made."""

    kind: str = "auto"
    """'auto' (exact below ``exact_below`` rows, else ``ann_kind``), 'exact', or one of ANN_KINDS."""
    exact_below: int = 100_000
    """'auto' builds exact below this many rows; >= 1 (bench/scale.py, d = 64: faiss's brute force within the
    ANN's p99 + 1 ms up to ~118k rows; 40,000 when the exact search was numpy's)."""
    ann_kind: str = "ivf_sq8"
    """The ANN kind 'auto' builds from ``exact_below`` rows on; one of ANN_KINDS."""
    nlist: int = 0
    """IVF kinds: inverted lists (k-means centroids); 0 = ``auto_nlist(rows at build)``; >= 0."""
    nprobe: int = 64
    """IVF kinds: lists searched per user (capped at nlist); >= 1. bench/scale.py: recall@10 .9997 at 1M,
    .974 at 10M (32: .9985 and .955)."""
    exact_block: int = 1 << 24
    """Exact kind: table rows searched in one faiss call (a block); >= 1024."""
    candidates: int = 100
    """ANN kinds: candidates per user re-scored exactly, on top of the user's excluded rows; >= 1."""
    pq_m: int = 16
    """ivf_pq: bytes of code per vector (sub-quantizers of 8 bits); must divide d; >= 1."""
    hnsw_m: int = 32
    """hnsw: links per node; >= 2."""
    ef_search: int = 128
    """hnsw: breadth of the search (efSearch, raised to the candidates asked for); >= 1."""
    seed: int = 0
    """IVF kinds: seed of the training sample and of k-means; >= 0."""
    SEARCH_FIELDS: ClassVar[tuple[str, ...]] = ("nprobe", "candidates", "ef_search", "exact_block")
    """The fields ``RetrievalIndex.tune`` may change on a built index (search-time only)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name not in ("kind", "ann_kind") and not is_int(getattr(self, f.name)):
                raise RetrievalIndexError(f"IndexSettings.{f.name} must be an integer, got "
                                          f"{getattr(self, f.name)!r}")
        if self.kind not in ("auto", *KINDS):
            raise RetrievalIndexError(f"IndexSettings.kind must be 'auto' or one of {KINDS}, got {self.kind!r}")
        if self.ann_kind not in ANN_KINDS:
            raise RetrievalIndexError(f"IndexSettings.ann_kind must be one of {ANN_KINDS}, got {self.ann_kind!r}")
        least = {"exact_below": 1, "nlist": 0, "nprobe": 1, "candidates": 1, "pq_m": 1, "hnsw_m": 2,
                 "ef_search": 1, "exact_block": 1024, "seed": 0}
        for name, lo in least.items():
            if getattr(self, name) < lo:
                raise RetrievalIndexError(f"IndexSettings.{name} must be >= {lo}, got {getattr(self, name)}")

    def kind_for(self, rows: int) -> str:
        """The kind built for a table of ``rows`` rows."""
        if self.kind != "auto":
            return self.kind
        return "exact" if rows < self.exact_below else self.ann_kind


def auto_nlist(rows: int) -> int:
    """IVF lists for ``rows`` rows when ``nlist`` is 0: the power of two nearest sqrt(rows), with at least
    39 training rows per list (faiss's minimum), at most 65536. Measured with bench/scale.py
    --compare-kinds: 1024 lists recalled more than 4096 at 1M rows, 4096 more than 1024 or 2048 at 10M,
    for the same search time."""
    nlist = 2 ** round(math.log2(max(1.0, math.sqrt(rows))))
    return int(max(1, min(nlist, rows // 39, 65536)))


def faiss_module() -> Any:
    """faiss, imported on first use (a search, an ANN build or load).

    faiss's loader logs at INFO each SIMD build it tries and cannot load, with the ImportError on a line of
    its own ("ModuleNotFoundError("No module named 'faiss.swigfaiss_avx512'")"): where the root logger
    shows INFO (a KFP step), that reads like a failure, so the loader's logger is kept to warnings."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        import faiss
    except ImportError as e:
        raise RetrievalIndexError("retrieval needs faiss (pip install faiss-cpu)") from e
    return faiss


def new_ann(kind: str, d: int, nlist: int, s: IndexSettings) -> Any:
    faiss = faiss_module()
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "hnsw":
        return faiss.IndexHNSWFlat(d, s.hnsw_m, ip)
    code = {"ivf_flat": "Flat", "ivf_sq8": "SQ8", "ivf_pq": f"PQ{s.pq_m}np"}[kind]  # np: no polysemous training
    ann = faiss.index_factory(d, f"IVF{nlist},{code}", ip)
    ann.cp.niter = 10  # k-means iterations: at 1M rows of bench/scale.py, the recall of faiss's 25 in half the time
    return ann
