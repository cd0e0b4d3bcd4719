"""Reading a shard store: ``FeatureReader`` (random access by video id, local or S3).

The store's layout, the spec, the manifests and the index are defined in :mod:`.layout`,
:mod:`.spec` and :mod:`.manifest`; this module reads them. Local shards are memory-mapped, S3 shards downloaded into a bounded cache;
every shard file is checked against its manifest's sha256 the first time a process opens it.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from linkedout.shards.layout import INDEX_KEY, SPEC_KEY
from linkedout.shards.manifest import (
    FeatureIndex,
    FileEntry,
    ShardManifest,
    check_files,
    check_manifest_spec,
    list_shards,
    read_manifest,
)
from linkedout.shards.quant import dequantize_int8
from linkedout.shards.spec import read_spec
from linkedout.shards.storage import MissingKeyError, S3Options, ShardStoreError, Storage, open_storage
from linkedout.utils import atomic_write_bytes, file_sha256, get_logger, is_int

log = get_logger(__name__)

__all__ = ["FeatureReader"]


# Local shard files this process has hashed and found equal to their manifest entry, keyed by what
# would change if the file were rewritten (path, size, mtime) and the expected hash.
_VERIFIED_FILES: set[tuple[str, int, int, str]] = set()


def _verify_local_file(path: Path, entry: FileEntry, uri: str) -> None:
    """Hash a local shard file once per process; :class:`ShardStoreError` when it differs from its manifest."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, entry.sha256)
    if key in _VERIFIED_FILES:
        return
    if file_sha256(path) != entry.sha256:
        raise ShardStoreError(f"checksum mismatch for {entry.key!r} in {uri} ({path}): the file changed "
                                "on disk after it was written (corruption?); `linkedout features verify --repair` "
                                "lists every damaged shard and marks it for `linkedout extract` to redo")
    _VERIFIED_FILES.add(key)



@dataclass
class _Shard:
    manifest: ShardManifest
    data: np.ndarray  # (n, L, K, D) float16 or int8, possibly memory-mapped
    scale: np.ndarray | None  # (n, L, K) float32 for int8
    nbytes: int  # bytes held in process memory (0 when memory-mapped)


class _StaleIndex(ShardStoreError):
    """index.json disagrees with a shard manifest (a shard was rewritten after finalize)."""


@dataclass
class _Cache:
    max_shards: int
    max_bytes: int
    entries: OrderedDict[int, _Shard] = field(default_factory=OrderedDict)

    def get(self, shard: int) -> _Shard | None:
        entry = self.entries.get(shard)
        if entry is not None:
            self.entries.move_to_end(shard)
        return entry

    def put(self, shard: int, entry: _Shard) -> None:
        self.entries[shard] = entry
        self.entries.move_to_end(shard)
        while len(self.entries) > 1 and (
            len(self.entries) > self.max_shards or sum(e.nbytes for e in self.entries.values()) > self.max_bytes
        ):
            self.entries.popitem(last=False)


class FeatureReader:
    """Random access to a shard store by video id.

    Local stores are memory-mapped per shard (a lookup reads only its rows), each shard file's
    sha256 checked against its manifest when the process first opens it (once per file and
    process: a bit flip on disk is an error, not silently wrong features); remote (S3) shards
    are downloaded once each, checked against their sha256, and kept in an LRU cache bounded by
    ``cache_size`` shards and ``cache_bytes`` bytes, or saved under ``cache_dir`` (keyed by sha256,
    so never stale) and memory-mapped from there. The index comes from ``index.json`` when it
    lists the same shards as the manifests present, else it is rebuilt from the manifests.

    Args:
        storage: a :class:`Storage`, a directory or ``s3://bucket/prefix``.
        cache_size: the most shards held open, >= 1.
        cache_bytes: the most bytes of downloaded shards held in memory, >= 1 (memory-mapped shards
            count 0); the most recent shard is always kept.
        cache_dir: a local directory for downloaded shards (remote stores only).
        verify_on_open: check each shard file's sha256 when it is first opened (default True;
            False checks sizes only, for a store just verified with :meth:`verify`).
        endpoint_url: S3 endpoint when ``storage`` is an ``s3://`` uri.
    """

    def __init__(
        self,
        storage: Storage | str | os.PathLike[str],
        cache_size: int = 8,
        *,
        cache_bytes: int = 2 << 30,
        cache_dir: str | os.PathLike[str] | None = None,
        verify_on_open: bool | None = None,
        endpoint_url: S3Options = None,
    ) -> None:
        if not is_int(cache_size) or cache_size < 1:
            raise ValueError(f"FeatureReader.cache_size must be an integer >= 1, got {cache_size!r}")
        if not is_int(cache_bytes) or cache_bytes < 1:
            raise ValueError(f"FeatureReader.cache_bytes must be an integer >= 1, got {cache_bytes!r}")
        self.storage = open_storage(storage, endpoint_url)
        self._remote = self.storage.local_path(SPEC_KEY) is None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.verify_on_open = True if verify_on_open is None else bool(verify_on_open)
        self.spec = read_spec(self.storage)
        self._lock = threading.RLock()
        self._cache = _Cache(int(cache_size), int(cache_bytes))
        self._manifests: dict[int, ShardManifest] = {}
        self._index = self._load_index()

    def __repr__(self) -> str:
        return f"FeatureReader({self.storage.uri!r}, videos={len(self)}, shards={len(self._index.shards)})"

    def __getstate__(self) -> dict[str, Any]:
        # Picklable for DataLoader workers / process pools: open shards and the lock are not sent.
        state = self.__dict__.copy()
        state["_lock"] = None
        state["_cache"] = _Cache(self._cache.max_shards, self._cache.max_bytes)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # ---- index
    def _manifest(self, shard: int) -> ShardManifest:
        manifest = self._manifests.get(shard)
        if manifest is None:
            manifest = read_manifest(self.storage, shard)
            check_manifest_spec(manifest, self.spec, self.storage.uri)
            self._manifests[shard] = manifest
        return manifest

    def _load_index(self) -> FeatureIndex:
        shards = list_shards(self.storage)
        try:
            index = FeatureIndex.from_bytes(self.storage.read_bytes(INDEX_KEY), self.storage.uri)
            if set(index.shards) == set(shards):
                return index
            log.warning("%s in %s lists shards other than those present; rebuilding it from %d manifests "
                        "(run finalize to update it)", INDEX_KEY, self.storage.uri, len(shards))
        except MissingKeyError:
            log.info("no %s in %s; building the index from %d shard manifests",
                     INDEX_KEY, self.storage.uri, len(shards))
        except ShardStoreError as e:
            log.warning("%s; rebuilding the index from the shard manifests", e)
        return self._rebuild_index(shards)

    def _rebuild_index(self, shards: Iterable[int] | None = None) -> FeatureIndex:
        shards = list_shards(self.storage) if shards is None else list(shards)
        self._manifests.clear()
        return FeatureIndex.build({s: self._manifest(s) for s in shards}, self.storage.uri)

    @property
    def ids(self) -> list[str]:
        """Video ids with features, in store order (shard, row)."""
        return list(self._index.locations)

    @property
    def failed(self) -> dict[str, str]:
        """Video ids whose extraction failed -> the reason."""
        return dict(self._index.failed)

    @property
    def shards(self) -> tuple[int, ...]:
        return self._index.shards

    def manifest(self, shard: int) -> ShardManifest:
        with self._lock:
            return self._manifest(shard)

    def __len__(self) -> int:
        return len(self._index.locations)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self._index.locations

    def __iter__(self) -> Iterator[str]:
        return iter(self._index.locations)

    # ---- shard loading
    def _open(self, shard: int) -> _Shard:
        with self._lock:
            cached = self._cache.get(shard)
            if cached is not None:
                return cached
            manifest = self._manifest(shard)
            for row, vid in enumerate(manifest.ids):
                if self._index.locations.get(vid) != (shard, row):
                    raise _StaleIndex(f"{INDEX_KEY} of {self.storage.uri} disagrees with shard {shard} "
                                      f"about video {vid!r}")
            n = len(manifest.ids)
            data, data_bytes = self._load_array(manifest.files["data"], np.dtype(self.spec.dtype),
                                                (n, *self.spec.shape))
            scale, scale_bytes = None, 0
            if self.spec.dtype == "int8":
                scale, scale_bytes = self._load_array(manifest.files["scale"], np.dtype(np.float32),
                                                      (n, *self.spec.shape[:2]))
            entry = _Shard(manifest, data, scale, data_bytes + scale_bytes)
            self._cache.put(shard, entry)
            return entry

    def _load_array(self, entry: FileEntry, dtype: np.dtype[Any], shape: tuple[int, ...]) -> tuple[np.ndarray, int]:
        """(array, bytes held in memory) of one shard file, checked against the manifest."""
        local = self.storage.local_path(entry.key)
        in_memory = 0
        checked = False  # sha256 already checked (a download into cache_dir)
        if local is None and self.cache_dir is not None:
            local = self.cache_dir / f"{entry.sha256}.npy"
            if not (local.is_file() and local.stat().st_size == entry.bytes):
                raw = self.storage.read_bytes(entry.key)
                self._check_bytes(entry, raw, checksum=True)  # the cache is keyed by sha256: always check
                atomic_write_bytes(local, raw)
                checked = True
        if local is not None:
            try:
                size = local.stat().st_size
            except FileNotFoundError:
                raise ShardStoreError(f"shard file {entry.key!r} listed in its manifest is missing "
                                        f"from {self.storage.uri}") from None
            if size != entry.bytes:
                raise ShardStoreError(f"shard file {entry.key!r} in {self.storage.uri} has {size} bytes, "
                                        f"its manifest says {entry.bytes}: truncated or replaced")
            if self.verify_on_open and not checked:
                _verify_local_file(local, entry, self.storage.uri)
            mmap: Literal["r"] | None = "r" if shape[0] > 0 else None  # an empty array cannot be mapped
            source: Path | io.BytesIO = local
        else:
            raw = self.storage.read_bytes(entry.key)
            self._check_bytes(entry, raw, checksum=self.verify_on_open)
            mmap, source = None, io.BytesIO(raw)
        try:
            array = np.load(source, mmap_mode=mmap, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise ShardStoreError(f"shard file {entry.key!r} in {self.storage.uri} is not a valid .npy "
                                    f"file: {e}") from e
        if mmap is None:
            in_memory = array.nbytes
        if array.dtype != dtype or array.shape != shape:
            raise ShardStoreError(f"shard file {entry.key!r} in {self.storage.uri} holds {array.dtype} "
                                    f"{array.shape}, expected {dtype} {shape}")
        return array, in_memory

    def _check_bytes(self, entry: FileEntry, raw: bytes, *, checksum: bool) -> None:
        if len(raw) != entry.bytes:
            raise ShardStoreError(f"shard file {entry.key!r} in {self.storage.uri} has {len(raw)} bytes, "
                                    f"its manifest says {entry.bytes}: truncated or replaced")
        if checksum and hashlib.sha256(raw).hexdigest() != entry.sha256:
            raise ShardStoreError(f"checksum mismatch for {entry.key!r} in {self.storage.uri}")

    # ---- lookups
    def _missing(self, video_id: str) -> KeyError:
        reason = self._index.failed.get(video_id)
        if reason is not None:
            return KeyError(f"video id {video_id!r} has no features in {self.storage.uri}: "
                            f"its extraction failed ({reason})")
        return KeyError(f"video id {video_id!r} is not in shard store {self.storage.uri}")

    def get(self, video_id: str) -> np.ndarray:
        """Features of one video, float32 ``[L, K, D]``; ``KeyError`` naming an unknown id."""
        return self.get_many([video_id])[0]

    def get_many(self, video_ids: Iterable[str]) -> np.ndarray:
        """Features of several videos in the given order (repeats allowed), float32 ``[n, L, K, D]``.

        Each shard involved is opened once; rows are read in shard order.
        """
        video_ids = list(video_ids)
        for attempt in range(2):
            try:
                return self._gather(video_ids)
            except _StaleIndex as e:
                if attempt:
                    raise
                log.warning("%s; rebuilding the index from the shard manifests", e)
                with self._lock:
                    self._cache.entries.clear()
                    self._index = self._rebuild_index()
        raise AssertionError("unreachable")

    def _gather(self, video_ids: list[str]) -> np.ndarray:
        out = np.empty((len(video_ids), *self.spec.shape), dtype=np.float32)  # (n, L, K, D)
        groups: dict[int, tuple[list[int], list[int]]] = {}
        for pos, vid in enumerate(video_ids):
            loc = self._index.locations.get(vid)
            if loc is None:
                raise self._missing(vid)
            positions, rows = groups.setdefault(loc[0], ([], []))
            positions.append(pos)
            rows.append(loc[1])
        for shard in sorted(groups):
            positions, rows = groups[shard]
            order = np.argsort(rows, kind="stable")
            pos_sorted = np.asarray(positions)[order]
            rows_sorted = np.asarray(rows)[order]
            entry = self._open(shard)
            values = entry.data[rows_sorted]  # (m, L, K, D)
            if entry.scale is not None:
                out[pos_sorted] = dequantize_int8(values, entry.scale[rows_sorted])
            else:
                out[pos_sorted] = values
        return out

    def verify(self) -> int:
        """Re-hash every shard file against its manifest; returns the number of files checked.

        Raises :class:`ShardStoreError` listing every missing, truncated or corrupted file.
        """
        problems: list[str] = []
        count = 0
        for shard in self._index.shards:
            manifest = self.manifest(shard)
            problems += check_files(self.storage, manifest, "checksum")
            count += len(manifest.files)
        if problems:
            raise ShardStoreError(f"shard store {self.storage.uri} failed verification: " + "; ".join(problems))
        log.info("verified %d files of %d shards in %s", count, len(self._index.shards), self.storage.uri)
        return count
