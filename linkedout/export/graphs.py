"""ONNX graphs of any recommender under the contract: the item encoder and the catalogue ranker.

Both graphs are thin ``nn.Module`` wrappers that call only the ``Recommender`` contract
(``encode_items``, ``last_state``, ``score``), so LinkedOut, its ablations, the hybrid, SASRec on IDs
and popularity export alike (docs/serving.md §1):

- ``EncoderGraph``: ``id_rows`` (N,) int64 (row of the training ID table, 0 = not in training) and,
  for models that read backbone features, ``features`` (N, L, K, D) -> ``embedding`` (N, d) and, for
  models with a layer fusion, ``gate`` (N, L) and ``contributions`` (N, L) (the shares
  ``pi_l ||h^(l)|| / sum_j pi_j ||h^(j)||``, as in ``linkedout.interpret.contributions``).
- ``UserGraph`` (the ranker): ``history`` (B, T) int64 catalogue rows (0 = padding, most recent
  last) and ``history_emb`` (B, T, d) float32, their embeddings (zeros where padded) -> ``user``
  (B, d) float32, the user state every catalogue video is scored against (``score``: a dot
  product). The catalogue is not in the graph: its table and retrieval index are beside it
  (``linkedout.export.catalog``), so the graph's size does not grow with the catalogue and adding
  a video does not touch it. ``full_scores`` is the reference ranking over a whole table.

``export_onnx`` exports either with a dynamic batch axis through ``torch.onnx.export(dynamo=True)``
and gives the graph's inputs and outputs the names of the contract.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from linkedout.model.base import Recommender
from linkedout.utils import atomic_write_bytes

__all__ = [
    "EncoderGraph",
    "GraphSpec",
    "TensorSpec",
    "UserGraph",
    "encoder_spec",
    "export_onnx",
    "full_scores",
    "graph_spec_of",
    "history_embeddings",
    "ranker_spec",
]

#: ONNX tensor element types <-> Triton data types (those the graphs use).
ONNX_TO_TRITON = {1: "FP32", 7: "INT64", 9: "BOOL", 10: "FP16", 6: "INT32"}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a graph: name, Triton data type and full shape (``-1`` = the batch axis)."""

    name: str
    dtype: str  # Triton type name without the TYPE_ prefix: "INT64", "FP32"
    shape: tuple[int, ...]  # batch axis first, as -1

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphSpec:
    """The inputs and outputs of an exported graph, in order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def names(self) -> tuple[list[str], list[str]]:
        return [t.name for t in self.inputs], [t.name for t in self.outputs]

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}


def has_fusion(model: Recommender) -> bool:
    """Whether the model's item tower is a layer fusion (its encoder has ``gate`` and ``contributions``)."""
    return getattr(model, "fusion", None) is not None


def embedding_dim(model: Recommender) -> int:
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "d_model"):
        raise ValueError(f"{type(model).__name__} has no ModelConfig (.config.d_model); it cannot be exported")
    return int(cfg.d_model)


def max_history(model: Recommender) -> int:
    """T, the longest history the model's sequence model accepts (its positional table)."""
    cfg = getattr(model, "config", None)
    seq = getattr(cfg, "sequence", None)
    if seq is None:
        raise ValueError(f"{type(model).__name__} has no ModelConfig.sequence; it cannot be exported")
    return int(seq.max_history)


def encoder_spec(model: Recommender, features_shape: Sequence[int] | None) -> GraphSpec:
    """The I/O of ``EncoderGraph(model)``; ``features_shape`` is ``(L, K, D)`` for feature models."""
    d = embedding_dim(model)
    inputs = [TensorSpec("id_rows", "INT64", (-1,))]
    if model.needs_features:
        if features_shape is None or len(features_shape) != 3:
            raise ValueError(f"{type(model).__name__} reads backbone features: give features_shape (L, K, D)")
        inputs.append(TensorSpec("features", "FP32", (-1, *(int(s) for s in features_shape))))
    outputs = [TensorSpec("embedding", "FP32", (-1, d))]
    if has_fusion(model):
        cfg: Any = getattr(model, "config", None)
        n_layers = int(cfg.fusion.num_layers)
        outputs += [TensorSpec("gate", "FP32", (-1, n_layers)), TensorSpec("contributions", "FP32", (-1, n_layers))]
    return GraphSpec(tuple(inputs), tuple(outputs))


def ranker_spec(history: int, d_model: int) -> GraphSpec:
    """The I/O of a ``UserGraph``: ``history`` (B, T), ``history_emb`` (B, T, d) -> ``user`` (B, d)."""
    return GraphSpec((TensorSpec("history", "INT64", (-1, history)),
                      TensorSpec("history_emb", "FP32", (-1, history, d_model))),
                     (TensorSpec("user", "FP32", (-1, d_model)),))


class EncoderGraph(nn.Module):
    """``(id_rows (N,), [features (N, L, K, D)]) -> embedding (N, d)[, gate (N, L), contributions (N, L)]``."""

    def __init__(self, model: Recommender) -> None:
        super().__init__()
        self.model = model
        self.with_features = bool(model.needs_features)
        self.with_gate = has_fusion(model)

    def forward(self, id_rows: Tensor, features: Tensor | None = None) -> tuple[Tensor, ...]:
        enc = self.model.encode_items(id_rows, features if self.with_features else None)
        if not self.with_gate:
            return (enc.emb,)
        if enc.gate is None or enc.layer_outputs is None:
            raise ValueError(f"{type(self.model).__name__} has a fusion but returned no gate or layer outputs")
        gate = enc.gate / enc.gate.sum(dim=-1, keepdim=True)  # (N, L)
        weighted = gate * enc.layer_outputs.norm(dim=-1)  # (N, L) pi_l ||h^(l)||
        total = weighted.sum(dim=-1, keepdim=True)  # (N, 1)
        contrib = torch.where(total > 0, weighted / total.clamp_min(1e-30), gate)  # (N, L)
        return enc.emb, gate, contrib


class UserGraph(nn.Module):
    """``history (B, T) int64, history_emb (B, T, d) float32 -> user (B, d) float32`` (the module docstring)."""

    def __init__(self, model: Recommender) -> None:
        super().__init__()
        self.model = model

    def forward(self, history: Tensor, history_emb: Tensor) -> Tensor:
        return self.model.last_state(history_emb, history > 0)


def history_embeddings(embeddings: Tensor, history: Tensor) -> Tensor:
    """``(B, T, d)``: the embeddings (N, d) of the history's rows (1..N), zeros where a slot is padding (0)."""
    picked = embeddings[(history - 1).clamp_min(0)].to(torch.float32)
    return torch.where((history > 0).unsqueeze(-1), picked, torch.zeros((), dtype=torch.float32))


def full_scores(model: Recommender, embeddings: Tensor, history: Tensor) -> tuple[Tensor, Tensor]:
    """The reference ranking: every row's score (B, N+1) against ``embeddings`` (N, d) (rows 1..N), with
    the padding row 0 and the history's rows at ``-inf``, and the user states (B, d)."""
    emb = embeddings.to(torch.float32)
    user = UserGraph(model)(history, history_embeddings(emb, history))  # (B, d)
    scores = torch.cat([torch.full((history.shape[0], 1), float("-inf")), model.score(user, emb)], dim=1)
    return scores.scatter(1, history, float("-inf")), user


def export_onnx(graph: nn.Module, args: tuple[Tensor, ...], spec: GraphSpec, path: str | os.PathLike[str],
                *, opset: int = 18, optimize: bool = True) -> Path:
    """Export ``graph`` called on ``args`` to ``path``: a dynamic batch axis, the names of ``spec``.

    The graph's inputs and outputs get ``spec``'s names (an internal value that happens to carry one
    of those names is renamed first), and their element types and shapes are checked against
    ``spec``. The file is written whole or not at all (a temporary file renamed into place).
    """
    import onnx

    in_names, out_names = spec.names()
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    graph.eval()
    with torch.no_grad(), warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(graph, args, dynamo=True, dynamic_shapes=tuple({0: batch} for _ in args),
                                    opset_version=opset, optimize=optimize, external_data=False, verbose=False)
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    proto = program.model_proto
    _rename_io(proto, in_names, out_names)
    problems = _spec_mismatches(proto, spec)
    if problems:
        raise RuntimeError(f"exported graph does not match its contract: {'; '.join(problems)}")
    onnx.checker.check_model(proto)
    path = Path(path)
    atomic_write_bytes(path, proto.SerializeToString())
    return path


class _quiet_exporter:
    """Silence the exporter's INFO/WARNING chatter (torchvision kernels, dynamic-shape notes)."""

    def __enter__(self) -> None:
        self._levels = {}
        for name in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript", "torch._export"):
            lg = logging.getLogger(name)
            self._levels[name] = lg.level
            lg.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)


def _rename_io(proto: Any, in_names: Sequence[str], out_names: Sequence[str]) -> None:
    """Rename the graph's inputs and outputs (in order) to the given names, in place."""
    g = proto.graph
    if len(g.input) != len(in_names) or len(g.output) != len(out_names):
        raise RuntimeError(f"exported graph has {len(g.input)} inputs and {len(g.output)} outputs, the contract "
                           f"{len(in_names)} and {len(out_names)}")
    mapping = {v.name: new for v, new in zip([*g.input, *g.output], [*in_names, *out_names]) if v.name != new}
    taken = set(mapping.values())
    # any other value already called like one of the contract's names moves aside first
    internal = {o for n in g.node for o in n.output} | {i.name for i in g.initializer}
    for name in sorted(internal & taken):
        if name not in mapping:
            mapping[name] = f"{name}__internal"

    def ren(s: str) -> str:
        return mapping.get(s, s)

    for v in [*g.input, *g.output, *g.value_info]:
        v.name = ren(v.name)
    for init in g.initializer:
        init.name = ren(init.name)
    for node in g.node:
        node.input[:] = [ren(s) for s in node.input]
        node.output[:] = [ren(s) for s in node.output]


def graph_spec_of(proto: Any) -> GraphSpec:
    """The inputs and outputs of an ONNX model (``onnx.ModelProto``), symbolic dimensions as -1."""
    def spec(v: Any) -> TensorSpec:
        t = v.type.tensor_type
        dims = tuple(int(d.dim_value) if d.HasField("dim_value") else -1 for d in t.shape.dim)
        return TensorSpec(v.name, ONNX_TO_TRITON.get(int(t.elem_type), f"onnx:{t.elem_type}"), dims)

    return GraphSpec(tuple(spec(v) for v in proto.graph.input), tuple(spec(v) for v in proto.graph.output))


def _spec_mismatches(proto: Any, spec: GraphSpec) -> list[str]:
    got = graph_spec_of(proto)
    problems = []
    for want_list, got_list, what in ((spec.inputs, got.inputs, "input"), (spec.outputs, got.outputs, "output")):
        for want, have in zip(want_list, got_list):
            if want.dtype != have.dtype or len(want.shape) != len(have.shape) or any(
                    w != -1 and w != h for w, h in zip(want.shape, have.shape)):
                problems.append(f"{what} {want.name}: want {want.dtype}{list(want.shape)}, "
                                f"got {have.dtype}{list(have.shape)}")
    return problems
