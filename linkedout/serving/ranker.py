"""The transformer's Triton client: ``NAME_ranker`` versions called over gRPC with kserve's own client.

``TritonRanker`` is the engine's ``Ranker`` (``await ranker(model, version, history, history_emb) ->
user states``) and its ``VersionReady`` (``await ranker.ready(model, version)``), over the Open
Inference Protocol v2 with a timeout and bounded retries (the channel of kserve's
``InferenceGRPCClient``, with its retry policy). A call sends the protobuf message itself: the
history's rows as one raw little-endian INT64 tensor and their embeddings as one raw FP32 tensor,
the ``user`` output read straight from the response's raw contents, without kserve's
``InferRequest`` / ``InferResponse`` conversions. A failed call raises
``ServingUnavailable`` naming Triton's address, the model version and the gRPC status. It imports
kserve and therefore never tritonclient (kserve#3099).
"""

from __future__ import annotations

from typing import Any

import grpc
import kserve
import numpy as np
from kserve.protocol.grpc.grpc_predict_v2_pb2 import ModelInferRequest, ModelInferResponse, ModelReadyRequest

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

    async def __call__(self, model: str, version: int, history: np.ndarray, history_emb: np.ndarray) -> np.ndarray:
        """``history`` (B, T) catalogue rows and their embeddings (B, T, d) -> user states (B, d)."""
        history = np.ascontiguousarray(history, dtype="<i8")
        history_emb = np.ascontiguousarray(history_emb, dtype="<f4")
        req = ModelInferRequest(
            model_name=f"{model}_ranker", model_version=str(version),
            inputs=[ModelInferRequest.InferInputTensor(name="history", datatype="INT64", shape=history.shape),
                    ModelInferRequest.InferInputTensor(name="history_emb", datatype="FP32", shape=history_emb.shape)],
            outputs=_OUTPUTS, raw_input_contents=[history.tobytes(), history_emb.tobytes()])
        try:
            resp = await self.client._client_stub.ModelInfer(req, timeout=self.timeout)
        except grpc.RpcError as e:
            code = e.code().name if hasattr(e, "code") and callable(e.code) else "ERROR"
            details = e.details() if hasattr(e, "details") and callable(e.details) else str(e)
            raise ServingUnavailable(f"Triton at {self.host} ({model}_ranker:{version}): {code}: {details}",
                                     "predictor") from None
        user = _user(resp, len(history))
        if user is None:
            raise ServingUnavailable(f"Triton's {model}_ranker:{version} answered without user states of "
                                     f"{len(history)} users", "predictor")
        return user


_OUTPUTS = [ModelInferRequest.InferRequestedOutputTensor(name="user")]


def _user(resp: ModelInferResponse, batch: int) -> np.ndarray | None:
    """The ``user`` output (B, d) of a response in raw output contents (how Triton and the local predictor
    answer over gRPC); None when it is not there or its shape is wrong."""
    raw = resp.raw_output_contents
    for i, o in enumerate(resp.outputs):
        if o.name != "user" or o.datatype != "FP32":
            continue
        if i >= len(raw):
            return None
        arr = np.frombuffer(raw[i], dtype="<f4")
        shape = tuple(int(d) for d in o.shape)
        if len(shape) != 2 or shape[0] != batch or arr.size != shape[0] * shape[1]:
            return None
        return arr.reshape(shape)
    return None
