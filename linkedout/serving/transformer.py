"""The KServe transformer: a user id in, top-K videos out (Open Inference Protocol v2, REST and gRPC).

    python -m linkedout.serving.transformer --model_name linkedout --predictor_host 127.0.0.1:8001 \\
        --model_repository W/model_repository --feast_repo W/feast [--routing routing.yaml] \\
        [--request_log requests.jsonl] --bind_address 127.0.0.1 --http_port 8080 --grpc_port 8081

``LinkedOutTransformer`` is a ``kserve.Model`` whose three phases are the ``RecommendationEngine``'s
(``linkedout.serving.engine``):

- ``preprocess`` checks the request's tensors (``linkedout.serving.request``: ``InvalidInput``
  naming the input), routes the users (A/B) and reads their histories from Feast with a timeout;
- ``predict`` calls Triton's ranker over gRPC (``linkedout.serving.ranker``: kserve's own client,
  a timeout and bounded retries);
- ``postprocess`` filters the watched videos out, keeps ``k``, adds the cold-start answers and
  the explanation, writes the request log and the metrics, and answers an ``InferResponse``.

KServe times each phase (its ``request_preprocess_seconds``, ``request_predict_seconds`` and
``request_postprocess_seconds`` histograms, beside ``linkedout.serving.metrics`` on ``/metrics``).
A background task (kserve's model "engine": ``start_engine``) follows the model repository every
``--catalog_poll_s``: when a new ranker version appears and Triton reports it ready, its catalogue
is loaded and it becomes the version served, and videos added to or removed from a served
catalogue in place are served from then on; no restart, no reload. A Feast or Triton outage answers UNAVAILABLE (HTTP 503) naming what
failed, within its timeout.

The flags map one to one to the constructor and to the InferenceService's ``args``
(docs/serving.md §3); kserve's own flags (``--http_port``, ``--grpc_port``, ``--predictor_host``,
``--predictor_request_timeout_seconds``, ``--predictor_request_retries``, ...) come from
``kserve.model_server.parser``. This module imports kserve and therefore never tritonclient
(kserve#3099).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import kserve
import numpy as np
from kserve.errors import InvalidInput, ServerNotReady
from kserve.protocol.grpc.grpc_predict_v2_pb2 import InferParameter, ModelInferResponse
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from linkedout.serving.catalog import ServedCatalogs
from linkedout.serving.engine import (
    HistorySource,
    RecommendationEngine,
    RecPlan,
    RecResult,
    ServingUnavailable,
    check_routable,
)
from linkedout.serving.kserve_server import BoundModelServer
from linkedout.serving.ranker import TritonRanker
from linkedout.serving.request import (
    INPUTS,
    OUTPUT_DATATYPES,
    OUTPUTS,
    RawTensor,
    RequestError,
    parse_request,
)
from linkedout.serving.request_log import RequestLog
from linkedout.serving.routing import Router, RoutingError
from linkedout.utils import configure_logging, get_logger

log = get_logger(__name__)

__all__ = ["LinkedOutTransformer", "Unavailable", "build_parser", "main"]


class Unavailable(ServerNotReady):
    """A dependency is down: gRPC UNAVAILABLE, HTTP 503, with the reason.

    KServe 0.21's gRPC interceptor reads ``.reason`` from ``ServerNotReady``, which only sets
    ``error_msg``; without it the client gets UNKNOWN and an AttributeError instead of the cause.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.reason = self.error_msg


@dataclass
class _Call:
    """What one request carries from phase to phase."""

    plan: RecPlan
    from_grpc: bool


class LinkedOutTransformer(kserve.Model):
    """See the module docstring; every argument is a flag of ``python -m linkedout.serving.transformer``."""

    ready: bool  # kserve.Model's: whether load() made the engine (and stop() not yet undone it)

    def __init__(self, name: str = "linkedout", *, predictor_host: str, model_repository: str,
                 feast_repo: str | None = None, feast_timeout_ms: float = 200.0, routing: str | None = None,
                 default_model: str | None = None, request_log: str | None = None, max_batch_size: int = 64,
                 max_k: int = 100, predictor_timeout_s: float = 1.0, predictor_retries: int = 1,
                 catalog_poll_s: float = 1.0, s3_endpoint: str | None = None, batch_window_ms: float = 2.0,
                 retrieval_threads: int = 1, request_log_max_mb: float = 0.0, request_log_backups: int = 4) -> None:
        super().__init__(name)
        for flag, value, lo in (("max_batch_size", max_batch_size, 1), ("max_k", max_k, 1),
                                ("retrieval_threads", retrieval_threads, 1), ("request_log_backups", request_log_backups, 1)):
            if value < lo:
                raise ValueError(f"--{flag} must be >= {lo}, got {value}")
        for flag, fvalue in (("feast_timeout_ms", feast_timeout_ms), ("predictor_request_timeout_seconds",
                                                                      predictor_timeout_s), ("catalog_poll_s", catalog_poll_s)):
            if not fvalue > 0:
                raise ValueError(f"--{flag} must be > 0, got {fvalue}")
        for flag, fvalue in (("batch_window_ms", batch_window_ms), ("request_log_max_mb", request_log_max_mb)):
            if not fvalue >= 0:
                raise ValueError(f"--{flag} must be >= 0, got {fvalue}")
        if predictor_retries < 0:
            raise ValueError(f"--predictor_request_retries must be >= 0, got {predictor_retries}")
        if not predictor_host:
            raise ValueError("--predictor_host (Triton's gRPC host:port) is required")
        self.predictor_host = predictor_host
        self.model_repository = model_repository
        self.feast_repo = feast_repo
        self.feast_timeout_ms = feast_timeout_ms
        self.routing_path = routing
        self.default_model = default_model or name
        self.request_log_path = request_log
        self.request_log_max_bytes = int(request_log_max_mb * 2**20)
        self.request_log_backups = request_log_backups
        self.max_batch_size = max_batch_size
        self.max_k = max_k
        self.predictor_timeout_s = predictor_timeout_s
        self.predictor_retries = predictor_retries
        self.catalog_poll_s = catalog_poll_s
        self.s3_endpoint = s3_endpoint
        self.batch_window_ms = batch_window_ms
        self.retrieval_threads = retrieval_threads
        self.engine = True  # kserve's flag: run start_engine (the repository follower) in its event loop
        self._stopping = False
        self.ranker = TritonRanker(predictor_host, timeout=predictor_timeout_s, retries=predictor_retries)
        #: the recommendation logic (set by load)
        self.logic: RecommendationEngine | None = None

    # ------------------------------------------------------------------------------------ lifecycle

    def load(self) -> bool:
        if self.logic is not None:
            # KServe's data plane calls load() again before every request while healthy() is False (no
            # catalogue version served: Triton down or restarting, or none published yet). The engine is
            # made once: a new one per request held the event loop for the Feast warm-up read, leaked its
            # thread pools and request-log writer, and forgot what it served; the repository follower
            # (start_engine) serves the version again once Triton reports it ready.
            return self.ready
        histories: HistorySource | None = None
        if self.feast_repo:
            from linkedout.featurestore.online import HistoryReader  # Feast is slow to import: only if used

            histories = HistoryReader(self.feast_repo)
            try:  # the first read opens the store (SQLite file, Redis connection): not on a user's deadline
                histories.get(["linkedout-warm-up"])
            except Exception as e:  # an outage now is reported per request, once requests come
                log.warning("the feature store did not answer the warm-up read: %s", e)
        catalogs = ServedCatalogs(self.model_repository, s3_endpoint=self.s3_endpoint)
        router = Router(self.routing_path, self.default_model, check=functools.partial(check_routable, catalogs))
        missing = [m for m in router.config.models if not catalogs.versions(m)]
        if missing:
            log.warning("no ranker version of %s in %s yet: those variants answer UNAVAILABLE until one is "
                        "published and loaded", missing, self.model_repository)
        self.logic = RecommendationEngine(
            router=router, catalogs=catalogs, ranker=self.ranker, histories=histories,
            request_log=RequestLog(self.request_log_path, max_bytes=self.request_log_max_bytes,
                                   backups=self.request_log_backups) if self.request_log_path else None,
            feast_timeout=self.feast_timeout_ms / 1000.0, max_k=self.max_k, max_ranker_batch=self.max_batch_size,
            batch_window=self.batch_window_ms / 1000.0, retrieval_threads=self.retrieval_threads)
        self.ready = True
        return self.ready

    async def start_engine(self) -> None:
        """Follow the repository: serve the newest ranker version Triton has ready, for every routed model."""
        while not self._stopping:
            try:
                assert self.logic is not None
                await self.logic.update_served_versions(self.ranker.ready)
            except Exception as e:  # never let the follower die: the next round retries
                log.warning("catalogue refresh failed: %s", e)
            await asyncio.sleep(self.catalog_poll_s)

    async def healthy(self) -> bool:
        """Ready (the v2 ready endpoints, a pod's readiness probe) once a catalogue version is served."""
        return bool(self.ready and self.logic is not None and self.logic.serving)

    def stop(self) -> None:
        self._stopping = True
        if self.logic is not None:
            self.logic.close()
        self.ready = False

    def stop_engine(self) -> None:
        self._stopping = True

    # ------------------------------------------------------------------------------------ contract

    def get_input_types(self) -> list[dict[str, Any]]:
        """The v2 metadata's inputs (``ModelMetadata``, ``GET /v2/models/NAME``): ``request.INPUTS``."""
        return [spec.metadata() for spec in INPUTS]

    def get_output_types(self) -> list[dict[str, Any]]:
        """The v2 metadata's outputs: ``request.OUTPUTS`` (``gate`` and ``contributions`` with ``explain``)."""
        return [spec.metadata() for spec in OUTPUTS]

    # ------------------------------------------------------------------------------------ requests

    def _max_k_now(self) -> int:
        assert self.logic is not None
        try:
            return self.logic.largest_k()
        except Exception:
            return self.max_k

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> _Call:
        """Check the request, route the users, read their histories from Feast."""
        assert self.logic is not None
        if not isinstance(payload, InferRequest):
            raise InvalidInput("expected an Open Inference Protocol v2 request (inputs user_id, k, history, explain)")
        tensors = {}
        for inp in payload.inputs:
            if inp.name in tensors:
                raise InvalidInput(f"input '{inp.name}' is given twice")
            tensors[inp.name] = RawTensor(inp.name, str(inp.datatype).upper(), tuple(int(d) for d in inp.shape),
                                          raw=inp._raw_data, values=None if inp._raw_data is not None else inp.data)
        for out in payload.request_outputs or []:
            if out.name not in OUTPUT_DATATYPES:
                raise InvalidInput(f"output '{out.name}' is not an output of this model; the outputs are "
                                   f"{list(OUTPUT_DATATYPES)}")
        try:
            req = parse_request(tensors, max_batch_size=self.max_batch_size, max_k=self._max_k_now())
        except RequestError as e:
            raise InvalidInput(str(e)) from None
        try:
            plan = await self.logic.prepare(req, payload.id or None)
        except ServingUnavailable as e:
            raise Unavailable(str(e)) from None
        except RoutingError as e:
            raise Unavailable(f"routing: {e}") from None
        return _Call(plan, payload.from_grpc)

    async def predict(self, payload: Any, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> _Call:
        """Rank the users with a history: Triton's ``NAME_ranker``."""
        assert self.logic is not None
        if not isinstance(payload, _Call):
            raise InvalidInput("malformed request")
        try:
            await self.logic.rank(payload.plan)
        except ServingUnavailable as e:
            raise Unavailable(str(e)) from None
        return payload

    async def postprocess(self, result: Any, headers: dict[str, str] | None = None,
                          response_headers: dict[str, str] | None = None) -> InferResponse | ModelInferResponse:
        """Filter, cut to ``k``, explain, log and count; the v2 response (the gRPC message itself to a gRPC call)."""
        assert self.logic is not None and isinstance(result, _Call)
        r = self.logic.finish(result.plan)
        tensors = _tensors(r)
        params = {"layers": ",".join(r.layers)} if r.gate is not None else {}
        if result.from_grpc:  # the message built here once: KServe's InferOutput/to_grpc encoded every tensor twice
            return ModelInferResponse(
                id=r.request_id, model_name=self.name,
                outputs=[ModelInferResponse.InferOutputTensor(name=name, datatype=OUTPUT_DATATYPES[name],
                                                              shape=arr.shape) for name, arr in tensors],
                raw_output_contents=[_raw(arr, OUTPUT_DATATYPES[name]) for name, arr in tensors],
                parameters={k: InferParameter(string_param=v) for k, v in params.items()})
        outputs = []
        for name, arr in tensors:
            out = InferOutput(name=name, shape=list(arr.shape), datatype=OUTPUT_DATATYPES[name])
            out.set_data_from_numpy(arr, binary_data=True)
            outputs.append(out)
        return InferResponse(response_id=r.request_id, model_name=self.name, infer_outputs=outputs,
                             from_grpc=False, parameters=params or None, use_binary_outputs=False)


def _tensors(r: RecResult) -> list[tuple[str, np.ndarray]]:
    """The outputs of ``request.OUTPUTS`` for an answer, in their datatypes (BYTES as arrays of bytes)."""
    tensors: list[tuple[str, np.ndarray]] = [
        ("items", r.items.astype(np.int64, copy=False)),
        ("scores", r.scores.astype(np.float32, copy=False)),
        ("variant", np.asarray([v.encode() for v in r.variants], dtype=object)),
        ("model_version", np.asarray([v.encode() for v in r.model_versions], dtype=object)),
        ("cold_start", r.cold_start.astype(bool, copy=False)),
        ("unknown_items", np.asarray([json.dumps(u).encode() for u in r.unknown_items], dtype=object)),
    ]
    if r.gate is not None and r.contributions is not None:
        tensors += [("gate", r.gate.astype(np.float32, copy=False)),
                    ("contributions", r.contributions.astype(np.float32, copy=False))]
    return tensors


_RAW_DTYPES = {"INT64": "<i8", "INT32": "<i4", "FP32": "<f4", "BOOL": "?"}


def _raw(arr: np.ndarray, datatype: str) -> bytes:
    """A tensor's raw contents in the v2 binary layout: little-endian elements, BYTES as 4-byte length + bytes."""
    if datatype == "BYTES":
        return b"".join(len(v).to_bytes(4, "little") + v for v in arr.reshape(-1).tolist())
    return np.ascontiguousarray(arr, dtype=_RAW_DTYPES[datatype]).tobytes()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m linkedout.serving.transformer", parents=[kserve.model_server.parser],
        description="LinkedOut's KServe transformer: user ids in, top-K videos out (docs/serving.md §3).")
    parser.add_argument("--model_repository", required=True,
                        help="the Triton model repository (directory or s3://bucket/prefix) holding the catalogues")
    parser.add_argument("--feast_repo", default=None,
                        help="Feast repository directory (feature_store.yaml); without it every user is cold start "
                             "unless the request carries a history")
    parser.add_argument("--feast_timeout_ms", type=float, default=200.0, help="deadline of the Feast read (ms)")
    parser.add_argument("--routing", default=None, help="A/B routing config (YAML), re-read when it changes")
    parser.add_argument("--default_model", default=None,
                        help="model NAME served without a routing config (default: --model_name)")
    parser.add_argument("--request_log", default=None, help="append one JSON line per user served to this file")
    parser.add_argument("--request_log_max_mb", type=float, default=0.0,
                        help="rotate a --request_log file once it reaches this size, keeping "
                             "--request_log_backups older files (0: never; a pipe such as /dev/stdout never is)")
    parser.add_argument("--request_log_backups", type=int, default=4, help="rotated request-log files kept")
    parser.add_argument("--max_batch_size", type=int, default=64, help="most users per request")
    parser.add_argument("--max_k", type=int, default=100, help="most results per user")
    parser.add_argument("--catalog_poll_s", type=float, default=1.0,
                        help="seconds between looks at the repository for new ranker versions and for videos "
                             "added to the served catalogues in place")
    parser.add_argument("--s3_endpoint", default=None, help="S3 endpoint URL for an s3:// --model_repository")
    parser.add_argument("--batch_window_ms", type=float, default=2.0,
                        help="longest wait of a Triton call for the concurrent requests still reading Feast "
                             "(0: only those ready in the same event-loop turn); never waited without concurrency")
    parser.add_argument("--retrieval_threads", type=int, default=1,
                        help="threads of one retrieval (numpy's BLAS, faiss's OpenMP): 1 unless a pod has cores "
                             "to spare beyond its concurrent requests")
    parser.add_argument("--bind_address", default="0.0.0.0",
                        help="address the REST and gRPC servers listen on (127.0.0.1 for a local stack)")
    parser.add_argument("--log_level", default="INFO", help="log level of the transformer (kserve's own: WARNING)")
    parser.set_defaults(model_name="linkedout", predictor_protocol="grpc-v2", predictor_request_timeout_seconds=1,
                        predictor_request_retries=1, enable_latency_logging=False)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    if not args.predictor_host:
        raise SystemExit("--predictor_host: Triton's gRPC host:port is required")
    if not args.model_repository.startswith("s3://") and not os.path.isdir(args.model_repository):
        raise SystemExit(f"--model_repository: {args.model_repository} is not a directory")
    try:
        model = LinkedOutTransformer(
            args.model_name, predictor_host=args.predictor_host, model_repository=args.model_repository,
            feast_repo=args.feast_repo, feast_timeout_ms=args.feast_timeout_ms, routing=args.routing,
            default_model=args.default_model, request_log=args.request_log, max_batch_size=args.max_batch_size,
            max_k=args.max_k, predictor_timeout_s=float(args.predictor_request_timeout_seconds),
            predictor_retries=int(args.predictor_request_retries), catalog_poll_s=args.catalog_poll_s,
            s3_endpoint=args.s3_endpoint, batch_window_ms=args.batch_window_ms,
            retrieval_threads=args.retrieval_threads, request_log_max_mb=args.request_log_max_mb,
            request_log_backups=args.request_log_backups)
        model.load()
    except (ValueError, RoutingError, FileNotFoundError) as e:
        raise SystemExit(f"linkedout transformer: {e}") from None
    # what start-up made (kserve, Feast, the catalogues) is never garbage: moved out of the collector's
    # sight, so the full collections that requests trigger do not walk it
    gc.collect()
    gc.freeze()
    started = time.monotonic()
    server = BoundModelServer(bind_address=args.bind_address, http_port=args.http_port, grpc_port=args.grpc_port,
                              enable_grpc=args.enable_grpc, workers=1, max_threads=args.max_threads,
                              enable_latency_logging=False, event_loop=args.event_loop)
    for name in ("kserve", "kserve.trace", "uvicorn.access"):  # kserve configured its loggers just now
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        server.start([model])
    finally:
        log.info("transformer stopped after %.0f s", time.monotonic() - started)


if __name__ == "__main__":
    main()
