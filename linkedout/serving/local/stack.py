"""The local stack (``linkedout serve``): the model server, the KServe transformer, the Feast store.

::

    with LocalStack(StackSettings(workdir=W)) as stack:      # W/model_repository, W/feast from the main job
        print(stack.info["transformer"]["grpc"])             # query it: linkedout recommend --workdir W
        stack.wait()                                         # until Ctrl-C / SIGTERM / a process dies

- the model server: the real ``tritonserver`` (own virtual environment, Python-backend twin of
  ``W/model_repository``), or where it cannot run the KServe predictor over the same repository
  (:mod:`.model_server`);
- the transformer (:class:`TransformerProcess`): ``python -m linkedout.serving.transformer`` on
  127.0.0.1, reading Feast's online store in ``W/feast`` (SQLite locally) and the catalogues in
  ``W/model_repository``;
- a supervisor in this process (:meth:`LocalStack.wait`): a model server that dies is restarted on
  the ports it had (bounded retries with back-off, logged); the transformer answers UNAVAILABLE
  meanwhile and serves again once the versions are ready;
- a follower in this process: when a new version appears in ``W/model_repository`` (a retrained
  model, ``linkedout catalog add``), the model server syncs and loads it with no restart (a bad
  version is refused and the old one keeps serving), and the transformer switches to it once it is
  ready.

``W/serving/stack.json`` says where everything listens and each process's PID (the CLI's
``recommend`` and ``catalog add`` read it, through :func:`read_stack`); logs go to
``W/serving/*.log``, the request log to ``W/serving/requests.jsonl``. Every child dies with this
process. This module imports neither kserve nor tritonclient.

Refused before anything starts: a work directory another stack serves (the running stack holds an
exclusive ``flock`` on ``W/serving/stack.lock`` until it stops, SIGKILL included: the kernel drops
it), a port given in the settings that is in use already (named, one line), and a served model none
of whose catalogue versions this version can read (an older export: the reason and the fix, one line).
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from linkedout.export.catalog import CatalogError, read_meta
from linkedout.serving import EVENT_LOOPS
from linkedout.serving.catalog import local_versions
from linkedout.serving.local import process
from linkedout.serving.local.control import ModelServerError, ServerChild
from linkedout.serving.local.model_server import ModelServerProcess, start_model_server
from linkedout.serving.routing import RoutingError, load_routing
from linkedout.utils import atomic_write_text, get_logger

log = get_logger(__name__)

#: the local stack's request log (``serving/requests.jsonl``) rotates at this size, keeping this many
#: older files (``requests.jsonl.1`` newest): at most ~1.25 GB of it (a run of bench/serve.py adds ~10 MB)
REQUEST_LOG_MAX_MB = 256
REQUEST_LOG_BACKUPS = 4

__all__ = ["LocalStack", "StackError", "StackSettings", "TransformerProcess", "read_stack"]


class StackError(RuntimeError):
    """A part of the local stack could not start, or died; the message says which and why."""


@dataclass
class StackSettings:
    """What ``linkedout serve`` starts, and where."""

    # The work directory of the main job: model_repository/, feast/, serving/.
    workdir: Path
    # Model NAME the transformer serves when no routing config is given.
    default_model: str = "linkedout"
    # An A/B routing config (YAML) for the transformer; None = everyone to default_model.
    routing: Path | None = None
    # Address every process listens on (loopback only).
    host: str = "127.0.0.1"
    # Transformer REST and gRPC ports; 0 = free ports.
    http_port: int = 0
    grpc_port: int = 0
    # "triton" (the real tritonserver, falling back to KServe where it cannot run) or "kserve".
    prefer: str = "triton"
    # Seconds between looks at the model repository for new versions (the model server's) and at the
    # served catalogues for videos added in place (the transformer's --catalog_poll_s); > 0.
    sync_interval: float = 1.0
    # Read user histories from W/feast (when it exists).
    use_feast: bool = True
    # Seconds to wait for the transformer to serve a catalogue version.
    startup_timeout: float = 180.0
    # Restarts of a model server that died (a crash, a kill), within restart_window seconds, before
    # the stack gives up and stops; each after a back-off (restart_delay, doubled each time, <= 8 s).
    max_restarts: int = 5
    restart_window: float = 300.0
    restart_delay: float = 0.5
    # The transformer's event loop (KServe's --event-loop): "auto" (uvloop where installed), "asyncio", "uvloop".
    event_loop: str = "auto"

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()  # the servers run in other directories
        if self.routing is not None:
            self.routing = Path(self.routing).resolve()
        if self.prefer not in ("triton", "kserve"):
            raise ValueError(f"StackSettings.prefer must be 'triton' or 'kserve', got {self.prefer!r}")
        if not self.sync_interval > 0:
            raise ValueError(f"StackSettings.sync_interval must be > 0, got {self.sync_interval}")
        if self.max_restarts < 0 or not self.restart_window > 0 or self.restart_delay < 0:
            raise ValueError("StackSettings: max_restarts and restart_delay must be >= 0, restart_window > 0")
        if self.event_loop not in EVENT_LOOPS:
            raise ValueError(f"StackSettings.event_loop must be one of {', '.join(EVENT_LOOPS)}, got {self.event_loop!r}")
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"StackSettings.host must be a loopback address, got {self.host!r}")


LOCK_NAME = "stack.lock"


def _routed_models(routing: Path) -> list[str]:
    try:
        return list(load_routing(routing).models)
    except (RoutingError, OSError) as e:
        raise StackError(f"the routing config {routing} cannot be read: {e}") from None


def read_stack(workdir: str | os.PathLike[str]) -> dict[str, Any]:
    """The running stack's ``stack.json``; ``StackError`` when no stack runs for ``workdir``.

    A ``stack.json`` left behind by a stack that was killed is recognised: its PID is not alive, or
    nobody holds the work directory's lock.
    """
    path = Path(workdir) / "serving" / "stack.json"
    if not path.is_file():
        raise StackError(f"no local stack runs for {workdir} ({path} is missing): start one with "
                         f"`linkedout serve --workdir {workdir}`")
    info: dict[str, Any] = json.loads(path.read_text())
    if not process.pid_alive(int(info.get("pid", 0))) or not _locked(path.parent / LOCK_NAME):
        raise StackError(f"the stack is not running: {path} names pid {info.get('pid')}, which stopped "
                         f"(killed?); start it again with `linkedout serve --workdir {workdir}`")
    return info


def _locked(lock_path: Path) -> bool:
    """Whether a process holds the stack lock ``lock_path`` (True when there is no lock file to ask)."""
    try:
        with open(lock_path, "rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False
    except FileNotFoundError:
        return True


class LocalStack:
    """See the module docstring."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.workdir = settings.workdir
        self.repository = self.workdir / "model_repository"
        self.serving_dir = self.workdir / "serving"
        self.server: ModelServerProcess | None = None
        self.transformer: TransformerProcess | None = None
        self.info: dict[str, Any] = {}
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None
        self._stamps: dict[str, tuple[int, ...]] = {}
        self.sync_errors: dict[str, str] = {}
        self._lock: IO[str] | None = None
        self._crashes: list[float] = []  # time.monotonic() of each model-server death seen by check()

    # ------------------------------------------------------------------------------------ start

    def models(self) -> list[str]:
        if not self.repository.is_dir():
            return []
        return sorted(p.name for p in self.repository.iterdir() if (p / "config.pbtxt").is_file())

    def lock(self) -> None:
        """Hold the work directory's lock; ``StackError`` naming the holder when another stack serves it."""
        if self._lock is not None:
            return
        self.serving_dir.mkdir(parents=True, exist_ok=True)
        f = open(self.serving_dir / LOCK_NAME, "a+")  # noqa: SIM115 (held open: it is the lock)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise StackError(f"another `linkedout serve` (pid {holder}) already serves {self.workdir}: stop it "
                             f"first, or serve another --workdir") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock = f

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file drops the flock
            self._lock = None

    def check_ports(self) -> None:
        """``StackError`` naming a port of the settings that is in use already (or given twice)."""
        s = self.settings
        try:
            process.check_ports(s.host, {"transformer HTTP, --http-port": s.http_port,
                                         "transformer gRPC, --grpc-port": s.grpc_port})
        except OSError as e:
            raise StackError(str(e)) from None

    def check_catalogues(self) -> None:
        """``StackError`` naming a served model none of whose catalogue versions this version can read.

        The transformer would wait for one to load (and only its log would say why): an operator
        serving a work directory exported by an older version is told at once what to do.
        """
        s = self.settings
        served = [s.default_model] if s.routing is None else _routed_models(s.routing)
        for name in served:
            rdir = self.repository / f"{name}_ranker"
            problems = []
            for version in reversed(local_versions(self.repository, name)):  # the transformer's own listing
                try:
                    read_meta(rdir / str(version))
                    break
                except CatalogError as e:
                    problems.append(str(e))
            else:
                if problems:
                    why = "; ".join(problems)
                elif s.routing is None:  # a routed model may come later; the default one is waited for
                    why = f"{rdir} holds no version with a catalog.json (export one first)"
                else:
                    continue
                raise StackError(f"{name} has no catalogue version this version of LinkedOut can serve: {why}")

    def start(self) -> LocalStack:
        s = self.settings
        models = self.models()
        rankers = [m[: -len("_ranker")] for m in models if m.endswith("_ranker")]
        if not rankers:
            raise StackError(f"{self.repository} holds no ranker model: export one first "
                             f"(linkedout export --run-dir RUN --repo {self.repository} --name {s.default_model})")
        if s.routing is None and s.default_model not in rankers:
            raise StackError(f"{self.repository} has no {s.default_model}_ranker (it has {rankers}); "
                             f"pick one with --model")
        self.lock()
        try:
            self.check_ports()
            self.check_catalogues()
        except StackError:
            self._unlock()
            raise
        t0 = time.monotonic()
        try:
            self.server = start_model_server(self.repository, self.serving_dir, models=models, host=s.host,
                                             prefer=s.prefer)
        except BaseException as e:
            self._unlock()
            if isinstance(e, ModelServerError):
                raise StackError(f"the model server did not start: {e}") from e
            raise
        self._stamps = {m: self._stamp(m) for m in models}
        log.info("model server (%s) up in %.1f s: gRPC %s", self.server.describe().get("kind"),
                 time.monotonic() - t0, self.server.grpc_url)
        try:
            transformer = self.transformer = self._start_transformer(self.server.grpc_url)
        except BaseException:
            self.stop()
            raise
        self.info = {
            "pid": os.getpid(), "started": time.time(), "workdir": str(self.workdir.resolve()),
            "model_server": self.server.describe(),
            "transformer": {"pid": transformer.pid, "grpc": transformer.grpc_url,
                            "http": transformer.http_url, "model": s.default_model,
                            "metrics": f"{transformer.http_url}/metrics",
                            "log": str(self.serving_dir / "transformer.log")},
            "feast": str(self.feast_repo) if self.feast_repo else None,
            "request_log": str(self.serving_dir / "requests.jsonl"),
            "routing": str(s.routing) if s.routing else None,
            "models": models,
        }
        atomic_write_text(self.serving_dir / "stack.json", json.dumps(self.info, indent=2))
        self._follower = threading.Thread(target=self._follow, name="repository-follower", daemon=True)
        self._follower.start()
        log.info("local stack up in %.1f s", time.monotonic() - t0)
        return self

    def restart_model_server(self) -> None:
        """Start the model server again on the ports it had (the transformer keeps its address)."""
        s = self.settings
        old = self.server.describe() if self.server is not None else {}
        if self.server is not None:
            self.server.stop()
        ports = {k: int(str(old[k]).rsplit(":", 1)[1].split("/")[0]) for k in ("http", "grpc", "metrics")
                 if old.get(k)}
        self.server = start_model_server(self.repository, self.serving_dir, models=self.models(), host=s.host,
                                         prefer=s.prefer, ports=ports)
        self._stamps = {m: self._stamp(m) for m in self.models()}
        self.info["model_server"] = self.server.describe()
        atomic_write_text(self.serving_dir / "stack.json", json.dumps(self.info, indent=2))
        log.info("model server restarted: gRPC %s", self.server.grpc_url)

    @property
    def feast_repo(self) -> Path | None:
        repo = self.workdir / "feast"
        return repo if self.settings.use_feast and (repo / "feature_store.yaml").is_file() else None

    def _start_transformer(self, predictor: str) -> TransformerProcess:
        s = self.settings
        args = ["--predictor_host", predictor.split("://")[-1], "--model_repository", str(self.repository),
                "--request_log", str(self.serving_dir / "requests.jsonl"), "--request_log_max_mb",
                str(REQUEST_LOG_MAX_MB), "--request_log_backups", str(REQUEST_LOG_BACKUPS),
                "--catalog_poll_s", str(s.sync_interval), "--event-loop", s.event_loop]
        if self.feast_repo:
            args += ["--feast_repo", str(self.feast_repo)]
        if s.routing:
            args += ["--routing", str(s.routing)]
        ports = process.free_ports({"http": s.http_port, "grpc": s.grpc_port}, s.host)
        transformer = TransformerProcess(args, model=s.default_model, host=s.host,
                                         http_port=ports["http"], grpc_port=ports["grpc"],
                                         log_path=self.serving_dir / "transformer.log",
                                         startup_timeout=s.startup_timeout)
        try:
            return transformer.start()
        except ModelServerError as e:
            raise StackError(str(e)) from None

    # ------------------------------------------------------------------------------------ follow

    def _stamp(self, model: str) -> tuple[int, ...]:
        d = self.repository / model
        try:
            return tuple(sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()))
        except FileNotFoundError:
            return ()

    def sync(self) -> dict[str, list[int]]:
        """Make the model server serve the repository's current versions; returns READY versions by model."""
        assert self.server is not None, "the stack is not started"
        out = {}
        for model in self.models():
            stamp = self._stamp(model)
            if self._stamps.get(model) == stamp:
                continue
            try:
                out[model] = self.server.refresh(model)
                self.sync_errors.pop(model, None)
                log.info("%s now serves versions %s", model, out[model])
            except Exception as e:  # VersionRejected / ModelLoadError: the old versions keep serving
                self.sync_errors[model] = str(e)
                log.error("%s: the new version was refused, the previous ones keep serving: %s", model, e)
            self._stamps[model] = stamp
        return out

    def _follow(self) -> None:
        while not self._stop.wait(self.settings.sync_interval):
            try:
                self.sync()
            except Exception as e:
                log.warning("repository sync failed: %s", e)

    def check(self) -> None:
        """Restart the model server when it died; ``StackError`` when the transformer died, or when the
        model server died (or failed to restart) more than ``max_restarts`` times within ``restart_window``
        seconds."""
        if self.transformer is not None and not self.transformer.running():
            raise StackError(f"the transformer exited with code {self.transformer.returncode}: "
                             f"{self.transformer.failure()}")
        if self.server is not None and not self.server.running():
            self._recover_model_server()

    def _recover_model_server(self) -> None:
        """Restart the dead model server on its ports, after a back-off; ``StackError`` past ``max_restarts``."""
        s = self.settings
        assert self.server is not None
        kind = self.server.describe().get("kind")
        why = self.server.failure() if isinstance(self.server, ServerChild) else str(self.server.describe().get("log"))
        now = time.monotonic()
        self._crashes = [t for t in self._crashes if now - t < s.restart_window] + [now]
        if len(self._crashes) > s.max_restarts:
            raise StackError(f"the model server ({kind}) died {len(self._crashes)} times within "
                             f"{s.restart_window:.0f} s, the last time: {why}")
        delay = min(s.restart_delay * 2 ** (len(self._crashes) - 1), 8.0)
        log.error("the model server (%s) died: %s; restart %d of at most %d in %.0f s, in %.1f s", kind, why,
                  len(self._crashes), s.max_restarts, s.restart_window, delay)
        if self._stop.wait(delay):
            return
        try:
            self.restart_model_server()
        except (ModelServerError, OSError) as e:  # still dead: the next check tries again, later
            log.error("the model server (%s) did not restart: %s", kind, e)

    def wait(self, timeout: float | None = None) -> None:
        """Block until ``stop()`` or ``timeout`` seconds, supervising (:meth:`check`): ``StackError`` when the
        transformer dies or the model server cannot be kept up."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stop.wait(0.5):
            self.check()
            if deadline is not None and time.monotonic() >= deadline:
                return

    # ------------------------------------------------------------------------------------ stop

    def stop(self) -> None:
        """Stop the transformer, then the model server; remove ``stack.json``, release the work directory.
        Safe to call twice."""
        self._stop.set()
        if self.transformer is not None:
            self.transformer.stop()
            self.transformer = None
        if self.server is not None:
            self.server.stop()
            self.server = None
        stack_file = self.serving_dir / "stack.json"
        try:
            if self._lock is not None and stack_file.is_file() and \
                    json.loads(stack_file.read_text()).get("pid") == os.getpid():  # only the holder's own file
                stack_file.unlink()
        except (OSError, ValueError):
            pass
        self._unlock()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()



class TransformerProcess(ServerChild):
    """``python -m linkedout.serving.transformer`` as a child process on loopback ports.

    ``args`` are its flags beyond its name and addresses; it is up once it serves a catalogue
    version of ``model`` (its ``--model_name``: the v2 model-ready endpoint answers 200).
    """

    label = "transformer"
    program = "the transformer"

    def __init__(self, args: list[str], *, model: str, host: str, http_port: int, grpc_port: int, log_path: Path,
                 startup_timeout: float, stop_timeout: float = 15.0) -> None:
        self.args = list(args)
        self.model = model
        self.host = host
        self.ports = {"http": http_port, "grpc": grpc_port}
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._proc: Any = None
        self._log_offset = 0

    def start(self) -> TransformerProcess:
        cmd = [sys.executable, "-m", "linkedout.serving.transformer", "--model_name", self.model,
               "--bind_address", self.host, "--http_port", str(self.ports["http"]),
               "--grpc_port", str(self.ports["grpc"]), *self.args]
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._spawn(cmd, env)
        try:
            self._wait_up(lambda control: control.ready(self.model), "serving a catalogue version")
        except BaseException:
            self.stop()
            raise
        return self
