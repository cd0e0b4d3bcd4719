"""Checking a whole shard store (``linkedout features verify``) and its content digest.

:func:`verify_store` reads everything a reader relies on and reports every problem at once:

- ``spec.json`` is readable and well formed;
- every shard manifest parses and agrees with the spec (dtype, ``[L, K, D]``, int8 scales);
- every shard file exists, has the manifest's size and **sha256** (the whole store is read: on S3
  every shard is downloaded once) and is a ``.npy`` array of the manifest's dtype and shape;
- every video id is in exactly one place (one row of one shard, or one shard's failed list);
- ``index.json``, when present, lists exactly the shards, rows and failures the manifests hold;
- with a catalogue, every catalogue video is in the store (extracted or recorded as failed).

Leftovers of killed runs (data files without a manifest, temp files) are warnings. With
``repair=True`` the manifests of damaged shards are deleted, so ``linkedout extract`` redoes them.

:func:`store_digest` is the store's content fingerprint for the stages downstream (split,
training, evaluation): the spec plus, per shard, its files' sha256 and its ids, read from the
manifests (no shard data is read).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from linkedout.fingerprint import canonical_digest
from linkedout.shards.layout import DATA_KEY_PATTERN, INDEX_KEY, manifest_key
from linkedout.shards.manifest import FeatureIndex, ShardManifest, list_shards, read_manifest
from linkedout.shards.reader import FeatureReader
from linkedout.shards.spec import read_spec
from linkedout.shards.storage import MissingKeyError, S3Options, ShardStoreError, Storage, open_storage
from linkedout.utils import get_logger, progress

log = get_logger(__name__)

__all__ = ["VerifyReport", "store_digest", "verify_store"]


@dataclass
class VerifyReport:
    """What :func:`verify_store` found. ``problems`` make the store untrustworthy; ``warnings`` do not."""

    uri: str
    shards: int = 0
    files: int = 0
    bytes: int = 0
    videos: int = 0
    failed: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    damaged_shards: list[int] = field(default_factory=list)
    repaired: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        lines = [f"shard store {self.uri}",
                 f"  {self.shards:,} shards, {self.files:,} files ({self.bytes / 1e6:,.1f} MB) hashed, "
                 f"{self.videos:,} videos with features, {self.failed:,} failed"]
        lines += [f"  PROBLEM: {p}" for p in self.problems]
        lines += [f"  warning: {w}" for w in self.warnings]
        if self.repaired:
            lines.append(f"  repaired: manifests of shards {self.repaired} deleted; `linkedout extract` redoes them")
        lines.append(f"  {len(self.problems)} problem(s), {len(self.warnings)} warning(s)"
                     + (": OK" if self.ok else ""))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "ok": self.ok, "shards": self.shards, "files": self.files, "bytes": self.bytes,
                "videos": self.videos, "failed": self.failed, "problems": self.problems,
                "warnings": self.warnings, "damaged_shards": self.damaged_shards, "repaired": self.repaired}


def _check_array(raw: bytes, key: str, dtype: str, shape: tuple[int, ...]) -> str | None:
    try:
        array = np.load(io.BytesIO(raw), allow_pickle=False, mmap_mode=None)
    except (ValueError, OSError) as e:
        return f"{key}: not a valid .npy file ({e})"
    if array.dtype != np.dtype(dtype) or array.shape != shape:
        return f"{key}: holds {array.dtype} {array.shape}, its manifest says {dtype} {shape}"
    return None


def _check_shard(storage: Storage, manifest: ShardManifest, spec_shape: tuple[int, ...], spec_dtype: str,
                 report: VerifyReport) -> list[str]:
    problems: list[str] = []
    if manifest.shape[1:] != spec_shape or manifest.dtype != spec_dtype:
        problems.append(f"shard {manifest.shard} holds {manifest.dtype} {manifest.shape[1:]}, spec.json says "
                        f"{spec_dtype} {spec_shape}")
        return problems
    if spec_dtype == "int8" and "scale" not in manifest.files:
        problems.append(f"int8 shard {manifest.shard} has no scale file")
    n = len(manifest.ids)
    expected = {"data": (spec_dtype, (n, *spec_shape)), "scale": ("float32", (n, *spec_shape[:2]))}
    for name, entry in manifest.files.items():
        try:
            raw = storage.read_bytes(entry.key)
        except MissingKeyError:
            problems.append(f"{entry.key}: missing (listed in the manifest of shard {manifest.shard})")
            continue
        report.files += 1
        report.bytes += len(raw)
        if len(raw) != entry.bytes:
            problems.append(f"{entry.key}: {len(raw):,} bytes, its manifest says {entry.bytes:,} (truncated or replaced)")
            continue
        digest = hashlib.sha256(raw).hexdigest()
        if digest != entry.sha256:
            problems.append(f"{entry.key}: sha256 {digest[:16]}... differs from its manifest's {entry.sha256[:16]}... "
                            "(the file changed after it was written)")
            continue
        if name in expected:
            bad = _check_array(raw, entry.key, *expected[name])
            if bad:
                problems.append(bad)
    return problems


def verify_store(storage: Storage | str, *, endpoint_url: S3Options = None, catalog: Sequence[str] | None = None,
                 repair: bool = False) -> VerifyReport:
    """Check every checksum and every id of a shard store (see the module docstring)."""
    storage = open_storage(storage, endpoint_url)
    report = VerifyReport(uri=storage.uri)
    try:
        spec = read_spec(storage)
    except ShardStoreError as e:
        report.problems.append(str(e))
        return report
    keys = storage.list()
    shards = list_shards(storage)
    report.shards = len(shards)
    manifests: dict[int, ShardManifest] = {}
    owner: dict[str, int] = {}
    for shard in progress(shards, total=len(shards), desc="verify", unit="shard"):
        try:
            manifest = read_manifest(storage, shard)
        except ShardStoreError as e:
            report.problems.append(str(e))
            report.damaged_shards.append(shard)
            continue
        problems = _check_shard(storage, manifest, spec.shape, spec.dtype, report)
        if problems:
            report.problems += problems
            report.damaged_shards.append(shard)
        for vid in (*manifest.ids, *manifest.failed):
            if vid in owner:
                where = "twice in shard" if owner[vid] == shard else f"in shard {owner[vid]} and in shard"
                report.problems.append(f"video id {vid!r} appears {where} {shard}")
                if shard not in report.damaged_shards:
                    report.damaged_shards.append(shard)
            owner[vid] = shard
        manifests[shard] = manifest
        report.videos += len(manifest.ids)
        report.failed += len(manifest.failed)
    _check_index(storage, manifests, report)
    orphans = {int(m.group(1)) for k in keys if (m := DATA_KEY_PATTERN.match(k))} - set(shards)
    if orphans:
        report.warnings.append(f"data files of shards {sorted(orphans)[:10]} have no manifest (left by a "
                               "killed run; never read; the next extraction overwrites them)")
    temps = [k for k in keys if k.rsplit("/", 1)[-1].startswith(".") and k.endswith(".tmp")]
    if temps:
        report.warnings.append(f"{len(temps)} temporary files of interrupted writes (e.g. {temps[0]})")
    if catalog is not None:
        absent = [vid for vid in catalog if vid not in owner]
        if absent:
            report.problems.append(f"{len(absent):,} catalogue videos are in no shard (first: {absent[:5]}): "
                                   "run `linkedout extract` to extract them")
    if repair and report.damaged_shards:
        for shard in sorted(set(report.damaged_shards)):
            storage.delete(manifest_key(shard))
            report.repaired.append(shard)
        storage.delete(INDEX_KEY)
        log.warning("deleted the manifests of damaged shards %s of %s; `linkedout extract` redoes them",
                    report.repaired, storage.uri)
    return report


def _check_index(storage: Storage, manifests: dict[int, ShardManifest], report: VerifyReport) -> None:
    try:
        raw = storage.read_bytes(INDEX_KEY)
    except MissingKeyError:
        report.warnings.append(f"no {INDEX_KEY} (extraction unfinished, or a shard rewritten since): readers "
                               "rebuild it from the manifests; `linkedout extract` writes it")
        return
    try:
        index = FeatureIndex.from_bytes(raw, storage.uri)
    except ShardStoreError as e:
        report.problems.append(str(e))
        return
    try:
        built = FeatureIndex.build(manifests, storage.uri)
    except ShardStoreError:
        return  # duplicates are already reported
    if set(index.shards) != set(manifests):
        report.warnings.append(f"{INDEX_KEY} lists shards {sorted(set(index.shards) ^ set(manifests))[:10]} "
                               "other than those present (readers rebuild it)")
        return
    if index.locations != built.locations or set(index.failed) != set(built.failed):
        wrong = [vid for vid, loc in built.locations.items() if index.locations.get(vid) != loc]
        report.problems.append(f"{INDEX_KEY} disagrees with the shard manifests about {len(wrong):,} videos "
                               f"(first: {wrong[:5]})")


def store_digest(reader: FeatureReader) -> str:
    """The store's content fingerprint: its spec and, per shard, the files' sha256 and the ids."""
    shards = []
    for shard in reader.shards:
        m = reader.manifest(shard)
        shards.append([shard, {name: e.sha256 for name, e in sorted(m.files.items())}, list(m.ids), sorted(m.failed)])
    return canonical_digest({"spec": reader.spec.to_dict(), "shards": shards})


def format_failures(doc: dict[str, Any], limit: int = 20) -> str:
    """Readable lines of a ``failures.json`` document (see ``extract_dataset``)."""
    lines = [f"{doc['failed']:,} of {doc['videos']:,} videos failed ({100 * doc['failed_share']:.2f} %)"]
    for reason, count in sorted(doc.get("by_reason", {}).items(), key=lambda kv: -kv[1]):
        lines.append(f"  {count:>7,}  {reason}")
    for vid, why in list(doc.get("reasons", {}).items())[:limit]:
        lines.append(f"    {vid}: {why}")
    if len(doc.get("reasons", {})) > limit:
        lines.append(f"    ... ({len(doc['reasons']) - limit:,} more in {doc.get('file', 'failures.json')})")
    return "\n".join(lines)

