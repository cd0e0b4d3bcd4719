"""Writing a shard store: ``ShardWriter`` (crash-safe, resumable shard writes, ``finalize`` -> ``index.json``).

The store's layout is in :mod:`.layout`, the spec in :mod:`.spec`, the manifests and the index in
:mod:`.manifest`.

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
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from linkedout.shards.layout import INDEX_KEY, SPEC_KEY, data_key, manifest_key, scale_key
from linkedout.shards.manifest import (
    FeatureIndex,
    FileEntry,
    ShardManifest,
    Verify,
    check_files,
    check_manifest_spec,
    list_shards,
    parse_manifest,
    read_manifest,
)
from linkedout.shards.quant import quantize_int8
from linkedout.shards.spec import FeatureSpec, read_spec, spec_bytes
from linkedout.shards.storage import (
    MissingKeyError,
    S3Options,
    ShardStoreError,
    Storage,
    StoreMismatch,
    open_storage,
)
from linkedout.utils import get_logger, is_int, utc_now

log = get_logger(__name__)



def _npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as the bytes of a ``.npy`` file (C order, no pickles)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


class ShardWriter:
    """Writes shards of one shard store (see the module docstring for the layout and a driver loop).

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
        if not is_int(shard_size) or shard_size < 1:
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
                    f"{'; '.join(stored.diff(spec))}); a store holds one config: use a new shard store "
                    "(--out, or a new --workdir), or --force to delete its features and extract again")
        else:
            self.storage.write_bytes(SPEC_KEY, spec_bytes(spec))
            log.info("new shard store %s: %s %s per video", self.storage.uri, spec.dtype, spec.shape)

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
            manifest = parse_manifest(raw, shard_index, self.storage.uri)
            check_manifest_spec(manifest, self.spec, self.storage.uri)
        except ShardStoreError as e:
            log.warning("shard %d will be redone: %s", shard_index, e)
            return False
        if expected_ids is not None and {*manifest.ids, *manifest.failed} != {str(x) for x in expected_ids}:
            log.warning("shard %d of %s holds other ids than planned; it will be redone",
                        shard_index, self.storage.uri)
            return False
        problems = check_files(self.storage, manifest, verify)
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
            created=utc_now(),
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
        check_manifest_spec(manifest, self.spec, self.storage.uri)
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
            new = dataclasses.replace(manifest, failed=failed, sources=sources, created=utc_now())
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
        if not is_int(shard_index) or shard_index < 0:
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
            check_manifest_spec(manifest, self.spec, self.storage.uri)
            problems += check_files(self.storage, manifest, verify)
            manifests[shard] = manifest
        if problems:
            raise ShardStoreError(f"damaged shards in {self.storage.uri} (re-run extraction to redo them): "
                                    + "; ".join(problems))
        index = FeatureIndex.build(manifests, self.storage.uri)
        self.storage.write_bytes(INDEX_KEY, index.to_bytes())
        log.info("indexed %s: %d videos in %d shards, %d failed", self.storage.uri, len(index.locations),
                 len(index.shards), len(index.failed))
        return index
