"""Where one environment's Feast data lives: :class:`FeastSettings` (validated on construction).

Environment ``local``: parquet files and SQLite, by default inside the repository directory;
``production``: parquet on S3 and Redis. :mod:`.repo` renders a repository from these settings and
stores its paths inside the repository relative to it (:meth:`FeastSettings.relative_to`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from linkedout.featurestore.definitions import PROJECT

ENVIRONMENTS: tuple[str, ...] = ("local", "production")
_LOCAL_PATH_FIELDS = ("offline_root", "registry", "sqlite_path")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class FeastSettings:
    """Where one environment's Feast data lives. Validated on construction (``ValueError`` naming the field).

    Local paths left ``None`` default to the repository directory when rendered (offline data in
    ``DIR/offline``, registry and SQLite under ``DIR/data``); relative paths given here are taken
    relative to the current directory. A rendered repository stores the paths inside its directory
    relative to it (:meth:`relative_to`); :func:`.repo.read_settings` gives them absolute again.
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

    def relative_to(self, directory: Path) -> FeastSettings:
        """These (absolute) settings as a repository in ``directory`` stores them: each local path
        inside ``directory`` relative to it (POSIX), every other location unchanged."""
        def relative(value: str) -> str:
            try:
                return Path(value).relative_to(directory).as_posix()
            except ValueError:
                return value
        return self.map_local_paths(relative)

    def anchored(self, directory: Path) -> FeastSettings:
        """Stored settings with each relative local path joined to ``directory`` (what
        :func:`.repo.read_settings` returns: every local path absolute)."""
        return self.map_local_paths(lambda value: str(directory / value))

    def map_local_paths(self, change: Callable[[str], str]) -> FeastSettings:
        """These settings with ``change`` applied to each local path (``s3://`` locations and unset paths kept)."""
        values: dict[str, Any] = {}
        for name in _LOCAL_PATH_FIELDS:
            value = getattr(self, name)
            if value is not None and not is_remote(value):
                values[name] = change(value)
        return replace(self, **values)


def is_remote(location: str) -> bool:
    """True for a URL (``s3://bucket/key``), False for a local path."""
    return "://" in location
