"""Feature shards: per-video backbone hidden states ``[L, K, D]`` written once, read many times.

Layout under the store root (a directory or ``s3://bucket/prefix``)::

    spec.json                         the extraction config (FeatureSpec), written first
    shards/shard-00000.data.npy       float16 [n, L, K, D]  or  int8 [n, L, K, D]
    shards/shard-00000.scale.npy      float32 [n, L, K]     (int8 only: per-row scales)
    shards/shard-00000.json           the shard's manifest, written LAST
    ...
    index.json                        video id -> [shard, row], and failed ids (written by finalize)

Crash safety: every object is written atomically (see :mod:`.storage`) and a shard's manifest,
holding the sha256 and size of each of its data files, is written after them. A shard is
complete iff its manifest exists and its files match the manifest; a run killed mid-shard leaves
data files without a manifest, which readers never look at and the next run overwrites. Rewriting
a shard first deletes its manifest, so an old manifest is never paired with new data.

Typical use (the extraction driver)::

    writer = ShardWriter("s3://bucket/features/v1", spec, shard_size=64)
    for i, chunk in enumerate(writer.plan(video_ids)):
        if writer.is_complete(i, expected_ids=chunk):
            continue                                   # resume: done by an earlier run
        feats, ok_ids, failed = extract(chunk)         # float32 [n, L, K, D]
        writer.write_shard(i, ok_ids, feats, failed)
    writer.finalize()

    reader = FeatureReader("s3://bucket/features/v1")
    reader.get_many(["123", "456"])                    # float32 [2, L, K, D]
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from linkedout.shards.quant import quantize_int8
from linkedout.shards.storage import (
    MissingKeyError,
    S3Options,
    ShardStoreError,
    Storage,
    StoreMismatch,
    open_storage,
)
from linkedout.utils import get_logger

log = get_logger(__name__)

FORMAT = "linkedout-features"
FORMAT_VERSION = 1
SPEC_KEY = "spec.json"
INDEX_KEY = "index.json"
DATASET_KEY = "dataset.json"  # which dataset the store's catalogue belongs to (written by the extraction)
FAILURES_KEY = "failures.json"  # the extraction's failure summary
SHARD_DIR = "shards"
DTYPES = ("float16", "int8")
_MANIFEST_KEY = re.compile(r"^shards/shard-(\d{5,})\.json$")
_HASH_CHUNK = 1 << 22  # 4 MiB

Verify = Literal["none", "size", "checksum"]


def manifest_key(shard: int) -> str:
    return f"{SHARD_DIR}/shard-{shard:05d}.json"


def data_key(shard: int) -> str:
    return f"{SHARD_DIR}/shard-{shard:05d}.data.npy"


def scale_key(shard: int) -> str:
    return f"{SHARD_DIR}/shard-{shard:05d}.scale.npy"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class FeatureSpec:
    """What a feature store holds: how the features were extracted and how they are stored.

    Attributes:
        backbone: the video LLM the features come from (hub id, local path or ``"tiny"``).
        layers: kept hidden-state depths, strictly increasing, >= 0 (0 = embedding output,
            i = output of decoder layer i); paper ``(0, 4, 8, 12, 16, 20)``. ``L = len(layers)``.
        prompts: the query prompts fed with the video (may be empty), each a non-empty string.
        num_frames: frames sampled per video, >= 1 (paper 8).
        frame_size: frame side in pixels, >= 1 (paper 224).
        tokens: ``K``, tokens kept per layer after compression, >= 1 (paper 64).
        hidden: ``D``, the backbone hidden size, >= 1 (Qwen2-7B: 3584; the paper's table says 4096).
        dtype: storage dtype, ``"float16"`` or ``"int8"`` (symmetric, one float32 scale per
            ``(layer, token)`` row; see :mod:`.quant`).
        compression: name of the token-compression method that reduced the prefill to ``K``
            tokens (provenance only), a non-empty string.
        backbone_dtype: precision the backbone ran in (``float32`` | ``bfloat16`` | ``float16``):
            part of the spec so that a store never mixes, say, CPU float32 and GPU bf16 rows.
        frame_sampling: which frames were read, ``exact`` (uniform indices, LLaVA-OneVision's
            sampling) or ``keyframe`` (the nearest key frame within half the sampling interval);
            stores written before this field existed are ``exact``.
    """

    backbone: str
    layers: tuple[int, ...]
    prompts: tuple[str, ...]
    num_frames: int
    frame_size: int
    tokens: int
    hidden: int
    dtype: str = "float16"
    compression: str = "segment_mean"
    backbone_dtype: str = "float32"
    frame_sampling: str = "exact"

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.frame_sampling not in ("exact", "keyframe"):
            raise ValueError(f"{name}.frame_sampling must be exact or keyframe, got {self.frame_sampling!r}")
        if self.backbone_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"{name}.backbone_dtype must be float32, bfloat16 or float16, "
                             f"got {self.backbone_dtype!r}")
        # Accept lists (e.g. from JSON) and store tuples, so specs compare and hash by value.
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "prompts", tuple(self.prompts))
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ValueError(f"{name}.backbone must be a non-empty string, got {self.backbone!r}")
        if not self.layers:
            raise ValueError(f"{name}.layers must hold at least one layer, got ()")
        if not all(_is_int(x) and x >= 0 for x in self.layers):
            raise ValueError(f"{name}.layers must be integers >= 0, got {self.layers}")
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        if any(b <= a for a, b in zip(self.layers, self.layers[1:])):
            raise ValueError(f"{name}.layers must be strictly increasing, got {self.layers}")
        if not all(isinstance(p, str) and p for p in self.prompts):
            raise ValueError(f"{name}.prompts must be non-empty strings, got {self.prompts}")
        for field_name in ("num_frames", "frame_size", "tokens", "hidden"):
            value = getattr(self, field_name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name}.{field_name} must be an integer >= 1, got {value!r}")
            object.__setattr__(self, field_name, int(value))
        if self.dtype not in DTYPES:
            raise ValueError(f"{name}.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not isinstance(self.compression, str) or not self.compression:
            raise ValueError(f"{name}.compression must be a non-empty string, got {self.compression!r}")

    @classmethod
    def paper(cls, dtype: str = "float16", hidden: int = 4096) -> FeatureSpec:
        """The paper's setting: 6 layers x 64 tokens x 4096 (its table's hidden size), 8 frames at 224."""
        return cls(
            backbone="llava-hf/llava-onevision-qwen2-7b-ov-hf",
            layers=(0, 4, 8, 12, 16, 20),
            prompts=("Which objects appear?", "What is the scene mood?", "What type of action is it?"),
            num_frames=8,
            frame_size=224,
            tokens=64,
            hidden=hidden,
            dtype=dtype,
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(L, K, D)`` of one video."""
        return (len(self.layers), self.tokens, self.hidden)

    @property
    def rows_per_video(self) -> int:
        """``L * K``: the number of D-vectors (quantisation rows) per video."""
        return len(self.layers) * self.tokens

    def data_bytes_per_video(self) -> int:
        """Bytes of the values: ``L * K * D * itemsize``."""
        return self.rows_per_video * self.hidden * np.dtype(self.dtype).itemsize

    def scale_bytes_per_video(self) -> int:
        """Bytes of the int8 scales (``L * K`` float32), 0 for float16."""
        return self.rows_per_video * 4 if self.dtype == "int8" else 0

    def bytes_per_video(self) -> int:
        """Stored bytes per video, scales included (file headers excluded)."""
        return self.data_bytes_per_video() + self.scale_bytes_per_video()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        d["prompts"] = list(self.prompts)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}")
        try:
            return cls(**d)
        except TypeError as e:  # a missing required field
            raise ValueError(f"{cls.__name__}: {e}") from e

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> FeatureSpec:
        return cls.from_dict(json.loads(text))

    def diff(self, other: FeatureSpec) -> list[str]:
        """Human-readable ``field: self != other`` lines for the fields that differ."""
        return [
            f"{f.name}: {getattr(self, f.name)!r} != {getattr(other, f.name)!r}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]


def read_spec(storage: Storage) -> FeatureSpec:
    """The store's ``spec.json``; :class:`ShardStoreError` if there is none or it is malformed."""
    try:
        raw = storage.read_bytes(SPEC_KEY)
    except MissingKeyError:
        raise ShardStoreError(f"{storage.uri} is not a feature store: no {SPEC_KEY}") from None
    try:
        doc = json.loads(raw)
        if doc.get("format") != FORMAT or doc.get("version") != FORMAT_VERSION:
            raise ValueError(f"format {doc.get('format')!r} version {doc.get('version')!r}, "
                             f"expected {FORMAT!r} version {FORMAT_VERSION}")
        return FeatureSpec.from_dict(doc["spec"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ShardStoreError(f"malformed {SPEC_KEY} in {storage.uri}: {e}") from e


def _spec_bytes(spec: FeatureSpec) -> bytes:
    doc = {"format": FORMAT, "version": FORMAT_VERSION, "spec": spec.to_dict()}
    return json.dumps(doc, indent=2).encode("utf-8")


# ---------------------------------------------------------------------------------------- manifests


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
                  if (m := _MANIFEST_KEY.match(key)))


def read_manifest(storage: Storage, shard: int) -> ShardManifest:
    """The manifest of a shard; :class:`MissingKeyError` if none, :class:`ShardStoreError` if malformed."""
    return _parse_manifest(storage.read_bytes(manifest_key(shard)), shard, storage.uri)


def _parse_manifest(raw: bytes, shard: int, uri: str) -> ShardManifest:
    key = manifest_key(shard)
    manifest = ShardManifest.from_bytes(raw, key, uri)
    if manifest.shard != shard:
        raise ShardStoreError(f"manifest {key!r} in {uri} names shard {manifest.shard}")
    return manifest


def _sha256(storage: Storage, key: str) -> tuple[str, int]:
    """(sha256 hex, size) of an object, streamed from disk when local."""
    path = storage.local_path(key)
    if path is None:
        data = storage.read_bytes(key)
        return hashlib.sha256(data).hexdigest(), len(data)
    try:
        return _sha256_file(path), path.stat().st_size
    except FileNotFoundError:
        raise MissingKeyError(f"no object {key!r} in {storage.uri}") from None


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check_files(storage: Storage, manifest: ShardManifest, verify: Verify) -> list[str]:
    """Problems with a shard's data files against its manifest (empty = the shard is whole)."""
    problems: list[str] = []
    if verify == "none":
        return problems
    for entry in manifest.files.values():
        try:
            if verify == "checksum":
                digest, size = _sha256(storage, entry.key)
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


def _check_manifest_spec(manifest: ShardManifest, spec: FeatureSpec, uri: str) -> None:
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
            "created": _now(),
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


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------- writer


class ShardWriter:
    """Writes shards of one feature store (see the module docstring for the layout and a driver loop).

    Args:
        storage: a :class:`Storage`, a directory or ``s3://bucket/prefix``.
        spec: the extraction config; written to ``spec.json`` if the store is new, else it must
            equal the stored one (:class:`ShardStoreError` listing the differing fields).
        shard_size: the most videos per shard, >= 1 (at the paper setting a float16 video is
            3.1 MB, so 64 videos make ~200 MB shards).
        endpoint_url: S3 endpoint when ``storage`` is an ``s3://`` uri.
    """

    def __init__(
        self,
        storage: Storage | str | os.PathLike[str],
        spec: FeatureSpec,
        shard_size: int = 64,
        *,
        endpoint_url: S3Options = None,
    ) -> None:
        if not _is_int(shard_size) or shard_size < 1:
            raise ValueError(f"ShardWriter.shard_size must be an integer >= 1, got {shard_size!r}")
        if not isinstance(spec, FeatureSpec):
            raise TypeError(f"ShardWriter.spec must be a FeatureSpec, got {type(spec).__name__}")
        self.storage = open_storage(storage, endpoint_url)
        self.spec = spec
        self.shard_size = int(shard_size)
        self._written: dict[str, int] = {}  # ids written by this writer -> shard (duplicate check)
        if self.storage.exists(SPEC_KEY):
            stored = read_spec(self.storage)
            if stored != spec:
                raise StoreMismatch(
                    f"{self.storage.uri} holds features of another extraction config (store != asked: "
                    f"{'; '.join(stored.diff(spec))}); a store holds one config: use a new feature store "
                    "(--out, or a new --workdir), or --force to delete its features and extract again")
        else:
            self.storage.write_bytes(SPEC_KEY, _spec_bytes(spec))
            log.info("new feature store %s: %s %s per video", self.storage.uri, spec.dtype, spec.shape)

    def __repr__(self) -> str:
        return f"ShardWriter({self.storage.uri!r}, shard_size={self.shard_size})"

    def plan(self, ids: Sequence[str]) -> list[list[str]]:
        """Deterministic assignment: ``ids`` in the given order, cut into chunks of ``shard_size``.

        Chunk ``i`` is shard ``i``; pass the same ids in the same order (e.g. sorted) on a re-run
        so that complete shards are recognised. Duplicate ids raise ``ValueError``.
        """
        ids = [str(x) for x in ids]
        dupes = sorted(x for x, n in Counter(ids).items() if n > 1)
        if dupes:
            raise ValueError(f"duplicate video ids in the shard plan: {dupes[:10]}")
        return [ids[i:i + self.shard_size] for i in range(0, len(ids), self.shard_size)]

    def plan_incremental(self, ids: Sequence[str]) -> list[list[str]]:
        """A shard plan that keeps what the store already holds (used by the extraction).

        Every shard with a manifest keeps its videos (written and failed) at its index, whatever
        the catalogue now holds; the ids of ``ids`` found in no such shard are cut, in the given
        order, into chunks of ``shard_size`` that fill the free indices (gaps left by shards that
        never completed first, then past the last one). So a re-run plans the same shards, a
        catalogue that grows extracts only its new videos, and one that shrinks recomputes
        nothing (the videos it dropped stay readable). Entry ``i`` of the result is shard ``i``;
        an index with nothing to hold (a gap no new video fills) is ``[]``.
        """
        ids = [str(x) for x in ids]
        dupes = sorted(x for x, n in Counter(ids).items() if n > 1)
        if dupes:
            raise ValueError(f"duplicate video ids in the shard plan: {dupes[:10]}")
        held: dict[int, list[str]] = {}
        for i in self.complete_shards():
            try:
                manifest = read_manifest(self.storage, i)
            except ShardStoreError as e:
                log.warning("shard %d will be replanned: %s", i, e)
                continue
            held[i] = [*manifest.ids, *manifest.failed]
        have = {x for chunk in held.values() for x in chunk}
        new = [x for x in ids if x not in have]
        chunks = [new[k:k + self.shard_size] for k in range(0, len(new), self.shard_size)]
        end = max(held) + 1 if held else 0
        free = [i for i in range(end) if i not in held] + list(range(end, end + len(chunks)))
        plan: dict[int, list[str]] = dict(held)
        plan.update(zip(free, chunks))
        return [plan.get(i, []) for i in range(max(plan) + 1 if plan else 0)]

    def is_complete(
        self,
        shard_index: int,
        expected_ids: Iterable[str] | None = None,
        *,
        verify: Literal["size", "checksum"] = "checksum",
    ) -> bool:
        """Whether shard ``shard_index`` is complete: its manifest exists and its files match it.

        ``verify="checksum"`` re-hashes the data files (reads them: on S3, downloads them);
        ``"size"`` only compares sizes, which suffices against interrupted writes because each
        object is written atomically. With ``expected_ids``, the shard must also cover exactly
        these ids (written or failed), so a shard planned differently is redone.
        """
        try:
            # Storage errors other than a missing manifest propagate: they do not mean "incomplete".
            raw = self.storage.read_bytes(manifest_key(shard_index))
        except MissingKeyError:
            return False
        try:
            manifest = _parse_manifest(raw, shard_index, self.storage.uri)
            _check_manifest_spec(manifest, self.spec, self.storage.uri)
        except ShardStoreError as e:
            log.warning("shard %d will be redone: %s", shard_index, e)
            return False
        if expected_ids is not None and {*manifest.ids, *manifest.failed} != {str(x) for x in expected_ids}:
            log.warning("shard %d of %s holds other ids than planned; it will be redone",
                        shard_index, self.storage.uri)
            return False
        problems = _check_files(self.storage, manifest, verify)
        if problems:
            log.warning("shard %d of %s is damaged and will be redone: %s",
                        shard_index, self.storage.uri, "; ".join(problems))
        return not problems

    def complete_shards(self) -> list[int]:
        """Indices of the shards with a manifest (files not checked; see :meth:`is_complete`)."""
        return list_shards(self.storage)

    def write_shard(
        self,
        shard_index: int,
        ids: Sequence[str],
        features: np.ndarray,
        failed: Mapping[str, str] | None = None,
        sources: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> ShardManifest:
        """Write shard ``shard_index``: ``features`` float ``[n, L, K, D]``, row ``r`` = ``ids[r]``.

        ``failed`` maps the ids of the shard's videos that could not be extracted to the reason;
        ``sources`` maps video ids (written or failed) to what identified their file (recorded in the
        manifest, so that a re-run notices a changed file). The data files go first, the manifest
        last; an existing shard of that index is replaced. Raises ``ValueError`` for bad input
        (shape, dtype, non-finite or float16-overflowing values, duplicate ids) naming the ids at fault.
        """
        failed = {str(k): str(v) for k, v in (failed or {}).items()}
        ids = [str(x) for x in ids]
        self._validate(shard_index, ids, features, failed)
        features = np.asarray(features, dtype=np.float32)  # (n, L, K, D)

        arrays: dict[str, np.ndarray] = {}
        if self.spec.dtype == "float16":
            with np.errstate(over="ignore"):
                values = features.astype(np.float16)  # (n, L, K, D)
            overflow = ~np.isfinite(values).reshape(len(ids), -1 if ids else 0).all(axis=1)
            if overflow.any():
                bad = [ids[i] for i in np.flatnonzero(overflow)[:10]]
                raise ValueError(f"shard {shard_index}: features of video ids {bad} exceed the float16 range "
                                 "(|x| > 65504); use dtype int8")
            arrays["data"] = values
        else:
            arrays["data"], arrays["scale"] = quantize_int8(features)  # (n, L, K) int8, (n, L, K) float32
        return self._commit(int(shard_index), ids, arrays, failed, sources)

    def _commit(self, shard_index: int, ids: list[str], arrays: Mapping[str, np.ndarray], failed: dict[str, str],
                sources: Mapping[str, Mapping[str, Any]] | None) -> ShardManifest:
        """Write a shard's stored arrays (``data`` and for int8 ``scale``), then its manifest."""
        keys = {"data": data_key(shard_index), "scale": scale_key(shard_index)}
        # Drop the old manifest first: from here until the new one lands, the shard is incomplete.
        # index.json no longer describes the store either; readers rebuild it until finalize().
        self.storage.delete(manifest_key(shard_index))
        self.storage.delete(INDEX_KEY)
        entries = {}
        for name, array in arrays.items():
            data = _npy_bytes(array)
            self.storage.write_bytes(keys[name], data)
            entries[name] = FileEntry(key=keys[name], sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
        known = {*ids, *failed}
        manifest = ShardManifest(
            shard=shard_index,
            ids=tuple(ids),
            failed=failed,
            shape=(len(ids), *self.spec.shape),
            dtype=self.spec.dtype,
            files=entries,
            created=_now(),
            sources={str(k): dict(v) for k, v in (sources or {}).items() if str(k) in known},
        )
        self.storage.write_bytes(manifest_key(shard_index), json.dumps(manifest.to_dict(), indent=1).encode())
        self._written = {vid: s for vid, s in self._written.items() if s != shard_index}  # a rewrite
        self._written.update(dict.fromkeys((*ids, *failed), shard_index))
        log.debug("wrote shard %d of %s: %d videos, %d failed", shard_index, self.storage.uri,
                  len(ids), len(failed))
        return manifest

    def drop_videos(self, shard_index: int, video_ids: Iterable[str]) -> ShardManifest | None:
        """Remove videos (written or failed) from a complete shard, so that they are extracted again.

        Failed videos only: the manifest is rewritten (their ``failed`` entries go). Written videos:
        the shard's other rows are copied as stored (no re-quantisation) into new data files and the
        manifest is rewritten, with the crash safety of :meth:`write_shard` (a run killed meanwhile
        leaves the shard incomplete, and its videos are extracted again). A shard left empty is
        deleted. Returns the new manifest (None when deleted or when nothing was dropped).
        """
        drop = {str(x) for x in video_ids}
        manifest = read_manifest(self.storage, shard_index)
        _check_manifest_spec(manifest, self.spec, self.storage.uri)
        if not drop & {*manifest.ids, *manifest.failed}:
            return None
        ids = [vid for vid in manifest.ids if vid not in drop]
        failed = {k: v for k, v in manifest.failed.items() if k not in drop}
        sources = {k: v for k, v in manifest.sources.items() if k not in drop}
        if not ids and not failed:
            self.storage.delete(manifest_key(shard_index))
            self.storage.delete(INDEX_KEY)
            for entry in manifest.files.values():
                self.storage.delete(entry.key)
            self._written = {vid: s for vid, s in self._written.items() if s != shard_index}
            log.info("shard %d of %s emptied and deleted", shard_index, self.storage.uri)
            return None
        if len(ids) == len(manifest.ids):  # only failed entries go: the data files stay as they are
            new = dataclasses.replace(manifest, failed=failed, sources=sources, created=_now())
            self.storage.delete(INDEX_KEY)
            self.storage.write_bytes(manifest_key(shard_index), json.dumps(new.to_dict(), indent=1).encode())
            return new
        rows = np.array([r for r, vid in enumerate(manifest.ids) if vid not in drop], dtype=np.int64)
        arrays = {}
        for name, entry in manifest.files.items():
            raw = self.storage.read_bytes(entry.key)
            if len(raw) != entry.bytes or hashlib.sha256(raw).hexdigest() != entry.sha256:
                raise ShardStoreError(f"cannot keep the other videos of shard {shard_index} in "
                                        f"{self.storage.uri}: {entry.key} does not match its manifest")
            arrays[name] = np.load(io.BytesIO(raw), allow_pickle=False)[rows]
        return self._commit(shard_index, ids, arrays, failed, sources)

    def _validate(self, shard_index: int, ids: list[str], features: np.ndarray, failed: dict[str, str]) -> None:
        if not _is_int(shard_index) or shard_index < 0:
            raise ValueError(f"shard_index must be an integer >= 0, got {shard_index!r}")
        if len(ids) + len(failed) > self.shard_size:
            raise ValueError(f"shard {shard_index} has {len(ids)} ids + {len(failed)} failed, "
                             f"more than shard_size={self.shard_size}")
        if any(not x for x in (*ids, *failed)):
            raise ValueError(f"shard {shard_index}: video ids must be non-empty strings")
        counts = Counter((*ids, *failed))
        dupes = sorted(v for v, c in counts.items() if c > 1)
        if dupes:
            raise ValueError(f"shard {shard_index}: duplicate video ids (in ids or failed) {dupes[:10]}")
        elsewhere = sorted((vid, s) for vid in counts if (s := self._written.get(vid, shard_index)) != shard_index)
        if elsewhere:
            raise ShardStoreError(f"video ids already written to other shards of {self.storage.uri} "
                                    f"(id, shard): {elsewhere[:10]}")
        if not isinstance(features, np.ndarray) or not np.issubdtype(features.dtype, np.floating):
            kind = features.dtype if isinstance(features, np.ndarray) else type(features).__name__
            raise ValueError(f"shard {shard_index}: features must be a floating numpy array, got {kind}")
        expected = (len(ids), *self.spec.shape)
        if features.shape != expected:
            raise ValueError(f"shard {shard_index}: features shape {features.shape} != (n, L, K, D) = {expected}")
        finite = np.isfinite(features).reshape(len(ids), -1 if ids else 0).all(axis=1)
        if not finite.all():
            bad = [ids[i] for i in np.flatnonzero(~finite)[:10]]
            raise ValueError(f"shard {shard_index}: non-finite features (nan/inf) for video ids {bad}")

    def finalize(self, verify: Verify = "size") -> FeatureIndex:
        """Write ``index.json`` from the shard manifests and return the index.

        Every shard with a manifest must be whole (``verify``: ``"size"`` compares file sizes,
        ``"checksum"`` re-hashes, ``"none"`` trusts the manifests); a damaged shard or an id in two
        shards raises :class:`ShardStoreError`.
        """
        manifests = {}
        problems: list[str] = []
        for shard in list_shards(self.storage):
            manifest = read_manifest(self.storage, shard)
            _check_manifest_spec(manifest, self.spec, self.storage.uri)
            problems += _check_files(self.storage, manifest, verify)
            manifests[shard] = manifest
        if problems:
            raise ShardStoreError(f"damaged shards in {self.storage.uri} (re-run extraction to redo them): "
                                    + "; ".join(problems))
        index = FeatureIndex.build(manifests, self.storage.uri)
        self.storage.write_bytes(INDEX_KEY, index.to_bytes())
        log.info("indexed %s: %d videos in %d shards, %d failed", self.storage.uri, len(index.locations),
                 len(index.shards), len(index.failed))
        return index


def __getattr__(name: str) -> Any:
    # FeatureReader lives in linkedout.shards.reader (which imports this module); importing it
    # from here still works.
    if name == "FeatureReader":
        from linkedout.shards.reader import FeatureReader

        return FeatureReader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
