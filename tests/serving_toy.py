"""Toy ONNX models for the model servers' tests (local Triton, the KServe predictor) and their bench.

Not LinkedOut's models (``linkedout.export`` writes those, and tests/test_export.py and
tests/test_serving_stack.py serve them): small, seeded models that exercise what a model server
does with any model — loading, versions, refusals, batching, shapes — without a trained run.

- ranker: ``history`` INT64 ``[B, T]`` -> ``rows`` INT64 ``[B, K]``, ``scores`` FP32 ``[B, K]``: the
  mean embedding of the history scored against an item table (an initializer, row 0 = padding), the
  history and row 0 masked, top-K. This is the shape of LinkedOut's ranker before two-stage
  retrieval (the table inside the graph); the served ranker is now a user-state graph (docs/serving.md
  §1). Kept as the servers' test model because a top-K with two outputs checks more of a server's
  answer than a user state does.
- encoder: ``id_rows`` INT64 ``[N]`` and ``features`` FP32 ``[N, L, K, D]`` -> ``embedding`` ``[N, d]``,
  ``gate`` ``[N, L]``, ``contributions`` ``[N, L]``: a softmax gate over the layers' mean tokens.

Exported with ``torch.onnx.export`` (TorchScript exporter: well under a second per model) with a
dynamic batch dimension. Their ``config.pbtxt`` (ONNX Runtime backend, GPU instances) is written by
the exporter's own writer (``linkedout.export.repository.config_pbtxt``); :func:`write_model` lays
a model out as a production repository entry, :func:`publish_version` adds a version the way the
exporter does.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from linkedout.export.graphs import GraphSpec, TensorSpec
from linkedout.export.repository import TritonConfig, config_pbtxt
from linkedout.utils import atomic_write_text


def _export(module: Any, args: tuple[Any, ...], path: Path, inputs: list[str], outputs: list[str]) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {name: {0: "batch"} for name in inputs + outputs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, dynamo=False, opset_version=17)


def export_ranker(path: Path, *, num_items: int = 200, dim: int = 16, k: int = 20, max_history: int = 10,
                  seed: int = 0, table: np.ndarray | None = None) -> np.ndarray:
    """Write a ranker ONNX model; returns its item table ``[num_items + 1, dim]`` (row 0 = zeros)."""
    import torch

    if table is None:
        rng = np.random.default_rng(seed)
        table = rng.standard_normal((num_items + 1, dim)).astype(np.float32)
        table[0] = 0.0
    items = np.ascontiguousarray(table, dtype=np.float32)  # (N + 1, d)
    if not 1 <= k <= items.shape[0] - 1:
        raise ValueError(f"k: must be in 1..{items.shape[0] - 1}, got {k}")

    class Ranker(torch.nn.Module):
        table: torch.Tensor
        pad: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("table", torch.from_numpy(items))
            pad = torch.zeros(items.shape[0])
            pad[0] = float("-inf")
            self.register_buffer("pad", pad)

        def forward(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            e = self.table[history]                                     # (B, T, d)
            mask = (history > 0).unsqueeze(-1).to(e.dtype)              # (B, T, 1)
            user = (e * mask).sum(1) / mask.sum(1).clamp(min=1.0)       # (B, d)
            scores = user @ self.table.T + self.pad                     # (B, N + 1), padding row 0 masked
            scores = scores.scatter(1, history, float("-inf"))          # the history masked
            s, r = torch.topk(scores, k, dim=1)                         # (B, K)
            return r, s

    _export(Ranker(), (torch.zeros(2, max_history, dtype=torch.int64),), path, ["history"], ["rows", "scores"])
    return items


def export_encoder(path: Path, *, layers: int = 3, tokens: int = 4, hidden: int = 8, dim: int = 16,
                   id_rows: int = 50, seed: int = 0) -> None:
    """Write an item-encoder ONNX model (``id_rows`` ``[N]`` + ``features`` ``[N, L, K, D]``)."""
    import torch

    g = torch.Generator().manual_seed(seed)

    class Encoder(torch.nn.Module):
        gate_w: torch.Tensor
        proj: torch.Tensor
        ids: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("gate_w", torch.randn(hidden, generator=g))
            self.register_buffer("proj", torch.randn(hidden, dim, generator=g) / hidden**0.5)
            ids = torch.randn(id_rows + 1, dim, generator=g)
            ids[0] = 0.0
            self.register_buffer("ids", ids)

        def forward(self, rows: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
            h = features.mean(2)                                        # (N, L, D)
            gate = torch.softmax(h @ self.gate_w, dim=1)                # (N, L)
            item = ((gate.unsqueeze(-1) * h).sum(1)) @ self.proj        # (N, d)
            weight = gate * h.norm(dim=-1)                              # (N, L)
            contributions = weight / weight.sum(1, keepdim=True).clamp(min=1e-12)
            return item + self.ids[rows], gate, contributions

    _export(Encoder(), (torch.zeros(2, dtype=torch.int64), torch.zeros(2, layers, tokens, hidden)), path,
            ["id_rows", "features"], ["embedding", "gate", "contributions"])


def ranker_config(name: str, *, k: int = 20, max_history: int = 10, max_batch_size: int = 64,
                  queue_delay_us: int = 100, num_versions: int = 2) -> str:
    """A production ``config.pbtxt`` for the ranker (ONNX Runtime backend, GPU instances)."""
    spec = GraphSpec((TensorSpec("history", "INT64", (-1, max_history)),),
                     (TensorSpec("rows", "INT64", (-1, k)), TensorSpec("scores", "FP32", (-1, k))))
    return config_pbtxt(name, spec, TritonConfig(max_batch_size=max_batch_size, max_queue_delay_us=queue_delay_us,
                                                 num_versions=num_versions))


def encoder_config(name: str, *, layers: int = 3, tokens: int = 4, hidden: int = 8, dim: int = 16,
                   max_batch_size: int = 64) -> str:
    """A production ``config.pbtxt`` for the encoder; ``id_rows`` is ``[N]``: dims [1] reshaped to []."""
    spec = GraphSpec((TensorSpec("id_rows", "INT64", (-1,)), TensorSpec("features", "FP32", (-1, layers, tokens, hidden))),
                     (TensorSpec("embedding", "FP32", (-1, dim)), TensorSpec("gate", "FP32", (-1, layers)),
                      TensorSpec("contributions", "FP32", (-1, layers))))
    return config_pbtxt(name, spec, TritonConfig(max_batch_size=max_batch_size, max_queue_delay_us=0))


def write_model(repo: Path, name: str, config: str) -> Path:
    """``repo/name/config.pbtxt``; returns the model directory."""
    model_dir = Path(repo) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(model_dir / "config.pbtxt", config)
    return model_dir


def publish_version(model_dir: Path, version: int, build: Any) -> Path:
    """Write a version the way the exporter does: into ``.v.tmp``, then renamed into place.

    ``build(path)`` writes ``model.onnx`` at ``path``; returns the version directory.
    """
    tmp = model_dir / f".{version}.tmp"
    tmp.mkdir(parents=True, exist_ok=False)
    build(tmp / "model.onnx")
    final = model_dir / str(version)
    tmp.rename(final)
    return final
