"""The KServe fallback predictor: the production model repository served by a KServe model server.

Where the ``tritonserver`` binary cannot run (:class:`~.triton_env.TritonUnavailable`),
the local stack serves the same repository with this process instead::

    python -m linkedout.serving.local.predictor --model_repository W/model_repository \\
        --bind_address 127.0.0.1 --http_port 8080 --grpc_port 8081 [--models a,b] [--poll_interval 2]

One ``kserve.Model`` per repository model (the directory name, e.g. ``linkedout_ranker``), running
each version's ``model.onnx`` with onnxruntime under the tensor names, types and shapes of its
``config.pbtxt`` (:class:`~.triton_model.OnnxRunner`, the runner of the local Triton's model). Versions follow the
config's ``version_policy`` as Triton's do: ``latest { num_versions: 2 }`` serves the two newest
versions that load and pass the checks, a request without a version gets the newest, and a new
version that fails (corrupt, shapes against the config) is reported and leaves the old ones
serving. New versions are picked up on a repository-API load (``POST
/v2/repository/models/NAME/load``, or gRPC ``RepositoryModelLoad``) and, with ``--poll_interval``
> 0, whenever the repository changes.

Open Inference Protocol v2 over gRPC and REST, as KServe serves it, plus what Triton clients expect
and KServe 0.21 lacks: gRPC ``ModelReady``/``ModelMetadata`` with versions, a gRPC repository
load/unload that answers (KServe's fails on a ``None`` response) and reports why a load failed,
REST ``POST /v2/repository/index``, ``/v2/models/NAME/versions/V/ready``,
``/v2/models/NAME/versions/V/infer``, and a REST load that answers like Triton's (400 with the reason).

This module imports kserve: never import it in a process that imports ``tritonclient`` (kserve#3099);
:class:`~.model_server.LocalPredictor` starts it as a subprocess.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import kserve
import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from google.protobuf.unknown_fields import UnknownFieldSet
from kserve import InferOutput, InferRequest, InferResponse
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.v2_datamodels import InferenceRequest
from kserve.protocol.rest.v2_endpoints import V2Endpoints

from linkedout.export.model_config import (
    CONFIG_NAME,
    ModelConfigError,
    config_to_dict,
    format_config,
    read_config,
)
from linkedout.serving.kserve_server import BoundModelServer
from linkedout.serving.local.triton_model import NUMPY_DTYPES, OnnxRunner, TensorSpec
from linkedout.serving.local.versions import fingerprint, policy_candidates, version_numbers
from linkedout.utils import configure_logging, get_logger

LOG = get_logger(__name__)

#: The version asked for in a REST ``/versions/V/infer`` path (KServe's REST decoder drops it).
REQUESTED_VERSION: contextvars.ContextVar[str | None] = contextvars.ContextVar("requested_version", default=None)


@dataclass
class _Version:
    runner: OnnxRunner
    fingerprint: dict[str, list[int]]


class VersionLoadError(RuntimeError):
    """Versions the policy wants did not load; the ones that served before keep serving."""


class OnnxRepositoryModel(kserve.Model):
    """One model of a Triton-layout repository, every served version in onnxruntime.

    Args:
        name: the model's name (its directory).
        model_dir: ``REPO/NAME`` (``config.pbtxt`` and integer version directories).
        threads: onnxruntime intra-op threads per version (0 = onnxruntime's default).
    """

    def __init__(self, name: str, model_dir: Path, *, threads: int = 0) -> None:
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.threads = threads
        self.versions: dict[int, _Version] = {}
        self.rejected: dict[int, str] = {}
        self._rejected_cache: dict[str, str] = {}
        self._config_text: str | None = None
        self._signature: Any = None
        self._lock = threading.Lock()

    def signature(self) -> Any:
        """What a change of the model's files changes (the watcher compares it)."""
        try:
            cfg = (self.model_dir / CONFIG_NAME).stat()
            return (cfg.st_size, cfg.st_mtime_ns,
                    tuple((v, json.dumps(fingerprint(self.model_dir / str(v))))
                          for v in version_numbers(self.model_dir)))
        except FileNotFoundError:
            return None

    def load(self) -> bool:
        self.load_versions()
        return self.ready

    def load_versions(self) -> dict[int, str]:
        """Serve what the repository holds now; returns the versions the policy wanted that failed."""
        with self._lock:
            signature = self.signature()
            config = read_config(self.model_dir / CONFIG_NAME)
            text = format_config(config)
            config_dict = config_to_dict(config)
            changed = text != self._config_text
            if changed:
                self._rejected_cache.clear()
            available = version_numbers(self.model_dir)
            candidates, limit = policy_candidates(config, available)
            current = self.versions
            chosen: dict[int, _Version] = {}
            rejected: dict[int, str] = {}
            for v in candidates:
                if len(chosen) >= limit:
                    break
                fp = fingerprint(self.model_dir / str(v))
                if not changed and v in current and current[v].fingerprint == fp:
                    chosen[v] = current[v]
                    continue
                key = json.dumps([v, fp])
                reason = self._rejected_cache.get(key)
                runner = None
                if reason is None:
                    try:
                        runner = OnnxRunner(str(self.model_dir / str(v) / "model.onnx"), config_dict,
                                            threads=self.threads)
                        problems = runner.check()
                        reason = "; ".join(problems) if problems else None
                    except (ValueError, FileNotFoundError) as e:
                        reason = str(e)
                if reason is not None or runner is None:
                    self._rejected_cache[key] = reason or "not loaded"
                    rejected[v] = reason or "not loaded"
                    LOG.warning("%s version %d is not served: %s", self.name, v, rejected[v])
                    continue
                chosen[v] = _Version(runner, fp)
            if not chosen and current and not changed:
                chosen = current  # nothing valid left: keep what served (as Triton does on a failed load)
            self.versions = chosen  # one assignment: requests see the old or the new set
            self.rejected = rejected
            self._config_text = text
            self._signature = signature
            self.ready = bool(chosen)
            if chosen.keys() != current.keys():
                LOG.info("%s: serving versions %s", self.name, sorted(chosen))
            return rejected

    def changed(self) -> bool:
        return self.signature() != self._signature

    # -- the v2 protocol ---------------------------------------------------------------------------

    def _runner(self, requested: str | None) -> tuple[int, OnnxRunner]:
        versions = self.versions
        if not versions:
            raise ModelNotReady(self.name)
        if not requested:
            v = max(versions)
            return v, versions[v].runner
        if not requested.isdigit() or int(requested) not in versions:
            raise InvalidInput(f"version '{requested}' of model '{self.name}' is not ready "
                               f"(ready versions: {sorted(versions)})")
        return int(requested), versions[int(requested)].runner

    def get_input_types(self) -> list[dict[str, Any]]:
        return self._types("inputs")

    def get_output_types(self) -> list[dict[str, Any]]:
        return self._types("outputs")

    def _types(self, kind: str) -> list[dict[str, Any]]:
        if not self.versions:
            return []
        runner = self.versions[max(self.versions)].runner
        specs = runner.inputs if kind == "inputs" else runner.outputs
        return [{"name": s.name, "datatype": _v2_type(s), "shape": list(s.shape())} for s in specs]

    def _decode(self, payload: InferRequest, runner: OnnxRunner) -> dict[str, np.ndarray]:
        by_name = {i.name: i for i in payload.inputs}
        wanted = {s.name for s in runner.inputs}
        for name in by_name:
            if name not in wanted:
                raise InvalidInput(f"unexpected input '{name}' (model '{self.name}' takes {sorted(wanted)})")
        out = {}
        for spec in runner.inputs:
            tensor = by_name.get(spec.name)
            if tensor is None:
                raise InvalidInput(f"missing input '{spec.name}' ({_v2_type(spec)} {list(spec.shape())})")
            if tensor.datatype != _v2_type(spec):
                raise InvalidInput(f"input '{spec.name}': expected {_v2_type(spec)}, got {tensor.datatype}")
            shape = [int(d) for d in tensor.shape]
            want = spec.shape()
            if len(shape) != len(want) or any(w >= 0 and g != w for g, w in zip(shape, want) if w != -1) \
                    or any(d < 0 for d in shape):
                raise InvalidInput(f"input '{spec.name}': expected shape {list(want)}, got {shape}")
            if spec.batched and not 1 <= shape[0] <= runner.max_batch_size:
                raise InvalidInput(f"input '{spec.name}': batch {shape[0]} is outside 1..{runner.max_batch_size}")
            raw = getattr(tensor, "_raw_data", None)
            if raw is not None and spec.data_type != "TYPE_STRING":
                expected = int(np.prod(shape)) * np.dtype(NUMPY_DTYPES[spec.data_type]).itemsize
                if len(raw) != expected:
                    raise InvalidInput(f"input '{spec.name}': {len(raw)} bytes of data for shape {shape} "
                                       f"({expected} expected)")
            try:
                out[spec.name] = tensor.as_numpy()
            except (ValueError, TypeError) as e:
                raise InvalidInput(f"input '{spec.name}': {e}") from e
        return out

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        version, runner = self._runner(payload.model_version or REQUESTED_VERSION.get())
        outputs = runner.run(self._decode(payload, runner))
        requested = {o.name for o in payload.request_outputs} if payload.request_outputs else None
        infer_outputs = [InferOutput(name=s.name, shape=list(outputs[s.name].shape), datatype=_v2_type(s),
                                     data=outputs[s.name])
                         for s in runner.outputs if requested is None or s.name in requested]
        return InferResponse(response_id=payload.id or "", model_name=self.name, model_version=str(version),
                             infer_outputs=infer_outputs)


def _v2_type(spec: TensorSpec) -> str:
    return "BYTES" if spec.data_type == "TYPE_STRING" else spec.data_type[len("TYPE_"):]


class OnnxModelRepository(ModelRepository):
    """KServe's model registry over a Triton-layout directory: ``load(name)`` (re)reads a model."""

    def __init__(self, root: Path, *, threads: int = 0) -> None:
        super().__init__(str(root))
        self.root = Path(root)
        self.threads = threads

    def model(self, name: str) -> OnnxRepositoryModel | None:
        model = self.get_model(name)
        return model if isinstance(model, OnnxRepositoryModel) else None

    def load(self, name: str) -> bool:
        """Load ``name``, or pick up its new versions; raises (old versions serving) when some fail."""
        model = self.model(name)
        if model is None:
            if not (self.root / name / CONFIG_NAME).exists():
                raise FileNotFoundError(f"model '{name}' is not in the repository {self.root}")
            model = OnnxRepositoryModel(name, self.root / name, threads=self.threads)
        rejected = model.load_versions()
        if model.ready:
            self.update(model)
        newest = max(model.versions, default=0)
        rejected = {v: why for v, why in rejected.items() if v > newest}  # the newest publish failed
        if rejected:
            why = "; ".join(f"version {v}: {r}" for v, r in sorted(rejected.items()))
            raise VersionLoadError(f"load failed for model '{name}': {why} "
                                   f"(serving versions {sorted(model.versions)})")
        return model.ready


class RepositoryServicer(InferenceServicer):
    """KServe's gRPC servicer with versioned readiness and metadata and a working repository API."""

    def _model(self, name: str) -> OnnxRepositoryModel | None:
        model = self._data_plane.model_registry.get_model(name)
        return model if isinstance(model, OnnxRepositoryModel) else None

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        model = self._model(request.name)
        if request.version:
            ready = model is not None and request.version.isdigit() and int(request.version) in model.versions
            return pb.ModelReadyResponse(ready=ready)
        return await super().ModelReady(request, context)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        response = await super().ModelMetadata(request, context)
        model = self._model(request.name)
        if model is not None:
            response.versions.extend(str(v) for v in sorted(model.versions))
        return response

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest,
                                  context: Any) -> pb.RepositoryModelLoadResponse:
        name = _repository_model_name(request)
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._registry().load, name)
        except (VersionLoadError, ModelConfigError, FileNotFoundError) as e:
            await context.abort(grpc.StatusCode.INTERNAL, str(e))
        return pb.RepositoryModelLoadResponse(model_name=name, isLoaded=True)

    def _registry(self) -> OnnxModelRepository:
        registry = self._data_plane.model_registry
        assert isinstance(registry, OnnxModelRepository)
        return registry

    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest,
                                    context: Any) -> pb.RepositoryModelUnloadResponse:
        name = _repository_model_name(request)
        await self._mode_repository_extension.unload(model_name=name)
        return pb.RepositoryModelUnloadResponse(model_name=name, isUnloaded=True)


def _repository_model_name(request: Any) -> str:
    """The model name of a repository load/unload request from either client.

    KServe's proto has ``model_name = 1``; Triton's (``tritonclient``) has ``repository_name = 1,
    model_name = 2``, so a Triton client's name arrives as unknown field 2.
    """
    for f in UnknownFieldSet(request):
        if f.field_number == 2 and f.wire_type == 2:
            return bytes(f.data).decode("utf-8")
    return str(request.model_name)


def add_routes(app: FastAPI, dataplane: DataPlane, extension: ModelRepositoryExtension) -> None:
    """REST routes Triton clients expect and KServe 0.21 lacks (registered ahead of KServe's own)."""
    registry = dataplane.model_registry
    endpoints = V2Endpoints(dataplane, extension)

    def versioned(name: str) -> OnnxRepositoryModel:
        model = registry.get_model(name)
        if not isinstance(model, OnnxRepositoryModel):
            raise ModelNotFound(name)
        return model

    async def index() -> list[dict[str, str]]:
        out = []
        for name, model in sorted(registry.get_models().items()):
            if isinstance(model, OnnxRepositoryModel):
                out += [{"name": name, "version": str(v), "state": "READY", "reason": ""}
                        for v in sorted(model.versions)]
                out += [{"name": name, "version": str(v), "state": "UNAVAILABLE", "reason": why}
                        for v, why in sorted(model.rejected.items())]
        return out

    async def version_ready(model_name: str, model_version: str) -> dict[str, Any]:
        model = versioned(model_name)
        if not (model_version.isdigit() and int(model_version) in model.versions):
            raise ModelNotReady(model_name, f"version {model_version} is not ready "
                                            f"(ready versions: {sorted(model.versions)})")
        return {"name": model_name, "ready": True}

    async def version_infer(raw_request: Request, raw_response: Response, model_name: str, model_version: str,
                            request_body: InferenceRequest | bytes) -> Any:
        token = REQUESTED_VERSION.set(model_version)
        try:
            return await endpoints.infer(raw_request, raw_response, model_name, request_body)
        finally:
            REQUESTED_VERSION.reset(token)

    async def load(model_name: str) -> Response:
        """Triton's answer to a load: 200 {} or 400 {"error": why} (the old versions keep serving)."""
        assert isinstance(registry, OnnxModelRepository)
        try:
            await asyncio.get_running_loop().run_in_executor(None, registry.load, model_name)
        except (VersionLoadError, ModelConfigError, FileNotFoundError) as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        return JSONResponse({})

    app.add_api_route("/v2/repository/models/{model_name}/load", load, methods=["POST"])
    app.add_api_route("/v2/repository/index", index, methods=["POST"])
    app.add_api_route("/v2/models/{model_name}/versions/{model_version}/ready", version_ready, methods=["GET"])
    app.add_api_route("/v2/models/{model_name}/versions/{model_version}/infer", version_infer,
                      methods=["POST"], response_model=None)


def watch(repository: OnnxModelRepository, names: list[str], interval: float, stop: threading.Event) -> None:
    """Poll the repository every ``interval`` s and refresh the models whose files changed."""
    while not stop.wait(interval):
        for name in names:
            model = repository.model(name)
            try:
                if model is None:
                    if (repository.root / name / CONFIG_NAME).exists():
                        repository.load(name)
                elif model.changed():
                    repository.load(name)
            except (VersionLoadError, ModelConfigError, FileNotFoundError, OSError) as e:
                LOG.warning("%s: %s", name, e)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m linkedout.serving.local.predictor", parents=[kserve.model_server.parser],
        description="Serve a Triton-layout ONNX model repository with KServe (the local Triton's fallback).")
    parser.add_argument("--model_repository", required=True, type=Path,
                        help="the model repository directory (NAME/config.pbtxt, NAME/<version>/model.onnx)")
    parser.add_argument("--models", default="",
                        help="comma-separated model names to serve (default: every model of the repository)")
    parser.add_argument("--bind_address", default="127.0.0.1",
                        help="address the REST and gRPC servers listen on (0.0.0.0 in a pod)")
    parser.add_argument("--poll_interval", type=float, default=2.0,
                        help="seconds between repository scans for new versions; 0 = only on a load call")
    parser.add_argument("--threads", type=int, default=0,
                        help="onnxruntime intra-op threads per model version (0 = onnxruntime's default)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging()
    root: Path = args.model_repository
    if not root.is_dir():
        raise SystemExit(f"--model_repository: {root} is not a directory")
    if args.threads < 0:
        raise SystemExit(f"--threads: must be >= 0, got {args.threads}")
    names = [n for n in args.models.split(",") if n] or sorted(
        d.name for d in root.iterdir() if (d / CONFIG_NAME).exists() and not d.name.startswith("."))
    repository = OnnxModelRepository(root, threads=args.threads)
    models = []
    for name in names:
        if not (root / name / CONFIG_NAME).exists():
            raise SystemExit(f"--models: '{name}' is not in the repository {root}")
        model = OnnxRepositoryModel(name, root / name, threads=args.threads)
        model.load()
        if not model.ready:
            why = "; ".join(f"version {v}: {r}" for v, r in sorted(model.rejected.items())) or "no versions"
            if args.models:
                raise SystemExit(f"model '{name}' has no version that can serve: {why}")
            LOG.error("model '%s' has no version that can serve: %s", name, why)
        models.append(model)
    stop = threading.Event()
    if args.poll_interval > 0:
        threading.Thread(target=watch, args=(repository, names, args.poll_interval, stop), daemon=True,
                         name="repository-watch").start()
    server = BoundModelServer(bind_address=args.bind_address, servicer_class=RepositoryServicer, routes=add_routes,
                              http_port=args.http_port, grpc_port=args.grpc_port, registered_models=repository,
                              enable_grpc=args.enable_grpc, workers=args.workers, max_threads=args.max_threads,
                              enable_latency_logging=args.enable_latency_logging, event_loop=args.event_loop)
    started = time.monotonic()
    try:
        server.start(models)
    finally:
        stop.set()
        LOG.info("predictor stopped after %.0f s", time.monotonic() - started)


if __name__ == "__main__":
    main()
