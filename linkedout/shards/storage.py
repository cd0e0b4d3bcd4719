"""Byte storage behind the shard store: a local directory or an S3 (-compatible) bucket.

Both back ends speak the same small :class:`Storage` protocol of ``/``-separated relative keys
(``"spec.json"``, ``"shards/shard-00000.data.npy"``). Every write is atomic: a reader sees either
no object or the whole object, never a prefix of it (local: temp file + ``os.replace``; S3: a
single ``PutObject`` is atomic). The shard layer (:mod:`linkedout.shards.writer`) builds its
crash-safety on that guarantee.

``open_storage("s3://bucket/prefix")`` or ``open_storage("/some/dir")`` picks the back end.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from linkedout.utils import atomic_write_bytes

if TYPE_CHECKING:
    from botocore.client import BaseClient

# Temp files left by ``linkedout.utils.atomic_write_bytes`` (``.{name}.XXXX.tmp``) of a killed run.
_TEMP_NAME = re.compile(r"^\..+\.tmp$")


class ShardStoreError(RuntimeError):
    """A shard store is missing, inconsistent or unreachable; the message names the key / uri."""


class MissingKeyError(ShardStoreError):
    """A key that was asked for does not exist in the storage."""


class StoreMismatch(ShardStoreError):
    """A store holds features of another extraction config or another dataset than asked for."""


def _check_key(key: str) -> str:
    """Validate a storage key: relative, ``/``-separated, no ``.``/``..`` parts, no empty parts."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"storage key must be a non-empty string, got {key!r}")
    parts = key.split("/")
    if key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"storage key must be a relative '/'-separated path without '.'/'..', got {key!r}")
    return key


@runtime_checkable
class Storage(Protocol):
    """Where shard-store objects live. Keys are relative ``/``-separated paths."""

    @property
    def uri(self) -> str:
        """Where this storage points (a directory path or ``s3://bucket/prefix``), for messages."""
        ...

    def read_bytes(self, key: str) -> bytes:
        """The whole object; :class:`MissingKeyError` if absent, :class:`ShardStoreError` on failure."""
        ...

    def write_bytes(self, key: str, data: bytes) -> None:
        """Create or replace an object atomically (readers see the old or the new object, whole)."""
        ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int:
        """The object's size in bytes; :class:`MissingKeyError` if absent."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys starting with ``prefix`` (a plain string prefix, not only a folder)."""
        ...

    def delete(self, key: str) -> None:
        """Remove an object; removing an absent key is not an error."""
        ...

    def local_path(self, key: str) -> Path | None:
        """A filesystem path of the object (for memory-mapping), or None for remote storage."""
        ...


class LocalStorage:
    """A directory on a local or mounted filesystem (created on first write)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    @property
    def uri(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise MissingKeyError(f"no object {key!r} in {self.uri}") from None
        except OSError as e:
            raise ShardStoreError(f"cannot read {key!r} in {self.uri}: {e}") from e

    def write_bytes(self, key: str, data: bytes) -> None:
        try:
            atomic_write_bytes(self._path(key), data)
        except OSError as e:
            raise ShardStoreError(f"cannot write {key!r} in {self.uri}: {e}") from e

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise MissingKeyError(f"no object {key!r} in {self.uri}") from None

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys under the root that start with ``prefix``; temp files of atomic writes are skipped."""
        folder = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not folder.is_dir():
            return []
        keys = []
        for path in folder.rglob("*"):
            if _TEMP_NAME.match(path.name) or not path.is_file():
                continue
            key = path.relative_to(self.root).as_posix()
            if key.startswith(prefix):
                keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as e:
            raise ShardStoreError(f"cannot delete {key!r} in {self.uri}: {e}") from e

    def local_path(self, key: str) -> Path | None:
        return self._path(key)


_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})

#: Environment variables that set the S3 client's limits (a CLI flag, where given, wins).
S3_ENV = {
    "connect_timeout": "LINKEDOUT_S3_CONNECT_TIMEOUT",
    "read_timeout": "LINKEDOUT_S3_READ_TIMEOUT",
    "retries": "LINKEDOUT_S3_RETRIES",
}


@dataclass(frozen=True)
class S3Config:
    """How to reach an S3 (-compatible) endpoint, with bounded waiting.

    Every request has a connect timeout and a read timeout (seconds without a byte from the
    server) and is retried at most ``retries`` times (botocore "standard" mode: jittered
    exponential back-off on connection errors, timeouts, throttling and 5xx). So an endpoint that
    accepts connections and never answers fails after at most :meth:`worst_case_seconds` (30 s with
    the defaults), with an error naming the endpoint. Raise ``read_timeout`` for a slow server.

    Attributes:
        endpoint_url: e.g. ``http://127.0.0.1:9000``; None uses boto3's resolution
            (``AWS_ENDPOINT_URL``, ``~/.aws/config``, AWS itself).
        region: None uses boto3's resolution, falling back to ``us-east-1``.
        connect_timeout: seconds, > 0 (env ``LINKEDOUT_S3_CONNECT_TIMEOUT``).
        read_timeout: seconds, > 0 (env ``LINKEDOUT_S3_READ_TIMEOUT``).
        retries: retries after the first attempt, >= 0 (env ``LINKEDOUT_S3_RETRIES``).
    """

    endpoint_url: str | None = None
    region: str | None = None
    connect_timeout: float = 3.0
    read_timeout: float = 6.0
    retries: int = 2

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "read_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"S3Config.{name} must be a number of seconds > 0, got {value!r}")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"S3Config.retries must be an integer >= 0, got {self.retries!r}")

    @classmethod
    def from_env(cls, endpoint_url: str | None = None, *, environ: Mapping[str, str] | None = None,
                 **overrides: Any) -> S3Config:
        """Defaults, overridden by the ``LINKEDOUT_S3_*`` environment variables, overridden by
        ``overrides`` that are not None (the CLI flags). A malformed variable is a ``ValueError``
        naming it."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, var in S3_ENV.items():
            raw = env.get(var, "").strip()
            if raw:
                try:
                    values[name] = int(raw) if name == "retries" else float(raw)
                except ValueError:
                    raise ValueError(f"environment variable {var} must be a number, got {raw!r}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(endpoint_url=endpoint_url, **values)

    @property
    def attempts(self) -> int:
        return self.retries + 1

    def worst_case_seconds(self) -> float:
        """The longest one request can take before it fails: every attempt waiting out both
        timeouts, plus botocore's largest back-off between attempts (1 s x 2^i, the throttling scale)."""
        backoff = sum(min(2.0**i, 20.0) for i in range(self.retries))
        return self.attempts * (self.connect_timeout + self.read_timeout) + backoff

    def describe(self) -> str:
        where = self.endpoint_url or "the default AWS endpoint"
        return (f"{where} (connect timeout {self.connect_timeout:g} s, read timeout {self.read_timeout:g} s, "
                f"{self.attempts} attempt{'s' if self.attempts != 1 else ''})")


S3Options = S3Config | str | None  # what the library's ``endpoint_url`` arguments accept


def s3_config(options: S3Options) -> S3Config:
    """An :class:`S3Config` from an endpoint URL (limits from the environment) or a ready config."""
    if isinstance(options, S3Config):
        return options
    return S3Config.from_env(options)


class S3Storage:
    """An S3 bucket (or any S3-compatible endpoint: MinIO, Ceph, moto) under an optional key prefix.

    Credentials and, when no endpoint is given, the endpoint come from the usual boto3 chain
    (``AWS_ACCESS_KEY_ID``..., ``AWS_ENDPOINT_URL``, ``~/.aws``, an instance role). Every request has
    connect/read timeouts and bounded retries (:class:`S3Config`).

    Args:
        bucket: the bucket name.
        prefix: the key prefix under which this storage lives ("" = bucket root).
        endpoint_url: an endpoint URL, or a full :class:`S3Config`; None: boto3's resolution.
        region, connect_timeout, read_timeout, retries: override the config's (and the
            environment's) values when given.
        client: a ready boto3 S3 client (the connection arguments are then ignored, except that an
            unpickled copy builds its own client from them).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: S3Options = None,
        region: str | None = None,
        *,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        retries: int | None = None,
        client: BaseClient | Any | None = None,
    ) -> None:
        if not bucket or "/" in bucket:
            raise ValueError(f"S3Storage.bucket must be a bucket name without '/', got {bucket!r}")
        base = s3_config(endpoint_url)
        changes: dict[str, Any] = {k: v for k, v in dict(region=region, connect_timeout=connect_timeout,
                                                           read_timeout=read_timeout, retries=retries).items()
                                   if v is not None}
        self.config = dataclasses.replace(base, **changes) if changes else base
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            _check_key(self.prefix)
        self.endpoint_url = self.config.endpoint_url
        self.client = client if client is not None else self._make_client(self.config)

    @staticmethod
    def _make_client(cfg: S3Config) -> BaseClient:
        import boto3
        from botocore.config import Config

        session = boto3.session.Session()
        config = Config(
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.read_timeout,
            retries={"max_attempts": cfg.retries, "mode": "standard"},  # botocore: retries after the first
        )
        return session.client("s3", endpoint_url=cfg.endpoint_url,
                              region_name=cfg.region or session.region_name or "us-east-1", config=config)

    def __getstate__(self) -> dict[str, Any]:
        # boto3 clients do not pickle (DataLoader workers, process pools): rebuild one on unpickling.
        state = self.__dict__.copy()
        del state["client"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.client = self._make_client(self.config)

    def __repr__(self) -> str:
        return f"S3Storage({self.uri!r}, endpoint_url={self.endpoint_url!r})"

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, action: str, key: str, e: Exception) -> ShardStoreError:
        from botocore.exceptions import ClientError

        if isinstance(e, ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND_CODES:
                return MissingKeyError(f"no object {key!r} in {self.uri}")
            return ShardStoreError(f"cannot {action} {key!r} in {self.uri}: {code}: {e}")
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

        if isinstance(e, ReadTimeoutError | ConnectTimeoutError | BotoConnectionError):
            return ShardStoreError(f"cannot {action} {key!r} in {self.uri}: the S3 endpoint "
                                     f"{self.config.describe()} did not answer: {type(e).__name__}: {e}")
        return ShardStoreError(f"cannot {action} {key!r} in {self.uri}: {type(e).__name__}: {e}")

    def read_bytes(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            body: bytes = response["Body"].read()
            return body
        except (BotoCoreError, ClientError) as e:
            raise self._error("read", key, e) from e

    def write_bytes(self, key: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except (BotoCoreError, ClientError) as e:
            raise self._error("write", key, e) from e

    def size(self, key: str) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])
        except (BotoCoreError, ClientError) as e:
            raise self._error("stat", key, e) from e

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except MissingKeyError:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        base = f"{self.prefix}/" if self.prefix else ""
        keys: list[str] = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
                keys.extend(obj["Key"][len(base):] for obj in page.get("Contents", []))
        except (BotoCoreError, ClientError) as e:
            raise self._error("list", prefix or "/", e) from e
        return sorted(keys)

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as e:
            raise self._error("delete", key, e) from e

    def local_path(self, key: str) -> Path | None:
        return None


def open_storage(uri: str | os.PathLike[str] | Storage, endpoint_url: S3Options = None) -> Storage:
    """A :class:`Storage` for ``s3://bucket[/prefix]``, ``file:///path`` or a plain path.

    A ready :class:`Storage` is returned unchanged. ``endpoint_url`` (an URL or an
    :class:`S3Config`) only applies to ``s3://``.
    """
    if not isinstance(uri, str | os.PathLike):
        if isinstance(uri, Storage):
            return uri
        raise TypeError(f"expected a path, an s3:// uri or a Storage, got {type(uri).__name__}")
    text = os.fspath(uri)
    if text.startswith("s3://"):
        bucket, _, prefix = text[len("s3://"):].partition("/")
        if not bucket:
            raise ValueError(f"S3 uri must be s3://bucket[/prefix], got {text!r}")
        return S3Storage(bucket, prefix, endpoint_url=endpoint_url)
    if "://" in text and not text.startswith("file://"):
        raise ValueError(f"unsupported storage uri {text!r}: use a path, file:///path or s3://bucket/prefix")
    if text.startswith("file://"):
        text = text[len("file://"):]
    if not text:
        raise ValueError("storage uri must not be empty")
    return LocalStorage(text)
