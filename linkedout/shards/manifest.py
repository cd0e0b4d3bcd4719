"""What a shard store holds: each shard's manifest and the store's index, and checks of the shard files.

A shard's manifest (``shards/shard-NNNNN.json``) lists its videos by row, its failed videos and the
sha256 and size of each of its data files; it is written after them, so a shard is complete iff its
manifest exists and its files match it. ``index.json`` merges the manifests: where each video is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from linkedout.shards.layout import (
    FORMAT,
    FORMAT_VERSION,
    INDEX_KEY,
    MANIFEST_KEY_PATTERN,
    SHARD_DIR,
    manifest_key,
)
from linkedout.shards.spec import FeatureSpec
from linkedout.shards.storage import MissingKeyError, ShardStoreError, Storage
from linkedout.utils import file_sha256, utc_now

Verify = Literal["none", "size", "checksum"]


@dataclass(frozen=True)
class FileEntry:
    """One data file of a shard: its key, sha256 (hex) and size in bytes."""

    key: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class ShardManifest:
    """What a complete shard holds. ``ids[r]`` is the video at row ``r`` of the data file."""

    shard: int
    ids: tuple[str, ...]
    failed: dict[str, str]  # video id -> why it has no features
    shape: tuple[int, ...]  # (n, L, K, D)
    dtype: str
    files: dict[str, FileEntry]  # "data" and, for int8, "scale"
    created: str
    # video id -> what identified its file when it was extracted (``linkedout.fingerprint.video_source``),
    # for written and failed videos; empty in stores written before sources were recorded.
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "shard": self.shard,
            "ids": list(self.ids),
            "failed": dict(self.failed),
            "shape": list(self.shape),
            "dtype": self.dtype,
            "files": {name: dataclasses.asdict(entry) for name, entry in self.files.items()},
            "created": self.created,
            "sources": self.sources,
        }

    @classmethod
    def from_bytes(cls, raw: bytes, key: str, uri: str) -> ShardManifest:
        """Parse a manifest; :class:`ShardStoreError` naming ``key`` if it is malformed."""
        try:
            d = json.loads(raw)
            if d.get("format") != FORMAT or d.get("version") != FORMAT_VERSION:
                raise ValueError(f"format {d.get('format')!r} version {d.get('version')!r}")
            manifest = cls(
                shard=int(d["shard"]),
                ids=tuple(str(x) for x in d["ids"]),
                failed={str(k): str(v) for k, v in d["failed"].items()},
                shape=tuple(int(x) for x in d["shape"]),
                dtype=str(d["dtype"]),
                files={name: FileEntry(str(e["key"]), str(e["sha256"]), int(e["bytes"]))
                       for name, e in d["files"].items()},
                created=str(d["created"]),
                sources={str(k): dict(v) for k, v in (d.get("sources") or {}).items()},
            )
            if manifest.shape[:1] != (len(manifest.ids),) or "data" not in manifest.files:
                raise ValueError(f"shape {manifest.shape} does not match {len(manifest.ids)} ids "
                                 "or the data file is missing")
            return manifest
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ShardStoreError(f"malformed shard manifest {key!r} in {uri}: {e}") from e


def list_shards(storage: Storage) -> list[int]:
    """Indices of the shards that have a manifest (complete shards, unless damaged later)."""
    return sorted(int(m.group(1)) for key in storage.list(f"{SHARD_DIR}/")
                  if (m := MANIFEST_KEY_PATTERN.match(key)))


def read_manifest(storage: Storage, shard: int) -> ShardManifest:
    """The manifest of a shard; :class:`MissingKeyError` if none, :class:`ShardStoreError` if malformed."""
    return parse_manifest(storage.read_bytes(manifest_key(shard)), shard, storage.uri)


def parse_manifest(raw: bytes, shard: int, uri: str) -> ShardManifest:
    """The manifest of shard ``shard`` from its bytes; :class:`ShardStoreError` if malformed or of another shard."""
    key = manifest_key(shard)
    manifest = ShardManifest.from_bytes(raw, key, uri)
    if manifest.shard != shard:
        raise ShardStoreError(f"manifest {key!r} in {uri} names shard {manifest.shard}")
    return manifest


def _object_sha256(storage: Storage, key: str) -> tuple[str, int]:
    """(sha256 hex, size) of an object, streamed from disk when local."""
    path = storage.local_path(key)
    if path is None:
        data = storage.read_bytes(key)
        return hashlib.sha256(data).hexdigest(), len(data)
    try:
        return file_sha256(path), path.stat().st_size
    except FileNotFoundError:
        raise MissingKeyError(f"no object {key!r} in {storage.uri}") from None


def check_files(storage: Storage, manifest: ShardManifest, verify: Verify) -> list[str]:
    """Problems with a shard's data files against its manifest (empty = the shard is whole)."""
    problems: list[str] = []
    if verify == "none":
        return problems
    for entry in manifest.files.values():
        try:
            if verify == "checksum":
                digest, size = _object_sha256(storage, entry.key)
                if digest != entry.sha256:
                    problems.append(f"{entry.key}: sha256 {digest} != manifest {entry.sha256}")
                    continue
            else:
                size = storage.size(entry.key)
            if size != entry.bytes:
                problems.append(f"{entry.key}: {size} bytes != manifest {entry.bytes}")
        except MissingKeyError:
            problems.append(f"{entry.key}: missing")
    return problems


def check_manifest_spec(manifest: ShardManifest, spec: FeatureSpec, uri: str) -> None:
    """:class:`ShardStoreError` unless the shard holds ``spec``'s dtype and ``[L, K, D]`` (and, for int8, its scales)."""
    if manifest.shape[1:] != spec.shape or manifest.dtype != spec.dtype:
        raise ShardStoreError(
            f"shard {manifest.shard} in {uri} holds {manifest.dtype} {manifest.shape[1:]}, "
            f"but spec.json says {spec.dtype} {spec.shape}")
    if spec.dtype == "int8" and "scale" not in manifest.files:
        raise ShardStoreError(f"int8 shard {manifest.shard} in {uri} has no scale file")


# -------------------------------------------------------------------------------------------- index


@dataclass(frozen=True)
class FeatureIndex:
    """Where each video's features are: ``locations[id] = (shard, row)``; ``failed[id] = reason``."""

    locations: dict[str, tuple[int, int]]
    failed: dict[str, str]
    shards: tuple[int, ...]

    @classmethod
    def build(cls, manifests: Mapping[int, ShardManifest], uri: str) -> FeatureIndex:
        """Merge shard manifests; :class:`ShardStoreError` if an id appears in two places."""
        locations: dict[str, tuple[int, int]] = {}
        failed: dict[str, str] = {}
        owner: dict[str, int] = {}
        for shard in sorted(manifests):
            m = manifests[shard]
            for vid in (*m.ids, *m.failed):
                if vid in owner:
                    where = "shard" if owner[vid] != shard else "the same shard"
                    raise ShardStoreError(
                        f"video id {vid!r} appears in shard {owner[vid]} and in {where} {shard} of {uri}")
                owner[vid] = shard
            locations.update({vid: (shard, row) for row, vid in enumerate(m.ids)})
            failed.update(m.failed)
        return cls(locations=locations, failed=failed, shards=tuple(sorted(manifests)))

    def to_bytes(self) -> bytes:
        doc = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "created": utc_now(),
            "num_videos": len(self.locations),
            "num_failed": len(self.failed),
            "shards": list(self.shards),
            "locations": {vid: list(loc) for vid, loc in self.locations.items()},
            "failed": self.failed,
        }
        return json.dumps(doc).encode("utf-8")

    @classmethod
    def from_bytes(cls, raw: bytes, uri: str) -> FeatureIndex:
        try:
            d = json.loads(raw)
            if d.get("format") != FORMAT or d.get("version") != FORMAT_VERSION:
                raise ValueError(f"format {d.get('format')!r} version {d.get('version')!r}")
            return cls(
                locations={str(k): (int(v[0]), int(v[1])) for k, v in d["locations"].items()},
                failed={str(k): str(v) for k, v in d["failed"].items()},
                shards=tuple(int(s) for s in d["shards"]),
            )
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            raise ShardStoreError(f"malformed {INDEX_KEY} in {uri}: {e}") from e
