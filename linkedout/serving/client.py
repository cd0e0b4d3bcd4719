"""The gRPC client of the transformer (Open Inference Protocol v2 through ``tritonclient.grpc``).

``tritonclient`` and ``kserve`` cannot share a process (kserve#3099): this module is imported by the
``linkedout recommend`` command, by tests and benchmarks, never by the transformer process.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["RecommendClient", "RecommendError", "Recommendation", "format_table"]


class RecommendError(RuntimeError):
    """The transformer refused the request or could not be reached; carries its status and message."""

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Recommendation:
    """One user's answer."""

    user_id: str
    items: list[int]
    scores: list[float]
    variant: str
    model_version: str
    cold_start: bool
    unknown_items: list[int] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    gate: list[list[float]] | None = None  # (k, L) with explain
    contributions: list[list[float]] | None = None  # (k, L) with explain

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RecommendClient:
    """``recommend(user_ids, k, history=None, explain=False) -> [Recommendation]`` over gRPC."""

    def __init__(self, url: str, *, model: str = "linkedout", timeout: float = 5.0) -> None:
        # tritonclient only once a client is made: importers of format_table stay free of it (kserve#3099)
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self.url, self.model, self.timeout = url, model, timeout
        self._client = grpcclient.InferenceServerClient(url)

    def recommend(self, user_ids: Sequence[int | str], k: int = 10, *, history: np.ndarray | None = None,
                  explain: bool = False) -> list[Recommendation]:
        g = self._grpc
        ints = all(isinstance(u, int) or (isinstance(u, str) and u.isdigit()) for u in user_ids)
        if ints:
            users = g.InferInput("user_id", [len(user_ids)], "INT64")
            users.set_data_from_numpy(np.asarray([int(u) for u in user_ids], dtype=np.int64))
        else:
            users = g.InferInput("user_id", [len(user_ids)], "BYTES")
            users.set_data_from_numpy(np.asarray([str(u).encode() for u in user_ids], dtype=object))
        kin = g.InferInput("k", [1], "INT64")
        kin.set_data_from_numpy(np.asarray([k], dtype=np.int64))
        inputs = [users, kin]
        if history is not None:
            h = np.asarray(history, dtype=np.int64)
            hin = g.InferInput("history", list(h.shape), "INT64")
            hin.set_data_from_numpy(h)
            inputs.append(hin)
        if explain:
            ein = g.InferInput("explain", [1], "BOOL")
            ein.set_data_from_numpy(np.asarray([True]))
            inputs.append(ein)
        try:
            res = self._client.infer(self.model, inputs, client_timeout=self.timeout)
        except Exception as e:  # tritonclient's InferenceServerException: status() and message()
            status_fn, message_fn = getattr(e, "status", None), getattr(e, "message", None)
            status = status_fn() if callable(status_fn) else None
            message = message_fn() if callable(message_fn) else str(e)
            raise RecommendError(f"{self.url}: {status or 'error'}: {message}", status) from None
        items, scores = res.as_numpy("items"), res.as_numpy("scores")
        variants, versions = res.as_numpy("variant"), res.as_numpy("model_version")
        cold, unknown = res.as_numpy("cold_start"), res.as_numpy("unknown_items")
        params = res.get_response().parameters
        layers = params["layers"].string_param.split(",") if "layers" in params and params["layers"].string_param else []
        gate = res.as_numpy("gate") if explain else None
        contrib = res.as_numpy("contributions") if explain else None
        out = []
        for i, u in enumerate(user_ids):
            n = int((items[i] >= 0).sum())
            out.append(Recommendation(
                user_id=str(u), items=items[i, :n].tolist(), scores=[float(s) for s in scores[i, :n]],
                variant=_text(variants[i]), model_version=_text(versions[i]), cold_start=bool(cold[i]),
                unknown_items=json.loads(_text(unknown[i])), layers=layers,
                gate=None if gate is None else gate[i, :n].tolist(),
                contributions=None if contrib is None else contrib[i, :n].tolist()))
        return out

    def close(self) -> None:
        self._client.close()


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def format_table(recs: Sequence[Recommendation]) -> str:
    """A readable table per user: rank, video, score (and the top layer shares with explain)."""
    lines = []
    for r in recs:
        head = f"user {r.user_id}  variant {r.variant}  model {r.model_version}"
        if r.cold_start:
            head += "  (cold start: no history; popular and recent videos)"
        lines.append(head)
        if r.unknown_items:
            lines.append(f"  history videos not in the catalogue (ignored): {r.unknown_items}")
        cols = f"  {'rank':>4}  {'video':>10}  {'score':>9}"
        if r.contributions is not None and r.layers:
            cols += "  layer contributions (" + " ".join(f"{name:>5}" for name in r.layers) + ")"
        lines.append(cols)
        for n, (item, score) in enumerate(zip(r.items, r.scores), start=1):
            row = f"  {n:>4}  {item:>10}  {score:>9.4f}"
            if r.contributions is not None and r.layers:
                row += "                         " + " ".join(f"{c:>5.2f}" for c in r.contributions[n - 1])
            lines.append(row)
        lines.append("")
    return "\n".join(lines).rstrip()
