"""An in-process ranker: the repository's ``NAME_ranker`` ONNX files run by onnxruntime.

The same ``Ranker`` callable the engine gets from Triton in the transformer (docs/serving.md §1),
for the places where a server hop is not wanted: the engine's tests, the benchmarks of the ranker
alone, and offline scoring. No server import.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["OrtRanker"]


class OrtRanker:
    """``await ranker(model, version, history (B, T)) -> (rows (B, KMAX), scores (B, KMAX))``."""

    def __init__(self, repository: str | os.PathLike[str], *, threads: int = 1) -> None:
        self.repository = Path(repository)
        self.threads = threads
        self._sessions: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()

    def session(self, model: str, version: int) -> Any:
        key = (model, version)
        with self._lock:
            if key not in self._sessions:
                import onnxruntime as ort

                path = self.repository / f"{model}_ranker" / str(version) / "model.onnx"
                if not path.is_file():
                    raise FileNotFoundError(f"{path} does not exist")
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = self.threads
                opts.inter_op_num_threads = 1
                opts.log_severity_level = 3
                self._sessions[key] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            return self._sessions[key]

    def rank(self, model: str, version: int, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows, scores = self.session(model, version).run(["rows", "scores"], {"history": np.asarray(history, np.int64)})
        return rows, scores

    async def __call__(self, model: str, version: int, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.rank(model, version, history)
