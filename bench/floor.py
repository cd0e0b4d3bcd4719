"""The floors ``bench/serve.py`` measures LinkedOut's transformer against, as KServe model servers.

    python bench/floor.py bare --http_port 8080 --grpc_port 8081
    python bench/floor.py two-hop --predictor_host 127.0.0.1:8001 --http_port 8080 --grpc_port 8081

Both are served by the server class LinkedOut's transformer runs in (``BoundModelServer``: KServe's
REST and gRPC servers bound to 127.0.0.1, one process), answer the same request (``user_id`` INT64
[1], ``k`` INT64 [1]) with an ``items`` INT64 [1, k] output, and do no work of their own:

- ``bare``: one hop. A ``kserve.Model`` whose ``predict`` returns ``k`` ids computed from the user id.
- ``two-hop``: the architecture's floor. A KServe transformer that forwards a [1, 10] INT64 tensor made
  from the user id to the ``identity`` model on Triton (an ONNX ``Identity`` graph, served by the local
  Triton like the ranker is) with KServe's own gRPC client, and answers the first ``k`` values
  it gets back. No Feast, no ranker, no routing, no catalogue.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import kserve
import numpy as np
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest, InferResponse, RequestedOutput

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from linkedout.serving import EVENT_LOOPS
from linkedout.serving.kserve_server import BoundModelServer

IDENTITY = "identity"  # Triton's model (bench/serve.py writes it: this process imports kserve, not onnx)
HISTORY = 10


def _user_and_k(payload: InferRequest) -> tuple[int, int]:
    values = {i.name: i.as_numpy().reshape(-1) for i in payload.inputs}
    return int(values["user_id"][0]), int(values["k"][0]) if "k" in values else 10


def _items(payload: InferRequest, ids: np.ndarray) -> InferResponse:
    out = InferOutput(name="items", shape=list(ids.shape), datatype="INT64")
    out.set_data_from_numpy(ids, binary_data=True)
    return InferResponse(response_id=payload.id or "", model_name="linkedout", infer_outputs=[out],
                         from_grpc=payload.from_grpc, use_binary_outputs=payload.from_grpc)


class BareModel(kserve.Model):
    """One hop: ``k`` ids from arithmetic."""

    def __init__(self) -> None:
        super().__init__("linkedout")
        self.ready = True

    async def predict(self, payload: Any, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> InferResponse:
        user, k = _user_and_k(payload)
        return _items(payload, ((user * 7 + np.arange(k, dtype=np.int64)) % 100_003).reshape(1, k))


class TwoHop(kserve.Model):
    """Two hops: a transformer forwarding to Triton's ``identity`` model with KServe's gRPC client."""

    def __init__(self, predictor_host: str) -> None:
        super().__init__("linkedout")
        self.predictor_host = predictor_host
        self._client: Any = None
        self.ready = True

    async def predict(self, payload: Any, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> InferResponse:
        if self._client is None:  # grpc.aio: created inside the running loop
            self._client = kserve.InferenceGRPCClient(self.predictor_host, timeout=1.0, retries=2)
        user, k = _user_and_k(payload)
        history = (user + np.arange(HISTORY, dtype=np.int64)).reshape(1, HISTORY)
        inp = InferInput("history", [1, HISTORY], "INT64")
        inp.set_data_from_numpy(history, binary_data=True)
        req = InferRequest(model_name=IDENTITY, infer_inputs=[inp], request_outputs=[RequestedOutput("rows")])
        resp = await self._client.infer(req, timeout=1.0)
        rows = resp.outputs[0].as_numpy().reshape(1, -1)
        return _items(payload, np.ascontiguousarray(rows[:, :k]))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=("bare", "two-hop"))
    p.add_argument("--predictor_host", default="")
    p.add_argument("--http_port", type=int, default=8080)
    p.add_argument("--grpc_port", type=int, default=8081)
    p.add_argument("--event-loop", dest="event_loop", choices=EVENT_LOOPS, default="auto",
                   help="the servers' event loop, as the transformer's (auto: uvloop where installed)")
    args = p.parse_args(argv)
    if args.kind == "two-hop" and not args.predictor_host:
        p.error("two-hop needs --predictor_host (Triton's gRPC host:port)")
    model = BareModel() if args.kind == "bare" else TwoHop(args.predictor_host)
    server = BoundModelServer(bind_address="127.0.0.1", http_port=args.http_port, grpc_port=args.grpc_port,
                              workers=1, enable_latency_logging=False, event_loop=args.event_loop)
    for name in ("kserve", "kserve.trace", "uvicorn.access"):  # as LinkedOut's transformer: no line per request
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start([model])


if __name__ == "__main__":
    main()
