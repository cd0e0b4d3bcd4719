"""Online reads: the history reader the transformer uses, and the row reads behind the writers.

:class:`HistoryReader` answers ``get(user_ids) -> [[video ids], ...]`` from
``user_history:watched``, asked by name (the ``user_history`` view, its ``watched`` feature), never
by position; a user with no row gets ``[]``. It reads through the provider's ``online_read``, the
call behind Feast's ``get_online_features``, without the response assembly around it (entity
de-duplication, proto-to-Python conversion of every value, the ``OnlineResponse``), which is most
of the time for one user (0.14 ms -> 0.02 ms on SQLite here; ``bench/feature_store.py`` measures both).

It imports neither kserve nor tritonclient, so the transformer process can hold it. Its calls are
bounded: on Redis by the socket connect/read timeouts of the repository's connection string and a
retry count without backoff (redis-py's own default is 10 retries with backoff up to 1 s: 3-8 s
per outage), so an outage raises :class:`~linkedout.featurestore.errors.OnlineStoreUnavailable`
naming ``host:port`` within about ``timeout x (retries + 1)``; :meth:`HistoryReader.aget` adds an
asyncio deadline on top for callers on an event loop.

On SQLite (the local store) the reader's connection keeps the history table's pages in its own
page cache, read through once when the reader opens (:meth:`HistoryReader.hold_pages`): a read then
never waits for the disk. Without it, each read of a few users made 7-8 ``pread`` calls, and when the
operating system had dropped the file from its page cache, one such read took 100-384 ms under
``bench/serve.py``'s load (0.65 ms of it CPU), past the transformer's 200 ms deadline: those
requests were answered UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from linkedout.featurestore.definitions import USER_KEY, WATCHED
from linkedout.featurestore.errors import FeatureRepoError, OnlineStoreUnavailable
from linkedout.featurestore.repo import FeatureRepo, open_repo
from linkedout.utils import get_logger

LOG = get_logger(__name__)

#: the most memory (MiB) a history reader's SQLite page cache holds by default (``HistoryReader``)
SQLITE_CACHE_MB = 256


def user_keys(user_ids: Sequence[Any]) -> list[str]:
    """User ids as the ``user`` entity's STRING keys; ints and bytes are accepted, anything else is a
    ``ValueError`` naming the position."""
    out = []
    for i, u in enumerate(user_ids):
        if isinstance(u, str):
            key = u
        elif isinstance(u, bytes):
            key = u.decode("utf-8")
        elif isinstance(u, int) and not isinstance(u, bool):
            key = str(u)
        elif hasattr(u, "dtype") and getattr(u.dtype, "kind", "") in "iuSUO":  # numpy scalars
            key = u.item().decode("utf-8") if isinstance(u.item(), bytes) else str(u.item())
        else:
            raise ValueError(f"user_ids[{i}] must be a str, bytes or int user id, got {type(u).__name__} {u!r}")
        if not key:
            raise ValueError(f"user_ids[{i}] is an empty user id")
        out.append(key)
    return out


def configure_redis_client(repo: FeatureRepo, client: Any = None) -> bool:
    """Bound Feast's Redis client: ``repo.settings.redis_retries`` retries, no backoff.

    Feast builds the client from the connection string, which carries the socket timeouts but cannot
    carry a retry policy, so it is set on the client Feast made: the blocking one
    (``RedisOnlineStore._get_client``), or ``client`` (its asyncio one, :meth:`HistoryReader.get_async`).
    Returns False (and logs) if this Feast or redis-py no longer exposes it; the socket timeouts still hold.
    """
    if repo.settings.environment != "production":
        return False
    try:
        from redis.backoff import NoBackoff

        if client is None:
            from redis.retry import Retry

            online_store: Any = repo.store.provider.online_store
            online_store._get_client(repo.store.config.online_store).set_retry(
                Retry(NoBackoff(), repo.settings.redis_retries))
        else:
            from redis.asyncio.retry import Retry as AsyncRetry

            client.set_retry(AsyncRetry(NoBackoff(), repo.settings.redis_retries))
        return True
    except Exception as e:  # an API change in Feast or redis-py: keep the socket timeouts
        LOG.warning("could not set the Redis retry policy (%s); calls are bounded by the socket timeouts only", e)
        return False


@contextlib.contextmanager
def online_errors(repo: FeatureRepo, what: str) -> Iterator[None]:
    """Translate store failures into :class:`OnlineStoreUnavailable` / :class:`FeatureRepoError`."""
    from feast.errors import FeastError

    try:
        yield
    except (OnlineStoreUnavailable, FeatureRepoError, ValueError):
        raise
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            raise FeatureRepoError(f"{what}: the online tables of {repo.path} do not exist; apply the repository "
                                   f"first (linkedout.featurestore.apply or `feast -c {repo.path} apply`)") from e
        raise OnlineStoreUnavailable(f"{what}: the online store ({repo.online_address}) failed: {e}") from e
    except FeastError as e:
        raise FeatureRepoError(f"{what}: {type(e).__name__}: {e} (repository {repo.path}; is it applied?)") from e
    except Exception as e:
        if _is_store_outage(e):
            raise OnlineStoreUnavailable(f"{what}: the online store ({repo.online_address}) did not answer: "
                                         f"{type(e).__name__}: {e}") from e
        raise


def _is_store_outage(e: BaseException) -> bool:
    import redis

    return isinstance(e, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError | ConnectionError
                      | TimeoutError | sqlite3.DatabaseError)


def read_rows(repo: FeatureRepo, view: str, keys: Sequence[Any], features: Sequence[str],
              batch_size: int = 2000) -> list[tuple[datetime | None, dict[str, Any] | None]]:
    """Online rows of ``view`` for entity ``keys`` with their event times: ``(ts, {feature: python value})``,
    ``(None, None)`` when a key has no row. The writers use it (newer-row checks, appending to histories)."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values

    store = repo.store
    fv = store.get_feature_view(view, allow_registry_cache=True)
    join_key = fv.entity_columns[0].name
    value_type = fv.entity_columns[0].dtype.to_value_type()
    out: list[tuple[datetime | None, dict[str, Any] | None]] = []
    with online_errors(repo, f"reading {view}"):
        for lo in range(0, len(keys), batch_size):
            chunk = list(keys[lo:lo + batch_size])
            if join_key == USER_KEY:  # string keys: build the protos directly (the conversion is the cost)
                protos = [Value(string_val=k) for k in user_keys(chunk)]
            else:
                protos = python_values_to_proto_values(chunk, value_type)
            entity_keys = [EntityKey(join_keys=[join_key], entity_values=[v]) for v in protos]
            rows = store.provider.online_read(config=store.config, table=fv, entity_keys=entity_keys,
                                              requested_features=list(features))
            for ts, values in rows:
                if values is None:
                    out.append((None, None))
                else:
                    out.append((ts, {k: _python(values[k], feast_value_type_to_python_type)
                                     for k in features if k in values}))
    return out


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _python(value: Any, convert: Any) -> Any:
    """A ValueProto as Python; int64 scalars and lists directly (most of what the writers read)."""
    kind = value.WhichOneof("val")
    if kind == "int64_val":
        return value.int64_val
    if kind == "int64_list_val":
        return list(value.int64_list_val.val)
    return convert(value)


class HistoryReader:
    """The online history of users: ``get(user_ids) -> list of lists of video ids`` (most recent last).

    ``repo`` is a rendered repository directory or an opened :class:`FeatureRepo`; ``feature`` the
    reference read (``view:feature``, an Array(Int64) feature of a view keyed by ``user``). A
    directory is opened with a registry cache that never expires: the view is resolved once, here,
    and does not change under a running server. Thread-safe: Feast's SQLite connection is shared
    (``check_same_thread=False``) and its calls serialised by a lock; Redis calls go through
    redis-py's connection pool. ``sqlite_cache_mb``: the most memory the SQLite connection's page
    cache may hold (:meth:`hold_pages`; 0: SQLite's default cache, nothing read ahead).
    """

    def __init__(self, repo: FeatureRepo | str | os.PathLike[str], *, feature: str = WATCHED,
                 max_workers: int = 4, sqlite_cache_mb: int = SQLITE_CACHE_MB) -> None:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        self.repo = repo if isinstance(repo, FeatureRepo) else open_repo(repo, registry_ttl_s=0)
        view, _, name = feature.partition(":")
        if not view or not name:
            raise ValueError(f"feature must be 'view:feature', got {feature!r}")
        self.feature = feature
        self._name = name
        self._entity_key, self._value = EntityKey, Value
        self._serialise = self.repo.settings.environment == "local"
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._max_workers = max_workers
        configure_redis_client(self.repo)
        with online_errors(self.repo, "opening the history reader"):
            self._view = self.repo.store.get_feature_view(view, allow_registry_cache=True)
        dtypes = {f.name: str(f.dtype) for f in self._view.features}
        if name not in dtypes:
            raise FeatureRepoError(f"{self.repo.path}: the {view} view has no {name!r} feature ({sorted(dtypes)})")
        if [e.name for e in self._view.entity_columns] != [USER_KEY] or "Int64" not in dtypes[name] or (
                "Array" not in dtypes[name]):
            raise FeatureRepoError(f"{self.repo.path}: {feature} must be an Array(Int64) feature keyed by "
                                   f"{USER_KEY}, got {dtypes[name]} keyed by {[e.name for e in self._view.entity_columns]}")
        self._provider = self.repo.store.provider
        self._config = self.repo.store.config
        self._async_loop: asyncio.AbstractEventLoop | None = None
        if sqlite_cache_mb < 0:
            raise ValueError(f"sqlite_cache_mb must be >= 0, got {sqlite_cache_mb}")
        self.held_pages_bytes = 0
        if sqlite_cache_mb and self._serialise:
            try:
                self.held_pages_bytes = self.hold_pages(sqlite_cache_mb)
            except OnlineStoreUnavailable as e:  # a locked file: reads report the outage when they come
                LOG.warning("the online store's pages were not read ahead: %s", e)

    def hold_pages(self, cache_mb: int) -> int:
        """SQLite: size the connection's page cache for the whole database file (at most ``cache_mb``
        MiB) and read the history table and its indexes through it once. Returns the bytes of the
        file it covers (0 when the file is larger than ``cache_mb``: the cache is capped, nothing is
        read ahead). A write by another connection (a history update) empties the cache; the pages
        come back as they are read."""
        path = self.repo.settings.sqlite_path
        if not path or not os.path.exists(path):
            return 0
        size = os.path.getsize(path)
        cap = cache_mb * 1024 * 1024
        table = f"{self._config.project}_{self._view.name}"
        with online_errors(self.repo, f"reading {table} into the page cache"), self._lock:
            online_store: Any = self._provider.online_store
            conn = online_store._get_conn(self._config)  # Feast's own connection: its reads' cache
            conn.execute(f"PRAGMA cache_size = -{min(cap, size + size // 4 + 1024 * 1024) // 1024}")
            if size > cap:
                LOG.info("%s: %.0f MiB, more than the %d MiB page cache: not read ahead", path, size / 2**20, cache_mb)
                return 0
            indexes = [n for (n,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?", (table,))]
            if not indexes and not conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone():
                return 0  # not applied yet: reads report it
            quoted = _quote(table)
            for _ in conn.execute(f"SELECT value FROM {quoted} NOT INDEXED"):  # the table's pages, no conversions
                pass
            for index in indexes:
                conn.execute(f"SELECT count(*) FROM {quoted} INDEXED BY {_quote(index)}").fetchall()
        return size

    @property
    def address(self) -> str:
        """Where the histories are read from (``redis host:port`` or ``sqlite PATH``)."""
        return self.repo.online_address

    def get(self, user_ids: Sequence[Any]) -> list[list[int]]:
        """The last <= 10 watched video ids of each user, most recent last; ``[]`` for a user with none.

        Raises ``ValueError`` for a malformed id and :class:`OnlineStoreUnavailable` when the store
        does not answer (within the configured bound).
        """
        keys = user_keys(user_ids)
        if not keys:
            return []
        with online_errors(self.repo, f"reading {self.feature} of {len(keys)} users"):
            if self._serialise:
                with self._lock:
                    rows = self._read(self._entity_keys(keys))
            else:
                rows = self._read(self._entity_keys(keys))
        return self._histories(rows)

    @property
    def reads_async(self) -> bool:
        """Whether the store has an asyncio client (Redis): :meth:`get_async` then reads on the
        caller's event loop, with no thread."""
        return not self._serialise

    async def get_async(self, user_ids: Sequence[Any]) -> list[list[int]]:
        """:meth:`get` through Feast's asyncio Redis client (``online_read_async``), on the running
        event loop. 8 concurrent readers of 2 users, 100,000 users on a local redis-server
        (``bench/feature_store.py``, medians of 3): 5,643 reads/s at 177 us of CPU each, against
        2,385 reads/s at 473 us for :meth:`get` on a pool of 4 threads. Only where :attr:`reads_async`."""
        if not self.reads_async:
            raise RuntimeError(f"{self.address}: this store has no asyncio client; read it with get() on a thread")
        keys = user_keys(user_ids)
        if not keys:
            return []
        with online_errors(self.repo, f"reading {self.feature} of {len(keys)} users"):
            await self._bind_async_client()
            rows = await self._provider.online_read_async(config=self._config, table=self._view,
                                                          entity_keys=self._entity_keys(keys),
                                                          requested_features=[self._name])
        return self._histories(rows)

    async def _bind_async_client(self) -> None:
        """Feast keeps one asyncio Redis client per store, bound to the loop it was made in: a reader
        used from another loop (another ``asyncio.run``) has Feast make a new one. Each gets the
        blocking client's retry policy (``repo.settings.redis_retries`` retries, no backoff)."""
        loop = asyncio.get_running_loop()
        if self._async_loop is loop:
            return
        online_store: Any = self._provider.online_store
        online_store._client_async = None
        configure_redis_client(self.repo, await online_store._get_client_async(self._config.online_store))
        self._async_loop = loop

    def _entity_keys(self, keys: list[str]) -> list[Any]:
        return [self._entity_key(join_keys=[USER_KEY], entity_values=[self._value(string_val=k)]) for k in keys]

    def _histories(self, rows: Sequence[tuple[Any, Any]]) -> list[list[int]]:
        out = []
        for _, values in rows:
            value = values.get(self._name) if values else None
            out.append(list(value.int64_list_val.val) if value is not None else [])
        return out

    def _read(self, entity_keys: list[Any]) -> list[tuple[Any, Any]]:
        return self._provider.online_read(config=self._config, table=self._view, entity_keys=entity_keys,
                                          requested_features=[self._name])

    async def aget(self, user_ids: Sequence[Any], timeout_s: float | None = None) -> list[list[int]]:
        """The histories with a deadline: :class:`OnlineStoreUnavailable` after ``timeout_s`` seconds.
        Redis: :meth:`get_async` (cancelled at the deadline); SQLite: :meth:`get` on a worker thread
        (which finishes on its own, bounded by the store's timeouts)."""
        if self.reads_async:
            read: Any = self.get_async(list(user_ids))
        else:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(self._max_workers, thread_name_prefix="feast-read")
            read = asyncio.get_running_loop().run_in_executor(self._pool, self.get, list(user_ids))
        try:
            return await asyncio.wait_for(read, timeout_s)
        except TimeoutError as e:
            raise OnlineStoreUnavailable(f"reading {self.feature}: the online store ({self.address}) did not answer "
                                         f"within {timeout_s} s") from e

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
