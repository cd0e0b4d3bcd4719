"""A KServe ``ModelServer`` that binds the address it is given (imports kserve).

KServe 0.21 binds REST to ``0.0.0.0`` (``RESTServer``: ``uvicorn.Config(host="0.0.0.0")``) and gRPC to
``[::]`` (``GRPCServer.start``: ``listen_addr = f"[::]:{port}"``) with no flag to change either
(DESIGN.md §2). :class:`BoundModelServer` is ``kserve.ModelServer`` with both bound to
``bind_address`` (``--bind_address``: 127.0.0.1 locally, 0.0.0.0 in a pod), a gRPC port that is
never shared with another server (:func:`grpc_server_options`), and two hooks: extra
FastAPI routes registered *before* KServe's own (Starlette matches routes in order, so a route here
replaces KServe's for the same path) and the gRPC servicer class. Single-process REST only
(``--workers 1``); KServe's multi-process REST forks uvicorn workers that bind on their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent import futures
from typing import Any

from fastapi import FastAPI
from grpc import aio
from kserve import ModelServer
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.logging import logger
from kserve.model import BaseKServeModel
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.server import RESTServer

RouteHook = Callable[[FastAPI, DataPlane, ModelRepositoryExtension], None]


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


class BoundGRPCServer(GRPCServer):
    """KServe's gRPC server listening on ``host`` instead of ``[::]``, with a chosen servicer class."""

    def __init__(self, host: str, port: int, data_plane: DataPlane,
                 model_repository_extension: ModelRepositoryExtension, kwargs: dict[str, Any],
                 grace_period: int = 30, servicer_class: type[InferenceServicer] = InferenceServicer) -> None:
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
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        listen_addr = _listen_address(self._host, self._port)
        if self._server.add_insecure_port(listen_addr) == 0:
            raise OSError(f"gRPC: cannot bind {listen_addr}")
        logger.info("Starting gRPC server with %d workers on %s", max_workers, listen_addr)
        await self._server.start()
        await self._server.wait_for_termination()


class BoundModelServer(ModelServer):
    """``kserve.ModelServer`` bound to ``bind_address`` (REST and gRPC).

    Args:
        bind_address: the address both servers listen on.
        servicer_class: the gRPC servicer (a subclass of KServe's ``InferenceServicer``).
        routes: a hook adding FastAPI routes ahead of KServe's.
        **kwargs: ``kserve.ModelServer`` arguments (``http_port``, ``grpc_port``, ``registered_models``...).
    """

    def __init__(self, *, bind_address: str = "127.0.0.1",
                 servicer_class: type[InferenceServicer] = InferenceServicer,
                 routes: RouteHook | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.workers != 1:
            raise ValueError(f"workers: BoundModelServer serves REST in one process, got {self.workers}")
        self.bind_address = bind_address
        self.servicer_class = servicer_class
        self.routes = routes

    def start(self, models: list[BaseKServeModel]) -> None:  # ModelServer.start, single worker, bound
        self._register_and_check_atleast_one_model_is_ready(models)
        from kserve.model_server import app  # the FastAPI app RESTServer fills (FASTAPI_APP_IMPORT_STRING)

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
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())
