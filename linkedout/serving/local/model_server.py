"""The local model server of the stack: Triton where it runs, else the KServe fallback predictor.

::

    server = start_model_server(W / "model_repository", W / "serving", models=["linkedout_ranker"])
    server.grpc_url           # the same Open Inference Protocol v2 either way
    server.refresh("linkedout_ranker")   # after a publish: new versions serve, no restart
    server.stop()

:func:`start_model_server` tries :class:`~.triton.LocalTriton` first; when the
binary cannot run here (:class:`~.triton_env.TritonUnavailable`: platform, glibc,
a missing library, no package index to create its environment) it logs why and starts
:class:`LocalPredictor` on the same repository. Both satisfy :class:`ModelServerProcess`.

This module does not import kserve or tritonclient: the predictor runs as
``python -m linkedout.serving.local.predictor`` in a child process.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from linkedout.serving.local import process
from linkedout.serving.local.control import ModelControl, ModelLoadError, ServerChild, refresh_model
from linkedout.serving.local.triton import LocalTriton
from linkedout.serving.local.triton_env import TritonEnvironment, TritonUnavailable
from linkedout.serving.local.triton_repo import LocalRepository
from linkedout.utils import get_logger

LOG = get_logger(__name__)


class ModelServerProcess(Protocol):
    """What the stack needs from its model server process."""

    @property
    def grpc_url(self) -> str: ...
    @property
    def http_url(self) -> str: ...
    @property
    def pid(self) -> int | None: ...
    def start(self) -> Any: ...
    def stop(self) -> int | None: ...
    def running(self) -> bool: ...
    def refresh(self, name: str) -> list[int]: ...
    def ready(self, name: str, version: int | None = None) -> bool: ...
    def ready_versions(self, name: str) -> list[int]: ...
    def describe(self) -> dict[str, Any]: ...


class LocalPredictor(ServerChild):
    """``python -m linkedout.serving.local.predictor`` as a child process on loopback ports.

    Args:
        repository: the production model repository (served as it is: no twin).
        models: models to serve (default: all of the repository); each must become ready in start().
        host: the address REST and gRPC bind.
        http_port, grpc_port: 0 = a free port.
        poll_interval: seconds between the predictor's repository scans (0 = on load calls only).
        threads: onnxruntime intra-op threads per version (0 = onnxruntime's default).
        log_path: the predictor's log (appended); default ``<repository>/../predictor.log``.
        python: the interpreter (this one by default; it must have kserve and onnxruntime).
    """

    label = "KServe predictor"
    program = "the KServe predictor"

    def __init__(self, repository: Path, *, models: Sequence[str] = (), host: str = "127.0.0.1",
                 http_port: int = 0, grpc_port: int = 0, poll_interval: float = 2.0, threads: int = 0,
                 log_path: Path | None = None, python: str = sys.executable, startup_timeout: float = 90.0,
                 stop_timeout: float = 15.0) -> None:
        if poll_interval < 0:
            raise ValueError(f"poll_interval: must be >= 0, got {poll_interval}")
        if threads < 0:
            raise ValueError(f"threads: must be >= 0, got {threads}")
        if startup_timeout <= 0 or stop_timeout <= 0:
            raise ValueError("startup_timeout and stop_timeout: must be > 0")
        self.repository = Path(repository)
        self.models = list(models)
        self.host = host
        self._ports = {"http": http_port, "grpc": grpc_port}
        self.ports = dict(self._ports)
        self.poll_interval = poll_interval
        self.threads = threads
        self.log_path = Path(log_path) if log_path else self.repository.parent / "predictor.log"
        self.python = python
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._proc: Any = None
        self._log_offset = 0

    def describe(self) -> dict[str, Any]:
        return {"kind": "kserve-predictor", "pid": self.pid, "http": self.http_url, "grpc": self.grpc_url,
                "repository": str(self.repository), "log": str(self.log_path)}

    def start(self) -> LocalPredictor:
        if self.running():
            return self
        if not self.repository.is_dir():
            raise FileNotFoundError(f"model repository {self.repository} does not exist")
        self.ports = process.free_ports(self._ports, self.host)
        cmd = [self.python, "-m", "linkedout.serving.local.predictor", f"--model_repository={self.repository}",
               f"--bind_address={self.host}", f"--http_port={self.ports['http']}",
               f"--grpc_port={self.ports['grpc']}", f"--poll_interval={self.poll_interval}",
               f"--threads={self.threads}", "--enable_latency_logging=false"]
        if self.models:
            cmd.append(f"--models={','.join(self.models)}")
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[3])  # run this very copy of linkedout
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self._spawn(cmd, env)
        try:
            self._wait_up(lambda c: c.live() and all(c.ready(m) for m in self.models), "ready")
        except BaseException:
            self.stop()
            raise
        LOG.info("KServe predictor (pid %d) serving %s: gRPC %s, HTTP %s", self.pid,
                 self.models or "the repository", self.grpc_url, self.http_url)
        return self

    def refresh(self, name: str) -> list[int]:
        """Load ``name`` or pick up its new versions (:func:`~.control.refresh_model`: the predictor reads
        the production repository itself); :class:`ModelLoadError` (old versions serving) if not."""
        self._require_running()
        return refresh_model(self.control, name)[0]


def refresh_served_model(described: Mapping[str, Any], name: str) -> list[int]:
    """From any process: make the running model server of ``described`` (its :meth:`describe`, as in
    the stack's ``stack.json``) serve the repository's current versions of ``name``.

    Triton: the twin is synced (new versions validated) and the model reloaded; the KServe
    predictor rereads the repository on the load call (:func:`~.control.refresh_model`). Returns the
    READY versions; raises :class:`~.control.VersionRejected` / :class:`ModelLoadError` with the
    reason when the newest version cannot serve (the old ones keep serving).
    """
    twin = None
    if described.get("kind") == "triton" and described.get("source"):
        twin = LocalRepository(Path(described["source"]), Path(described["repository"]))
    return refresh_model(ModelControl(str(described["http"])), name, twin)[0]


def start_model_server(source: Path, workdir: Path, *, models: Sequence[str] | None = None, host: str = "127.0.0.1",
                       threads: int = 1, environment: TritonEnvironment | None = None,
                       prefer: str = "triton", ports: Mapping[str, int] | None = None) -> LocalTriton | LocalPredictor:
    """Serve the repository ``source`` on ``host``: local Triton, or the KServe predictor where it cannot run.

    ``workdir`` gets ``triton_repository/`` (the twin), ``triton.log`` or ``predictor.log``.
    ``models``: None = every model of the repository. ``prefer="kserve"`` skips Triton. Load errors
    of ``models`` raise (:class:`ModelLoadError`). ``ports``: ``{"http": p, "grpc": q, "metrics": r}``
    to listen on (a restart on the ports clients already use); absent entries are free ports.
    ``threads``: onnxruntime's intra-op threads per model version (0 = its default, one per core).
    One by default: the local stack shares its cores with the transformer and the clients, and the
    ranker's batches run as fast or faster on one thread up to 16 users (the ranker of
    ``bench/serve.py``, d = 64, in process on 2 cores: 1 user 0.10 ms vs 0.23, 4 users 0.25 vs 0.33,
    16 users 0.82 vs 1.21; 64 users 3.1 vs 2.7), with no second thread woken per call.
    """
    ports = dict(ports or {})
    if prefer not in ("triton", "kserve"):
        raise ValueError(f"prefer: 'triton' or 'kserve', got {prefer!r}")
    workdir = Path(workdir)
    if prefer == "triton":
        repo = LocalRepository(source, workdir / "triton_repository", environment=environment, threads=threads)
        triton = LocalTriton(repo, models=models, host=host, log_path=workdir / "triton.log",
                             http_port=ports.get("http", 0), grpc_port=ports.get("grpc", 0),
                             metrics_port=ports.get("metrics", 0))
        try:
            return triton.start()
        except TritonUnavailable as e:
            LOG.warning("the local Triton cannot run here (%s); serving %s from the KServe predictor instead",
                        e, source)
    predictor = LocalPredictor(source, models=models or (), host=host, threads=threads,
                               log_path=workdir / "predictor.log", http_port=ports.get("http", 0),
                               grpc_port=ports.get("grpc", 0))
    return predictor.start()


__all__ = ["LocalPredictor", "ModelLoadError", "ModelServerProcess", "refresh_served_model", "start_model_server"]
