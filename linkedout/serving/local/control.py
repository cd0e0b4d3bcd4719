"""Control of a local model-server child process, Triton or the KServe fallback predictor alike.

- :class:`ModelControl` speaks the HTTP side of the Open Inference Protocol v2 and Triton's
  repository extension with the standard library only; it works against Triton and the predictor
  (:mod:`.predictor`) alike, and from any process (``linkedout catalog add`` reaches the running
  stack through it).
- :class:`ServerChild` is what both child processes share: loopback addresses, the PID, the log of
  this start, waiting until the server is up, stopping it, readiness.
- :func:`refresh_model` is the one definition of a refresh: the server serves the repository's
  current versions of a model (through the Python-backend twin for Triton).
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from linkedout.serving.local import process
from linkedout.serving.local.triton_repo import LocalRepository, ModelSync
from linkedout.utils import get_logger

LOG = get_logger(__name__)

__all__ = ["ModelControl", "ModelLoadError", "ModelServerError", "PortClash", "ServerChild", "VersionRejected",
           "refresh_model"]


class ModelServerError(RuntimeError):
    """The model server failed to start, answered an error, or cannot be reached."""


class PortClash(ModelServerError):
    """What answers on a server's HTTP port is not an HTTP/1.1 server (another one holds the port)."""


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
        except http.client.HTTPException as e:  # not an HTTP/1.1 server: e.g. a gRPC one on the same port
            raise PortClash(f"{method} {self.url}{path}: what answers there does not speak HTTP/1.1 "
                            f"({type(e).__name__}): another server holds this port") from e
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
        except PortClash:
            raise  # not a server still starting: waiting will not help
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


class ServerChild:
    """What a model-server child process on loopback ports shares: addresses, PID, log, start-up, stop.

    Subclasses set ``host``, ``ports`` (``{"http": p, "grpc": q, ...}``), ``log_path``,
    ``startup_timeout``, ``stop_timeout``, ``_proc`` (the Popen, None before start) and
    ``_log_offset`` (where this start's lines begin in the log), name the server in ``label`` (log
    lines) and ``program`` (errors), and implement ``start``.
    """

    label: str
    program: str
    host: str
    ports: dict[str, int]
    log_path: Path
    startup_timeout: float
    stop_timeout: float
    _proc: Any
    _log_offset: int

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

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has exited, else None."""
        return self._proc.poll() if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        raise NotImplementedError

    def _spawn(self, cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        """Start ``cmd`` as the server child, its output appended to the log after a header line."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
        self._log_offset = self.log_path.stat().st_size
        self._proc = process.spawn(cmd, env=env, log_path=self.log_path, cwd=cwd)

    def _log_since_start(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                text = f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def failure(self) -> str:
        """One line: why the server failed (the signal that killed it, else the reason in this start's
        log lines), then the log's path."""
        code = self._proc.poll() if self._proc is not None else None
        if code is not None and code < 0:  # a kill says nothing in the log: its last error line is not the cause
            return f"killed by {process.signal_name(-code)} (log {self.log_path})"
        reason = process.reason_line(self._log_since_start(lines=200)) if self._proc is not None else ""
        return f"{reason or 'no reason in its log'} (log {self.log_path})"

    def _wait_up(self, up: Callable[[ModelControl], bool], state: str) -> None:
        """Poll until ``up(control)``; :class:`ModelServerError` with the reason when it exits or times out."""
        control = ModelControl(self.http_url, timeout=2.0)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ModelServerError(f"{self.program} exited with code {self._proc.returncode} while starting: "
                                       f"{self.failure()}")
            if up(control):
                return
            time.sleep(0.1)
        raise ModelServerError(f"{self.program} was not {state} after {self.startup_timeout:.0f} s: {self.failure()}")

    def stop(self) -> int | None:
        """SIGTERM (the server unloads its models and stops its helpers), bounded wait, then SIGKILL."""
        if self._proc is None:
            return None
        code = process.stop(self._proc, timeout=self.stop_timeout)
        LOG.info("%s (pid %d) stopped with code %s", self.label, self._proc.pid, code)
        return code

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _require_running(self) -> None:
        if not self.running():
            raise ModelServerError(f"{self.label} is not running: {self.failure()}")

    def ready(self, name: str, version: int | None = None) -> bool:
        return self.running() and self.control.ready(name, version)

    def ready_versions(self, name: str) -> list[int]:
        self._require_running()
        return self.control.ready_versions(name)


def refresh_model(control: ModelControl, name: str, twin: LocalRepository | None = None, *,
                  load_timeout: float = 300.0) -> tuple[list[int], ModelSync | None]:
    """Have the model server behind ``control`` serve the repository's current versions of ``name``.

    The one definition of a refresh, for Triton and the KServe predictor alike, from any process.
    With a ``twin`` (the local Triton's Python-backend repository), ``name`` is synced into it first
    and the load call skipped when nothing changed; without one (a server that reads the production
    repository itself) the model is loaded as the repository is now. Returns the READY versions and
    the sync's report (None without a twin). Raises :class:`VersionRejected` (after loading whatever
    else changed) when versions newer than the newest served one failed validation, and
    :class:`ModelLoadError` when the server refused the load; in both cases the versions that served
    before keep serving. Older bad versions skipped over are only logged (and in the report).
    """
    if twin is None:
        control.load(name, timeout=load_timeout)
        return control.ready_versions(name), None
    result = twin.sync([name]).models[name]
    serving = control.ready_versions(name)
    # Triton 2.51 reloads every served version on each load call, changed or not: skip a no-op.
    if result.changed or serving != result.versions:
        control.load(name, timeout=load_timeout)
        serving = control.ready_versions(name)
    newer = {v: why for v, why in result.rejected.items() if not serving or v > max(serving)}
    if newer:
        raise VersionRejected(name, newer, serving)
    return serving, result
