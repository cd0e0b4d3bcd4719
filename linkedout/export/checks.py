"""The checks an export must pass before anything is published: onnxruntime against PyTorch or NumPy.

A failed check raises ``RepositoryError`` ("export check failed: ...") and nothing is published.

- :func:`onnx_session` opens a graph on the CPU; :func:`max_abs_diff` compares outputs;
- :func:`random_histories` draws the user histories the rankers are checked on;
- :func:`topk_mismatch`: a catalogue's top-K against PyTorch's full scores, ties broken in any order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

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
