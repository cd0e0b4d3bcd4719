"""Feast repositories on disk: settings per environment, rendering, opening, applying.

A repository directory is rendered from :class:`FeastSettings` by :func:`render_repo`::

    DIR/feature_store.yaml      from envs/<environment>.yaml (local: SQLite + parquet files;
                                production: Redis + parquet on S3)
    DIR/linkedout_feast.json    the settings it was rendered from (what :func:`open_repo` reads)
    DIR/feature_services.json   the published model versions (NAME_vV), kept in step with the registry
    DIR/linkedout_repo.py       a shim importing :mod:`.definitions`, so ``feast -c DIR apply`` works
    DIR/data/                   local registry and SQLite file (environment "local")

:func:`open_repo` gives a :class:`FeatureRepo` (the Feast ``FeatureStore``, the definitions, the
settings); :func:`apply` registers the definitions and every published feature service.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from linkedout.featurestore.definitions import (
    PROJECT,
    TABLES,
    Definitions,
    build_definitions,
    service_name,
    table_uri,
)
from linkedout.featurestore.errors import FeatureRepoError, OnlineStoreUnavailable
from linkedout.featurestore.s3compat import ensure_s3_fsspec
from linkedout.shards.storage import Storage, open_storage
from linkedout.utils import atomic_write_text, get_logger

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore

LOG = get_logger(__name__)

ENVIRONMENTS: tuple[str, ...] = ("local", "production")
SETTINGS_FILE = "linkedout_feast.json"
SERVICES_FILE = "feature_services.json"
SHIM_FILE = "linkedout_repo.py"
_TEMPLATES = Path(__file__).with_name("envs")
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_0-9]+)\s*\}\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_SHIM = '''"""LinkedOut's Feast repository (rendered by linkedout.featurestore.render_repo: re-render, do not edit).

`feast -c {dir} apply` registers what this module holds: the definitions of
linkedout.featurestore.definitions over the offline root in linkedout_feast.json, and one
FeatureService per model version listed in feature_services.json.
"""

from pathlib import Path

from linkedout.featurestore.repo import repo_objects

globals().update(repo_objects(Path(__file__).resolve().parent))
'''


@dataclass(frozen=True)
class FeastSettings:
    """Where one environment's Feast data lives. Validated on construction (``ValueError`` naming the field).

    Local paths left ``None`` default to the repository directory when rendered (offline data in
    ``DIR/offline``, registry and SQLite under ``DIR/data``); relative paths are taken relative to
    the current directory and stored absolute.
    """

    environment: str = "local"  # "local" (SQLite + parquet files) or "production" (Redis + S3 parquet)
    offline_root: str | None = None  # directory or s3://bucket/prefix; required in production
    s3_endpoint: str | None = None  # http(s)://host[:port] of an S3-compatible server (MinIO, moto)
    registry: str | None = None  # registry file: path or s3://...; default DIR/data/registry.db (local),
    #                              ROOT/registry.pb for an s3:// root in production
    registry_ttl_s: int = 60  # registry cache TTL of writers, seconds (0 = never refresh)
    sqlite_path: str | None = None  # local online store file; default DIR/data/online.db
    redis_address: str = "localhost:6379"  # production online store, host:port
    redis_db: int = 0  # Redis logical database, >= 0
    redis_password_env: str | None = None  # environment variable holding the Redis password (Feast expands it)
    redis_ssl: bool = False  # TLS to Redis
    redis_timeout_s: float = 0.5  # socket connect and read timeout, seconds, in (0, 60]
    redis_retries: int = 1  # retries after a failed Redis call (no backoff), in [0, 5]
    redis_key_ttl_s: int | None = None  # expire online rows after this many seconds (None = never)
    project: str = PROJECT  # Feast project name

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ValueError(f"FeastSettings.{name} must be {rule}, got {getattr(self, name)!r}")

        need(self.environment in ENVIRONMENTS, "environment", f"one of {ENVIRONMENTS}")
        need(self.offline_root is None or (isinstance(self.offline_root, str) and bool(self.offline_root)),
             "offline_root", "a directory or s3://bucket/prefix")
        if self.environment == "production":
            need(self.offline_root is not None, "offline_root", "set in production (s3://bucket/prefix or a directory)")
        if self.offline_root and self.offline_root.startswith("s3://"):
            need(bool(urlparse(self.offline_root).netloc), "offline_root", "s3://bucket[/prefix]")
        if self.s3_endpoint is not None:
            url = urlparse(self.s3_endpoint)
            need(url.scheme in ("http", "https") and bool(url.netloc), "s3_endpoint", "http(s)://host[:port]")
            need(bool(self.offline_root and self.offline_root.startswith("s3://")), "s3_endpoint",
                 "unset unless offline_root is s3://")
        need(isinstance(self.registry_ttl_s, int) and self.registry_ttl_s >= 0, "registry_ttl_s", ">= 0")
        host, _, port = self.redis_address.rpartition(":")
        need(bool(host) and port.isdigit() and 0 < int(port) < 65536, "redis_address", "host:port")
        need(isinstance(self.redis_db, int) and self.redis_db >= 0, "redis_db", ">= 0")
        need(self.redis_password_env is None or bool(_ENV_NAME.fullmatch(self.redis_password_env)),
             "redis_password_env", "an environment variable name")
        need(isinstance(self.redis_ssl, bool), "redis_ssl", "a bool")
        need(isinstance(self.redis_timeout_s, int | float) and 0 < self.redis_timeout_s <= 60,
             "redis_timeout_s", "in (0, 60]")
        need(isinstance(self.redis_retries, int) and 0 <= self.redis_retries <= 5, "redis_retries", "in [0, 5]")
        need(self.redis_key_ttl_s is None or (isinstance(self.redis_key_ttl_s, int) and self.redis_key_ttl_s > 0),
             "redis_key_ttl_s", "None or > 0")
        need(bool(re.fullmatch(r"[A-Za-z0-9_]+", self.project)), "project", "letters, digits and '_'")
        for name in ("offline_root", "s3_endpoint", "registry", "sqlite_path", "redis_address"):
            value = getattr(self, name)
            # Feast expands ${VAR} in feature_store.yaml; a '$' or a quote in a path would be mangled
            need(value is None or not any(c in value for c in "$\"'\n"), name, "free of $, quotes and newlines")

    @property
    def redis_host_port(self) -> tuple[str, int]:
        host, _, port = self.redis_address.rpartition(":")
        return host, int(port)

    def redis_connection_string(self) -> str:
        """Feast's ``connection_string``: ``host:port,db=..,socket_connect_timeout=..,socket_timeout=..``."""
        parts = [self.redis_address, f"db={self.redis_db}",
                 f"socket_connect_timeout={self.redis_timeout_s}", f"socket_timeout={self.redis_timeout_s}"]
        if self.redis_ssl:
            parts.append("ssl=true")
        if self.redis_password_env:
            parts.append(f"password=${{{self.redis_password_env}}}")
        return ",".join(parts)

    def resolved(self, directory: Path) -> FeastSettings:
        """These settings with every default filled in and every local path absolute."""
        directory = directory.resolve()
        offline = self.offline_root or str(directory / "offline")
        if not offline.startswith("s3://"):
            offline = str(Path(offline).expanduser().resolve())
        registry = self.registry
        if registry is None:
            if self.environment == "production" and offline.startswith("s3://"):
                registry = f"{offline.rstrip('/')}/registry.pb"
            else:
                registry = str(directory / "data" / "registry.db")
        elif not registry.startswith("s3://"):
            registry = str(Path(registry).expanduser().resolve())
        sqlite = str(Path(self.sqlite_path).expanduser().resolve()) if self.sqlite_path else str(
            directory / "data" / "online.db")
        values = asdict(self) | {"offline_root": offline, "registry": registry, "sqlite_path": sqlite}
        return FeastSettings(**values)


class FeatureRepo:
    """An opened repository: ``store`` (a ``feast.FeatureStore``), ``definitions``, ``settings``, ``path``."""

    def __init__(self, path: Path, settings: FeastSettings, store: FeatureStore, definitions: Definitions) -> None:
        self.path = path
        self.settings = settings
        self.store = store
        self.definitions = definitions

    def __repr__(self) -> str:
        return f"FeatureRepo({str(self.path)!r}, environment={self.settings.environment!r}, online={self.online_address})"

    @property
    def online_address(self) -> str:
        """The online store, for messages: ``redis host:port`` or ``sqlite PATH``."""
        if self.settings.environment == "production":
            return f"redis {self.settings.redis_address}"
        return f"sqlite {self.settings.sqlite_path}"

    def offline_storage(self) -> Storage:
        """The offline root as a :class:`linkedout.shards.Storage` (local directory or S3)."""
        assert self.settings.offline_root is not None
        return open_storage(self.settings.offline_root, endpoint_url=self.settings.s3_endpoint)

    def table_uri(self, table: str) -> str:
        assert self.settings.offline_root is not None
        return table_uri(self.settings.offline_root, table)

    def published_services(self) -> list[tuple[str, int]]:
        """``(model, version)`` of every FeatureService listed in ``feature_services.json``."""
        return _read_services(self.path)


def _render_template(environment: str, values: dict[str, str]) -> str:
    text = (_TEMPLATES / f"{environment}.yaml").read_text()
    missing = sorted({m for m in _PLACEHOLDER.findall(text) if m not in values})
    if missing:
        raise ValueError(f"template envs/{environment}.yaml needs values for {missing}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def feature_store_yaml(settings: FeastSettings, directory: str | os.PathLike[str] | None = None) -> str:
    """The ``feature_store.yaml`` text of ``settings`` (resolved against ``directory`` when given).

    What :func:`render_repo` writes; the Kubernetes manifests' ConfigMaps hold the production ones
    (a test checks that they are this function's output).
    """
    s = settings.resolved(Path(directory)) if directory is not None else settings
    if s.offline_root is None or s.registry is None or s.sqlite_path is None:
        s = s.resolved(Path("."))
    assert s.offline_root is not None and s.registry is not None and s.sqlite_path is not None
    values = {
        "project": s.project, "registry": s.registry, "registry_ttl_s": str(s.registry_ttl_s),
        "sqlite_path": s.sqlite_path, "offline_root": s.offline_root,
        "s3_endpoint_note": s.s3_endpoint or "AWS (or AWS_ENDPOINT_URL_S3)",
        "redis_address": s.redis_address, "redis_timeout_s": str(s.redis_timeout_s),
        "redis_connection": s.redis_connection_string(),
        "redis_key_ttl_s": "null" if s.redis_key_ttl_s is None else str(s.redis_key_ttl_s),
    }
    return _render_template(s.environment, values)


def render_repo(directory: str | os.PathLike[str], settings: FeastSettings) -> Path:
    """Write a Feast repository for ``settings`` into ``directory`` and return its absolute path.

    Idempotent: re-rendering rewrites the configuration and keeps the data and the list of published
    model versions. Nothing is registered yet: call :func:`apply` (or ``feast -c DIR apply``).
    """
    path = Path(directory).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    s = settings.resolved(path)
    assert s.offline_root is not None and s.registry is not None and s.sqlite_path is not None
    atomic_write_text(path / "feature_store.yaml", feature_store_yaml(s))
    atomic_write_text(path / SETTINGS_FILE, json.dumps({"format": 1, **asdict(s)}, indent=2) + "\n")
    atomic_write_text(path / SHIM_FILE, _SHIM.format(dir=path))
    if not (path / SERVICES_FILE).exists():
        _write_services(path, [])
    (path / "data").mkdir(exist_ok=True)
    if not s.offline_root.startswith("s3://"):
        for table in TABLES:
            Path(table_uri(s.offline_root, table)).mkdir(parents=True, exist_ok=True)
    LOG.info("rendered the %s Feast repository %s (offline data: %s)", s.environment, path, s.offline_root)
    return path


def read_settings(directory: str | os.PathLike[str]) -> FeastSettings:
    """The settings a repository was rendered from; :class:`FeatureRepoError` if it is not one."""
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise FeatureRepoError(f"no Feast repository at {path}: the directory does not exist "
                               f"(render one with linkedout.featurestore.render_repo)")
    for name in ("feature_store.yaml", SETTINGS_FILE):
        if not (path / name).is_file():
            raise FeatureRepoError(f"no LinkedOut Feast repository at {path}: {name} is missing "
                                   f"(render one with linkedout.featurestore.render_repo)")
    try:
        raw = json.loads((path / SETTINGS_FILE).read_text())
        known = {f.name for f in fields(FeastSettings)}
        unknown = sorted(set(raw) - known - {"format"})
        if unknown:
            raise ValueError(f"unknown fields {unknown}")
        return FeastSettings(**{k: v for k, v in raw.items() if k in known})
    except (ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError
        raise FeatureRepoError(f"{path / SETTINGS_FILE} is not valid: {e}") from e


def open_repo(directory: str | os.PathLike[str], *, registry_ttl_s: int | None = None) -> FeatureRepo:
    """Open a rendered repository. ``registry_ttl_s`` overrides the registry cache TTL (0 = cache forever,
    what a latency-bound reader wants: the definitions it reads never change under it)."""
    from feast import FeatureStore
    from feast.repo_config import load_repo_config

    path = Path(directory).expanduser().resolve()
    settings = read_settings(path)
    assert settings.offline_root is not None
    _ensure_s3_environment(settings)
    try:
        config = load_repo_config(path, path / "feature_store.yaml")
        if registry_ttl_s is not None:
            config.registry.cache_ttl_seconds = registry_ttl_s
        store = FeatureStore(config=config)
    except Exception as e:  # FeastConfigError, yaml errors, a bad registry path
        raise FeatureRepoError(f"cannot open the Feast repository {path}: {e}") from e
    return FeatureRepo(path, settings, store, build_definitions(settings.offline_root, settings.s3_endpoint))


def _ensure_s3_environment(settings: FeastSettings) -> None:
    """Point the S3 parts that read the environment at ``settings.s3_endpoint``.

    Feast's S3 registry takes its endpoint from ``FEAST_S3_ENDPOINT_URL`` only, and its file
    offline store reads S3 through fsspec (s3fs when installed, else the pyarrow bridge in
    :mod:`.s3compat`).
    """
    if settings.offline_root and settings.offline_root.startswith("s3://"):
        ensure_s3_fsspec()
    if settings.s3_endpoint and (settings.registry or "").startswith("s3://"):
        current = os.environ.get("FEAST_S3_ENDPOINT_URL")
        if current is None:
            os.environ["FEAST_S3_ENDPOINT_URL"] = settings.s3_endpoint
        elif current != settings.s3_endpoint:
            LOG.warning("FEAST_S3_ENDPOINT_URL=%s overrides the repository's s3_endpoint %s for the registry",
                        current, settings.s3_endpoint)


def _read_services(path: Path) -> list[tuple[str, int]]:
    file = path / SERVICES_FILE
    if not file.exists():
        return []
    try:
        entries = json.loads(file.read_text())
        out = [(str(e["model"]), int(e["version"])) for e in entries]
        for model, version in out:
            service_name(model, version)
        return out
    except (ValueError, KeyError, TypeError) as e:
        raise FeatureRepoError(f"{file} is not valid (a JSON list of {{'model', 'version'}}): {e}") from e


def _write_services(path: Path, services: list[tuple[str, int]]) -> None:
    rows = [{"model": m, "version": v, "name": service_name(m, v)} for m, v in sorted(set(services))]
    atomic_write_text(path / SERVICES_FILE, json.dumps(rows, indent=2) + "\n")


def repo_objects(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Every Feast object of a rendered repository by a module-level name (what the shim exports to
    the ``feast`` CLI): the definitions and one FeatureService per published model version."""
    path = Path(directory)
    settings = read_settings(path)
    assert settings.offline_root is not None
    _ensure_s3_environment(settings)
    defs = build_definitions(settings.offline_root, settings.s3_endpoint)
    objects: dict[str, Any] = {obj.name: obj for obj in defs.objects()}
    for model, version in _read_services(path):
        fs = defs.feature_service(model, version)
        objects[fs.name] = fs
    return objects


def _registered_services(repo: FeatureRepo) -> list[tuple[str, int]]:
    out = []
    for fs in repo.store.list_feature_services():
        model, version = fs.tags.get("model"), fs.tags.get("version", "")
        if model and version.isdigit() and fs.name == f"{model}_v{version}":
            out.append((model, int(version)))
    return out


def apply(repo: FeatureRepo, services: list[FeatureService] | None = None) -> None:
    """Register the definitions (and ``services``) in the registry and create the online tables.

    Re-running it changes nothing. Nothing is deleted: feature services already registered stay, and
    ``feature_services.json`` is brought in step with the registry so that ``feast -c DIR apply`` on
    this directory (which deletes what the directory does not declare) keeps them too.
    """
    from feast.errors import FeastError

    if not repo.settings.offline_root or not repo.settings.offline_root.startswith("s3://"):
        for table in TABLES:
            Path(repo.table_uri(table)).mkdir(parents=True, exist_ok=True)
    known = set(_read_services(repo.path))
    try:
        known |= set(_registered_services(repo))
    except FileNotFoundError:
        pass  # no registry yet
    except FeastError as e:
        raise FeatureRepoError(f"cannot read the Feast registry of {repo.path}: {e}") from e
    wanted = [repo.definitions.feature_service(m, v) for m, v in sorted(known)] + list(services or [])
    try:
        repo.store.apply([*repo.definitions.objects(), *wanted], partial=True)
    except FeastError as e:
        raise FeatureRepoError(f"feast apply failed for {repo.path}: {e}") from e
    except Exception as e:
        if _is_connection_error(e):
            raise OnlineStoreUnavailable(f"feast apply of {repo.path}: the online store ({repo.online_address}) "
                                         f"did not answer: {e}") from e
        raise
    for fs in services or []:
        known.add((fs.tags["model"], int(fs.tags["version"])))
    _write_services(repo.path, sorted(known))
    if repo.settings.environment == "local" and repo.settings.sqlite_path:
        _use_wal(Path(repo.settings.sqlite_path))


def _use_wal(db: Path) -> None:
    """Write-ahead logging on the SQLite online store: readers (the transformer) never wait for a
    writer (a pipeline step, a push) and a writer never waits for readers. A property of the file."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        LOG.warning("SQLite online store %s: journal_mode is %s, not WAL", db, mode)


def _is_connection_error(e: BaseException) -> bool:
    try:
        import redis
    except ImportError:  # pragma: no cover - redis is a dependency
        return isinstance(e, ConnectionError | TimeoutError)
    return isinstance(e, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError | ConnectionError)
