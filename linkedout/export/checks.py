"""The checks an export must pass before anything is published: onnxruntime against PyTorch or NumPy.

A failed check raises ``RepositoryError`` ("export check failed: ...") and nothing is published.

- :func:`onnx_session` opens a graph on the CPU; :func:`max_abs_diff` compares outputs;
- :func:`random_histories` draws the user histories the rankers are checked on;
- :func:`topk_mismatch`: a ranker's top-K against PyTorch's full scores, ties broken in any order;
- :func:`check_table_initializers`: the ranker's catalogue lives in the initializers ``table`` and
  ``never`` only, so that a catalogue update can replace them;
- :func:`check_updated_ranker`: a ranker whose table was replaced ranks its own table, and its user
  states are its parent's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from linkedout.export.catalog import Catalog
from linkedout.export.repository import RepositoryError


def onnx_session(path: str | os.PathLike[str]) -> Any:
    """An onnxruntime ``InferenceSession`` of the graph at ``path`` on the CPU, logging errors only."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: no constant-folding chatter
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def max_abs_diff(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """The largest ``|a - b|`` over pairs of arrays (float64; an empty pair counts 0)."""
    return max((float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max()) if x.size else 0.0)
               for x, y in zip(a, b))


def require(ok: bool, what: str) -> None:
    """Raise ``RepositoryError("export check failed: what")`` unless ``ok``."""
    if not ok:
        raise RepositoryError(f"export check failed: {what}")


def random_histories(n_items: int, t: int, users: int, rng: np.random.Generator) -> np.ndarray:
    """(users, T) int64: left-padded histories of random length 1..T over rows 1..N (repeats allowed)."""
    hist = np.zeros((users, t), dtype=np.int64)
    for u in range(users):
        length = int(rng.integers(1, t + 1))
        hist[u, t - length:] = rng.integers(1, n_items + 1, size=length)
    return hist


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


def check_table_initializers(path: Path, rows: int, dim: int) -> None:
    """The ranker's catalogue lives in exactly the initializers ``table`` (N+1, d) and ``never`` (N+1,)."""
    import onnx

    inits = {i.name: list(i.dims) for i in onnx.load(str(path), load_external_data=False).graph.initializer}
    require(inits.get("table") == [rows, dim] and inits.get("never") == [rows],
            f"ranker graph keeps its catalogue outside the initializers 'table' and 'never': {inits.get('table')}, "
            f"{inits.get('never')}")
    others = [n for n, dims in inits.items() if n not in ("table", "never") and rows in dims]
    require(not others, f"ranker graph has other catalogue-sized constants {others}; a catalogue update could not "
                        "replace them")


def check_updated_ranker(new_file: Path, parent_file: Path, parent: Catalog, catalog: Catalog, kmax: int,
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
    rows, scores, user = onnx_session(new_file).run(None, {"history": hist_new})
    _, _, user_parent = onnx_session(parent_file).run(None, {"history": hist_parent})
    diff = float(np.abs(user - user_parent).max())
    require(diff <= tolerance, f"user states of the new catalogue version differ from the parent's by {diff:.3g}")
    full = user.astype(np.float64) @ catalog.table().astype(np.float64).T  # (B, N+1)
    full[:, 0] = -np.inf
    np.put_along_axis(full, hist_new, -np.inf, axis=1)
    want = np.take_along_axis(full, rows, axis=1)  # (B, KMAX) what the table says of the rows returned
    finite = np.isfinite(want)
    require(bool(finite.all()) or kmax > catalog.num_items - t, "the new ranker returned masked rows")
    sdiff = float(np.abs(want[finite] - scores[finite]).max()) if finite.any() else 0.0
    require(sdiff <= tolerance * 10, f"new ranker scores disagree with its table by {sdiff:.3g}")
    best = -np.sort(-full, axis=1)[:, :kmax]  # (B, KMAX) the best scores the table allows
    got = -np.sort(-scores.astype(np.float64), axis=1)
    ok = np.isfinite(best)
    require(bool(np.all(np.abs(best[ok] - got[ok]) <= tolerance * 10)),
            "the new ranker's top-K is not the best K of its table")
