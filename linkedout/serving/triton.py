"""The local Triton: the real ``tritonserver`` binary on 127.0.0.1, explicit model control.

::

    repo = LocalRepository(source=W / "model_repository", target=W / "serving" / "triton_repository")
    with LocalTriton(repo, models=["linkedout_ranker"]) as triton:   # env on first use, sync, start, load
        triton.grpc_url                          # "127.0.0.1:PORT" for tritonclient.grpc / kserve's client
        ...                                      # the exporter publishes linkedout_ranker/4
        triton.refresh("linkedout_ranker")       # sync + load: version 4 serves, no restart
        triton.ready_versions("linkedout_ranker")  # [3, 4] with version_policy latest 2

Triton 2.51 (the binary of nvidia-pytriton 0.7.0) in explicit mode, as measured by
tests/test_triton_local.py and noted in the report of this module's task:

- a load request for a loaded model reloads it with the versions its version policy selects from
  the repository now (``latest { num_versions: 2 }``: publishing 3 next to 1 and 2 serves 2 and 3,
  unloads 1); the versions that served keep serving until the new set is loaded;
- a reload loads a fresh instance of *every* version of the new set, even unchanged ones, and a
  load call reloads an unchanged model too: :meth:`LocalTriton.refresh` skips the call when the
  twin did not change;
- when a new version fails to load (the Python backend's ``initialize`` raises: a corrupt ONNX file,
  I/O that disagrees with ``config.pbtxt``) the request answers 400 with the reason, the model keeps
  serving the versions it served before, and the repository index lists the failed version as
  UNAVAILABLE with the reason. The twin checks every new version before Triton sees it anyway
  (:mod:`.triton_repo`), so a bad publish is reported by :meth:`LocalTriton.refresh` and never
  reaches Triton.

:class:`ModelControl` speaks the HTTP side of the Open Inference Protocol v2 and Triton's repository
extension with the standard library only; it works against Triton and the KServe fallback predictor
(:mod:`.predictor`) alike, and from any process (``linkedout catalog add`` reaches the running stack
through it).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from linkedout.serving import process
from linkedout.serving.triton_env import TritonEnvironment, TritonInstall
from linkedout.serving.triton_repo import LocalRepository, ModelSync
from linkedout.utils import get_logger

LOG = get_logger(__name__)


class ModelServerError(RuntimeError):
    """The model server failed to start, answered an error, or cannot be reached."""


class ModelLoadError(ModelServerError):
    """A model (version) did not load; ``reason`` is the server's own explanation."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"model '{name}' did not load: {reason}")
        self.name = name
        self.reason = reason


class VersionRejected(ModelLoadError):
    """New versions failed validation and were not offered to the server; the old ones keep serving."""

    def __init__(self, name: str, rejected: dict[int, str], serving: list[int]) -> None:
        why = "; ".join(f"version {v}: {r}" for v, r in sorted(rejected.items()))
        super().__init__(name, f"{why} (still serving versions {serving})")
        self.rejected = rejected
        self.serving = serving


class ModelControl:
    """Health, readiness and the repository API of a v2 model server, over HTTP (no client library).

    Args:
        url: ``http://HOST:PORT`` of the server's HTTP endpoint.
        timeout: seconds for health and readiness calls (loads get their own).
    """

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url: expected http://HOST:PORT, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 timeout: float | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data is not None else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        except (urllib.error.URLError, OSError) as e:
            raise ModelServerError(f"{method} {self.url}{path}: {getattr(e, 'reason', e)}") from e
        try:
            payload = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            payload = raw.decode("utf-8", errors="replace")
        return status, payload

    @staticmethod
    def _error(payload: Any) -> str:
        if isinstance(payload, dict):
            return str(payload.get("error") or payload.get("detail") or payload)
        return str(payload)

    def live(self) -> bool:
        try:
            return self._request("GET", "/v2/health/live")[0] == 200
        except ModelServerError:
            return False

    def server_ready(self) -> bool:
        try:
            return self._request("GET", "/v2/health/ready")[0] == 200
        except ModelServerError:
            return False

    def metadata(self) -> dict[str, Any]:
        """``GET /v2``: name, version, extensions."""
        status, payload = self._request("GET", "/v2")
        if status != 200:
            raise ModelServerError(f"GET /v2: {status} {self._error(payload)}")
        return dict(payload)

    def ready(self, name: str, version: int | None = None) -> bool:
        """Whether ``name`` (or that version of it) can serve now."""
        path = f"/v2/models/{name}" + (f"/versions/{version}" if version is not None else "") + "/ready"
        try:
            return self._request("GET", path)[0] == 200
        except ModelServerError:
            return False

    def index(self) -> list[dict[str, Any]]:
        """``POST /v2/repository/index``: ``[{"name", "version", "state", "reason"}, ...]``."""
        status, payload = self._request("POST", "/v2/repository/index", {})
        if status != 200:
            raise ModelServerError(f"repository index: {status} {self._error(payload)}")
        return list(payload or [])

    def ready_versions(self, name: str) -> list[int]:
        """Versions of ``name`` that are READY, ascending."""
        return sorted(int(m["version"]) for m in self.index()
                      if m.get("name") == name and str(m.get("state", "")).upper() == "READY"
                      and str(m.get("version", "")).isdigit())

    def load(self, name: str, *, timeout: float = 300.0) -> None:
        """Load or reload ``name`` (the versions its policy selects now); :class:`ModelLoadError` if not."""
        status, payload = self._request("POST", f"/v2/repository/models/{name}/load", {}, timeout=timeout)
        if status != 200:
            raise ModelLoadError(name, self._error(payload))

    def unload(self, name: str, *, timeout: float = 60.0) -> None:
        status, payload = self._request("POST", f"/v2/repository/models/{name}/unload", {}, timeout=timeout)
        if status != 200:
            raise ModelServerError(f"unload '{name}': {status} {self._error(payload)}")


class ServerChild:
    """What a model-server child process on loopback ports exposes: addresses, PID, liveness, control.

    Subclasses set ``host``, ``ports`` (``{"http": p, "grpc": q, ...}``) and ``_proc`` (the Popen).
    """

    host: str
    ports: dict[str, int]
    _proc: Any

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.ports['grpc']}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def control(self) -> ModelControl:
        return ModelControl(self.http_url)

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None


class LocalTriton(ServerChild):
    """A ``tritonserver`` child process on loopback ports, explicit model control, never orphaned.

    Args:
        repository: a :class:`LocalRepository` (synced before start and by :meth:`refresh`) or the
            path of a ready Triton repository (Python-backend models).
        models: models loaded at start (their load errors raise from :meth:`start`); None = every
            model of the repository, ``[]`` = none (load them later).
        host: the address every endpoint binds (loopback by default).
        http_port, grpc_port, metrics_port: 0 = a free port.
        log_path: Triton's log (appended); default ``<repository>/../triton.log``.
        environment: the Triton environment (default: the repository's, else the cached default).
        startup_timeout: seconds to wait for the server to become live.
        load_timeout: seconds one load request may take.
        stop_timeout: seconds between SIGTERM and SIGKILL in :meth:`stop`.
        log_verbose: Triton's ``--log-verbose`` level.
    """

    def __init__(self, repository: LocalRepository | Path, *, models: Sequence[str] | None = None,
                 host: str = "127.0.0.1", http_port: int = 0, grpc_port: int = 0, metrics_port: int = 0,
                 log_path: Path | None = None, environment: TritonEnvironment | None = None,
                 startup_timeout: float = 120.0, load_timeout: float = 300.0, stop_timeout: float = 15.0,
                 log_verbose: int = 0) -> None:
        for field, value in (("http_port", http_port), ("grpc_port", grpc_port), ("metrics_port", metrics_port)):
            if not 0 <= value < 65536:
                raise ValueError(f"{field}: must be 0 (free port) or 1..65535, got {value}")
        for field, seconds in (("startup_timeout", startup_timeout), ("load_timeout", load_timeout),
                               ("stop_timeout", stop_timeout)):
            if seconds <= 0:
                raise ValueError(f"{field}: must be > 0, got {seconds}")
        self.local_repo = repository if isinstance(repository, LocalRepository) else None
        self.repository = repository.target if isinstance(repository, LocalRepository) else Path(repository)
        self.environment = environment or (self.local_repo.environment if self.local_repo else TritonEnvironment())
        self._models = None if models is None else list(models)
        self.models: list[str] = list(models or [])
        self.host = host
        self._ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self.ports = dict(self._ports)
        self.log_path = Path(log_path) if log_path else self.repository.parent / "triton.log"
        self.startup_timeout = startup_timeout
        self.load_timeout = load_timeout
        self.stop_timeout = stop_timeout
        self.log_verbose = log_verbose
        self._proc: Any = None
        self._log_offset = 0
        self.install: TritonInstall | None = None
        self.last_sync: ModelSync | None = None

    # -- addresses ---------------------------------------------------------------------------------

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports['metrics']}/metrics"

    def describe(self) -> dict[str, Any]:
        """Where it listens and what it runs (for the stack's ``stack.json``)."""
        return {"kind": "triton", "pid": self.pid, "http": self.http_url, "grpc": self.grpc_url,
                "metrics": self.metrics_url, "repository": str(self.repository),
                "source": str(self.local_repo.source) if self.local_repo else None, "log": str(self.log_path)}

    # -- life cycle --------------------------------------------------------------------------------

    def start(self) -> LocalTriton:
        """Create the environment if needed, sync the twin, start Triton, wait until live, load models."""
        if self.running():
            return self
        self.install = self.environment.ensure()
        if self.local_repo is not None:
            self.models = self.local_repo.model_names() if self._models is None else list(self._models)
            report = self.local_repo.sync(None if self._models is None else self.models)
            for (name, v), why in report.rejected().items():
                LOG.warning("%s version %d left out: %s", name, v, why)
        if not self.repository.is_dir():
            raise FileNotFoundError(f"Triton model repository {self.repository} does not exist")
        if self._models is None and self.local_repo is None:
            self.models = sorted(d.name for d in self.repository.iterdir() if (d / "config.pbtxt").exists())
        for attempt in range(3):
            self._launch()
            try:
                self._wait_live()
                break
            except ModelServerError as e:
                port_clash = "address already in use" in str(e).lower() or "failed to bind" in str(e).lower()
                self._kill()
                if not port_clash or attempt == 2 or any(self._ports.values()):
                    raise
                LOG.info("a port was taken meanwhile; retrying with new ports")
        try:
            for name in self.models:
                self.load(name)
        except BaseException:
            self.stop()
            raise
        LOG.info("Triton %s (pid %d) serving %s: gRPC %s, HTTP %s, metrics %s", self.server_version(),
                 self.pid, self.models or "no models yet", self.grpc_url, self.http_url, self.metrics_url)
        return self

    def _launch(self) -> None:
        assert self.install is not None
        self.ports = {k: v or process.free_port(self.host) for k, v in self._ports.items()}
        install = self.install
        cmd = [str(install.tritonserver),
               f"--model-repository={self.repository}",
               f"--backend-directory={install.backend_dir}",
               f"--cache-directory={install.server_dir / 'caches'}",
               "--model-control-mode=explicit",
               "--disable-auto-complete-config",
               "--strict-readiness=true",
               "--exit-timeout-secs=5",
               "--pinned-memory-pool-byte-size=0",
               f"--http-address={self.host}", f"--http-port={self.ports['http']}",
               f"--grpc-address={self.host}", f"--grpc-port={self.ports['grpc']}",
               f"--metrics-address={self.host}", f"--metrics-port={self.ports['metrics']}",
               f"--log-verbose={self.log_verbose}"]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
        self._log_offset = self.log_path.stat().st_size
        self._proc = process.spawn(cmd, env=install.server_env(), log_path=self.log_path,
                                   cwd=install.server_dir)

    def _log_since_start(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                text = f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait_live(self) -> None:
        control = ModelControl(self.http_url, timeout=2.0)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ModelServerError(f"tritonserver exited with code {self._proc.returncode} while starting "
                                       f"(log {self.log_path}):\n{self._log_since_start()}")
            if control.live() and control.server_ready():
                return
            time.sleep(0.1)
        raise ModelServerError(f"tritonserver was not live after {self.startup_timeout:.0f} s "
                               f"(log {self.log_path}):\n{self._log_since_start()}")

    def _kill(self) -> None:
        if self._proc is not None:
            process.stop(self._proc, timeout=self.stop_timeout)

    def stop(self) -> int | None:
        """SIGTERM (Triton unloads its models and stops its stubs), bounded wait, then SIGKILL."""
        if self._proc is None:
            return None
        code = process.stop(self._proc, timeout=self.stop_timeout)
        LOG.info("Triton (pid %d) stopped with code %s", self._proc.pid, code)
        return code

    def __enter__(self) -> LocalTriton:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- models ------------------------------------------------------------------------------------

    def _require_running(self) -> None:
        if not self.running():
            tail = self._log_since_start() if self._proc is not None else ""
            raise ModelServerError("Triton is not running" + (f"; its log ends:\n{tail}" if tail else ""))

    def server_version(self) -> str:
        self._require_running()
        return str(self.control.metadata().get("version", "?"))

    def load(self, name: str) -> list[int]:
        """Load or reload ``name`` from the repository as it is now; returns the READY versions."""
        self._require_running()
        try:
            self.control.load(name, timeout=self.load_timeout)
        except ModelLoadError as e:
            serving = self.ready_versions(name)
            LOG.error("%s did not load (still serving versions %s): %s", name, serving, e.reason)
            raise
        return self.ready_versions(name)

    def unload(self, name: str) -> None:
        self._require_running()
        self.control.unload(name)

    def ready(self, name: str, version: int | None = None) -> bool:
        return self.running() and self.control.ready(name, version)

    def ready_versions(self, name: str) -> list[int]:
        self._require_running()
        return self.control.ready_versions(name)

    def refresh(self, name: str) -> list[int]:
        """Serve the repository's current versions of ``name``: sync the twin, load; the READY versions.

        See :func:`refresh_model`; :attr:`last_sync` holds what the sync did.
        """
        self._require_running()
        if self.local_repo is None:
            return self.load(name)
        serving, self.last_sync = refresh_model(self.control, self.local_repo, name, load_timeout=self.load_timeout)
        return serving


def refresh_model(control: ModelControl, repo: LocalRepository, name: str, *,
                  load_timeout: float = 300.0) -> tuple[list[int], ModelSync]:
    """Sync ``name`` into the twin and have the Triton behind ``control`` load it (any process can).

    Returns the READY versions and the sync's report. Raises :class:`VersionRejected` (after loading
    whatever else changed) when versions newer than the newest served one failed validation, and
    :class:`ModelLoadError` when Triton refused the load; in both cases the versions that served
    before keep serving. Older bad versions skipped over are only logged (and in the report).
    """
    result = repo.sync([name]).models[name]
    serving = control.ready_versions(name)
    # Triton 2.51 reloads every served version on each load call, changed or not: skip a no-op.
    if result.changed or serving != result.versions:
        control.load(name, timeout=load_timeout)
        serving = control.ready_versions(name)
    newer = {v: why for v, why in result.rejected.items() if not serving or v > max(serving)}
    if newer:
        raise VersionRejected(name, newer, serving)
    return serving, result
