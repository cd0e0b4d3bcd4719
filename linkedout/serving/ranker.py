"""The transformer's Triton client: ``NAME_ranker`` versions called over gRPC with kserve's own client.

``TritonRanker`` is the engine's ``Ranker`` (``await ranker(model, version, history) -> (rows,
scores)``) and its ``VersionReady`` (``await ranker.ready(model, version)``), over the Open
Inference Protocol v2 with a timeout and bounded retries. A failed call raises
``ServingUnavailable`` naming Triton's address, the model version and the gRPC status. It imports
kserve and therefore never tritonclient (kserve#3099).
"""

from __future__ import annotations

from typing import Any

import grpc
import kserve
import numpy as np
from kserve.protocol.grpc.grpc_predict_v2_pb2 import ModelReadyRequest
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

from linkedout.serving.engine import ServingUnavailable

__all__ = ["TritonRanker"]


class TritonRanker:
    """Triton's ``NAME_ranker`` models at ``host`` (``host:port`` of its gRPC endpoint).

    Args:
        host: Triton's gRPC ``host:port`` (the transformer's ``--predictor_host``).
        timeout: seconds one call may take.
        retries: retries of a failed inference call (kserve's client makes ``retries + 1`` attempts).
    """

    def __init__(self, host: str, *, timeout: float = 1.0, retries: int = 1) -> None:
        self.host = host
        self.timeout = timeout
        self.retries = retries
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:  # created inside the running event loop (grpc.aio)
            self._client = kserve.InferenceGRPCClient(self.host, timeout=self.timeout,
                                                      retries=max(1, self.retries + 1))
        return self._client

    async def ready(self, model: str, version: int) -> bool:
        """Whether Triton serves ``NAME_ranker`` version ``version`` now (False when unreachable)."""
        try:
            resp = await self.client._client_stub.ModelReady(
                ModelReadyRequest(name=f"{model}_ranker", version=str(version)), timeout=self.timeout)
            return bool(resp.ready)
        except grpc.RpcError:
            return False

    async def __call__(self, model: str, version: int, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``history`` (B, T) catalogue rows -> ``rows`` (B, KMAX), ``scores`` (B, KMAX)."""
        inp = InferInput("history", list(history.shape), "INT64")
        inp.set_data_from_numpy(np.ascontiguousarray(history, dtype=np.int64), binary_data=True)
        req = InferRequest(model_name=f"{model}_ranker", infer_inputs=[inp], model_version=str(version),
                           request_outputs=[RequestedOutput("rows"), RequestedOutput("scores")])
        try:
            resp = await self.client.infer(req, timeout=self.timeout)
        except grpc.RpcError as e:
            code = e.code().name if hasattr(e, "code") and callable(e.code) else "ERROR"
            details = e.details() if hasattr(e, "details") and callable(e.details) else str(e)
            raise ServingUnavailable(f"Triton at {self.host} ({model}_ranker:{version}): {code}: {details}",
                                     "predictor") from None
        out = {o.name: o.as_numpy() for o in resp.outputs}
        if "rows" not in out or "scores" not in out:
            raise ServingUnavailable(f"Triton's {model}_ranker:{version} answered without rows/scores", "predictor")
        return out["rows"], out["scores"]
