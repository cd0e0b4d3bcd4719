"""The KServe server LinkedOut's processes run in (``linkedout.serving.kserve_server``): its event loop.

KServe's ``--event-loop`` (auto: uvloop where installed) reaches uvicorn only in KServe 0.21;
``BoundModelServer`` runs the whole server (REST, gRPC, the model's own tasks) on the loop it names.
kserve cannot be imported beside tritonclient, which other tests import (kserve#3099): each check runs
in a Python process of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import ServingRepo

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str) -> str:
    """``code`` in a fresh interpreter (the repository importable); its stdout; fails with its stderr."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_auto_and_uvloop_pick_uvloop_and_asyncio_keeps_the_default_loop() -> None:
    out = run_python("""
        import uvloop
        from linkedout.serving.kserve_server import event_loop_factory
        print(event_loop_factory("auto") is uvloop.new_event_loop, event_loop_factory("uvloop") is uvloop.new_event_loop,
              event_loop_factory("asyncio"))
    """)
    assert out.split() == ["True", "True", "None"]


def test_an_unknown_event_loop_is_refused_when_the_server_is_made() -> None:
    out = run_python("""
        from linkedout.serving.kserve_server import BoundModelServer
        try:
            BoundModelServer(bind_address="127.0.0.1", http_port=0, grpc_port=0, workers=1, event_loop="trio")
        except ValueError as e:
            print(e)
    """)
    assert out.strip() == "--event-loop must be one of auto, asyncio, uvloop, got 'trio'"


def test_grpc_aio_serves_and_calls_on_the_loop_auto_picks() -> None:
    """A gRPC asyncio server and concurrent calls to it (as the transformer's Triton client) on one loop."""
    out = run_python("""
        import asyncio
        import grpc
        import uvloop
        from grpc import aio
        from linkedout.serving.kserve_server import event_loop_factory

        async def echo(request, context):
            return request[::-1]

        async def main():
            server = aio.server()
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
                "t.Echo", {"Call": grpc.unary_unary_rpc_method_handler(echo)}),))
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            try:
                async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                    call = channel.unary_unary("/t.Echo/Call")
                    answers = await asyncio.gather(*(call(bytes([i, 1, 2])) for i in range(20)))
            finally:
                await server.stop(None)
            return type(asyncio.get_running_loop()).__module__, answers == [bytes([2, 1, i]) for i in range(20)]

        with asyncio.Runner(loop_factory=event_loop_factory("auto")) as runner:
            print(*runner.run(main()))
    """)
    assert out.split() == ["uvloop", "True"]


def test_requests_while_no_version_is_served_never_rebuild_the_transformers_engine(serving_repo: ServingRepo) -> None:
    """KServe's data plane calls a model's ``load()`` before each request while its ``healthy()`` is False
    (for the transformer: no catalogue version served, e.g. while Triton restarts). The engine is made once:
    the same object, no new threads, what it served kept (before: a new engine per request, its thread
    pools and request-log writer leaked, the old one's state forgotten)."""
    out = run_python(f"""
        import asyncio, threading
        from kserve.model_repository import ModelRepository
        from kserve.protocol.dataplane import DataPlane
        from linkedout.serving.transformer import LinkedOutTransformer

        model = LinkedOutTransformer(predictor_host="127.0.0.1:9", model_repository={str(serving_repo.root)!r})
        model.load()
        first, threads = model.logic, threading.active_count()
        registry = ModelRepository()
        registry.update(model)
        data_plane = DataPlane(model_registry=registry)

        async def requests():
            healthy = await model.healthy()
            for _ in range(5):
                assert await data_plane.get_model("linkedout") is model
            return healthy

        print(asyncio.run(requests()), model.logic is first, threading.active_count() - threads)
        model.stop()
    """)
    assert out.split() == ["False", "True", "0"]
