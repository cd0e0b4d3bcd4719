"""A KServe ``ModelServer`` that binds the address it is given (imports kserve).

KServe 0.21 binds REST to ``0.0.0.0`` (``RESTServer``: ``uvicorn.Config(host="0.0.0.0")``) and gRPC to
``[::]`` (``GRPCServer.start``: ``listen_addr = f"[::]:{port}"``) with no flag to change either
(DESIGN.md §2). :class:`BoundModelServer` is ``kserve.ModelServer`` with both bound to
``bind_address`` (``--bind_address``: 127.0.0.1 locally, 0.0.0.0 in a pod), a gRPC port that is
never shared with another server (:func:`grpc_server_options`), and two hooks: extra
FastAPI routes registered *before* KServe's own (Starlette matches routes in order, so a route here
replaces KServe's for the same path) and the gRPC servicer class. Single-process REST only
(``--workers 1``); KServe's multi-process REST forks uvicorn workers that bind on their own.

Every malformed request is refused with a clean error before KServe decodes it (gRPC
INVALID_ARGUMENT, HTTP 400), never UNKNOWN, INTERNAL or HTTP 500 (DESIGN.md §2):

- gRPC bytes that do not parse as the RPC's request message (random, truncated): each RPC of the v2
  service is registered with a deserializer that hands such bytes on as an :class:`UndecodableRequest`,
  which the RPC refuses (grpc.aio answers a deserializer's exception with UNKNOWN, outside any
  interceptor: :func:`add_inference_servicer`);
- a ModelInfer tensor whose datatype is not a v2 datatype, or whose typed ``contents`` are in
  another field than its datatype's (:class:`CheckedInferenceServicer`, the default servicer);
- a REST body in the binary extension whose ``Inference-Header-Content-Length``, ``binary_data_size``
  or byte counts lie (:func:`check_binary_body`, in :class:`CheckedDataPlane`), and a JSON body
  FastAPI cannot validate (its 422, written without the values, which may be NaN).
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from google.protobuf.message import DecodeError
from grpc import aio
from kserve import ModelServer
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING, INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import InvalidInput
from kserve.logging import logger
from kserve.model import BaseKServeModel
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.grpc_predict_v2_pb2 import ModelInferRequest
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.infer_type import InferRequest, deserialize_bytes_tensor
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.server import RESTServer
from kserve.utils.numpy_codec import to_np_dtype

from linkedout.serving import EVENT_LOOPS

RouteHook = Callable[[FastAPI, DataPlane, ModelRepositoryExtension], None]
SERVICE = "inference.GRPCInferenceService"
#: the ``InferTensorContents`` field that carries each v2 datatype's values (KServe's ``get_content``);
#: FP16 travels only as raw bytes
CONTENTS_FIELD = {"BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
                  "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
                  "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents", "FP16": None,
                  "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def _listen_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def grpc_server_options(kwargs: dict[str, Any]) -> list[tuple[str, Any]]:
    """The gRPC server's channel options: KServe's message limits, and ``grpc.so_reuseport`` off.

    gRPC sets ``SO_REUSEPORT`` by default: a second server on a port already served would start and
    share it with the first (the kernel spreads connections over both). Off, the bind fails instead.
    """
    return [("grpc.max_send_message_length", kwargs.get("grpc_max_send_message_length")),
            ("grpc.max_receive_message_length", kwargs.get("grpc_max_receive_message_length")),
            ("grpc.so_reuseport", 0)]


# ------------------------------------------------------------------------------------------ gRPC


@dataclass(frozen=True)
class UndecodableRequest:
    """What an RPC receives instead of its request message when the bytes do not parse as one."""

    method: str
    error: str

    @property
    def reason(self) -> str:
        return f"{self.method}: the request is not a valid protobuf message ({self.error})"


def _tolerant(method: str, deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as e:
            return UndecodableRequest(method, str(e))

    return deserialize


def _refusing_undecodable(behavior: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    async def handle(request: Any, context: Any) -> Any:
        if isinstance(request, UndecodableRequest):
            raise InvalidInput(request.reason)  # KServe's interceptor: INVALID_ARGUMENT with the reason
        return await behavior(request, context)

    return handle


class _Handlers:
    """Stands in for a server to catch the method handlers KServe's generated code registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.handlers.update(handlers)


def add_inference_servicer(servicer: InferenceServicer, server: aio.Server) -> None:
    """Register ``servicer`` for the v2 service as KServe's generated code does, except that request
    bytes which do not parse reach the RPC as an :class:`UndecodableRequest`, refused with
    INVALID_ARGUMENT naming the RPC and the message type (not grpc.aio's UNKNOWN "Unexpected DecodeError")."""
    caught = _Handlers()
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, caught)
    handlers = {}
    for method, h in caught.handlers.items():
        if h.unary_unary is None or h.request_deserializer is None:
            raise TypeError(f"{SERVICE}/{method}: only unary RPCs are served here")
        handlers[method] = h._replace(request_deserializer=_tolerant(method, h.request_deserializer),
                                      unary_unary=_refusing_undecodable(h.unary_unary))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


class CheckedInferenceServicer(InferenceServicer):
    """KServe's servicer; ModelInfer also refuses, naming the input, a datatype that is not a v2
    datatype and typed ``contents`` in another field than the datatype's (KServe would read the
    datatype's field, find it empty and go on with no values)."""

    @classmethod
    def validate_grpc_request(cls, request: ModelInferRequest) -> None:
        super().validate_grpc_request(request)  # raw_input_contents: one per input, no contents beside them
        for tensor in request.inputs:
            if tensor.datatype not in CONTENTS_FIELD:
                raise InvalidInput(f"input '{tensor.name}': datatype {tensor.datatype!r} is not a v2 datatype "
                                   f"({', '.join(CONTENTS_FIELD)})")
            given = [field.name for field, _ in tensor.contents.ListFields()]
            wrong = [f for f in given if f != CONTENTS_FIELD[tensor.datatype]]
            if wrong:
                where = CONTENTS_FIELD[tensor.datatype] or "raw_input_contents only"
                raise InvalidInput(f"input '{tensor.name}': a {tensor.datatype} tensor's values go in {where}, "
                                   f"got {', '.join(wrong)}")


class BoundGRPCServer(GRPCServer):
    """KServe's gRPC server listening on ``host`` instead of ``[::]``, with a chosen servicer class."""

    def __init__(self, host: str, port: int, data_plane: DataPlane,
                 model_repository_extension: ModelRepositoryExtension, kwargs: dict[str, Any],
                 grace_period: int = 30, servicer_class: type[InferenceServicer] = CheckedInferenceServicer) -> None:
        super().__init__(port, data_plane, model_repository_extension, kwargs=kwargs, grace_period=grace_period)
        self._host = host
        self._servicer_class = servicer_class

    async def start(self, max_workers: int) -> None:  # the body of GRPCServer.start, bound to self._host
        servicer = self._servicer_class(self._data_plane, self._model_repository_extension)
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor()),
            options=grpc_server_options(self._kwargs),
        )
        add_inference_servicer(servicer, self._server)
        listen_addr = _listen_address(self._host, self._port)
        if self._server.add_insecure_port(listen_addr) == 0:
            raise OSError(f"gRPC: cannot bind {listen_addr}")
        logger.info("Starting gRPC server with %d workers on %s", max_workers, listen_addr)
        await self._server.start()
        await self._server.wait_for_termination()


# ------------------------------------------------------------------------------------------ REST


def _refuse(message: str) -> InvalidInput:
    return InvalidInput(f"binary request body: {message}")


def check_binary_body(body: bytes, json_length: str | None) -> None:
    """Check a REST body in the binary tensor extension before KServe decodes it; ``InvalidInput`` names
    what lies: the ``Inference-Header-Content-Length`` (a byte count within the body), the JSON header
    (an inference request whose inputs have a name, a datatype and a shape), each input's
    ``binary_data_size`` (a byte count, exactly its shape's bytes; BYTES framing that adds up to its
    shape) and the sizes adding up to the body."""
    if json_length is None:
        return  # KServe refuses it, naming the header
    if not json_length.isdigit():
        raise _refuse(f"header {INFERENCE_CONTENT_LENGTH_HEADER}: {json_length!r} is not a byte count")
    pos = int(json_length)
    if pos > len(body):
        raise _refuse(f"header {INFERENCE_CONTENT_LENGTH_HEADER} says {pos} bytes of JSON, the body has {len(body)}")
    try:
        doc = json.loads(body[:pos])
    except (ValueError, RecursionError) as e:
        raise _refuse(f"its first {pos} bytes ({INFERENCE_CONTENT_LENGTH_HEADER}) are not JSON: {e}") from None
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(inputs, list):
        raise _refuse("the JSON header is not an inference request ('inputs' must be a list)")
    for i, tensor in enumerate(inputs):
        pos += _binary_size(tensor, i, body, pos)
    if pos != len(body):
        raise _refuse(f"{len(body) - pos} bytes follow the inputs' binary data (binary_data_size does not add up)")


def _binary_size(tensor: Any, i: int, body: bytes, pos: int) -> int:
    """The bytes of ``tensor`` (inputs[i]) at ``body[pos:]``, checked; 0 for an input with JSON data."""
    name = tensor.get("name") if isinstance(tensor, dict) else None
    if not isinstance(name, str):
        raise _refuse(f"inputs[{i}] needs a string 'name'")
    datatype, shape, params = tensor.get("datatype"), tensor.get("shape"), tensor.get("parameters") or {}
    if not isinstance(datatype, str) or to_np_dtype(datatype) is None:
        raise _refuse(f"input '{name}': datatype {datatype!r} is not a v2 datatype")
    if not isinstance(shape, list) or any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in shape):
        raise _refuse(f"input '{name}': shape {shape!r} must be a list of non-negative integers")
    if not isinstance(params, dict) or "data" in tensor or "binary_data_size" not in params:
        return 0  # KServe reads the JSON data (or refuses an input with neither)
    size = params["binary_data_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _refuse(f"input '{name}': binary_data_size {size!r} is not a byte count")
    if pos + size > len(body):
        raise _refuse(f"input '{name}': binary_data_size {size} runs past the body ({len(body) - pos} bytes left)")
    count = math.prod(shape)
    if datatype != "BYTES":
        want = count * np.dtype(to_np_dtype(datatype)).itemsize
        if size != want:
            raise _refuse(f"input '{name}': {size} bytes for shape {shape} of {datatype} (needs {want})")
        return size
    try:
        n = len(deserialize_bytes_tensor(body[pos:pos + size]))
    except struct.error:
        raise _refuse(f"input '{name}': BYTES framing runs past its {size} bytes (a length prefix lies)") from None
    if n != count:
        raise _refuse(f"input '{name}': {n} BYTES elements for shape {shape} (needs {count})")
    return size


class CheckedDataPlane(DataPlane):
    """KServe's data plane; a REST body is checked before KServe decodes it (:func:`check_binary_body`),
    and what KServe's decoding still raises is the client's malformed body: ``InvalidInput`` (HTTP 400)."""

    def decode_inference_request(self, body: Any, headers: dict[str, str], model_name: str) -> InferRequest:
        if isinstance(body, bytes):
            check_binary_body(body, headers.get(INFERENCE_CONTENT_LENGTH_HEADER))
        try:
            return super().decode_inference_request(body, headers, model_name)
        except InvalidInput:
            raise
        except Exception as e:  # decoding only reads the client's bytes: whatever fails there is their body
            raise InvalidInput(f"the request body cannot be decoded: {type(e).__name__}: {e}") from None


async def request_validation_error(_: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 for a body that is not a v2 request, naming where, without echoing the values
    (FastAPI's own handler echoes them, and a NaN in them made it answer HTTP 500)."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
              for e in errors]
    return JSONResponse(status_code=422, content={"error": "the body is not a v2 inference request", "detail": detail})


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop a server runs on, by KServe's ``--event-loop`` (``auto``: uvloop where installed).

    KServe 0.21 hands the flag to uvicorn only, and its single-process ``start`` serves REST and gRPC
    on ``asyncio.run``'s default loop whatever it says; this honours it for the whole server.
    """
    if choice not in EVENT_LOOPS:
        raise ValueError(f"--event-loop must be one of {', '.join(EVENT_LOOPS)}, got {choice!r}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ValueError("--event-loop uvloop: the uvloop package is not installed") from None
        return None
    return uvloop.new_event_loop


class BoundModelServer(ModelServer):
    """``kserve.ModelServer`` bound to ``bind_address`` (REST and gRPC).

    Args:
        bind_address: the address both servers listen on.
        servicer_class: the gRPC servicer (a subclass of KServe's ``InferenceServicer``; default
            :class:`CheckedInferenceServicer`).
        routes: a hook adding FastAPI routes ahead of KServe's.
        **kwargs: ``kserve.ModelServer`` arguments (``http_port``, ``grpc_port``, ``registered_models``...).
    """

    def __init__(self, *, bind_address: str = "127.0.0.1",
                 servicer_class: type[InferenceServicer] = CheckedInferenceServicer,
                 routes: RouteHook | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.workers != 1:
            raise ValueError(f"workers: BoundModelServer serves REST in one process, got {self.workers}")
        event_loop_factory(self.event_loop)  # an unknown choice or a missing uvloop fails here, not at start
        self.bind_address = bind_address
        self.servicer_class = servicer_class
        self.routes = routes
        self.dataplane = CheckedDataPlane(model_registry=self.registered_models)

    def start(self, models: list[BaseKServeModel]) -> None:  # ModelServer.start, single worker, bound
        self._register_and_check_atleast_one_model_is_ready(models)
        from kserve.model_server import app  # the FastAPI app RESTServer fills (FASTAPI_APP_IMPORT_STRING)

        app.add_exception_handler(RequestValidationError, request_validation_error)
        if self.routes is not None:
            self.routes(app, self.dataplane, self.model_repository_extension)
        self._rest_server = RESTServer(
            FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension, self.http_port,
            access_log_format=self.access_log_format, workers=1, grace_period=self.grace_period,
            event_loop=self.event_loop, timeout_keep_alive=self.timeout_keep_alive,
            ssl_certfile=self.ssl_certfile, ssl_keyfile=self.ssl_keyfile)
        self._rest_server.config.host = self.bind_address
        self.servers.append(self._rest_server.start())
        if self.enable_grpc:
            from kserve.model_server import args as kserve_args

            self._grpc_server = BoundGRPCServer(
                self.bind_address, self.grpc_port, self.dataplane, self.model_repository_extension,
                kwargs=vars(kserve_args), grace_period=self.grace_period, servicer_class=self.servicer_class)
            self.servers.append(self._grpc_server.start(self.max_threads))
        logger.info("REST on %s:%d, gRPC on %s", self.bind_address, self.http_port,
                    _listen_address(self.bind_address, self.grpc_port) if self.enable_grpc else "off")
        with asyncio.Runner(loop_factory=event_loop_factory(self.event_loop)) as runner:
            asyncio.set_event_loop(runner.get_loop())  # KServe's set-up configures the loop that serves
            self.setup_event_loop()
            self.register_signal_handler()
            runner.run(self._serve())
