"""The local Triton: the real ``tritonserver`` binary on 127.0.0.1, explicit model control.

::

    repo = LocalRepository(source=W / "model_repository", target=W / "serving" / "triton_repository")
    with LocalTriton(repo, models=["linkedout_ranker"]) as triton:   # env on first use, sync, start, load
        triton.grpc_url                          # "127.0.0.1:PORT" for tritonclient.grpc / kserve's client
        ...                                      # the exporter publishes linkedout_ranker/4
        triton.refresh("linkedout_ranker")       # sync + load: version 4 serves, no restart
        triton.ready_versions("linkedout_ranker")  # [3, 4] with version_policy latest 2

Triton 2.51 (the binary of nvidia-pytriton 0.7.0) in explicit mode, as tests/test_triton_local.py
measures it:

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

Its control (the v2 HTTP repository API, the refresh) is shared with the KServe fallback predictor:
:mod:`.control`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from linkedout.serving.local import process
from linkedout.serving.local.control import ModelLoadError, ModelServerError, ServerChild, refresh_model
from linkedout.serving.local.triton_env import TritonEnvironment, TritonInstall
from linkedout.serving.local.triton_repo import LocalRepository, ModelSync
from linkedout.utils import get_logger

LOG = get_logger(__name__)

__all__ = ["LocalTriton"]


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

    label = "Triton"
    program = "tritonserver"

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
                self._wait_up(lambda c: c.live() and c.server_ready(), "live")
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
        self.ports = process.free_ports(self._ports, self.host)
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
        self._spawn(cmd, install.server_env(), cwd=install.server_dir)

    def _kill(self) -> None:
        if self._proc is not None:
            process.stop(self._proc, timeout=self.stop_timeout)

    # -- models ------------------------------------------------------------------------------------

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

    def refresh(self, name: str) -> list[int]:
        """Serve the repository's current versions of ``name`` (:func:`refresh_model` with the twin);
        the READY versions. :attr:`last_sync` holds what the sync did."""
        self._require_running()
        serving, self.last_sync = refresh_model(self.control, name, self.local_repo, load_timeout=self.load_timeout)
        return serving
